"""tripled_edge.resample: numpy resizing equal to TensorFlow's (bilinear, antialiased lanczos3), the
bilinear weights and the antialiased halving by hand, the pipeline's image preparation.
"""
import numpy as np
import pytest
import tensorflow as tf

from tripled_edge import resample


# ------------------------------------------------------------------------------------------------
# Resampling


def test_bilinear_upsampling_weights_by_hand():
    # 2 -> 4 samples, half-pixel centres: output x samples input (x + 0.5) / 2 - 0.5 =
    # -0.25, 0.25, 0.75, 1.25 -> clamped / interpolated weights.
    weights = resample.resample_matrix(2, 4, "bilinear", antialias=False)
    np.testing.assert_allclose(weights, [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], atol=1e-7)


def test_antialiased_halving_is_the_stretched_triangle():
    # 4 -> 2 with antialias: the triangle is stretched to radius 2; output 0 samples input 0.5, taps
    # at 0, 1, 2 with weights 1 - |j + 0.5 - 1| / 2 = 0.75, 0.75, 0.25 (tap -1 is outside), normalised.
    weights = resample.resample_matrix(4, 2, "bilinear", antialias=True)
    np.testing.assert_allclose(weights[0], np.array([0.75, 0.75, 0.25, 0]) / 1.75, atol=1e-7)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("kernel", ["lanczos3", "bilinear"])
@pytest.mark.parametrize("size", [(64, 192), (24, 40), (61, 250)])
def test_resize_equals_tensorflow(kernel, size):
    image = np.random.default_rng(0).random((47, 157, 3)).astype(np.float32)
    ours = resample.resize(image, size, kernel, antialias=True)
    theirs = tf.image.resize(image, size, method=kernel, antialias=True).numpy()
    # TensorFlow computes the weights in float32: agreement to a few 1e-5 on [0, 1] data.
    np.testing.assert_allclose(ours, theirs, atol=2e-4)


def test_prepare_image_is_the_training_pipelines_resize():
    from tripled_tf.data import frame_files, pipeline

    image = (np.random.default_rng(1).random((90, 300, 3)) * 255).astype(np.uint8)
    config = pipeline.PipelineConfig(height=64, width=192, batch_size=1)
    expected = frame_files.resize_frame(tf.constant(image), config).numpy()
    np.testing.assert_allclose(resample.prepare_image(image, (64, 192)), expected, atol=2e-4)
    with pytest.raises(ValueError, match="uint8"):
        resample.prepare_image(image.astype(np.float32), (64, 192))
    with pytest.raises(ValueError, match="RGB"):
        resample.prepare_image(image[..., :2], (64, 192))
