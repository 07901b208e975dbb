r"""Training-step speed of several implementations measured side by side, interleaved in one run.

    python tools/bench_compare.py --monodepth2_dir=/path/to/monodepth2 [--torch_python=PYTHON] \
        [--rounds=6 --steps_per_round=2 --height=192 --width=640 --batch_size=4 --threads=2] \
        [--variant=NAME:"FLAGS" ...] -- [flags for every tools/bench_train.py variant]

Every contestant is a long-lived process that builds its model, traces / warms up its step, then waits:
each tools/bench_train.py variant (``--serve``) and, with ``--monodepth2_dir``, Monodepth2's own
PyTorch step (tools/bench_monodepth2.py ``--serve``, run by ``--torch_python``, which needs torch and
torchvision). Then, round after round, each contestant in turn runs ``--steps_per_round`` timed steps
while the others idle; the order rotates every round, so slow drifts of a noisy machine fall on every
contestant alike. Speeds are compared on the medians of all timed steps, and on the median of the
per-round ratios.

Without ``--variant`` there is one TensorFlow contestant, "tripled_tf", with only the flags after
``--``. ``--variant=NAME:FLAGS`` (repeatable) adds a contestant with those flags after the common ones
(e.g. ``--variant=fp32:"--nojit_compile"``); leading ``VAR=VALUE`` words set environment variables
of that contestant (``--variant=noonednn:"TF_ENABLE_ONEDNN_OPTS=0"``). ``--height/--width/--batch_size/--threads`` go to every
contestant; Monodepth2 uses ``--monodepth2_layers`` ResNets for depth and pose (18).

Prints a table, then one JSON object as the last line: {"contestants": {name: {images_per_s,
step_s_median, step_s_min, step_s_max, first_step_s, peak_rss_gib, steps, ...}}, "speedup_vs_<ref>":
{name: ref median / name median}, "paired_speedup_vs_<ref>": {name: median over rounds of the same
ratio}, "reference": <ref>, "rounds", "steps_per_round", "machine"}; the reference is "monodepth2"
when it runs, else the first variant.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]


class Contestant:
    """One --serve process and the step times it reported."""

    def __init__(self, name: str, command, log_dir: pathlib.Path, env=None):
        self.name = name
        self.command = list(command)
        self.env = dict(env or {})
        self.log_path = log_dir / f"{name}.log"
        self.step_times: list = []
        self.ready: dict = {}
        self.final: dict = {}
        self.process = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.process = subprocess.Popen(self.command, cwd=REPO, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=open(self.log_path, "w"),
                                        text=True)
        self.ready = self._read()
        if not self.ready.get("ready"):
            self.fail(f"did not become ready: {self.ready}")

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        while line and not line.lstrip().startswith("{"):
            line = self.process.stdout.readline()
        if not line:
            self.fail("ended without an answer")
        return json.loads(line)

    def steps(self, count: int) -> list:
        self.process.stdin.write(f"steps {count}\n")
        self.process.stdin.flush()
        times = self._read()["step_s"]
        self.step_times += times
        return times

    def finish(self) -> dict:
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        self.final = self._read()
        self.process.wait(timeout=120)
        return self.final

    def fail(self, why: str) -> None:
        tail = self.log_path.read_text()[-3000:] if self.log_path.exists() else ""
        raise SystemExit(f"error: contestant {self.name} {why}; its log ({self.log_path}) ends:\n{tail}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()


def parse_variants(specs, common_flags):
    """[(name, flags, env)] from "NAME:[VAR=VALUE ...] FLAGS" strings (leading VAR=VALUE words are
    environment variables of that contestant); one "tripled_tf" contestant when there are none."""
    if not specs:
        return [("tripled_tf", list(common_flags), {})]
    variants = []
    for spec in specs:
        name, _, rest = spec.partition(":")
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise SystemExit(f"error: --variant needs NAME:FLAGS with a plain name, got {spec!r}")
        words, env = shlex.split(rest), {}
        while words and not words[0].startswith("-") and "=" in words[0]:
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        variants.append((name, list(common_flags) + words, env))
    return variants


def summarize(times, batch_size: int) -> dict:
    median = statistics.median(times)
    return {"images_per_s": round(batch_size / median, 4), "step_s_median": round(median, 4),
            "step_s_min": round(min(times), 4), "step_s_max": round(max(times), 4),
            "steps": len(times)}


def run_rounds(contestants, rounds: int, steps_per_round: int) -> list:
    """Starts every contestant (one after the other), runs the interleaved rounds, ends them all.

    Round r starts with contestant r mod n and goes round in order, so each contestant runs first,
    second, ... equally often. Returns, per round, {name: median step seconds of that round}.
    """
    for contestant in contestants:  # one at a time: tracing and compiling do not overlap
        print(f"starting {contestant.name}: {shlex.join(contestant.command)}", flush=True)
        contestant.start()
        print(f"  ready (first step {contestant.ready.get('first_step_s')} s)", flush=True)
    results = []
    for index in range(rounds):
        shift = index % len(contestants)
        medians = {}
        for contestant in contestants[shift:] + contestants[:shift]:
            medians[contestant.name] = statistics.median(contestant.steps(steps_per_round))
        results.append(medians)
        print(f"round {index + 1}/{rounds}: " + ", ".join(
            f"{name} {seconds:.3f} s" for name, seconds in medians.items()), flush=True)
    for contestant in contestants:
        contestant.finish()
    return results


def compare(contestants, rounds: list, batch_size: int):
    """(rows, speed-up, paired speed-up) against the first contestant.

    rows: name -> summary of all its timed steps plus what its final JSON reported; speed-up: the
    reference's median step time / the contestant's; paired: the median over rounds of that ratio
    taken within each round.
    """
    reference = contestants[0].name
    results = {}
    for contestant in contestants:
        row = summarize(contestant.step_times, batch_size)
        row.update(first_step_s=contestant.ready.get("first_step_s"),
                   peak_rss_gib=contestant.final.get("peak_rss_gib"),
                   loss_last=contestant.final.get("loss_last"))
        for key in ("depth_decoder", "depth_layers", "jit_compile", "model", "tensorflow", "torch",
                    "implementation"):
            if key in contestant.final:
                row[key] = contestant.final[key]
        results[contestant.name] = row
    speedup = {name: round(results[reference]["step_s_median"] / row["step_s_median"], 3)
               for name, row in results.items()}
    paired = {name: round(statistics.median(r[reference] / r[name] for r in rounds), 3)
              for name in results}
    return results, speedup, paired


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    common = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--monodepth2_dir", default="", help="Monodepth2 checkout (the PyTorch anchor)")
    parser.add_argument("--torch_python", default=sys.executable, help="Python with torch + torchvision")
    parser.add_argument("--monodepth2_layers", type=int, default=18)
    parser.add_argument("--variant", action="append", default=[], help="NAME:FLAGS (repeatable)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps_per_round", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log_dir", default="", help="contestants' logs (default: a temporary folder)")
    args = parser.parse_args(own)
    if args.rounds < 1 or args.steps_per_round < 1:
        parser.error("--rounds and --steps_per_round must be at least 1")

    log_dir = pathlib.Path(args.log_dir or tempfile.mkdtemp(prefix="bench_compare_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    size = [f"--height={args.height}", f"--width={args.width}", f"--batch_size={args.batch_size}",
            f"--threads={args.threads}", f"--warmup={args.warmup}"]
    contestants = []
    if args.monodepth2_dir:
        contestants.append(Contestant("monodepth2", [
            args.torch_python, str(REPO / "tools" / "bench_monodepth2.py"),
            f"--monodepth2_dir={args.monodepth2_dir}", f"--num_layers={args.monodepth2_layers}",
            "--serve"] + size, log_dir))
    for name, flags, env in parse_variants(args.variant, common):
        contestants.append(Contestant(name, [sys.executable, str(REPO / "tools" / "bench_train.py")]
                                      + flags + size + ["--serve"], log_dir, env))
    if len({c.name for c in contestants}) != len(contestants):
        raise SystemExit("error: contestant names must differ")

    try:
        rounds = run_rounds(contestants, args.rounds, args.steps_per_round)
    finally:
        for contestant in contestants:
            contestant.stop()
    results, speedup, paired = compare(contestants, rounds, args.batch_size)
    reference = contestants[0].name

    print(f"\n{'contestant':<16} {'median s':>9} {'min s':>7} {'max s':>7} {'images/s':>9} "
          f"{'peak RSS GiB':>13} {'x ' + reference:>15} {'paired':>7}")
    for name, row in results.items():
        print(f"{name:<16} {row['step_s_median']:>9.3f} {row['step_s_min']:>7.3f} "
              f"{row['step_s_max']:>7.3f} {row['images_per_s']:>9.3f} "
              f"{row['peak_rss_gib'] or float('nan'):>13.2f} {speedup[name]:>15.3f} {paired[name]:>7.3f}")
    machine = {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "threads": args.threads}
    try:
        model_line = next(line for line in open("/proc/cpuinfo") if line.startswith("model name"))
        machine["cpu"] = model_line.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    print(json.dumps({"contestants": results, f"speedup_vs_{reference}": speedup,
                      f"paired_speedup_vs_{reference}": paired, "reference": reference,
                      "rounds": args.rounds, "steps_per_round": args.steps_per_round,
                      "height": args.height, "width": args.width, "batch_size": args.batch_size,
                      "machine": machine, "log_dir": str(log_dir)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
