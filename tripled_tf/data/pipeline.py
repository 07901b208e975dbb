"""One tf.data input pipeline for every data source (synthetic arrays, KITTI raw, own video).

Sources hand over either in-memory arrays (:func:`arrays_dataset`, e.g. the synthetic scene's
``make_triplets`` output) or a list of :class:`~tripled_tf.data.records.TripletRecord` (:func:`records_dataset`,
frame files on disk). Both end in the same per-sample step and yield batches (dicts) with

  "target", "source_prev", "source_next": [B, H, W, 3] float32 in [0, 1], frames t, t-1, t+1 WITHOUT colour
      jitter (the losses compare these, as the references do) but flipped with the sample;
  "target_aug", "source_prev_aug", "source_next_aug": [B, H, W, 3] colour-jittered copies (what the
      networks see); equal to the plain frames when jitter is off or not drawn for the sample;
  "K": [B, 4, 4] pixel intrinsics at the training size (after a flip: cx' = W - 1 - cx);
  "erase_mask": [B, H, W, 1] float32, 1 = keep, 0 = hole (docs/method.md §2.7);
  and, when the arrays have them, "depth" [B, H, W, 1] metres and "pose_prev", "pose_next" [B, 4, 4]
  (T_{0->s}, metres), flipped / mirrored consistently with the images.

Augmentation (flip, colour jitter, erase mask): :mod:`tripled_tf.data.augmentation`.

Randomness is stateless (``tf.random.stateless_*``) and keyed by (seed, position of the sample in the
one shuffled, repeated stream of global batches), so with ``deterministic=True`` and a seed two
iterations give identical batches, every epoch still draws new augmentation, and the augmentation of a
sample does not depend on how parallel map calls interleave. The same key makes distributed input exact:
every input pipeline walks the same stream and keeps its own contiguous share of each global batch, so
N replicas see together exactly the global batches one replica would (tested in test_training.py), and
``start_batch`` resumes the stream after the batches a run already consumed without decoding them.

Decoding, size checks and resizing of frame files: :mod:`tripled_tf.data.frame_files`.
"""
from __future__ import annotations

import dataclasses
import os
import random
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from tripled_tf import checks
from tripled_tf.data.augmentation import FRAME_KEYS, POSE_KEYS, augment_sample
from tripled_tf.data.frame_files import RESIZE_METHODS, TripletLoader, common_folder, resize_frame
from tripled_tf.data.records import (MISSING_FILE, BadInputError, SkipReport, TripletRecord,
                                     intrinsics_at_size)

__all__ = ["RESIZE_METHODS", "PipelineConfig", "records_dataset", "arrays_dataset"]


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
      flip_keeps_intrinsics: leave K unchanged on a flip, as the references do (their flipped samples'
        principal point is then 1 pixel off); False (default) mirrors it, cx' = W - 1 - cx.
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
    flip_keeps_intrinsics: bool = False
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


def _map(dataset: tf.data.Dataset, function, config: PipelineConfig) -> tf.data.Dataset:
    """``dataset.map(function)`` with the config's parallelism and order, traced without AutoGraph.

    The per-sample functions branch on the (static) config only, never on a tensor, so AutoGraph
    has nothing to convert; converting them anyway cost ~1.3 s per pipeline build (64x192 synthetic
    with augmentation: 1.58 -> 0.29 s), paid by every training run before its first batch.
    """
    return dataset.map(tf.autograph.experimental.do_not_convert(function),
                       num_parallel_calls=config.num_parallel_calls,
                       deterministic=config.deterministic)


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
        return augment_sample(sample, seed, config)

    dataset = _index_dataset(num_samples, config, input_context)
    return _finish(_map(dataset, make_sample, config), config, input_context)


# ------------------------------------------------------------------------------------------------
# File sources.


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
      BadInputError: a missing frame file (when building), unless ``skip_bad_frames``; no usable
        sample left (when building, or while iterating once every sample was met and found bad).
        An unreadable file (or a triplet whose frames differ in size) found while iterating surfaces
        as a tf.errors.OpError whose message contains the BadInputError message (file and problem).
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
        report.add(f"{record.name or record.target}: {error}", MISSING_FILE)
    if not usable:
        if not records:
            raise ValueError("records_dataset: no records")
        raise BadInputError(common_folder(records), f"none of the {len(records)} samples can be used "
                                                     f"({report.summary()})")
    size = (config.height, config.width)
    K_all = tf.constant(np.stack([intrinsics_at_size(r.intrinsics, config.width, config.height)
                                  for r in usable]))
    loader = TripletLoader(usable, config, report)
    base_seed = _base_seed(config)
    resize_in_cv2 = config.resize_method == "cv2_area"

    def load(position, index):
        *frames, ok = tf.numpy_function(loader, [index], [tf.uint8] * 3 + [tf.bool], stateful=False)
        sample = {}
        for key, frame in zip(FRAME_KEYS, frames):
            if resize_in_cv2:
                frame = tf.cast(tf.ensure_shape(frame, [*size, 3]), tf.float32) / 255.0
            else:
                frame = resize_frame(tf.ensure_shape(frame, [None, None, 3]), config)
            sample[key] = frame
        sample["K"] = tf.gather(K_all, index)
        return position, sample, tf.ensure_shape(ok, [])

    def augment(position, sample, ok):
        del ok
        seed = tf.random.experimental.stateless_fold_in(base_seed, position)
        return augment_sample(sample, seed, config)

    dataset = _index_dataset(len(usable), config, input_context)
    dataset = _map(dataset, load, config)
    if config.skip_bad_frames:
        dataset = dataset.filter(lambda position, sample, ok: ok)
    dataset = _map(dataset, augment, config)
    dataset = _finish(dataset, config, input_context)
    dataset.skip_report = report
    return dataset
