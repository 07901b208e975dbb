"""One tf.data input pipeline for every data source (synthetic arrays, KITTI raw, own video).

Sources hand over either in-memory arrays (:func:`arrays_dataset`, e.g. the synthetic scene's
``make_triplets`` output) or a list of :class:`~tripled_tf.data.records.TripletRecord` (:func:`records_dataset`,
frame files on disk). Both end in the same per-sample step and yield batches (dicts) with

  "target", "source_prev", "source_next": [B, H, W, 3] float32 in [0, 1], frames t, t-1, t+1 WITHOUT colour
      jitter (the losses compare these, as the references do) but flipped with the sample;
  "target_aug", "source_prev_aug", "source_next_aug": [B, H, W, 3] colour-jittered copies (what the
      networks see); equal to the plain frames when jitter is off or not drawn for the sample;
  "K": [B, 4, 4] pixel intrinsics at the training size (after a flip: cx' = W - 1 - cx);
  "erase_mask": [B, H, W, 1] float32, 1 = keep, 0 = hole (METHOD.md §2.7);
  and, when the arrays have them, "depth" [B, H, W, 1] metres and "pose_prev", "pose_next" [B, 4, 4]
  (T_{0->s}, metres), flipped / mirrored consistently with the images.

Augmentation follows the references (METHOD.md §5): torchvision ColorJitter semantics, applied with
probability ``jitter_prob`` per sample, independent parameters per frame (TripleD) or one draw per sample
(Monodepth2); a horizontal flip of the whole sample with probability ``flip_prob``.

Flip and intrinsics. Pixel centres are at integer coordinates, so mirroring maps column u to W - 1 - u and
the principal point to cx' = W - 1 - cx. The references keep K unchanged after a flip (cx = W / 2 both
ways), i.e. their flipped samples have a principal point 1 pixel off (cx = W/2 -> W/2 - 1 here). A flip
mirrors the 3-D world through the plane x = 0 of every camera, F = diag(-1, 1, 1, 1): a target point X
becomes F X and its source-frame image F T X = (F T F)(F X), so the mirrored target->source transform is
T' = F T F (rotation about y and z reversed, x translation negated).

Randomness is stateless (``tf.random.stateless_*``) and keyed by (seed, position of the sample in the
one shuffled, repeated stream of global batches), so with ``deterministic=True`` and a seed two
iterations give identical batches, every epoch still draws new augmentation, and the augmentation of a
sample does not depend on how parallel map calls interleave. The same key makes distributed input exact:
every input pipeline walks the same stream and keeps its own contiguous share of each global batch, so
N replicas see together exactly the global batches one replica would (tested in test_training.py), and
``start_batch`` resumes the stream after the batches a run already consumed without decoding them.

Decoding (files). Frames are decoded with OpenCV inside ``tf.numpy_function`` (cv2 releases the GIL, so
parallel map calls scale). Before decoding, the PNG IEND / JPEG EOI trailer is checked, because a
truncated JPEG otherwise decodes "successfully" with grey fill. A missing, truncated or corrupt file
raises :class:`~tripled_tf.data.records.BadInputError` naming the file (missing files when the dataset is
built; unreadable ones while iterating, where TensorFlow wraps the error but keeps the message), or with
``skip_bad_frames=True`` the sample is dropped and counted in a :class:`~tripled_tf.data.records.SkipReport`.

Resizing (records): default ``"tf_lanczos3"`` (tf.image.resize lanczos3 with antialias on the float
frame), measured on a KITTI frame at 640x192 / 1024x320 within 0.26 / 255 mean absolute difference of the
references' PIL LANCZOS, against 1.1-1.3 / 255 for ``"cv2_area"`` (OpenCV INTER_AREA on the uint8 frame)
and ``"tf_area"``, 1.3-1.7 / 255 for ``"tf_bilinear"`` (antialiased). It costs 20-30 % more time than
the area filters, which does not matter: the pipeline still delivers > 10x what a train step consumes
(``tools/bench_data.py``).
"""
from __future__ import annotations

import dataclasses
import os
import random
import threading
from typing import Dict, Optional, Sequence

import cv2
import numpy as np
import tensorflow as tf

from tripled_tf import checks, color
from tripled_tf.data.records import BadInputError, SkipReport, TripletRecord, intrinsics_at_size

__all__ = ["RESIZE_METHODS", "PipelineConfig", "color_jitter", "erase_mask", "flip_pose",
           "flip_intrinsics", "records_dataset", "arrays_dataset", "load_frame",
           "load_resized_frame"]

RESIZE_METHODS = ("tf_lanczos3", "tf_area", "tf_bilinear", "cv2_area")
FRAME_KEYS = ("target", "source_prev", "source_next")
POSE_KEYS = ("pose_prev", "pose_next")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # empty IEND chunk with its fixed CRC
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
# Brightness, contrast, saturation, hue: the four jitter operations, indices used by ``order``.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = range(4)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Settings of the input pipeline.

    Attributes:
      height, width: training size in pixels (records are resized to it; arrays must already have it).
      batch_size: GLOBAL batch size; with an ``input_context`` each pipeline batches
        ``input_context.get_per_replica_batch_size(batch_size)`` samples. Incomplete batches are dropped.
      shuffle, repeat: shuffle the samples (every epoch anew) / repeat forever.
      seed: seeds shuffling and augmentation; None draws one at random when the dataset is built.
      deterministic: fixed element order (parallel map results in order); needs a seed. With it, two
        iterations of the same dataset give identical batches.
      augment: colour jitter and flips on (training); off = plain frames, K unchanged.
      jitter_prob: probability that a sample is colour-jittered at all (references: 0.5).
      jitter_per_frame: True draws independent jitter parameters for each of the three frames (TripleD
        reference), False one draw shared by the three frames (Monodepth2).
      brightness, contrast, saturation: factor ranges U(1 - v, 1 + v) (torchvision ColorJitter).
      hue: hue shift range U(-hue, hue), in fractions of the hue circle (<= 0.5).
      flip_prob: probability of a horizontal flip of the whole sample.
      erase_count, erase_size: number and side (pixels) of the square holes of the erase mask.
      num_parallel_calls: parallel decode/augment calls (tf.data.AUTOTUNE = -1 lets tf.data choose).
      shuffle_buffer: shuffle buffer size in samples (capped at the number of samples).
      prefetch: batches to prefetch (AUTOTUNE = -1), 0 for none.
      skip_bad_frames: drop (and count) samples whose files are missing or unreadable instead of
        raising ``BadInputError``.
      start_batch: global batches already consumed (resuming a run): the stream starts after them.
      resize_method: one of ``RESIZE_METHODS`` (records only; see the module docstring).
    """
    height: int
    width: int
    batch_size: int
    shuffle: bool = True
    repeat: bool = True
    seed: Optional[int] = None
    deterministic: bool = False
    augment: bool = True
    jitter_prob: float = 0.5
    jitter_per_frame: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1
    flip_prob: float = 0.5
    erase_count: int = 16
    erase_size: int = 16
    num_parallel_calls: int = tf.data.AUTOTUNE
    shuffle_buffer: int = 1024
    prefetch: int = tf.data.AUTOTUNE
    skip_bad_frames: bool = False
    resize_method: str = "tf_lanczos3"
    start_batch: int = 0

    def __post_init__(self):
        for name in ("height", "width", "batch_size", "shuffle_buffer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"PipelineConfig.{name} must be a positive integer, got {value!r}")
        for name in ("erase_count", "erase_size", "start_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"PipelineConfig.{name} must be an integer >= 0, got {value!r}")
        if self.erase_count > 0 and (self.height < self.erase_size + 2 or self.width < self.erase_size + 2):
            raise ValueError(f"erase holes of {self.erase_size} px need an image of at least "
                             f"{self.erase_size + 2}x{self.erase_size + 2}, got {self.height}x{self.width}")
        for name in ("jitter_prob", "flip_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"PipelineConfig.{name} must be a probability in [0, 1], got {value!r}")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"PipelineConfig.{name} must be in [0, 1] (factor range 1 +- value), "
                                 f"got {value!r}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"PipelineConfig.hue must be in [0, 0.5] (fraction of the hue circle), "
                             f"got {self.hue!r}")
        if self.resize_method not in RESIZE_METHODS:
            raise ValueError(f"PipelineConfig.resize_method must be one of {RESIZE_METHODS}, "
                             f"got {self.resize_method!r}")
        if self.deterministic and self.seed is None:
            raise ValueError("PipelineConfig.deterministic=True needs a seed (identical batches on "
                             "every iteration are only defined for a fixed seed)")


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
    """The inpainting pretext's erase mask (METHOD.md §2.7) for one sample.

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


def _augment_sample(sample: Dict[str, tf.Tensor], seed, config: PipelineConfig) -> Dict[str, tf.Tensor]:
    """Flip, colour jitter and erase mask for one (unbatched) sample; ``seed`` is int64 [2]."""
    height, width = config.height, config.width
    flip_seed, apply_seed, jitter_seed, erase_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    out = dict(sample)
    # One cond per decision, over all the tensors it affects (each cond traces two functions).
    if config.augment and config.flip_prob > 0:
        flip = tf.random.stateless_uniform([], flip_seed) < config.flip_prob
        flipped = {key: value for key, value in out.items() if key in FRAME_KEYS + ("depth", "K") + POSE_KEYS}

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


def _base_seed(config: PipelineConfig) -> tf.Tensor:
    # Not keyed by the input pipeline: positions are global, so a sample is augmented identically
    # whichever pipeline (worker) loads it.
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2 ** 31)
    return tf.constant([int(seed), 0], tf.int64)


def _per_replica_batch(config: PipelineConfig, input_context) -> int:
    if input_context is None:
        return config.batch_size
    return int(input_context.get_per_replica_batch_size(config.batch_size))


def _index_dataset(num_samples: int, config: PipelineConfig, input_context) -> tf.data.Dataset:
    """(position in the global stream, sample index) pairs for this input pipeline.

    One stream for all pipelines: the samples shuffled per epoch, repeated, enumerated. Each epoch is
    shuffled with its own seed derived from (seed, epoch) rather than with
    ``reshuffle_each_iteration``, whose shared seed generator gives a new order on every new iterator:
    here a second iteration of the same dataset repeats the first exactly, and epochs still differ.
    With several input pipelines, pipeline p keeps the p-th contiguous share of every global batch;
    the filter runs on indices, before anything is decoded.
    """
    indices = tf.data.Dataset.range(num_samples)
    buffer = min(config.shuffle_buffer, num_samples)
    # A fixed seed must be drawn once: every pipeline of a distributed run needs the same order.
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2 ** 31)

    def epoch(number):
        if not config.shuffle:
            return indices
        # The order must follow config.seed alone. TensorFlow mixes a global seed (tf.random.set_seed,
        # keras.utils.set_random_seed, which the trainer calls with --seed) into an op's seed, and
        # with a global seed of 0 it even fails on a tensor op seed (get_seed compares it to 0 in
        # Python): this function's graph is kept free of it.
        tf.compat.v1.get_default_graph().seed = None
        return indices.shuffle(buffer, seed=tf.constant(seed, tf.int64) * 1_000_003 + number,
                               reshuffle_each_iteration=False)

    epochs = tf.data.Dataset.counter() if config.repeat else tf.data.Dataset.range(1)
    stream = epochs.flat_map(epoch).enumerate()
    if config.start_batch:
        stream = stream.skip(config.start_batch * config.batch_size)
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    if pipelines > 1:
        if config.batch_size % pipelines:
            raise ValueError(f"global batch {config.batch_size} does not split evenly over "
                             f"{pipelines} input pipelines")
        share = config.batch_size // pipelines
        own = tf.constant(input_context.input_pipeline_id, tf.int64)
        stream = stream.filter(lambda position, index: (position % config.batch_size) // share == own)
    return stream


def _finish(dataset: tf.data.Dataset, config: PipelineConfig, input_context) -> tf.data.Dataset:
    dataset = dataset.batch(_per_replica_batch(config, input_context), drop_remainder=True)
    if config.prefetch:
        dataset = dataset.prefetch(config.prefetch)
    options = tf.data.Options()
    options.deterministic = bool(config.deterministic)
    return dataset.with_options(options)


# ------------------------------------------------------------------------------------------------
# In-memory sources.


def arrays_dataset(arrays: Dict[str, np.ndarray], config: PipelineConfig,
                   input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    """Pipeline over in-memory samples (e.g. ``synthetic.make_triplets`` output).

    Args:
      arrays: dict of numpy arrays with a leading sample axis N: "target", "source_prev",
        "source_next" [N, H, W, 3] float in [0, 1] at the training size, "K" [N, 4, 4] pixels;
        optional "depth" [N, H, W, 1] metres, "pose_prev", "pose_next" [N, 4, 4]. Other keys are ignored.
      config: ``PipelineConfig`` (height/width must match the arrays; resize_method is unused).
      input_context: tf.distribute.InputContext to shard by input pipeline and batch per replica.

    Returns:
      tf.data.Dataset of batch dicts (see the module docstring).
    """
    missing = [key for key in FRAME_KEYS + ("K",) if key not in arrays]
    if missing:
        raise ValueError(f"arrays_dataset: missing {missing}; got keys {sorted(arrays)}")
    size = (config.height, config.width)
    tensors = {}
    for key in FRAME_KEYS:
        if not np.issubdtype(np.asarray(arrays[key]).dtype, np.floating):
            raise ValueError(f"arrays[{key!r}]: expected float images in [0, 1], got dtype "
                             f"{np.asarray(arrays[key]).dtype}; divide uint8 frames by 255")
        tensors[key] = checks.as_float_tensor(arrays[key], f"arrays[{key!r}]", shape=[None, *size, 3])
    tensors["K"] = checks.as_matrices(arrays["K"], "arrays['K']")
    if "depth" in arrays:
        tensors["depth"] = checks.as_float_tensor(arrays["depth"], "arrays['depth']", shape=[None, *size, 1])
    for key in POSE_KEYS:
        if key in arrays:
            tensors[key] = checks.as_matrices(arrays[key], f"arrays[{key!r}]")
    num_samples = int(tensors["target"].shape[0])
    for key, value in tensors.items():
        if int(value.shape[0]) != num_samples:
            raise ValueError(f"arrays[{key!r}] has {value.shape[0]} samples, 'target' has {num_samples}")
    base_seed = _base_seed(config)

    def make_sample(position, index):
        sample = {key: tf.gather(value, index) for key, value in tensors.items()}
        seed = tf.random.experimental.stateless_fold_in(base_seed, position)
        return _augment_sample(sample, seed, config)

    dataset = _index_dataset(num_samples, config, input_context)
    dataset = dataset.map(make_sample, num_parallel_calls=config.num_parallel_calls,
                          deterministic=config.deterministic)
    return _finish(dataset, config, input_context)


# ------------------------------------------------------------------------------------------------
# File sources.


def _check_trailer(path: str, data: bytes) -> None:
    """Raises BadInputError for an empty, truncated or not-PNG/JPEG file (cheap byte checks)."""
    if not data:
        raise BadInputError(path, "empty file")
    if data.startswith(_PNG_SIGNATURE):
        if not data.endswith(_PNG_TRAILER):
            raise BadInputError(path, "truncated PNG (no IEND chunk at the end of the file)")
    elif data.startswith(_JPEG_SOI):
        # Some encoders pad after the end-of-image marker; tolerate zero padding only.
        if not data.rstrip(b"\x00").endswith(_JPEG_EOI):
            raise BadInputError(path, "truncated JPEG (no end-of-image marker FFD9 at the end of the file)")
    else:
        raise BadInputError(path, f"not a PNG or JPEG file (starts with {data[:8]!r})")


def load_frame(path: str) -> np.ndarray:
    """Reads one frame file (PNG or JPEG) as RGB uint8 [h, w, 3] at its native size.

    Raises:
      BadInputError naming the file: missing, empty, truncated or undecodable.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise BadInputError(path, f"cannot read frame ({error.strerror or error})") from None
    _check_trailer(path, data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        raise BadInputError(path, "corrupt image data (OpenCV cannot decode it)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class _TripletLoader:
    """Python side of the decode step (runs inside tf.numpy_function, several calls in parallel)."""

    def __init__(self, records: Sequence[TripletRecord], config: PipelineConfig, report: SkipReport):
        self.records = records
        self.config = config
        self.report = report
        self._reported = set()
        self._lock = threading.Lock()

    def _skip(self, index: int, error: BadInputError) -> None:
        with self._lock:  # count each bad sample once, not once per epoch
            if index not in self._reported:
                self._reported.add(index)
                self.report.add(f"{self.records[index].name or index}: {error}")

    def __call__(self, index):
        index = int(index)
        size = (self.config.height, self.config.width)
        try:
            record = self.records[index]
            # In FRAME_KEYS order (target, source_prev, source_next), not the record's time order.
            frames = [load_frame(path) for path in (record.target, record.prev, record.next)]
        except BadInputError as error:
            if not self.config.skip_bad_frames:
                raise
            self._skip(index, error)
            shape = (1, 1, 3) if self.config.resize_method != "cv2_area" else (*size, 3)
            return (*[np.zeros(shape, np.uint8)] * 3, np.bool_(False))
        if self.config.resize_method == "cv2_area":
            frames = [f if f.shape[:2] == size else
                      cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames]
        return (*frames, np.bool_(True))


def load_resized_frame(path: str, config: PipelineConfig) -> np.ndarray:
    """One frame file as the pipeline delivers it (decode, resize, [0, 1]): [H, W, 3] float32.

    For evaluation-time loading, so held-out frames are resized exactly as training frames are.
    """
    frame = load_frame(path)
    if config.resize_method == "cv2_area":
        frame = cv2.resize(frame, (config.width, config.height), interpolation=cv2.INTER_AREA)
        return frame.astype(np.float32) / 255.0
    return _resize_in_tf(tf.constant(frame), config).numpy()


def _resize_in_tf(frame: tf.Tensor, config: PipelineConfig) -> tf.Tensor:
    method = {"tf_area": "area", "tf_lanczos3": "lanczos3", "tf_bilinear": "bilinear"}[config.resize_method]
    resized = tf.image.resize(tf.cast(frame, tf.float32) / 255.0, (config.height, config.width),
                              method=method, antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)


def records_dataset(records: Sequence[TripletRecord], config: PipelineConfig,
                    input_context: Optional[tf.distribute.InputContext] = None,
                    skip_report: Optional[SkipReport] = None) -> tf.data.Dataset:
    """Pipeline over frame files (KITTI raw, own video): decode, resize, augment, batch.

    Args:
      records: the samples (``TripletRecord``: three frame paths and normalised intrinsics).
      config: ``PipelineConfig``.
      input_context: tf.distribute.InputContext to shard by input pipeline and batch per replica.
      skip_report: where skipped samples are counted with ``config.skip_bad_frames`` (a new one if
        None); also attached to the returned dataset as ``dataset.skip_report``. Missing files are
        counted when the dataset is built, unreadable ones when they are first met while iterating.

    Returns:
      tf.data.Dataset of batch dicts (see the module docstring); K from ``record.intrinsics`` at the
      training size.

    Raises:
      BadInputError: a missing frame file (when building), unless ``skip_bad_frames``. An unreadable
        file found while iterating surfaces as a tf.errors.OpError whose message contains the
        BadInputError message (file and problem).
    """
    records = list(records)
    for i, record in enumerate(records):
        if not isinstance(record, TripletRecord):
            raise ValueError(f"records[{i}]: expected a TripletRecord, got {type(record).__name__}")
    report = skip_report if skip_report is not None else SkipReport()
    usable = []
    for record in records:
        missing = [path for path in record.paths if not os.path.isfile(path)]
        if not missing:
            usable.append(record)
            continue
        error = BadInputError(missing[0], "frame file does not exist")
        if not config.skip_bad_frames:
            raise error
        report.add(f"{record.name or record.target}: {error}")
    if not usable:
        raise ValueError(f"records_dataset: no usable samples out of {len(records)} "
                         f"({report.summary()})")
    size = (config.height, config.width)
    K_all = tf.constant(np.stack([intrinsics_at_size(r.intrinsics, config.width, config.height)
                                  for r in usable]))
    loader = _TripletLoader(usable, config, report)
    base_seed = _base_seed(config)
    resize_in_cv2 = config.resize_method == "cv2_area"

    def load(position, index):
        *frames, ok = tf.numpy_function(loader, [index], [tf.uint8] * 3 + [tf.bool], stateful=False)
        sample = {}
        for key, frame in zip(FRAME_KEYS, frames):
            if resize_in_cv2:
                frame = tf.cast(tf.ensure_shape(frame, [*size, 3]), tf.float32) / 255.0
            else:
                frame = _resize_in_tf(tf.ensure_shape(frame, [None, None, 3]), config)
            sample[key] = frame
        sample["K"] = tf.gather(K_all, index)
        return position, sample, tf.ensure_shape(ok, [])

    def augment(position, sample, ok):
        del ok
        seed = tf.random.experimental.stateless_fold_in(base_seed, position)
        return _augment_sample(sample, seed, config)

    dataset = _index_dataset(len(usable), config, input_context)
    dataset = dataset.map(load, num_parallel_calls=config.num_parallel_calls,
                          deterministic=config.deterministic)
    if config.skip_bad_frames:
        dataset = dataset.filter(lambda position, sample, ok: ok)
    dataset = dataset.map(augment, num_parallel_calls=config.num_parallel_calls,
                          deterministic=config.deterministic)
    dataset = _finish(dataset, config, input_context)
    dataset.skip_report = report
    return dataset
