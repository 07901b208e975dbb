"""Per-sample augmentation of the tf.data pipeline: horizontal flip, colour jitter, erase mask.

Augmentation follows the references (docs/method.md §5): torchvision ColorJitter semantics, applied with
probability ``jitter_prob`` per sample, independent parameters per frame (TripleD) or one draw per sample
(Monodepth2); a horizontal flip of the whole sample with probability ``flip_prob``.

Flip and intrinsics. Pixel centres are at integer coordinates, so mirroring maps column u to W - 1 - u and
the principal point to cx' = W - 1 - cx. The references keep K unchanged after a flip (cx = W / 2 both
ways), i.e. their flipped samples have a principal point 1 pixel off (cx = W/2 -> W/2 - 1 here). A flip
mirrors the 3-D world through the plane x = 0 of every camera, F = diag(-1, 1, 1, 1): a target point X
becomes F X and its source-frame image F T X = (F T F)(F X), so the mirrored target->source transform is
T' = F T F (rotation about y and z reversed, x translation negated).

:func:`augment_sample` is the step every source's samples go through (``tripled_tf.data.pipeline``);
its randomness is stateless, keyed by the seed the pipeline derives from the sample's position.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Sequence

import tensorflow as tf

from tripled_tf import checks, color

if TYPE_CHECKING:  # the pipeline imports this module
    from tripled_tf.data.pipeline import PipelineConfig

FRAME_KEYS = ("target", "source_prev", "source_next")
POSE_KEYS = ("pose_prev", "pose_next")
# Brightness, contrast, saturation, hue: the four jitter operations, indices used by ``order``.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


# ------------------------------------------------------------------------------------------------
# Colour jitter (torchvision ColorJitter semantics on float images).


def _per_image(value, batch) -> tf.Tensor:
    """A scalar or [B] factor as [B, 1, 1, 1] float32 (broadcast against [B, H, W, C])."""
    value = tf.convert_to_tensor(value, tf.float32)
    if value.shape.rank not in (None, 0, 1):
        raise ValueError(f"jitter factors must be scalars or [B] vectors, got shape {value.shape}")
    return tf.reshape(tf.broadcast_to(value, [batch]), [-1, 1, 1, 1])


def color_jitter(images, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0,
                 order: Sequence[int] = (0, 1, 2, 3)) -> tf.Tensor:
    """Applies torchvision-style colour jitter with given factors (no randomness here).

    The four operations, each followed by clamping to [0, 1] as torchvision does:
      brightness b: x * b;
      contrast c: c * x + (1 - c) * mean(luma(x)) (one scalar mean per image, ITU-R 601 luma);
      saturation s: s * x + (1 - s) * luma(x) (per pixel);
      hue h: rotate the hue of every pixel by h (fraction of the circle) in HSV space.
    Unlike the references (8-bit PIL images) there is no rounding to 1/255 between the steps.

    Args:
      images: [B, H, W, 3] float32 RGB in [0, 1].
      brightness, contrast, saturation: factors, scalars or [B]; 1 = unchanged.
      hue: shift in [-0.5, 0.5], scalar or [B]; 0 = unchanged.
      order: permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue): the order in which the
        operations are applied (python sequence or int tensor [4]); shared by the batch.

    Returns:
      [B, H, W, 3] float32 in [0, 1].
    """
    images = checks.as_images(images, "images", channels=3)
    batch = tf.shape(images)[0]
    factors = {_BRIGHTNESS: _per_image(brightness, batch), _CONTRAST: _per_image(contrast, batch),
               _SATURATION: _per_image(saturation, batch), _HUE: _per_image(hue, batch)}

    def brightness_op(x):
        return tf.clip_by_value(x * factors[_BRIGHTNESS], 0.0, 1.0)

    def contrast_op(x):
        mean = tf.reduce_mean(color.rgb_to_gray(x), axis=[1, 2, 3], keepdims=True)
        c = factors[_CONTRAST]
        return tf.clip_by_value(c * x + (1.0 - c) * mean, 0.0, 1.0)

    def saturation_op(x):
        s = factors[_SATURATION]
        return tf.clip_by_value(s * x + (1.0 - s) * color.rgb_to_gray(x), 0.0, 1.0)

    def hue_op(x):
        h = factors[_HUE]
        hsv = tf.image.rgb_to_hsv(x)
        # floormod keeps the hue in [0, 1) for negative shifts too (torchvision: (h + shift) % 1).
        shifted = tf.concat([tf.math.floormod(hsv[..., :1] + h, 1.0), hsv[..., 1:]], axis=-1)
        return tf.clip_by_value(tf.image.hsv_to_rgb(shifted), 0.0, 1.0)

    ops = [brightness_op, contrast_op, saturation_op, hue_op]
    if isinstance(order, (list, tuple)):
        if sorted(order) != [0, 1, 2, 3]:
            raise ValueError(f"order must be a permutation of (0, 1, 2, 3), got {order!r}")
        for op in order:
            images = ops[op](images)
        return images
    order = tf.convert_to_tensor(order, tf.int32)

    # A loop over the four steps rather than four unrolled switches: the switch's branches are
    # traced once instead of 4 x 4 times, which made building a pipeline ~1 s slower per call.
    def apply_step(step, x):
        return step + 1, tf.switch_case(order[step], [lambda op=op: op(x) for op in ops])

    _, images = tf.while_loop(lambda step, _: step < 4, apply_step, (tf.constant(0), images))
    return images


# ------------------------------------------------------------------------------------------------
# Erase mask, flips.


def erase_mask(height: int, width: int, count: int = 16, size: int = 16, seed=None) -> tf.Tensor:
    """The inpainting pretext's erase mask (docs/method.md §2.7) for one sample.

    ``count`` square holes of ``size`` x ``size`` pixels; each hole's top-left row is uniform in
    {0, ..., height - size - 2} and column in {0, ..., width - size - 2} (the reference's bounds:
    {0..H-18} for 16 px holes); holes may overlap.

    Args:
      height, width: mask size in pixels (>= size + 2).
      count, size: number and side of the holes.
      seed: stateless seed, int tensor [2]; None draws from the global generator.

    Returns:
      [height, width, 1] float32, 1 = keep, 0 = hole.
    """
    height, width, count, size = int(height), int(width), int(count), int(size)
    if count == 0:
        return tf.ones([height, width, 1], tf.float32)
    if height < size + 2 or width < size + 2:
        raise ValueError(f"erase_mask: holes of {size} px need at least {size + 2}x{size + 2} pixels, "
                         f"got {height}x{width}")
    if seed is None:
        seed = tf.random.uniform([2], 0, 2 ** 31 - 1, dtype=tf.int64)
    row_seed, col_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    rows = tf.random.stateless_uniform([count], row_seed, 0, height - size - 1, dtype=tf.int32)
    cols = tf.random.stateless_uniform([count], col_seed, 0, width - size - 1, dtype=tf.int32)
    y = tf.range(height)[None, :]
    x = tf.range(width)[None, :]
    in_rows = (y >= rows[:, None]) & (y < rows[:, None] + size)  # [count, H]
    in_cols = (x >= cols[:, None]) & (x < cols[:, None] + size)  # [count, W]
    hole = tf.reduce_any(in_rows[:, :, None] & in_cols[:, None, :], axis=0)
    return tf.cast(tf.logical_not(hole), tf.float32)[..., None]


def flip_intrinsics(K, width: int) -> tf.Tensor:
    """Intrinsics of horizontally mirrored images: cx' = width - 1 - cx (pixel centres at integers).

    Args:
      K: [B, 4, 4] pixel intrinsics of images ``width`` pixels wide.
    Returns:
      [B, 4, 4]; only K[:, 0, 2] changes (fx stays positive: the image, not the camera, is mirrored).
    """
    K = checks.as_matrices(K, "K")
    cx = float(width) - 1.0 - K[:, 0, 2]
    return _set_cx(K, cx)


def _set_cx(K: tf.Tensor, cx: tf.Tensor) -> tf.Tensor:
    mask = tf.one_hot(0, 4)[:, None] * tf.one_hot(2, 4)[None, :]  # selects entry (0, 2)
    return K * (1.0 - mask) + cx[:, None, None] * mask


def flip_pose(T) -> tf.Tensor:
    """Target->source transforms of horizontally mirrored samples: T' = F T F, F = diag(-1, 1, 1, 1).

    Args:
      T: [B, 4, 4] rigid transforms (metres).
    Returns:
      [B, 4, 4]: rotations about y and z reversed, x translation negated.
    """
    T = checks.as_matrices(T, "T")
    sign = tf.constant([-1.0, 1.0, 1.0, 1.0])
    return T * sign[:, None] * sign[None, :]


# ------------------------------------------------------------------------------------------------
# The per-sample augmentation step shared by all sources.


def _draw_jitter(seed, config: PipelineConfig):
    """One draw of (brightness, contrast, saturation, hue, order) from a stateless seed [2]."""
    seeds = tf.random.experimental.stateless_split(seed, 5)

    def factor(s, spread):
        return tf.random.stateless_uniform([], s, 1.0 - spread, 1.0 + spread)

    hue = tf.random.stateless_uniform([], seeds[3], -config.hue, config.hue)
    order = tf.argsort(tf.random.stateless_uniform([4], seeds[4]))
    return (factor(seeds[0], config.brightness), factor(seeds[1], config.contrast),
            factor(seeds[2], config.saturation), hue, tf.cast(order, tf.int32))


def augment_sample(sample: Dict[str, tf.Tensor], seed, config: PipelineConfig) -> Dict[str, tf.Tensor]:
    """Flip, colour jitter and erase mask for one (unbatched) sample; ``seed`` is int64 [2]."""
    height, width = config.height, config.width
    flip_seed, apply_seed, jitter_seed, erase_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    out = dict(sample)
    # One cond per decision, over all the tensors it affects (each cond traces two functions).
    if config.augment and config.flip_prob > 0:
        flip = tf.random.stateless_uniform([], flip_seed) < config.flip_prob
        mirrored_keys = FRAME_KEYS + ("depth",) + POSE_KEYS + (
            () if config.flip_keeps_intrinsics else ("K",))
        flipped = {key: value for key, value in out.items() if key in mirrored_keys}

        def mirror():
            mirrored = {}
            for key, value in flipped.items():
                if key == "K":
                    mirrored[key] = flip_intrinsics(value[None], width)[0]
                elif key in POSE_KEYS:
                    mirrored[key] = flip_pose(value[None])[0]
                else:
                    mirrored[key] = tf.reverse(value, axis=[1])
            return mirrored

        out.update(tf.cond(flip, mirror, lambda: dict(flipped)))
    frames = [out[key] for key in FRAME_KEYS]
    if config.augment and config.jitter_prob > 0:
        apply = tf.random.stateless_uniform([], apply_seed) < config.jitter_prob
        frame_seeds = tf.random.experimental.stateless_split(jitter_seed, 3)
        shared = _draw_jitter(frame_seeds[0], config)
        params = [_draw_jitter(frame_seeds[i], config) if config.jitter_per_frame else shared
                  for i in range(len(frames))]

        def jitter():
            return [color_jitter(f[None], *p[:4], order=p[4])[0] for f, p in zip(frames, params)]

        augmented = tf.cond(apply, jitter, lambda: list(frames))
    else:
        augmented = frames
    for key, frame in zip(FRAME_KEYS, augmented):
        out[key + "_aug"] = tf.ensure_shape(frame, [height, width, 3])
    out["erase_mask"] = erase_mask(height, width, config.erase_count, config.erase_size, erase_seed)
    return out
