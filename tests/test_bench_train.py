"""The pure helpers of tools/bench_train.py (no model is built, no flags are defined)."""
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
