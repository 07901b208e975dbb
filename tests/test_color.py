"""Tests for tripled_tf.color against published CIE Lab values and first principles."""
import numpy as np
import pytest
import tensorflow as tf

from tripled_tf import color

# Published sRGB (D65) -> CIE Lab values (Bruce Lindbloom's calculator / CIE colour tables).
# Our matrix and white point are the 6-digit reference constants, which differ from the published
# computation by < 0.005 in L, a, b; tolerances leave margin for float32.
PUBLISHED_LAB = [
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20)),
    ((0.0, 1.0, 0.0), (87.73, -86.18, 83.18)),
    ((0.0, 0.0, 1.0), (32.30, 79.19, -107.86)),
]


@pytest.mark.parametrize("rgb, lab", PUBLISHED_LAB)
def test_published_lab_values(rgb, lab):
    got = color.rgb_to_lab(np.array([rgb], np.float32)).numpy()[0]
    np.testing.assert_allclose(got, lab, atol=0.02)


def test_mid_gray():
    # sRGB 0.5 linearises to ((0.5 + 0.055) / 1.055)^2.4 = 0.21404; the matrix rows sum to
    # (0.950456, 1.0, 1.088754) ~ the white point, so Y = 0.21404 and
    # L = 116 * 0.21404^(1/3) - 16 = 53.389 (published value for linear luminance 0.2140);
    # a and b are zero up to the 1e-5 mismatch between matrix row sums and white point (< 0.003).
    lab = color.rgb_to_lab(tf.fill([1, 2, 2, 3], 0.5)).numpy()
    np.testing.assert_allclose(lab[..., 0], 53.389, atol=0.01)
    np.testing.assert_allclose(lab[..., 1:], 0.0, atol=0.01)


def test_dark_gray_uses_linear_branches():
    # sRGB 0.02 < 0.04045 -> linear 0.02 / 12.92 = 0.00154799 = Y; Y < 0.008856 -> f = 7.787 Y + 16/116
    # -> L = 116 * 7.787 * 0.00154799 = 1.398286 (both linear branches, no powers involved).
    lab = color.rgb_to_lab(np.full([3], 0.02, np.float32)).numpy()
    np.testing.assert_allclose(lab[0], 116 * 7.787 * 0.02 / 12.92, rtol=1e-5)


def test_any_leading_shape_and_numpy_or_tensor():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(size=(2, 4, 5, 3)).astype(np.float32)
    from_numpy = color.rgb_to_lab(rgb).numpy()
    from_tensor = color.rgb_to_lab(tf.constant(rgb)).numpy()
    flat = color.rgb_to_lab(rgb.reshape(-1, 3)).numpy().reshape(2, 4, 5, 3)
    assert from_numpy.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(from_numpy, from_tensor)
    np.testing.assert_allclose(from_numpy, flat, atol=1e-5)


def test_round_trip_random_colours():
    rng = np.random.default_rng(1)
    rgb = rng.uniform(size=(4096, 3)).astype(np.float32)
    rgb[:8] = [[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1],
               [0.04045, 0.04045, 0.04045], [0.01, 0.5, 0.99], [0.0921, 0.0921, 0.0921]]
    back = color.lab_to_rgb(color.rgb_to_lab(rgb)).numpy()
    np.testing.assert_allclose(back, rgb, atol=1e-4)


def test_lab_to_rgb_clips_out_of_gamut():
    # L = 100 with a huge chroma is far outside sRGB; L = 0 with negative chroma too.
    rgb = color.lab_to_rgb([[100.0, 120.0, -120.0], [0.0, -50.0, 50.0]]).numpy()
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0


def test_luma_of_pure_colours_is_the_coefficients():
    eye = np.eye(3, dtype=np.float32)
    gray = color.rgb_to_gray(eye).numpy()
    assert gray.shape == (3, 1)
    np.testing.assert_allclose(gray[:, 0], [0.299, 0.587, 0.114], atol=1e-7)
    np.testing.assert_allclose(color.rgb_to_gray(np.ones([1, 2, 2, 3], np.float32)).numpy(), 1.0,
                               atol=1e-6)


def test_lab_lightness_is_l_over_100():
    lightness = color.lab_lightness(np.array([[1, 1, 1], [0, 0, 0], [1, 0, 0]], np.float32)).numpy()
    assert lightness.shape == (3, 1)
    np.testing.assert_allclose(lightness[:, 0], [1.0, 0.0, 0.5324], atol=2e-4)


def test_normalize_and_denormalize_lab():
    lab = np.array([[50.0, 0.0, 0.0], [100.0, 110.0, -55.0], [0.0, -110.0, 22.0]], np.float32)
    l_norm, ab_norm = color.normalize_lab(lab)
    # L_n = (L - 50) / 50; ab_n = ab / 110.
    np.testing.assert_allclose(l_norm.numpy()[:, 0], [0.0, 1.0, -1.0], atol=1e-7)
    np.testing.assert_allclose(ab_norm.numpy(), [[0, 0], [1, -0.5], [-1, 0.2]], atol=1e-7)
    assert l_norm.shape == (3, 1) and ab_norm.shape == (3, 2)
    np.testing.assert_allclose(color.denormalize_lab(l_norm, ab_norm).numpy(), lab, atol=1e-5)


def _gradient_grid():
    # sRGB value whose linear value is exactly the Lab threshold t = 0.008856: a gray of this value has
    # Y / Y_n = 0.008856 (matrix row 2 sums to 1), i.e. f(t) sits on its piecewise threshold.
    c_t = 1.055 * 0.008856 ** (1 / 2.4) - 0.055  # = 0.0922091
    values = [0.0, 1e-7, 0.04045 - 1e-6, 0.04045, 0.04045 + 1e-6, c_t, c_t + 1e-6, 0.5, 1.0 - 1e-6,
              1.0, -0.01, 1.01]
    grid = np.stack(np.meshgrid(values, values, values, indexing="ij"), axis=-1).reshape(-1, 3)
    # X / X_n and Z / Z_n on their threshold too (single-channel colours solve for the linear value).
    extra = []
    for channel_row, white in ((0, 0.95047), (2, 1.08883)):
        for channel in range(3):
            linear = 0.008856 * white / color.SRGB_TO_XYZ[channel_row, channel]
            if linear <= 1.0:
                rgb = [0.0, 0.0, 0.0]
                rgb[channel] = 1.055 * linear ** (1 / 2.4) - 0.055
                extra.append(rgb)
    return np.concatenate([grid, np.array(extra)]).astype(np.float32)


def test_gradients_finite_everywhere_including_thresholds():
    rgb = tf.constant(_gradient_grid())
    for channel in range(3):
        with tf.GradientTape() as tape:
            tape.watch(rgb)
            lab = color.rgb_to_lab(rgb)
            out = tf.reduce_sum(lab[..., channel])
        grad = tape.gradient(out, rgb).numpy()
        assert np.all(np.isfinite(lab.numpy()))
        assert np.all(np.isfinite(grad)), f"non-finite gradient for Lab channel {channel}"
    with tf.GradientTape() as tape:
        tape.watch(rgb)
        target = tf.reduce_sum(color.lab_lightness(rgb)) + tf.reduce_sum(color.rgb_to_gray(rgb))
    assert np.all(np.isfinite(tape.gradient(target, rgb).numpy()))


def test_inverse_gradients_finite():
    lab = color.rgb_to_lab(_gradient_grid())
    lab = tf.concat([lab, tf.constant([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [8.0, 0.0, 0.0]])], 0)
    with tf.GradientTape() as tape:
        tape.watch(lab)
        out = tf.reduce_sum(color.lab_to_rgb(lab))
    assert np.all(np.isfinite(tape.gradient(out, lab).numpy()))


def test_lightness_gradient_matches_analytic_value():
    # For a gray g above both thresholds, L = 116 * lin(g)^(1/3) - 16 with
    # lin(g) = ((g + 0.055) / 1.055)^2.4, so dL/dg summed over the three channels is
    # 116/3 * lin^(-2/3) * 2.4 / 1.055 * ((g + 0.055) / 1.055)^1.4.
    g = 0.5
    lin = ((g + 0.055) / 1.055) ** 2.4
    expected = 116 / 3 * lin ** (-2 / 3) * 2.4 / 1.055 * ((g + 0.055) / 1.055) ** 1.4
    rgb = tf.fill([1, 3], g)
    with tf.GradientTape() as tape:
        tape.watch(rgb)
        lightness = color.rgb_to_lab(rgb)[0, 0]
    np.testing.assert_allclose(np.sum(tape.gradient(lightness, rgb).numpy()), expected, rtol=1e-4)


def test_works_in_tf_function():
    fn = tf.function(color.rgb_to_lab, input_signature=[tf.TensorSpec([None, None, None, 3])])
    lab = fn(tf.ones([1, 2, 3, 3])).numpy()
    np.testing.assert_allclose(lab[..., 0], 100.0, atol=1e-3)


def test_rejects_uint8():
    with pytest.raises(ValueError, match="float"):
        color.rgb_to_lab(np.zeros([1, 4, 4, 3], np.uint8))
    with pytest.raises(ValueError, match="float"):
        color.rgb_to_gray(tf.zeros([1, 4, 4, 3], tf.uint8))
    with pytest.raises(ValueError, match="float"):
        color.lab_lightness(np.zeros([3], np.int32))


def test_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        color.rgb_to_lab(np.zeros([1, 3, 4, 4], np.float32))  # NCHW
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        color.normalize_lab(np.zeros([5, 2], np.float32))
    with pytest.raises(ValueError, match="leading shape"):
        color.denormalize_lab(np.zeros([4, 1], np.float32), np.zeros([5, 2], np.float32))
