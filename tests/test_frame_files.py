"""Frame files as the pipeline reads them (tripled_tf.data.frame_files): RGB order, resizing to [0, 1],
a triplet with a frame of another size, the folder an error about every sample names.
"""
import cv2
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf.data import frame_files
from tripled_tf.data.pipeline import PipelineConfig
from tripled_tf.data.records import SIZE_MISMATCH, BadInputError, SkipReport, TripletRecord

KITTI = (0.58, 1.92, 0.5, 0.5)


def _write(path, height, width, bgr=(255, 0, 0)):
    cv2.imwrite(str(path), np.full((height, width, 3), bgr, np.uint8))
    return str(path)


def test_load_frame_is_rgb(tmp_path):
    # OpenCV stores BGR: a pure blue pixel written as (255, 0, 0) reads back as RGB (0, 0, 255).
    frame = frame_files.load_frame(_write(tmp_path / "blue.png", 4, 6))
    assert frame.shape == (4, 6, 3) and frame.dtype == np.uint8
    assert (frame == (0, 0, 255)).all()


@pytest.mark.parametrize("method", [m for m in frame_files.RESIZE_METHODS if m.startswith("tf_")])
def test_resize_frame_keeps_a_constant_and_scales_to_unit_range(method):
    config = PipelineConfig(height=32, width=48, batch_size=1, resize_method=method)
    resized = frame_files.resize_frame(tf.fill([70, 100, 3], tf.constant(51, tf.uint8)), config).numpy()
    assert resized.shape == (32, 48, 3) and resized.dtype == np.float32
    np.testing.assert_allclose(resized, 51 / 255, atol=1e-6)  # every filter's weights sum to one


def test_a_triplet_with_a_frame_of_another_size_names_that_frame(tmp_path):
    record = TripletRecord(prev=_write(tmp_path / "0.png", 32, 48),
                           target=_write(tmp_path / "1.png", 32, 48),
                           next=_write(tmp_path / "2.png", 33, 48), intrinsics=KITTI)
    config = PipelineConfig(height=32, width=48, batch_size=1)
    with pytest.raises(BadInputError, match=r"2\.png.*48x33 but the other frame\(s\).*48x32"):
        frame_files.TripletLoader([record], config, SkipReport())(0)
    # Skipping: an empty placeholder marked not ok; the only sample bad means nothing to train on.
    skipping = PipelineConfig(height=32, width=48, batch_size=1, skip_bad_frames=True)
    other = TripletRecord(prev=record.prev, target=record.target, next=record.prev, intrinsics=KITTI)
    report = SkipReport()
    loader = frame_files.TripletLoader([record, other], skipping, report)
    *frames, ok = loader(0)
    assert not ok and report.by_cause() == {SIZE_MISMATCH: 1}
    *frames, ok = loader(0)  # met again in the next epoch: counted once
    assert len(report) == 1
    *frames, ok = loader(1)
    assert ok and [f.shape for f in frames] == [(32, 48, 3)] * 3
    with pytest.raises(BadInputError, match="none of the 1 samples"):
        frame_files.TripletLoader([record], skipping, SkipReport())(0)


def test_common_folder_is_the_deepest_folder_holding_every_frame(tmp_path):
    a, b = tmp_path / "drive" / "a", tmp_path / "drive" / "b"
    records = [TripletRecord(str(a / "0.png"), str(a / "1.png"), str(a / "2.png"), KITTI),
               TripletRecord(str(b / "0.png"), str(b / "1.png"), str(b / "2.png"), KITTI)]
    assert frame_files.common_folder(records) == str(tmp_path / "drive")
    assert frame_files.common_folder(records[:1]) == str(a)
