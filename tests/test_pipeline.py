"""Tests of tripled_tf.data.pipeline: outputs, colour jitter, flips, erase masks, determinism,
sharding and bad input files. Tiny sizes; the expected values are derived by hand."""
import pathlib

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf import geometry
from tripled_tf.data import augmentation, frame_files, pipeline
from tripled_tf.data.pipeline import PipelineConfig
from tripled_tf.data.records import BadInputError, SkipReport, TripletRecord

H, W = 32, 64
KITTI = (0.58, 1.92, 0.5, 0.5)
IMAGE_KEYS = ("target", "source_prev", "source_next", "target_aug", "source_prev_aug",
              "source_next_aug")


def _batches(dataset, n):
    # list(take) runs the iterator to its end and frees it: a live tf.data iterator with
    # numpy_function work in flight aborts the interpreter at exit.
    return [{k: v.numpy() for k, v in b.items()} for b in dataset.take(n)]


def _sample_index(arrays, target) -> int:
    """Which of ``arrays``' samples a batch's (un-augmented) target frame is."""
    return int(np.argmin(np.abs(arrays["target"] - target).sum(axis=(1, 2, 3))))


def _config(**kwargs):
    values = dict(height=H, width=W, batch_size=2, seed=3, deterministic=True)
    values.update(kwargs)
    return PipelineConfig(**values)


def _arrays(n=4, seed=0, low=0.2, high=0.6):
    """Random frames with values in [low, high] (no clipping under x1.2 brightness), KITTI K,
    depth and poses with distinct entries."""
    rng = np.random.default_rng(seed)
    frames = {k: rng.uniform(low, high, (n, H, W, 3)).astype(np.float32)
              for k in ("target", "source_prev", "source_next")}
    K = np.repeat(geometry.kitti_intrinsics(H, W)[None], n, 0).astype(np.float32)
    pose = np.repeat(np.eye(4, dtype=np.float32)[None], n, 0)
    pose[:, :3, :] += rng.uniform(-0.1, 0.1, (n, 3, 4)).astype(np.float32)
    depth = rng.uniform(1, 10, (n, H, W, 1)).astype(np.float32)
    return {**frames, "K": K, "depth": depth, "pose_prev": pose, "pose_next": pose.copy()}


def _write_frames(folder: pathlib.Path, count: int, height: int, width: int, ext: str = ".png"):
    rng = np.random.default_rng(7)
    paths = []
    for i in range(count):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        path = folder / f"{i:010d}{ext}"
        assert cv2.imwrite(str(path), image)
        paths.append(str(path))
    return paths


def _records(paths):
    return [TripletRecord(paths[i - 1], paths[i], paths[i + 1], KITTI, name=f"frame {i}")
            for i in range(1, len(paths) - 1)]


# ------------------------------------------------------------------------------------------------
# Colour jitter.


def test_jitter_identity_factors():
    image = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    out = augmentation.color_jitter(image, 1.0, 1.0, 1.0, 0.0, order=(3, 2, 1, 0)).numpy()
    np.testing.assert_allclose(out, image, atol=2e-6)


def test_brightness_contrast_saturation_by_hand():
    # Two-colour image: half (0.2, 0.4, 0.6), half (0.8, 0.6, 0.4).
    image = np.zeros((1, 2, 2, 3), np.float32)
    image[0, :, 0] = (0.2, 0.4, 0.6)
    image[0, :, 1] = (0.8, 0.6, 0.4)
    luma_a = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6  # 0.4122
    luma_b = 0.299 * 0.8 + 0.587 * 0.6 + 0.114 * 0.4  # 0.6370
    mean = (luma_a + luma_b) / 2
    bright = augmentation.color_jitter(image, brightness=1.5).numpy()
    np.testing.assert_allclose(bright[0, 0, 0], (0.3, 0.6, 0.9), atol=1e-6)
    np.testing.assert_allclose(bright[0, 0, 1], (1.0, 0.9, 0.6), atol=1e-6)  # 1.2 clamped to 1
    contrast = augmentation.color_jitter(image, contrast=0.5).numpy()
    np.testing.assert_allclose(contrast[0, 0, 0], 0.5 * np.array([0.2, 0.4, 0.6]) + 0.5 * mean, atol=1e-6)
    np.testing.assert_allclose(contrast[0, 1, 1], 0.5 * np.array([0.8, 0.6, 0.4]) + 0.5 * mean, atol=1e-6)
    saturation = augmentation.color_jitter(image, saturation=0.0).numpy()  # -> gray
    np.testing.assert_allclose(saturation[0, 0, 0], [luma_a] * 3, atol=1e-6)
    np.testing.assert_allclose(saturation[0, 0, 1], [luma_b] * 3, atol=1e-6)
    # Order matters: brightness 2 then saturation 0 = gray of the clamped image.
    ordered = augmentation.color_jitter(image, brightness=2.0, saturation=0.0, order=(0, 2, 1, 3)).numpy()
    np.testing.assert_allclose(ordered[0, 0, 1], [0.299 + 0.587 + 0.114 * 0.8] * 3, atol=1e-6)


def test_hue_shift_red_to_green_and_tensor_order():
    red = np.zeros((1, 2, 2, 3), np.float32)
    red[..., 0] = 1.0
    green = augmentation.color_jitter(red, hue=1.0 / 3.0).numpy()
    np.testing.assert_allclose(green[0, 0, 0], (0, 1, 0), atol=1e-5)
    blue = augmentation.color_jitter(red, hue=-1.0 / 3.0, order=tf.constant([3, 1, 0, 2])).numpy()
    np.testing.assert_allclose(blue[0, 0, 0], (0, 0, 1), atol=1e-5)


@pytest.mark.parametrize("graph", [False, True])
def test_tensor_order_applies_the_steps_in_that_order(graph):
    # Brightness 2 and saturation 0 do not commute on (0.8, 0.3, 0.1): brightness first clamps red
    # to 1 before graying (luma 0.299 + 0.587 * 0.6 + 0.114 * 0.2 = 0.674); saturation first grays
    # (luma 0.4267), then doubles (0.8534).
    pixel = np.array([[[[0.8, 0.3, 0.1]]]], np.float32)

    def jitter(order):
        return augmentation.color_jitter(pixel, brightness=2.0, saturation=0.0, order=order)

    if graph:
        jitter = tf.function(jitter)
    brightness_first = jitter(tf.constant([0, 2, 1, 3])).numpy()
    saturation_first = jitter(tf.constant([3, 2, 1, 0])).numpy()
    np.testing.assert_allclose(brightness_first[0, 0, 0], [0.674] * 3, atol=1e-5)
    np.testing.assert_allclose(saturation_first[0, 0, 0], [0.8534] * 3, atol=1e-5)


def test_jitter_rejects_bad_input():
    with pytest.raises(ValueError, match="float32 NHWC"):
        augmentation.color_jitter(np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="NHWC"):
        augmentation.color_jitter(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="permutation"):
        augmentation.color_jitter(np.zeros((1, 4, 4, 3), np.float32), order=(0, 0, 1, 2))


def _brightness_only(per_frame):
    return _config(batch_size=4, jitter_prob=1.0, flip_prob=0.0, contrast=0.0, saturation=0.0,
                   hue=0.0, brightness=0.2, jitter_per_frame=per_frame)


def test_per_sample_vs_per_frame_draws():
    arrays = _arrays()
    for per_frame in (False, True):
        (batch,) = _batches(pipeline.arrays_dataset(arrays, _brightness_only(per_frame)), 1)
        # Brightness-only jitter without clipping multiplies each frame by one factor in [0.8, 1.2].
        ratios = np.stack([batch[k + "_aug"] / batch[k] for k in ("target", "source_prev", "source_next")])
        factor = ratios.reshape(3, 4, -1)  # [frame, sample, pixels]
        np.testing.assert_allclose(factor, np.broadcast_to(factor[..., :1], factor.shape), rtol=1e-5)
        factor = factor[..., 0]
        assert np.all((factor > 0.8 - 1e-6) & (factor < 1.2 + 1e-6))
        spread = np.abs(factor - factor[:1]).max(axis=0)  # across the three frames of a sample
        if per_frame:
            assert np.all(spread > 1e-4)
        else:
            assert np.all(spread < 1e-6)


# ------------------------------------------------------------------------------------------------
# Outputs, flips.


def test_arrays_dataset_keys_shapes_and_unaugmented_copies():
    arrays = _arrays()
    config = _config(jitter_prob=1.0, flip_prob=0.0)
    (batch,) = _batches(pipeline.arrays_dataset(arrays, config), 1)
    for key in IMAGE_KEYS:
        assert batch[key].shape == (2, H, W, 3) and batch[key].dtype == np.float32
        assert batch[key].min() >= 0.0 and batch[key].max() <= 1.0
    assert batch["K"].shape == (2, 4, 4) and batch["erase_mask"].shape == (2, H, W, 1)
    assert batch["depth"].shape == (2, H, W, 1) and batch["pose_prev"].shape == (2, 4, 4)
    # Shuffled: find each sample by its target; the plain copies are the input frames untouched.
    for b in range(2):
        index = _sample_index(arrays, batch["target"][b])
        for key in ("target", "source_prev", "source_next", "depth", "K"):
            np.testing.assert_array_equal(batch[key][b], arrays[key][index])
        assert not np.allclose(batch["target_aug"][b], batch["target"][b], atol=1e-3)


def test_augment_off_is_plain():
    arrays = _arrays()
    config = _config(augment=False, shuffle=False, repeat=False, batch_size=4)
    (batch,) = _batches(pipeline.arrays_dataset(arrays, config), 1)
    for key in ("target", "source_prev", "source_next"):
        np.testing.assert_array_equal(batch[key], arrays[key])
        np.testing.assert_array_equal(batch[key + "_aug"], arrays[key])
    np.testing.assert_array_equal(batch["K"], arrays["K"])


def test_flip_images_intrinsics_depth_and_poses():
    arrays = _arrays()
    config = _config(flip_prob=1.0, jitter_prob=0.0, shuffle=False, repeat=False, batch_size=4)
    (batch,) = _batches(pipeline.arrays_dataset(arrays, config), 1)
    for key in ("target", "source_prev", "source_next", "target_aug", "depth"):
        source = arrays[key.replace("_aug", "")]
        np.testing.assert_array_equal(batch[key], source[:, :, ::-1])
    expected_K = arrays["K"].copy()
    expected_K[:, 0, 2] = W - 1 - arrays["K"][:, 0, 2]  # 64 - 1 - 32 = 31
    np.testing.assert_allclose(batch["K"], expected_K)
    assert batch["K"][0, 0, 2] == 31.0
    F = np.diag([-1.0, 1, 1, 1]).astype(np.float32)
    np.testing.assert_allclose(batch["pose_prev"], F @ arrays["pose_prev"] @ F, atol=1e-7)


def test_flip_keeping_intrinsics_as_the_references_do():
    arrays = _arrays()
    config = _config(flip_prob=1.0, jitter_prob=0.0, shuffle=False, repeat=False, batch_size=4,
                     flip_keeps_intrinsics=True)
    (batch,) = _batches(pipeline.arrays_dataset(arrays, config), 1)
    np.testing.assert_array_equal(batch["target"], arrays["target"][:, :, ::-1])
    np.testing.assert_array_equal(batch["K"], arrays["K"])  # cx stays 32, not 64 - 1 - 32
    F = np.diag([-1.0, 1, 1, 1]).astype(np.float32)
    np.testing.assert_allclose(batch["pose_prev"], F @ arrays["pose_prev"] @ F, atol=1e-7)


def test_flipped_warp_reproduces_flipped_target():
    """Warping the flipped source with flipped depth, mirrored pose and flipped K gives the mirror
    image of the unflipped warp (exactly: u -> W - 1 - u), which approximates the flipped target."""
    from tripled_tf.data.synthetic import make_triplets
    arrays = make_triplets(2, H, W, seed=0)
    config = _config(flip_prob=1.0, jitter_prob=0.0, shuffle=False, repeat=False)
    (batch,) = _batches(pipeline.arrays_dataset(arrays, config), 1)

    def synthesize(source, depth, T, K):
        return geometry.warp(source, depth, T, K, geometry.inverse_intrinsics(K)).numpy()

    plain = synthesize(arrays["source_next"], arrays["depth"], arrays["pose_next"], arrays["K"])
    flipped = synthesize(batch["source_next"], batch["depth"], batch["pose_next"], batch["K"])
    np.testing.assert_allclose(flipped, plain[:, :, ::-1], atol=2e-4)
    # Both reconstruct their target about equally well (static scene, exact GT).
    plain_error = np.abs(plain - arrays["target"]).mean()
    flipped_error = np.abs(flipped - batch["target"]).mean()
    assert flipped_error < 0.05 and abs(flipped_error - plain_error) < 1e-4
    # A wrong pose convention (unmirrored T) reconstructs visibly worse.
    wrong = synthesize(batch["source_next"], batch["depth"], arrays["pose_next"], batch["K"])
    assert np.abs(wrong - batch["target"]).mean() > flipped_error


def test_flip_helpers_validate():
    with pytest.raises(ValueError, match=r"\[B, 4, 4\]"):
        augmentation.flip_intrinsics(np.eye(3, dtype=np.float32)[None], W)
    with pytest.raises(ValueError, match=r"\[B, 4, 4\]"):
        augmentation.flip_pose(np.eye(4, dtype=np.float32))


# ------------------------------------------------------------------------------------------------
# Erase mask.


def test_erase_mask_single_hole_and_bounds():
    for s in range(10):
        mask = augmentation.erase_mask(H, W, count=1, size=16, seed=tf.constant([s, 0], tf.int64)).numpy()
        assert mask.shape == (H, W, 1)
        rows, cols = np.nonzero(mask[..., 0] == 0)
        assert len(rows) == 256
        assert rows.max() - rows.min() == 15 and cols.max() - cols.min() == 15
        # Top-left row in {0..H-18}, column in {0..W-18}.
        assert rows.min() <= H - 18 and cols.min() <= W - 18


def test_erase_mask_default_counts_and_per_sample():
    masks = [augmentation.erase_mask(64, 96, seed=tf.constant([s, 1], tf.int64)).numpy() for s in range(5)]
    for mask in masks:
        assert set(np.unique(mask)) <= {0.0, 1.0}
        zeros = int((mask == 0).sum())
        assert 256 <= zeros <= 16 * 256
        # No hole reaches the last two rows / columns (top-left <= size - 18).
        assert mask[-2:].min() == 1.0 and mask[:, -2:].min() == 1.0
    assert not np.array_equal(masks[0], masks[1])
    (batch,) = _batches(pipeline.arrays_dataset(_arrays(), _config()), 1)
    assert not np.array_equal(batch["erase_mask"][0], batch["erase_mask"][1])
    with pytest.raises(ValueError, match="at least 18x18"):
        augmentation.erase_mask(16, 64)


# ------------------------------------------------------------------------------------------------
# Determinism, sharding, config.


def test_deterministic_iterations_identical():
    dataset = pipeline.arrays_dataset(_arrays(n=6), _config())
    first, second = _batches(dataset, 4), _batches(dataset, 4)
    for a, b in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # Every epoch is shuffled anew (6 samples, batches of 2: batches 0-2 are epoch 0, 3-5 epoch 1).
    arrays = _arrays(n=6)
    epochs = _batches(pipeline.arrays_dataset(arrays, _config(augment=False)), 6)
    order = [[_sample_index(arrays, t) for t in b["target"]] for b in epochs]
    assert sorted(sum(order[:3], [])) == sorted(sum(order[3:], [])) == list(range(6))
    assert sum(order[:3], []) != sum(order[3:], [])
    other = _batches(pipeline.arrays_dataset(_arrays(n=6), _config(seed=4)), 4)
    assert any(not np.array_equal(a["target_aug"], b["target_aug"]) for a, b in zip(first, other))


def test_sample_order_follows_the_config_seed_alone():
    # A global seed (the trainer sets one from --seed) must neither change the order nor break the
    # build: TensorFlow's get_seed compared a tensor op seed with 0 in Python under global seed 0.
    arrays = _arrays(n=6)

    def order():
        batches = _batches(pipeline.arrays_dataset(arrays, _config(augment=False)), 6)
        return [_sample_index(arrays, t) for b in batches for t in b["target"]]

    unseeded = order()
    try:
        for global_seed in (0, 7):
            tf.random.set_seed(global_seed)
            assert order() == unseeded, global_seed
    finally:
        tf.random.set_seed(None)


def test_sharding_gives_disjoint_halves():
    n = 8
    arrays = _arrays(n=n)
    arrays["target"] = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None] / 10,
                                       (n, H, W, 3)).copy()
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        config = _config(batch_size=4, augment=False, repeat=False)
        batches = _batches(pipeline.arrays_dataset(arrays, config, input_context=context), 10)
        assert all(b["target"].shape[0] == 2 for b in batches)  # per-replica batch 4 / 2
        seen.append({int(round(v * 10)) for b in batches for v in b["target"][:, 0, 0, 0]})
    assert len(seen[0]) == len(seen[1]) == n // 2
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(n))


def test_config_and_arrays_validation():
    with pytest.raises(ValueError, match="needs a seed"):
        PipelineConfig(H, W, 2, deterministic=True)
    with pytest.raises(ValueError, match="resize_method"):
        PipelineConfig(H, W, 2, resize_method="pil")
    with pytest.raises(ValueError, match="jitter_prob"):
        PipelineConfig(H, W, 2, jitter_prob=1.5)
    arrays = _arrays()
    with pytest.raises(ValueError, match="dtype uint8"):
        pipeline.arrays_dataset({**arrays, "target": (arrays["target"] * 255).astype(np.uint8)}, _config())
    with pytest.raises(ValueError, match="axis 1"):
        pipeline.arrays_dataset({**arrays, "target": np.zeros((4, 3, H, W), np.float32)}, _config())
    with pytest.raises(ValueError, match="missing"):
        pipeline.arrays_dataset({k: v for k, v in arrays.items() if k != "K"}, _config())


# ------------------------------------------------------------------------------------------------
# File sources.


def test_records_dataset_resizes_and_scales_K(tmp_path):
    paths = _write_frames(tmp_path, 4, 2 * H, 2 * W)
    config = _config(jitter_prob=1.0, flip_prob=0.0, shuffle=False, repeat=False,
                     resize_method="cv2_area")
    (batch,) = _batches(pipeline.records_dataset(_records(paths), config), 1)
    for key in IMAGE_KEYS:
        assert batch[key].shape == (2, H, W, 3) and batch[key].dtype == np.float32
    np.testing.assert_allclose(batch["K"][0], [[0.58 * W, 0, 0.5 * W, 0], [0, 1.92 * H, 0.5 * H, 0],
                                               [0, 0, 1, 0], [0, 0, 0, 1]], rtol=1e-6)
    # A 2x area downscale is the 2x2 block mean (cv2 rounds to uint8: tolerance 1/255).
    for b in range(2):  # unshuffled: sample b is the triplet of frames b, b + 1, b + 2
        for key, offset in (("source_prev", 0), ("target", 1), ("source_next", 2)):
            frame = cv2.cvtColor(cv2.imread(paths[b + offset]), cv2.COLOR_BGR2RGB) / 255.0
            expected = frame.reshape(H, 2, W, 2, 3).mean(axis=(1, 3))
            np.testing.assert_allclose(batch[key][b], expected, atol=1.01 / 255)
    assert np.abs(batch["target_aug"] - batch["target"]).max() > 1e-3


def test_records_tf_resize_methods_agree(tmp_path):
    paths = _write_frames(tmp_path, 3, 2 * H, 2 * W)
    results = {}
    for method in ("cv2_area", "tf_area", "tf_lanczos3"):
        config = _config(batch_size=1, augment=False, shuffle=False, repeat=False, resize_method=method)
        results[method] = _batches(pipeline.records_dataset(_records(paths), config), 1)[0]["target"]
    # Exact 2x downscale: both area filters give the 2x2 block mean (cv2 rounded to uint8).
    np.testing.assert_allclose(results["cv2_area"], results["tf_area"], atol=1.01 / 255)
    # Lanczos is sharper than the box filter but stays close on average.
    assert np.abs(results["tf_lanczos3"] - results["tf_area"]).mean() < 0.1


def test_load_resized_frame_matches_the_pipeline(tmp_path):
    # Evaluation loads held-out frames one by one: they must be resized exactly as in training.
    paths = _write_frames(tmp_path, 3, 2 * H + 6, 2 * W + 10)
    for method in ("tf_lanczos3", "cv2_area"):
        config = _config(batch_size=1, augment=False, shuffle=False, repeat=False, resize_method=method)
        (batch,) = _batches(pipeline.records_dataset(_records(paths), config), 1)
        np.testing.assert_allclose(frame_files.load_resized_frame(paths[1], config), batch["target"][0],
                                   atol=1e-6)


@pytest.mark.parametrize("problem", ["corrupt_png", "truncated_png", "truncated_jpeg", "not_an_image"])
def test_bad_file_raises_naming_it_or_is_skipped(tmp_path, problem):
    ext = ".jpg" if problem == "truncated_jpeg" else ".png"
    paths = _write_frames(tmp_path, 5, H, W, ext)
    bad = pathlib.Path(paths[2])
    data = bad.read_bytes()
    if problem == "corrupt_png":  # valid signature and trailer, garbage image data
        data = data[:40] + bytes(len(data) - 52) + data[-12:]
    elif problem.startswith("truncated"):
        data = data[:len(data) // 2]
    else:
        data = b"hello, not an image at all"
    bad.write_bytes(data)
    records = _records(paths)  # frames 1, 2, 3 as targets: all three samples contain frame 2
    config = _config(batch_size=1, augment=False, shuffle=False, repeat=False)
    with pytest.raises(tf.errors.OpError, match=bad.name):
        _batches(pipeline.records_dataset(records, config), 3)
    extra = [TripletRecord(paths[0], paths[1], paths[0], KITTI, name="good")]
    report = SkipReport()
    dataset = pipeline.records_dataset(records + extra, PipelineConfig(
        H, W, 1, seed=0, deterministic=True, shuffle=False, repeat=False, skip_bad_frames=True),
        skip_report=report)
    assert len(_batches(dataset, 10)) == 1
    assert len(report) == 3 and dataset.skip_report is report
    assert bad.name in report.skipped[0]


def test_every_sample_bad_stops_instead_of_filtering_forever(tmp_path):
    paths = _write_frames(tmp_path, 5, H, W)
    for path in paths:
        pathlib.Path(path).write_bytes(b"")  # zero-byte frames: nothing decodes
    config = _config(batch_size=1, skip_bad_frames=True)  # repeated: the filter would spin forever
    dataset = pipeline.records_dataset(_records(paths), config)
    with pytest.raises(tf.errors.OpError, match=r"none of the 3 samples can be used.*skipped 3"):
        _batches(dataset, 1)
    assert dataset.skip_report.by_cause() == {"unreadable file": 3}


def test_skips_while_decoding_are_counted_once_by_cause(tmp_path):
    paths = _write_frames(tmp_path, 6, H, W)
    pathlib.Path(paths[3]).write_bytes(pathlib.Path(paths[3]).read_bytes()[:100])  # in 3 of 4 samples
    report = SkipReport()
    config = _config(batch_size=1, skip_bad_frames=True)
    for _ in range(2):  # two datasets over the same records (training, previews) and several epochs
        assert len(_batches(pipeline.records_dataset(_records(paths), config, skip_report=report), 3)) == 3
    assert len(report) == 3 and report.by_cause() == {"unreadable file": 3}
    assert report.summary().startswith("skipped 3 [3 unreadable file]: ")
    assert report.as_dict()["total"] == 3


def test_a_frame_of_another_size_in_a_triplet_is_refused_or_skipped(tmp_path):
    paths = _write_frames(tmp_path, 5, H, W)
    odd = pathlib.Path(paths[2])
    cv2.imwrite(str(odd), np.zeros((H + 2, W, 3), np.uint8))  # resized to the training size silently before
    records = _records(paths)  # samples 1, 2, 3 hold frame 2 as prev, target, next
    config = _config(batch_size=1, shuffle=False, repeat=False)
    with pytest.raises(tf.errors.OpError, match=rf"{odd.name}: frame is {W}x{H + 2} but the other frame\(s\) "
                                                rf"of its triplet are {W}x{H}"):
        _batches(pipeline.records_dataset(records, config), 3)
    extra = [TripletRecord(paths[0], paths[1], paths[0], KITTI, name="good")]
    config = _config(batch_size=1, shuffle=False, repeat=False, skip_bad_frames=True)
    dataset = pipeline.records_dataset(records + extra, config)
    assert len(_batches(dataset, 10)) == 1
    assert dataset.skip_report.by_cause() == {"frame size mismatch": 3}
    assert all(odd.name in message for message in dataset.skip_report.skipped)


def test_missing_frame(tmp_path):
    paths = _write_frames(tmp_path, 4, H, W)
    missing = str(tmp_path / "0000000099.png")
    records = _records(paths) + [TripletRecord(paths[0], missing, paths[1], KITTI, name="gap")]
    config = _config(batch_size=1, shuffle=False, repeat=False)
    with pytest.raises(BadInputError, match="0000000099.png: frame file does not exist"):
        pipeline.records_dataset(records, config)
    config = _config(batch_size=1, shuffle=False, repeat=False, skip_bad_frames=True)
    dataset = pipeline.records_dataset(records, config)
    assert len(_batches(dataset, 10)) == 2
    assert len(dataset.skip_report) == 1 and "gap" in dataset.skip_report.skipped[0]


def test_shared_kitti_snippet(shared_data):
    folder = shared_data / "kitti_raw" / "2011_09_26" / "2011_09_26_drive_0000_sync" / "image_02" / "data"
    paths = [str(folder / f"{i:010d}.png") for i in range(4)]
    config = _config(height=48, width=160, batch_size=2, flip_prob=1.0, jitter_prob=0.0,
                     shuffle=False, repeat=False, resize_method="cv2_area")
    (batch,) = _batches(pipeline.records_dataset(_records(paths), config), 1)
    assert batch["target"].shape == (2, 48, 160, 3)
    # Flipped: cx' = 160 - 1 - 80; fx, fy, cy from the normalised KITTI K.
    np.testing.assert_allclose(batch["K"][0, :3, :3], [[0.58 * 160, 0, 79], [0, 1.92 * 48, 24], [0, 0, 1]],
                               rtol=1e-6)
    native = cv2.cvtColor(cv2.imread(paths[1]), cv2.COLOR_BGR2RGB)
    assert native.shape == (375, 1242, 3)
    expected = cv2.resize(native, (160, 48), interpolation=cv2.INTER_AREA)[:, ::-1] / 255.0
    np.testing.assert_allclose(batch["target"][0], expected, atol=1e-6)
