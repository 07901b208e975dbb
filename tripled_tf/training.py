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
from tripled_tf.models.depth_model import DepthModelConfig, MonoDepthModel
from tripled_tf.schedules import WarmupStepDecay

DATASETS = ("synthetic", "kitti", "video")


@dataclasses.dataclass
class TrainConfig:
    """What to train on and how long (defaults: the references' schedule, METHOD.md §6)."""
    dataset: str = "synthetic"
    height: int = 192
    width: int = 640
    batch_size: int = 4
    num_steps: int = 1000
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
    # Pretrained encoders: .npz from tools/convert_resnet_weights.py (or a torchvision-format checkpoint).
    encoder_weights: str = ""  # depth encoder; "" / "none" = random init
    pose_encoder_weights: str = ""  # pose encoder (3-channel conv1 repeated for the 2-frame input)
    # Augmentation (METHOD.md §5).
    augment: bool = True
    jitter_per_frame: bool = True  # the TripleD reference; False = one draw per sample (Monodepth2)
    checkpoint_every: int = 0  # steps; 0 = only at the end
    log_dir: str = ""  # the run folder; "" = runs/<timestamp>
    jit_compile: bool = False  # XLA did not pay off on CPU (PLATFORM.md); worth trying on GPU
    num_preview: int = 3
    verbose: int = 1

    def __post_init__(self):
        self.decay_steps = tuple(int(s) for s in self.decay_steps)
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.height % 32 or self.width % 32 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"height and width must be positive multiples of 32 (the encoder's "
                             f"stride), got {self.height}x{self.width}")
        for name in ("batch_size", "num_steps", "num_train_samples", "num_val_samples"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
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


def build_model(config: TrainConfig, model_config: DepthModelConfig) -> MonoDepthModel:
    """The model with every variable created and the pretrained encoder weights loaded, if any."""
    model = MonoDepthModel(model_config)
    model.build_for_size(config.height, config.width)
    for path, encoder in ((config.encoder_weights, model.encoder),
                          (config.pose_encoder_weights, model.pose_net.encoder)):
        if path and path.lower() != "none":
            count = pretrained.load_encoder_weights(encoder, path)
            print(f"{encoder.name}: loaded {count} tensors from {path}", flush=True)
    return model


def pipeline_config(config: TrainConfig) -> pipeline.PipelineConfig:
    # The baseline has no inpainting pretext: erase_count=0 keeps the per-sample hole drawing out of
    # the input pipeline (the mask is then all ones). TripleDNet's extractor needs the default 16.
    return pipeline.PipelineConfig(height=config.height, width=config.width,
                                   batch_size=config.batch_size, seed=config.seed,
                                   augment=config.augment, jitter_per_frame=config.jitter_per_frame,
                                   skip_bad_frames=config.skip_bad_frames, erase_count=0)


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


def build_datasets(config: TrainConfig):
    """(training tf.data.Dataset of batch dicts, held-out dict or None).

    The held-out dict has "target" [N, H, W, 3] at the training size, "depth" (N ground-truth maps at
    any size) and "crop"; it is None where no ground truth exists (own video).
    """
    pipe = pipeline_config(config)
    if config.dataset == "synthetic":
        arrays = synthetic.make_triplets(config.num_train_samples, config.height, config.width,
                                         seed=config.seed, split="train")
        val = synthetic.make_triplets(config.num_val_samples, config.height, config.width,
                                      seed=config.seed, split="val")
        held_out = {"target": val["target"], "depth": val["depth"], "crop": None}
        return pipeline.arrays_dataset(arrays, pipe), held_out
    if config.dataset == "kitti":
        records, report = kitti.kitti_records(config.data_path, config.split,
                                              use_calibration=config.use_calibration,
                                              skip_bad_frames=config.skip_bad_frames,
                                              splits_dir=config.splits_dir or None)
        held_out = _kitti_held_out(config)
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
    return pipeline.records_dataset(records, pipe, skip_report=report), held_out


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Saves an atomic checkpoint every ``every`` optimiser steps."""

    def __init__(self, run_dir, every: int):
        super().__init__()
        self.run_dir = run_dir
        self.every = every

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if self.every and step % self.every == 0:
            checkpoint.save_checkpoint(self.model, self.run_dir, step)


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """Adam with the warm-up / step-decay schedule and global-norm gradient clipping."""
    schedule = WarmupStepDecay(config.learning_rate, config.warmup_steps, config.warmup_ratio,
                               config.decay_steps, config.decay_factor)
    return keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                                 global_clipnorm=config.grad_clip_norm or None)


def _resize_nearest(depth, size) -> np.ndarray:
    depth = np.squeeze(np.asarray(depth, np.float32))
    return cv2.resize(depth, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)


def _report(when: str, values: dict) -> None:
    print(f"Held-out {values['num_images']} frames, {when}: AbsRel {values['abs_rel']:.4f}  "
          f"RMSE {values['rmse']:.3f} m  δ<1.25 {values['a1']:.3f}  (median-scaled)", flush=True)


def _round(values: dict) -> dict:
    return {k: (round(float(v), 6) if isinstance(v, (float, np.floating)) else v)
            for k, v in values.items()}


def train(config: TrainConfig, model_config: Optional[DepthModelConfig] = None) -> dict:
    """Trains a model and leaves a complete run folder.

    Returns a dict (also written to ``<run>/result.json``) with abs_rel_before / abs_rel_after on the
    held-out frames, checkpoint and preview paths, the final loss terms and the timing.
    """
    model_config = model_config or DepthModelConfig()
    run_dir = _run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.write_json(run_dir / checkpoint.CONFIG_FILE,
                          {"train": dataclasses.asdict(config), "model": model_config.to_dict()})
    keras.utils.set_random_seed(config.seed)

    train_data, held_out = build_datasets(config)
    model = build_model(config, model_config)
    before = after = None
    if held_out is not None:
        before = evaluation.evaluate_depth(model, held_out["target"], held_out["depth"], held_out["crop"])
        _report("before training", before)

    model.compile(optimizer=make_optimizer(config), jit_compile=config.jit_compile)
    callbacks = [keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs"), update_freq=50)]
    if config.checkpoint_every:
        callbacks.append(PeriodicCheckpoint(run_dir, config.checkpoint_every))
    start = time.time()
    history = model.fit(train_data, epochs=1, steps_per_epoch=config.num_steps,
                        callbacks=callbacks, verbose=config.verbose, shuffle=False)
    train_seconds = time.time() - start
    weights = checkpoint.save_checkpoint(model, run_dir, int(model.optimizer.iterations.numpy()))

    if held_out is not None:
        after = evaluation.evaluate_depth(model, held_out["target"], held_out["depth"], held_out["crop"])
        _report("after training", after)
        preview_images = held_out["target"][:config.num_preview]
        preview_gt = [d for d in held_out["depth"][:config.num_preview]]
    else:
        preview_images = np.concatenate([b["target"].numpy() for b in train_data.take(
            -(-config.num_preview // config.batch_size))])[:config.num_preview]
        preview_gt = None
    depths = evaluation.predict_depths(model, preview_images)
    if preview_gt is not None:  # show the ground truth at the image's size (KITTI's is native size)
        preview_gt = [_resize_nearest(d, preview_images.shape[1:3]) for d in preview_gt]
    preview = visualize.write_png(run_dir / "preview.png", visualize.preview_grid(
        preview_images, depths, preview_gt))

    result = {
        "abs_rel_before": before["abs_rel"] if before else None,
        "abs_rel_after": after["abs_rel"] if after else None,
        "metrics_before": _round(before) if before else None,
        "metrics_after": _round(after) if after else None,
        "final_losses": _round({k: v[-1] for k, v in history.history.items()}),
        "steps": int(model.optimizer.iterations.numpy()),
        "train_seconds": round(train_seconds, 1),
        "images_per_second": round(config.num_steps * config.batch_size / train_seconds, 2),
        "checkpoint": weights,
        "preview": preview,
        "run_dir": str(run_dir),
    }
    checkpoint.write_json(run_dir / "result.json", result)
    return result
