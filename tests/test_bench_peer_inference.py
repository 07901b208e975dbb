"""tools/bench_peer_inference.py's pure helpers (the bench itself needs torch and a Monodepth2 checkout)."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tools import bench_peer_inference as bench

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_the_tool_and_its_runtime_import_no_tensorflow():
    # It runs in a torch venv without TensorFlow: neither it nor tripled_edge.runtime may pull in
    # TensorFlow or tripled_tf (torch is imported in main() only).
    code = ("import sys, tools.bench_peer_inference, tripled_edge.runtime; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'tripled_tf', 'torch'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_schedule_rotates_the_order_every_round():
    assert bench.schedule(["a", "b", "c"], 4) == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    # Over n rounds each contestant runs first, second and last once.
    rounds = bench.schedule(["a", "b", "c"], 3)
    for position in range(3):
        assert sorted(order[position] for order in rounds) == ["a", "b", "c"]


def test_percentile_interpolates_like_numpy():
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 7.0]
    for q in (0, 10, 50, 90, 100):
        assert bench.percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert bench.percentile([2.5], 90) == 2.5
    with pytest.raises(ValueError):
        bench.percentile([], 50)


def test_summarize_reports_median_p90_min_max_and_count():
    # 1..10 s: median (5 + 6) / 2 = 5.5; p90 at rank 0.9 * 9 = 8.1 -> 9 + 0.1 * (10 - 9) = 9.1.
    assert bench.summarize([float(v) for v in range(10, 0, -1)]) == {
        "median_s": 5.5, "p90_s": 9.1, "min_s": 1.0, "max_s": 10.0, "calls": 10}
    with pytest.raises(ValueError):
        bench.summarize([])


def test_speedups_over_all_calls_and_paired_by_round():
    times = {"monodepth2": [0.10, 0.12, 0.30], "tflite_fp32": [0.05, 0.06, 0.10]}
    rounds = [{"monodepth2": 0.10, "tflite_fp32": 0.05}, {"monodepth2": 0.12, "tflite_fp32": 0.06},
              {"monodepth2": 0.30, "tflite_fp32": 0.10}]
    speedup, paired = bench.speedups(times, rounds)
    assert speedup == {"tflite_fp32": 2.0}          # 0.12 / 0.06
    assert paired == {"tflite_fp32": 2.0}           # median of 2.0, 2.0, 3.0
    assert "monodepth2" not in speedup


def test_sigma_of_disparity_inverts_the_export():
    sigma = np.array([0.0, 0.25, 1.0])
    min_depth, max_depth = 0.1, 100.0
    disparity = 1 / max_depth + (1 / min_depth - 1 / max_depth) * sigma
    np.testing.assert_allclose(bench.sigma_of_disparity(disparity, min_depth, max_depth), sigma,
                               atol=1e-12)


def test_agreement_is_relative_to_the_reference():
    reference = np.array([[0.5, 0.25], [0.1, 0.8]])
    result = bench.agreement(reference * np.array([[1.0, 1.02], [0.99, 1.0]]), reference)
    assert result["max_rel_diff"] == pytest.approx(0.02)
    assert result["median_rel_diff"] == pytest.approx(0.005)  # median of 0, 0.02, 0.01, 0
    assert result["max_abs_diff"] == pytest.approx(0.005)
    with pytest.raises(ValueError, match="shapes differ"):
        bench.agreement(reference[:1], reference)


def test_contestant_names_from_the_quantisation_or_the_file():
    assert bench.contestant_names(["none", "int8"], ["a/x.tflite", "b/y.tflite"]) == [
        "tflite_fp32", "tflite_int8"]
    assert bench.contestant_names(["int8", "int8"], ["md2 int8.tflite", "other.tflite"]) == [
        "tflite_md2_int8", "tflite_other"]
    with pytest.raises(ValueError):
        bench.contestant_names(["none", "none"], ["a/x.tflite", "b/x.tflite"])


def test_resnet_depth_from_the_encoder_keys():
    def keys(blocks, bottleneck):
        names = [f"encoder.layer3.{i}.conv1.weight" for i in range(blocks)]
        return names + (["encoder.layer1.0.conv3.weight"] if bottleneck else [])

    assert bench.resnet_depth(keys(2, False)) == 18
    assert bench.resnet_depth(keys(6, False)) == 34
    assert bench.resnet_depth(keys(6, True)) == 50
    assert bench.resnet_depth(keys(23, True)) == 101
    with pytest.raises(ValueError):
        bench.resnet_depth(keys(3, False))


def test_cpu_model_reads_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\nflags\t: fpu avx avx2 "
                       "avx512f avx512_vnni\n")
    assert bench.cpu_model(str(cpuinfo)) == "Some CPU @ 2.0GHz"
    assert bench.cpu_features(str(cpuinfo)) == ["avx2", "avx512f", "avx512_vnni"]
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n")
    assert bench.cpu_features(str(arm)) == ["asimddp", "i8mm"]
    assert bench.cpu_features(str(tmp_path / "missing")) == []
    assert bench.cpu_model(str(tmp_path / "missing"))  # falls back to platform's string
