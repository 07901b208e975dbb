"""tools/bench_train.py's helpers and --serve protocol, and the tools/bench_compare.py driver."""
import dataclasses

import pytest

from tools import bench_train


def test_summarize_uses_the_median_and_batch_size():
    # Median of [3, 1, 2] is 2 s; 4 triplets per 2 s step = 2 images/s.
    assert bench_train.summarize([3.0, 1.0, 2.0], batch_size=4) == {
        "images_per_s": 2.0, "step_s_median": 2.0, "step_s_min": 1.0, "step_s_max": 3.0}


def test_summarize_even_count_and_single_step():
    # Even count: the mean of the middle two, (2 + 3) / 2 = 2.5 s; 5 / 2.5 = 2 images/s.
    assert bench_train.summarize([4.0, 1.0, 3.0, 2.0], batch_size=5)["step_s_median"] == 2.5
    assert bench_train.summarize([4.0, 1.0, 3.0, 2.0], batch_size=5)["images_per_s"] == 2.0
    assert bench_train.summarize([0.5], batch_size=1) == {
        "images_per_s": 2.0, "step_s_median": 0.5, "step_s_min": 0.5, "step_s_max": 0.5}


def test_summarize_needs_a_step():
    with pytest.raises(ValueError):
        bench_train.summarize([], batch_size=1)


def test_peak_rss_gib_converts_kib():
    assert bench_train.peak_rss_gib(1024 ** 2) == 1.0  # 1 GiB = 1024^2 KiB
    assert bench_train.peak_rss_gib(3 * 1024 ** 2 // 2) == 1.5
    assert bench_train.peak_rss_gib() > 0  # this process's own figure


def test_random_init_clears_weight_paths_only():
    @dataclasses.dataclass
    class Config:
        encoder_weights: str = "swav.npz"
        extractor_weights: str = ""
        head_weight: float = 5e-3
        depth_layers: int = 50

    config = bench_train.random_init(Config())
    assert config == Config(encoder_weights="none", extractor_weights="none")
    assert bench_train.random_init(Config()) is not config  # a copy; the original is untouched


# ------------------------------------------------------------------------------------------------
# tools/bench_compare.py: the interleaving driver, with stand-in contestants that speak the --serve
# protocol and report fixed step times, and tools/bench_train.py --serve itself.

import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from tools import bench_compare  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

_FAKE_CONTESTANT = r"""
import json, sys
name, seconds, journal = sys.argv[1], float(sys.argv[2]), sys.argv[3]
print("some progress line first", flush=True)
print(json.dumps({"ready": True, "first_step_s": 0.25}), flush=True)
for line in sys.stdin:
    words = line.split()
    if words[0] == "steps":
        with open(journal, "a") as f:
            f.write(name + "\n")
        print(json.dumps({"step_s": [seconds] * int(words[1]), "loss": 0.5}), flush=True)
    elif words[0] == "quit":
        break
print(json.dumps({"peak_rss_gib": 1.5, "loss_last": 0.5, "model": name}), flush=True)
"""


def _fake(name, seconds, tmp_path):
    return bench_compare.Contestant(
        name, [sys.executable, "-c", _FAKE_CONTESTANT, name, str(seconds), str(tmp_path / "journal")],
        tmp_path)


def test_compare_rotates_the_order_and_reports_speedups(tmp_path):
    contestants = [_fake("ref", 3.0, tmp_path), _fake("fast", 1.5, tmp_path), _fake("slow", 6.0, tmp_path)]
    rounds = bench_compare.run_rounds(contestants, rounds=3, steps_per_round=2)
    # Round r starts with contestant r: ref fast slow | fast slow ref | slow ref fast.
    journal = (tmp_path / "journal").read_text().split()
    assert journal == ["ref", "fast", "slow", "fast", "slow", "ref", "slow", "ref", "fast"]
    assert rounds == [{"ref": 3.0, "fast": 1.5, "slow": 6.0}] * 3
    rows, speedup, paired = bench_compare.compare(contestants, rounds, batch_size=4)
    # 3 s per step of 4 triplets = 4/3 images/s; 1.5 s -> 2x the reference, 6 s -> 0.5x.
    assert rows["ref"]["images_per_s"] == pytest.approx(4 / 3, abs=1e-4)
    assert rows["fast"]["steps"] == 6 and rows["fast"]["peak_rss_gib"] == 1.5
    assert rows["slow"]["model"] == "slow"
    assert speedup == {"ref": 1.0, "fast": 2.0, "slow": 0.5}
    assert paired == speedup
    assert all(c.process.poll() is not None for c in contestants)  # all ended


def test_compare_names_a_contestant_that_dies(tmp_path):
    dead = bench_compare.Contestant("dead", [sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path)
    with pytest.raises(SystemExit, match="contestant dead ended without an answer"):
        bench_compare.run_rounds([dead], rounds=1, steps_per_round=1)
    dead.stop()


def test_parse_variants_environment_and_flags():
    assert bench_compare.parse_variants([], ["--a=1"]) == [("tripled_tf", ["--a=1"], {})]
    variants = bench_compare.parse_variants(
        ["plain:", "eigen:TF_ENABLE_ONEDNN_OPTS=0 --b=2 'X=not env'"], ["--a=1"])
    assert variants == [("plain", ["--a=1"], {}),
                        ("eigen", ["--a=1", "--b=2", "X=not env"], {"TF_ENABLE_ONEDNN_OPTS": "0"})]
    with pytest.raises(SystemExit, match="NAME:FLAGS"):
        bench_compare.parse_variants(["bad name:--x"], [])


def test_bench_train_serve_protocol(tmp_path):
    """The real tools/bench_train.py answers the protocol bench_compare drives (tiny model)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_train.py"), "--model=baseline",
         "--depth_decoder=monodepth2", "--dataset=synthetic", "--depth_layers=10", "--pose_layers=10",
         "--height=64", "--width=64", "--batch_size=1", "--pose_height=0", "--pose_width=0",
         "--encoder_weights=none", "--warmup=0", "--serve"],
        input="steps 2\nsteps 1\nquit\n", capture_output=True, text=True, cwd=REPO, env=env,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]  # stdout carries only JSON
    assert lines[0]["ready"] is True and lines[0]["first_step_s"] > 0
    assert len(lines[1]["step_s"]) == 2 and len(lines[2]["step_s"]) == 1
    final = lines[-1]
    assert final["steps"] == 3 and final["depth_decoder"] == "monodepth2"
    assert final["step_s_median"] == pytest.approx(sorted(lines[1]["step_s"] + lines[2]["step_s"])[1],
                                                   rel=1e-3)
    assert final["loss_finite"] and final["peak_rss_gib"] > 0


def test_serve_protocol_runs_the_requested_steps():
    import io

    from tools.bench_protocol import serve

    calls = []

    def run_step():
        calls.append(len(calls))
        return 0.5 + len(calls), 10.0 - len(calls)

    replies = io.StringIO()
    step_times = []
    loss = serve(run_step, step_times, 3.21, io.StringIO("steps 2\nnoise\nsteps 1\nquit\nsteps 5\n"),
                 replies)
    lines = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert lines == [{"ready": True, "first_step_s": 3.21},
                     {"step_s": [1.5, 2.5], "loss": 8.0}, {"step_s": [3.5], "loss": 7.0}]
    assert step_times == [1.5, 2.5, 3.5] and loss == 7.0 and len(calls) == 3
