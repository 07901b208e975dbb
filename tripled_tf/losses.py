"""Self-supervised losses: Charbonnier, SSIM, photometric error, minimum reprojection with identity
auto-masking, edge-aware smoothness and the feature-metric loss (docs/method.md §3).

Per-pixel functions return maps (``[B, H, W, 1]`` or ``[B, H, W, C]``); reductions to scalars are done by
the ``*_loss`` functions, which average over batch and pixels as the references do.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from tripled_tf import checks

SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


def charbonnier(x, y, eps: float = 1e-3) -> tf.Tensor:
    """Elementwise robust L1 ρ(x, y) = sqrt((x − y)² + eps²); same shape as the inputs."""
    x = checks.as_float_tensor(x, "x")
    y = checks.as_float_tensor(y, "y")
    return tf.sqrt(tf.square(x - y) + eps * eps)


def box_mean_3x3(x: tf.Tensor) -> tf.Tensor:
    """Mean over 3x3 windows without padding: [B, H, W, C] -> [B, H - 2, W - 2, C] (average pooling).

    Two separable depthwise convolutions with weights 1/3 (rows, then columns): TensorFlow's CPU
    AvgPool kernel and its gradient are slower (ten SSIM forward + backward passes at 640x192, batch 4:
    1.65 s with AvgPool, 1.36 s with this). Under XLA on CPU the opposite holds (XLA's CPU depthwise
    convolution is ~9x slower than its reduce-window), which is one more reason the train step is not
    compiled on CPU.
    """
    channels = x.shape[-1]
    rows = tf.fill([3, 1, channels, 1], 1.0 / 3.0)
    columns = tf.fill([1, 3, channels, 1], 1.0 / 3.0)
    x = tf.nn.depthwise_conv2d(x, rows, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(x, columns, [1, 1, 1, 1], "VALID")


class SSIMStatistics(NamedTuple):
    """Local 3x3 statistics of one image for :func:`ssim_loss`: mean and (biased) variance, each
    [B, H, W, C], from the reflection-padded image (:func:`ssim_statistics`)."""
    mean: tf.Tensor
    variance: tf.Tensor


def _padded_box_means(stacked: tf.Tensor) -> tf.Tensor:
    """3x3 means of every channel of ``stacked`` [B, H, W, N] after a 1-pixel reflection pad."""
    return box_mean_3x3(tf.pad(stacked, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT"))


def ssim_statistics(y) -> SSIMStatistics:
    """The statistics of ``y`` [B, H, W, C] that every :func:`ssim_loss` against ``y`` needs.

    The training losses compare one target with ten images (two raw and eight warped sources), so
    computing the target's share once saves two of the five 3x3 means per comparison, forward and
    backward.
    """
    y = checks.as_images(y, "y")
    mu_y, mean_yy = tf.split(_padded_box_means(tf.concat([y, y * y], axis=-1)), 2, axis=-1)
    return SSIMStatistics(mu_y, mean_yy - mu_y * mu_y)


def ssim_loss(x, y, y_statistics: Optional[SSIMStatistics] = None) -> tf.Tensor:
    """Per-pixel SSIM dissimilarity clip((1 − SSIM) / 2, 0, 1) with a 3x3 mean window.

    Both images are reflection-padded by one pixel, local means / variances / covariance come from
    3x3 average pooling, C1 = 0.01², C2 = 0.03² (Monodepth2's SSIM, not tf.image.ssim's 11x11 Gaussian).

    Args:
      x, y: [B, H, W, C] images in [0, 1], H, W >= 2.
      y_statistics: ``ssim_statistics(y)`` when already computed (the result is the same).
    Returns:
      [B, H, W, C] in [0, 1]; 0 where the images agree.
    """
    x = checks.as_images(x, "x")
    y = checks.as_images(y, "y")
    checks.same_spatial_size(x, y, "x", "y")
    mu_y, sigma_y = ssim_statistics(y) if y_statistics is None else y_statistics
    # One pooling pass over the three statistics that involve x instead of three passes.
    mu_x, mean_xx, mean_xy = tf.split(_padded_box_means(tf.concat([x, x * x, x * y], axis=-1)),
                                      3, axis=-1)
    sigma_x = mean_xx - mu_x * mu_x
    sigma_xy = mean_xy - mu_x * mu_y
    numerator = (2.0 * mu_x * mu_y + SSIM_C1) * (2.0 * sigma_xy + SSIM_C2)
    denominator = (mu_x * mu_x + mu_y * mu_y + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return tf.clip_by_value((1.0 - numerator / denominator) / 2.0, 0.0, 1.0)


def photometric_error(pred, target, alpha: float = 0.85, eps: float = 1e-3,
                      target_statistics: Optional[SSIMStatistics] = None) -> tf.Tensor:
    """Per-pixel photometric error e = α · mean_c(ssim_loss) + (1 − α) · mean_c(ρ), ρ = Charbonnier.

    Args:
      pred: [B, H, W, C] synthesised image; target: [B, H, W, C] target image, both in [0, 1].
      alpha: SSIM weight (0.85); eps: Charbonnier epsilon (1e-3).
      target_statistics: ``ssim_statistics(target)``, to share between several calls.
    Returns:
      [B, H, W, 1].
    """
    pred = checks.as_images(pred, "pred")
    target = checks.as_images(target, "target")
    checks.same_spatial_size(pred, target, "pred", "target")
    robust = tf.reduce_mean(charbonnier(pred, target, eps), axis=-1, keepdims=True)
    structural = tf.reduce_mean(ssim_loss(pred, target, target_statistics), axis=-1, keepdims=True)
    return alpha * structural + (1.0 - alpha) * robust


def min_reprojection(reprojection_errors: Sequence[tf.Tensor],
                     identity_errors: Optional[Sequence[tf.Tensor]] = None,
                     identity_noise: float = 1e-5,
                     seed=None) -> Tuple[tf.Tensor, tf.Tensor]:
    """Per-pixel minimum over sources with Monodepth2's identity auto-masking.

    The minimum is taken over the errors of the warped sources and, when given, over the errors of the
    *un-warped* sources against the target plus tiny noise (N(0, 1) · identity_noise, which breaks ties
    in favour of the warped error where the two are equal). Pixels where an identity error wins — static
    camera, objects moving with the camera, textureless regions — then contribute the identity error,
    whose gradient w.r.t. depth and pose is zero: they are masked out of learning.

    Args:
      reprojection_errors: per source, [B, H, W, 1] photometric errors of the warped source.
      identity_errors: per source, [B, H, W, 1] photometric errors of the raw source, or None.
      identity_noise: standard deviation of the tie-breaking noise (0 disables it).
      seed: the noise's randomness: None / an int op seed (TensorFlow's global generator), or a
        ``keras.random.SeedGenerator``, whose state a checkpoint can save (the models use one, so a
        resumed run draws the noise the uninterrupted run would have).
    Returns:
      (loss_map [B, H, W, 1], automask [B, H, W, 1] float, 1 where a warped source won).
    """
    warped = tf.concat([checks.as_depth(e, "reprojection_error") for e in reprojection_errors], -1)
    if not identity_errors:
        return tf.reduce_min(warped, axis=-1, keepdims=True), tf.ones_like(warped[..., :1])
    identity = tf.concat([checks.as_depth(e, "identity_error") for e in identity_errors], -1)
    if identity_noise > 0:
        if isinstance(seed, keras.random.SeedGenerator):
            noise = keras.random.normal(tf.shape(identity), seed=seed)
        else:
            noise = tf.random.normal(tf.shape(identity), seed=seed)
        identity += noise * identity_noise
    combined = tf.concat([identity, warped], axis=-1)
    loss_map = tf.reduce_min(combined, axis=-1, keepdims=True)
    winner = tf.argmin(combined, axis=-1, output_type=tf.int32)[..., None]
    automask = tf.cast(winner >= tf.shape(identity)[-1], tf.float32)
    return loss_map, automask


def _grad_x(t: tf.Tensor) -> tf.Tensor:
    return t[:, :, 1:, :] - t[:, :, :-1, :]


def _grad_y(t: tf.Tensor) -> tf.Tensor:
    return t[:, 1:, :, :] - t[:, :-1, :, :]


def edge_aware_terms(values: tf.Tensor, image: tf.Tensor, edge_scale: float):
    """The six edge-aware smoothness terms of FeatDepth as scalars.

    For ∂ in (∂x, ∂y) and second derivatives (∂x∂x, ∂x∂y, ∂y∂x, ∂y∂y): mean(|∂v| · exp(−edge_scale ·
    mean_c|∂I|)), each averaged over its own (cropped) extent and over the channels of ``values``.
    ``values`` [B, h, w, C] and ``image`` [B, h, w, 3] have the same spatial size.
    Returns (first_order, second_order) sums.
    """
    def term(dv, di):
        weight = tf.exp(-edge_scale * tf.reduce_mean(tf.abs(di), axis=-1, keepdims=True))
        weighted = tf.abs(dv) * weight
        # A map only 1-2 pixels tall has no second derivative: count 0 gives 0, not NaN.
        return tf.math.divide_no_nan(tf.reduce_sum(weighted), tf.cast(tf.size(weighted), tf.float32))

    vx, vy = _grad_x(values), _grad_y(values)
    ix, iy = _grad_x(image), _grad_y(image)
    first = term(vx, ix) + term(vy, iy)
    second = (term(_grad_x(vx), _grad_x(ix)) + term(_grad_y(vx), _grad_y(ix)) +
              term(_grad_x(vy), _grad_x(iy)) + term(_grad_y(vy), _grad_y(iy)))
    return first, second


def smoothness_loss(disp, image) -> tf.Tensor:
    """Edge-aware first- plus second-order disparity smoothness (FeatDepth / TripleD), a scalar.

    S = mean|∂x d|·e^{−0.5·|∂x I|_c} + mean|∂y d|·e^{−0.5·|∂y I|_c}
        + Σ_{ab ∈ xx, xy, yx, yy} mean|∂a∂b d|·e^{−0.5·|∂a∂b I|_c},
    |·|_c = channel mean of the absolute image derivative. The image is area-resized to the
    disparity's size. No normalisation inside: callers pass the mean-normalised disparity
    d / (mean_HW(d) + 1e-7) as the references do.

    Args:
      disp: [B, h, w, 1] disparity; image: [B, H, W, 3] in [0, 1].
    Returns:
      scalar, averaged over the batch.
    """
    disp = checks.as_depth(disp, "disp")
    image = checks.as_images(image, "image")
    image = _resize_area_like(image, disp)
    first, second = edge_aware_terms(disp, image, edge_scale=0.5)
    return first + second


def _resize_area_like(image: tf.Tensor, reference: tf.Tensor) -> tf.Tensor:
    """Area resize of ``image`` [B, H, W, C] to the spatial size of ``reference`` [B, h, w, ...]
    (= average pooling for integer factors; the identity at the same size).

    Sizes known at trace time with one integer factor become an average pooling, which, unlike
    ResizeArea, has a gradient (TensorFlow differentiates every op of a compiled function, data
    included) and a oneDNN kernel.
    """
    in_h, in_w = image.shape[1], image.shape[2]
    out_h, out_w = reference.shape[1], reference.shape[2]
    if None not in (in_h, in_w, out_h, out_w):
        if (out_h, out_w) == (in_h, in_w):
            return image
        if in_h % out_h == 0 and in_w % out_w == 0 and in_h // out_h == in_w // out_w:
            factor = in_h // out_h
            return tf.nn.avg_pool2d(image, factor, factor, "VALID")
    return tf.image.resize(image, tf.shape(reference)[1:3], method="area", antialias=False)


def normalize_disparity(disp) -> tf.Tensor:
    """d / (mean over H, W of d + 1e-7), per image: [B, h, w, 1] -> [B, h, w, 1] (Monodepth2 §3.3)."""
    disp = checks.as_depth(disp, "disp")
    return disp / (tf.reduce_mean(disp, axis=[1, 2], keepdims=True) + 1e-7)


def feature_metric_loss(target_features, warped_features: Sequence[tf.Tensor],
                        eps: float = 1e-3) -> tf.Tensor:
    """FeatDepth's feature-metric loss, a scalar.

    Per pixel, the minimum over sources (no identity term) of the channel-mean Charbonnier distance
    between the target features and the warped source features, averaged over batch and pixels.

    Args:
      target_features: [B, h, w, C]; warped_features: per source, [B, h, w, C].
    """
    target_features = checks.as_float_tensor(target_features, "target_features", rank=4)
    distances = [tf.reduce_mean(charbonnier(f, target_features, eps), axis=-1, keepdims=True)
                 for f in warped_features]
    return tf.reduce_mean(tf.reduce_min(tf.concat(distances, axis=-1), axis=-1))


def feature_regularization_loss(features, image) -> Tuple[tf.Tensor, tf.Tensor]:
    """FeatDepth's discriminative (first-order) and convergent (second-order) feature terms.

    Args:
      features: [B, h, w, C] extractor features; image: [B, H, W, 3] in [0, 1] (area-resized to h x w).
    Returns:
      (S1, S2) scalars with edge weights exp(−mean_c|∂I|); the loss rewards S1 and penalises S2
      (docs/method.md §3.4: −1e-3·S1 + 1e-3·S2).
    """
    features = checks.as_float_tensor(features, "features", rank=4)
    image = checks.as_images(image, "image")
    image = _resize_area_like(image, features)
    return edge_aware_terms(features, image, edge_scale=1.0)


def masked_mean(values, mask) -> tf.Tensor:
    """Σ values · mask / Σ mask (0 if the mask is empty): the hole-restricted averages of §3.5–3.7.

    Args:
      values: [B, H, W, 1] per-pixel losses; mask: [B, H, W, 1] weights in [0, 1].
    """
    values = checks.as_float_tensor(values, "values")
    mask = checks.as_float_tensor(mask, "mask")
    return tf.math.divide_no_nan(tf.reduce_sum(values * mask), tf.reduce_sum(mask))
