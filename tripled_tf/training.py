"""Training: build data, model and optimiser from typed configs, fit, checkpoint, evaluate, preview.

``python -m tripled_tf.train`` only turns flags into a :class:`TrainConfig` and a
:class:`~tripled_tf.models.depth_model.DepthModelConfig` and calls :func:`train`.
"""
from __future__ import annotations

import dataclasses
import datetime
import pathlib
import time
from typing import Optional, Tuple

import cv2
import keras
import numpy as np

from tripled_tf import checkpoint, evaluation, visualize
from tripled_tf.data import kitti, pipeline, synthetic, video
from tripled_tf.models import pretrained
from tripled_tf.models.depth_model import (NONFINITE_KEY, DepthModelConfig, MonoDepthModel,
                                           nonfinite_term_names)
from tripled_tf.models.tripled_net import TripleDConfig, TripleDNet
from tripled_tf.schedules import WarmupStepDecay

DATASETS = ("synthetic", "kitti", "video")
MODELS = ("tripled", "baseline")
STRATEGIES = ("default", "mirrored", "multi_worker")
# Named initialisations (METHOD.md §1.2) resolve to <weights_dir>/<init>_resnet<layers>.npz, the files
# tools/convert_resnet_weights.py writes.
INITS = ("swav", "supervised", "moco", "simclr")


@dataclasses.dataclass
class TrainConfig:
    """What to train on and how long (defaults: the references' schedule, METHOD.md §6)."""
    dataset: str = "synthetic"
    model: str = "tripled"  # "tripled" (TripleDNet) or "baseline" (depth + pose, no pretext)
    height: int = 192
    width: int = 640
    batch_size: int = 4
    num_steps: int = 1000  # optimiser steps; 0 = num_epochs passes over the training triplets
    num_epochs: int = 0
    decay_epochs: Tuple[int, ...] = ()  # converted to steps when decay_steps is empty
    learning_rate: float = 1e-4
    warmup_steps: int = 500
    warmup_ratio: float = 1.0 / 3.0
    decay_steps: Tuple[int, ...] = ()
    decay_factor: float = 0.5
    grad_clip_norm: float = 35.0
    seed: int = 1024
    # Synthetic scene: frames rendered once up front; validation frames come from a held-out part.
    num_train_samples: int = 256
    num_val_samples: int = 16
    # File-based sources (KITTI raw, own video).
    data_path: str = ""
    split: str = "eigen_zhou"  # KITTI: split name or file (Monodepth2 format)
    splits_dir: str = ""  # KITTI: Monodepth2's splits/ folder
    val_split: str = ""  # KITTI: frames whose Velodyne ground truth gives the before/after AbsRel
    use_calibration: bool = False  # KITTI: the drive's P_rect instead of the normalised K
    calibration: str = ""  # video: YAML / JSON intrinsics file
    intrinsics: Tuple[float, ...] = ()  # video: (fx, fy, cx, cy) pixels of the original frames
    frame_stride: int = 1  # video
    min_motion: float = 0.0  # video: drop frames where the camera did not move
    skip_bad_frames: bool = False
    # Pretrained encoders: an init name (swav, supervised, moco, simclr -> <weights_dir>/<init>_resnet
    # <layers>.npz) or a path (.npz from tools/convert_resnet_weights.py or a torchvision checkpoint);
    # "" / "none" = random init. The pose and extractor encoders follow the depth encoder's init name
    # when left empty (pose: SwAV has no ResNet-18, so "swav" falls back to "supervised").
    encoder_weights: str = ""
    pose_encoder_weights: str = ""
    extractor_weights: str = ""
    weights_dir: str = "weights"
    # Augmentation (METHOD.md §5).
    augment: bool = True
    jitter_per_frame: bool = True  # the TripleD reference; False = one draw per sample (Monodepth2)
    checkpoint_every: int = 0  # steps; 0 = only at the end
    log_dir: str = ""  # the run folder; "" = runs/<timestamp>
    resume: bool = False  # continue the run folder's last checkpoint (weights, optimiser, data position)
    overwrite: bool = False  # start afresh in a run folder that already holds a checkpoint
    skip_nonfinite: bool = False  # skip batches with a NaN/Inf loss term instead of stopping
    summary_every: int = 50  # TensorBoard scalars every N steps
    image_summary_every: int = 500  # TensorBoard images every N steps (0 = off)
    eval_every: int = 0  # held-out depth evaluation every N steps, console + TensorBoard (0 = off)
    jit_compile: bool = False  # XLA did not pay off on CPU (PLATFORM.md); worth trying on GPU
    run_eagerly: bool = False  # debugging / quick smoke runs: no tf.function tracing
    mixed_precision: bool = False  # mixed_float16 compute with dynamic loss scaling
    strategy: str = "default"  # tf.distribute: default | mirrored | multi_worker (reads TF_CONFIG)
    deterministic: bool = False  # same seed -> identical losses (op determinism, ordered input)
    num_preview: int = 3
    verbose: int = 1

    def __post_init__(self):
        self.decay_steps = tuple(int(s) for s in self.decay_steps)
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.height % 32 or self.width % 32 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"height and width must be positive multiples of 32 (the encoder's "
                             f"stride), got {self.height}x{self.width}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        self.decay_epochs = tuple(int(e) for e in self.decay_epochs)
        for name in ("batch_size", "num_train_samples"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("num_steps", "num_epochs", "num_val_samples", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.num_steps and not self.num_epochs:
            raise ValueError("set num_steps (optimiser steps) or num_epochs (passes over the data)")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")
        if self.dataset != "synthetic" and not self.data_path:
            raise ValueError(f"--data_path is required with --dataset={self.dataset}")
        self.intrinsics = tuple(float(v) for v in self.intrinsics)
        if self.intrinsics and len(self.intrinsics) != 4:
            raise ValueError(f"intrinsics must be (fx, fy, cx, cy), got {self.intrinsics}")
        if self.num_train_samples < self.batch_size:
            raise ValueError(f"num_train_samples ({self.num_train_samples}) must be >= batch_size "
                             f"({self.batch_size})")


def _run_dir(config: TrainConfig) -> pathlib.Path:
    if config.log_dir:
        return pathlib.Path(config.log_dir).resolve()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return (pathlib.Path("runs") / stamp).resolve()


def model_class(model_config: DepthModelConfig) -> type:
    """TripleDNet for a TripleDConfig, the baseline MonoDepthModel otherwise."""
    return TripleDNet if isinstance(model_config, TripleDConfig) else MonoDepthModel


def needs_erase_mask(model_config: DepthModelConfig) -> bool:
    """Whether training batches must carry "erase_mask" (the extractor's inpainting, masked heads)."""
    return isinstance(model_config, TripleDConfig) and (
        model_config.use_extractor or (model_config.pretext_task != "none" and model_config.head_mask))


def resolve_weights(spec: str, num_layers: int, weights_dir: str, flag: str) -> Optional[str]:
    """Path of the pretrained weights named by ``spec`` for a ResNet-``num_layers``, or None.

    ``spec``: "" / "none" (random init), an init name of ``INITS`` (-> <weights_dir>/<init>_resnet
    <layers>.npz, which must exist) or a path.
    """
    spec = (spec or "").strip()
    if not spec or spec.lower() == "none":
        return None
    if spec.lower() in INITS:
        path = pathlib.Path(weights_dir) / f"{spec.lower()}_resnet{num_layers}.npz"
        if not path.is_file():
            raise pretrained.CheckpointError(
                f"--{flag}={spec}: {path} does not exist; convert the published {spec} ResNet-"
                f"{num_layers} checkpoint once with: python -m tools.convert_resnet_weights "
                f"--input=CHECKPOINT --output={path} --num_layers={num_layers} (README: Pretrained "
                f"encoders), or pass --{flag}=none for random init")
        return str(path)
    return spec


def pretrained_encoders(config: TrainConfig, model: MonoDepthModel):
    """[(encoder, weights path, flag name)] for every encoder with pretrained weights to load.

    Pose and extractor encoders left empty follow the depth encoder's init *name* (not a path: its
    depth may differ); SwAV published no ResNet-18, so the pose net falls back to "supervised".
    """
    follow = config.encoder_weights.strip().lower()
    follow = follow if follow in INITS else ""
    entries = [(model.encoder, config.encoder_weights, "encoder_weights")]
    pose_spec = config.pose_encoder_weights or (
        "supervised" if follow == "swav" and model.pose_net.encoder.num_layers != 50 else follow)
    entries.append((model.pose_net.encoder, pose_spec, "pose_encoder_weights"))
    if getattr(model, "extractor", None) is not None:
        entries.append((model.extractor, config.extractor_weights or follow, "extractor_weights"))
    out = []
    for encoder, spec, flag in entries:
        path = resolve_weights(spec, encoder.num_layers, config.weights_dir, flag)
        if path:
            out.append((encoder, path, flag))
    return out


def build_model(config: TrainConfig, model_config: DepthModelConfig,
                load_pretrained: bool = True) -> MonoDepthModel:
    """The model (TripleDNet or baseline) with every variable created and the pretrained encoder
    weights loaded (unless ``load_pretrained`` is False, e.g. when a checkpoint replaces them)."""
    model = model_class(model_config)(model_config)
    model.build_for_size(config.height, config.width)
    if load_pretrained:
        for encoder, path, _ in pretrained_encoders(config, model):
            count = pretrained.load_encoder_weights(encoder, path)
            print(f"{encoder.name}: loaded {count} tensors from {path}", flush=True)
    return model


def pipeline_config(config: TrainConfig, model_config: Optional[DepthModelConfig] = None,
                    start_batch: int = 0) -> pipeline.PipelineConfig:
    # Models without the inpainting parts get erase_count=0: no per-sample hole drawing (the mask is
    # then all ones). TripleDNet's extractor needs the default 16 holes.
    erase_count = 16 if model_config is not None and needs_erase_mask(model_config) else 0
    return pipeline.PipelineConfig(height=config.height, width=config.width,
                                   batch_size=config.batch_size, seed=config.seed,
                                   # Ordered: a resumed run then sees exactly the batches the
                                   # interrupted one would have (costs little, see bench_data).
                                   deterministic=True,
                                   augment=config.augment, jitter_per_frame=config.jitter_per_frame,
                                   skip_bad_frames=config.skip_bad_frames, erase_count=erase_count,
                                   start_batch=start_batch)


def _kitti_held_out(config: TrainConfig) -> Optional[dict]:
    """Target frames of --val_split with ground truth from their Velodyne scans (Garg crop)."""
    if not config.val_split:
        return None
    records, _ = kitti.kitti_records(config.data_path, config.val_split,
                                     splits_dir=config.splits_dir or None,
                                     skip_bad_frames=config.skip_bad_frames)
    records = [r for r in records if r.depth_path][:config.num_val_samples]
    if not records:
        raise ValueError(f"--val_split={config.val_split}: no frame with a Velodyne scan")
    pipe = pipeline_config(config)
    images = np.stack([pipeline.load_resized_frame(r.target, pipe) for r in records])
    depths = []
    for record in records:
        folder, _, side = record.name.split()  # kitti_records names a record by its split line
        calib_dir = pathlib.Path(config.data_path) / folder.split("/")[0]
        depths.append(kitti.generate_depth_map(calib_dir, record.depth_path,
                                               cam=2 if side == "l" else 3))
    return {"target": images, "depth": depths, "crop": "garg"}


def training_sources(config: TrainConfig):
    """(make_dataset(pipeline_config, input_context=None) -> tf.data.Dataset, number of training
    triplets, held-out dict or None).

    The held-out dict has "target" [N, H, W, 3] at the training size, "depth" (N ground-truth maps at
    any size) and "crop"; it is None where no ground truth exists (own video) or num_val_samples=0.
    """
    if config.dataset == "synthetic":
        arrays = synthetic.make_triplets(config.num_train_samples, config.height, config.width,
                                         seed=config.seed, split="train")
        held_out = None
        if config.num_val_samples:
            val = synthetic.make_triplets(config.num_val_samples, config.height, config.width,
                                          seed=config.seed, split="val")
            held_out = {"target": val["target"], "depth": val["depth"], "crop": None}
        return (lambda pipe, context=None: pipeline.arrays_dataset(arrays, pipe, context),
                config.num_train_samples, held_out)
    if config.dataset == "kitti":
        records, report = kitti.kitti_records(config.data_path, config.split,
                                              use_calibration=config.use_calibration,
                                              skip_bad_frames=config.skip_bad_frames,
                                              splits_dir=config.splits_dir or None)
        held_out = _kitti_held_out(config) if config.num_val_samples else None
    else:
        fx, fy, cx, cy = config.intrinsics or (None,) * 4
        records, report = video.video_records(config.data_path, fx, fy, cx, cy,
                                              calibration=config.calibration or None,
                                              frame_stride=config.frame_stride,
                                              min_motion=config.min_motion,
                                              skip_bad_frames=config.skip_bad_frames)
        held_out = None
    print(f"{config.dataset}: {len(records)} training triplets ({report.summary()})", flush=True)
    if len(records) < config.batch_size:
        raise ValueError(f"{len(records)} training triplets is fewer than batch_size "
                         f"{config.batch_size}")
    return (lambda pipe, context=None: pipeline.records_dataset(records, pipe, context,
                                                                 skip_report=report),
            len(records), held_out)


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN / Inf; the message names the step and the terms."""


class TrainingCallback(keras.callbacks.Callback):
    """Stops on (or counts) non-finite steps, checkpoints every N steps, writes TensorBoard summaries.

    One callback, because the order matters: a step is checked before anything is written, so a
    poisoned model never reaches a checkpoint or a summary.

    Args:
      run_dir: the run folder; batches: batches consumed before this fit (resume); config: the
        TrainConfig; summary_batch: a small batch for image summaries (None: no images); is_chief:
        only the chief writes files (multi-worker); held_out: frames with ground truth
        ({"target", "depth", "crop"}) evaluated every ``config.eval_every`` steps (None: never).
    """

    def __init__(self, run_dir, config: TrainConfig, batches: int, summary_batch: Optional[dict] = None,
                 is_chief: bool = True, held_out: Optional[dict] = None):
        super().__init__()
        self.held_out = held_out
        self.evaluations = []  # (step, metrics) of the periodic held-out evaluations
        self.run_dir = pathlib.Path(run_dir)
        self.config = config
        self.batches = batches
        self.skipped = 0
        self.summary_batch = summary_batch
        self.is_chief = is_chief
        self.last_checkpoint = None
        self._writer = None
        self._clock = None
        self._clock_batches = 0

    # Keras calls these with logs whose values may be tensors.
    def on_train_begin(self, logs=None):
        import tensorflow as tf
        if self.is_chief:
            self._writer = tf.summary.create_file_writer(str(self.run_dir / "logs" / "train"))
        self._clock, self._clock_batches = time.perf_counter(), self.batches

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self.batches += 1
        bad = nonfinite_term_names(float(logs.get(NONFINITE_KEY, 0.0)), self.model.logged_terms)
        if bad:
            where = f"step {self._step() + 1} (batch {self.batches})"
            if not self.config.skip_nonfinite:
                last = (f"the last checkpoint (step {self.last_checkpoint}) is intact"
                        if self.last_checkpoint is not None else "no checkpoint was written")
                raise NonFiniteLossError(
                    f"non-finite loss at {where}: {', '.join(bad)} is NaN/Inf; the update was not "
                    f"applied and training stopped ({last}). --skip_nonfinite skips such batches.")
            self.skipped += 1
            print(f"\nskipped batch {self.batches}: non-finite {', '.join(bad)} "
                  f"({self.skipped} skipped so far)", flush=True)
            return
        step = self._step()
        if self.is_chief and self.config.checkpoint_every and step % self.config.checkpoint_every == 0:
            checkpoint.save_checkpoint(self.model, self.run_dir, step, self.batches)
            self.last_checkpoint = step
        if self._writer is not None and self.config.summary_every and step % self.config.summary_every == 0:
            self._write_scalars(step, logs)
        if (self._writer is not None and self.summary_batch is not None
                and self.config.image_summary_every and step % self.config.image_summary_every == 0):
            self.write_images(step)
        if (self.is_chief and self.held_out is not None and self.config.eval_every
                and step % self.config.eval_every == 0):
            self.evaluate(step)

    def evaluate(self, step: int) -> dict:
        """Held-out depth metrics now: printed on one line and written as TensorBoard "held_out/*"."""
        import tensorflow as tf
        values = evaluation.evaluate_depth(self.model, self.held_out["target"], self.held_out["depth"],
                                           self.held_out["crop"])
        self.evaluations.append((step, values))
        print(f"\nstep {step}: held-out AbsRel {values['abs_rel']:.4f}  RMSE {values['rmse']:.3f} m  "
              f"δ<1.25 {values['a1']:.3f}", flush=True)
        if self._writer is not None:
            with self._writer.as_default(step=step):
                for name in ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"):
                    tf.summary.scalar(f"held_out/{name}", float(values[name]))
            self._writer.flush()
        return values

    def _write_scalars(self, step: int, logs: dict) -> None:
        import tensorflow as tf
        now = time.perf_counter()
        images_per_s = ((self.batches - self._clock_batches) * self.config.batch_size
                        / max(now - self._clock, 1e-9))
        self._clock, self._clock_batches = now, self.batches
        learning_rate = self.model.optimizer.learning_rate
        with self._writer.as_default(step=step):
            for name, value in logs.items():
                if name != NONFINITE_KEY:
                    tf.summary.scalar(f"loss/{name}" if name != "loss" else "loss", float(value))
            tf.summary.scalar("learning_rate", float(learning_rate))
            tf.summary.scalar("images_per_s", images_per_s)
            tf.summary.scalar("skipped_batches", self.skipped)
        self._writer.flush()

    def write_images(self, step: int) -> None:
        import tensorflow as tf
        if self._writer is None or self.summary_batch is None:
            return
        with self._writer.as_default(step=step):
            for name, images in self.model.summary_images(self.summary_batch).items():
                tf.summary.image(f"images/{name}", images, max_outputs=len(images))
        self._writer.flush()

    def close(self) -> None:
        """Closes the summary writer (after the final images, which come after fit returns)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """Adam with the warm-up / step-decay schedule and global-norm gradient clipping."""
    schedule = WarmupStepDecay(config.learning_rate, config.warmup_steps, config.warmup_ratio,
                               config.decay_steps, config.decay_factor)
    return keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                                 global_clipnorm=config.grad_clip_norm or None)


def make_strategy(name: str):
    """The tf.distribute strategy: "default" (one device), "mirrored" (every local GPU, or the
    logical CPUs when there is no GPU), "multi_worker" (MultiWorkerMirroredStrategy; TF_CONFIG)."""
    import tensorflow as tf
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    """Only the chief (worker 0) writes checkpoints, summaries and the result."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


def check_workers_agree(strategy, step: int, batches: int) -> None:
    """Multi-worker: raises on every worker unless all of them start at the same step and data
    position, i.e. all restored the same checkpoint (or none).

    A worker that resumed another (or no) checkpoint would otherwise all-reduce gradients of other
    weights and train a different number of steps. The check is a collective (all-gather), so it is
    also a barrier: the chief writes its next checkpoint only after every worker has read its own.
    """
    import tensorflow as tf
    values = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant([[step, batches]], tf.int64))  # one row per replica
    positions = strategy.gather(values, axis=0).numpy()
    if (positions != positions[:1]).any():
        raise checkpoint.RunFolderError(
            f"the workers start at different (step, batch) positions {positions.tolist()}: every "
            f"worker must --resume the chief's checkpoint, i.e. see the chief's run folder at its "
            f"--log_dir (shared storage, or a copy of the chief's folder; README: Training on several "
            f"machines)")


def _resize_nearest(depth, size) -> np.ndarray:
    depth = np.squeeze(np.asarray(depth, np.float32))
    return cv2.resize(depth, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)


def _report(when: str, values: dict) -> None:
    print(f"Held-out {values['num_images']} frames, {when}: AbsRel {values['abs_rel']:.4f}  "
          f"RMSE {values['rmse']:.3f} m  δ<1.25 {values['a1']:.3f}  (median-scaled)", flush=True)


def _round(values: dict) -> dict:
    return {k: (round(float(v), 6) if isinstance(v, (float, np.floating)) else v)
            for k, v in values.items()}


def _schedule_in_steps(config: TrainConfig, num_samples: int) -> TrainConfig:
    """Resolves num_epochs / decay_epochs into optimiser steps (one epoch = one pass over the
    training triplets in global batches, incomplete batch dropped)."""
    steps_per_epoch = max(1, num_samples // config.batch_size)
    num_steps = config.num_steps or config.num_epochs * steps_per_epoch
    decay_steps = config.decay_steps or tuple(e * steps_per_epoch for e in config.decay_epochs)
    return dataclasses.replace(config, num_steps=num_steps, decay_steps=decay_steps)


def _check_run_folder(run_dir: pathlib.Path, config: TrainConfig, model_config) -> Optional[dict]:
    """The checkpoint to resume from, or None; refuses to silently overwrite a trained run."""
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is None or config.overwrite:
        return None
    if not config.resume:
        raise checkpoint.RunFolderError(
            f"{run_dir} already holds a checkpoint (step {latest['step']}); pass --resume to continue "
            f"it, --overwrite to start again there, or choose another --log_dir")
    saved = checkpoint.read_config(run_dir)
    if saved.get("train", {}).get("model", "baseline") != config.model or \
            checkpoint.model_config_from_dict(saved) != model_config:
        raise checkpoint.RunFolderError(f"--resume: {run_dir} was trained with another model "
                                        f"configuration (see its {checkpoint.CONFIG_FILE})")
    if not latest.get("state"):
        raise checkpoint.RunFolderError(f"--resume: {run_dir}'s checkpoint has no training state "
                                        f"(optimiser), it cannot be continued exactly")
    return latest


def train(config: TrainConfig, model_config: Optional[DepthModelConfig] = None) -> dict:
    """Trains a model and leaves a complete run folder.

    Returns a dict (also written to ``<run>/result.json``) with abs_rel_before / abs_rel_after on the
    held-out frames, checkpoint and preview paths, the final loss terms and the timing.

    Raises:
      NonFiniteLossError: a loss term became NaN/Inf (without ``skip_nonfinite``); no checkpoint of
        the poisoned state is written.
      checkpoint.RunFolderError: the run folder holds a checkpoint and neither resume nor overwrite.
    """
    import tensorflow as tf

    model_config = model_config or (TripleDConfig() if config.model == "tripled" else DepthModelConfig())
    if (config.model == "tripled") != isinstance(model_config, TripleDConfig):
        raise ValueError(f"model={config.model!r} does not match {type(model_config).__name__}")
    run_dir = _run_dir(config)
    resume_from = _check_run_folder(run_dir, config, model_config)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    previous_policy = keras.config.dtype_policy()
    if config.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        return _train(config, model_config, run_dir, resume_from)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _train(config, model_config, run_dir, resume_from) -> dict:
    strategy = make_strategy(config.strategy)
    chief = is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"batch_size {config.batch_size} does not split over {replicas} replicas")
    if replicas > 1 and config.skip_nonfinite:
        raise ValueError("skip_nonfinite needs a single replica (a conditional update cannot wrap "
                         "tf.distribute's cross-replica merge); without it training stops instead")
    make_dataset, num_samples, held_out = training_sources(config)
    config = _schedule_in_steps(config, num_samples)
    if chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.write_json(run_dir / checkpoint.CONFIG_FILE,
                              {"train": dataclasses.asdict(config), "model": model_config.to_dict()})

    with strategy.scope():
        model = build_model(config, model_config, load_pretrained=resume_from is None)
        if replicas > 1:
            set_synchronized_batch_norm(model)
        model.compile(optimizer=make_optimizer(config), jit_compile=config.jit_compile,
                      run_eagerly=config.run_eagerly)
        model.optimizer.build(model.trainable_variables)
    batches = 0
    if resume_from is not None:
        model.load_weights(resume_from["weights"])
        checkpoint.restore_training_state(model, resume_from["state"])
        batches = int(resume_from["batches"])
        print(f"resuming {run_dir} at step {resume_from['step']} (batch {batches})", flush=True)
    if config.strategy == "multi_worker":
        check_workers_agree(strategy, int(model.optimizer.iterations.numpy()), batches)

    before = after = None
    if held_out is not None and resume_from is None:
        before = evaluation.evaluate_depth(model, held_out["target"], held_out["depth"], held_out["crop"])
        _report("before training", before)

    pipe = pipeline_config(config, model_config, start_batch=batches)
    if config.strategy == "default":
        train_data = make_dataset(pipe)
    else:
        train_data = strategy.distribute_datasets_from_function(
            lambda context: make_dataset(pipe, context))
    summary_batch = None
    if config.image_summary_every and chief:
        first = next(iter(make_dataset(dataclasses.replace(pipe, start_batch=0))))
        summary_batch = {k: v[:2] for k, v in first.items()}
    callback = TrainingCallback(run_dir, config, batches, summary_batch, chief, held_out)
    remaining = max(config.num_steps - batches, 0)
    start = time.time()
    history = None
    if remaining:
        history = model.fit(train_data, epochs=1, steps_per_epoch=remaining, callbacks=[callback],
                            verbose=config.verbose if chief else 0, shuffle=False)
    train_seconds = time.time() - start
    step = int(model.optimizer.iterations.numpy())
    weights = None
    if chief:
        weights = checkpoint.save_checkpoint(model, run_dir, step, callback.batches)
        callback.write_images(step)
    callback.close()

    if held_out is not None:
        after = evaluation.evaluate_depth(model, held_out["target"], held_out["depth"], held_out["crop"])
        _report("after training", after)
    digest = checkpoint.state_digest(model) if config.strategy == "multi_worker" else None
    if not chief:
        return {"steps": step, "chief": False, "weights_sha256": digest}
    if held_out is not None:
        preview_images = held_out["target"][:config.num_preview]
        preview_gt = [d for d in held_out["depth"][:config.num_preview]]
    else:
        preview_images = np.concatenate([b["target"].numpy() for b in make_dataset(pipe).take(
            -(-config.num_preview // config.batch_size))])[:config.num_preview]
        preview_gt = None
    depths = evaluation.predict_depths(model, preview_images)
    if preview_gt is not None:  # show the ground truth at the image's size (KITTI's is native size)
        preview_gt = [_resize_nearest(d, preview_images.shape[1:3]) for d in preview_gt]
    preview = visualize.write_png(run_dir / "preview.png", visualize.preview_grid(
        preview_images, depths, preview_gt))

    final = {k: v[-1] for k, v in history.history.items() if k != NONFINITE_KEY} if history else {}
    trained_batches = callback.batches - (int(resume_from["batches"]) if resume_from else 0)
    result = {
        "model": type(model).__name__,
        "abs_rel_before": before["abs_rel"] if before else None,
        "abs_rel_after": after["abs_rel"] if after else None,
        "metrics_before": _round(before) if before else None,
        "metrics_after": _round(after) if after else None,
        "final_losses": _round(final),
        "steps": step,
        "batches": callback.batches,
        "skipped_batches": callback.skipped,
        "held_out_curve": [[s, round(float(v["abs_rel"]), 6)] for s, v in callback.evaluations],
        "resumed_from": int(resume_from["step"]) if resume_from else None,
        "train_seconds": round(train_seconds, 1),
        "images_per_second": round(trained_batches * config.batch_size / max(train_seconds, 1e-9), 2),
        "replicas": replicas,
        "checkpoint": weights,
        "preview": preview,
        "run_dir": str(run_dir),
    }
    if digest is not None:
        result["weights_sha256"] = digest
    checkpoint.write_json(run_dir / "result.json", result)
    return result


def set_synchronized_batch_norm(model) -> int:
    """Switches every BatchNormalization of ``model`` to statistics over the global batch (all
    replicas), as the reference's SyncBatchNorm; returns how many layers it switched. Keras reads
    the flag when a step is traced, so this must precede the first step."""
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count
