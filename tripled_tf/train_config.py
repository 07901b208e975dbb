"""What to train on and how long: :class:`TrainConfig`, the one definition of every training option.

Each field is declared with :func:`~tripled_tf.options.option`: its default, its help text and
its allowed values are those of the ``python -m tripled_tf.train`` flag of the same name (the flags
are generated from these fields), and ``config.json`` stores the fields as they are.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np

from tripled_tf import conventions
from tripled_tf.options import option

DATASETS = ("synthetic", "kitti", "video")
MODELS = ("tripled", "baseline")
STRATEGIES = ("default", "mirrored", "multi_worker")

# The TrainConfig fields that fix which batches a run sees in which order (and how they are augmented):
# a resumed run must have the same ones to continue at the exact data position. The schedule, the
# step count and the logging may change on resume.
DATA_ORDER_FIELDS = ("model", "dataset", "height", "width", "batch_size", "seed", "num_train_samples",
                     "data_path", "split", "splits_dir", "use_calibration", "calibration",
                     "intrinsics", "frame_stride", "min_motion", "skip_bad_frames", "augment",
                     "jitter_per_frame", "flip_keeps_intrinsics", "strategy", "mixed_precision",
                     "accumulate_steps")


@dataclasses.dataclass
class TrainConfig:
    """What to train on and how long (defaults: the references' schedule, docs/method.md §6)."""
    dataset: str = option("synthetic", "Training data: the built-in synthetic scene, KITTI raw, or "
                          "your own video / frames.", choices=DATASETS)
    model: str = option("tripled", "TripleDNet, or the plain depth + pose baseline (no appearance "
                        "branch / pretext).", choices=MODELS)
    height: int = option(192, "Training height in pixels (multiple of 32).")
    width: int = option(640, "Training width in pixels (multiple of 32).")
    batch_size: int = option(4, "Frame triplets per step.")
    num_steps: int = option(1000, "Optimiser steps (0 = --num_epochs passes over the data).")
    num_epochs: int = option(0, "Passes over the training triplets, used when --num_steps=0.")
    decay_epochs: Tuple[int, ...] = option((), "Epochs after which the learning rate is multiplied "
                                           "by --decay_factor (used when --decay_steps is empty).")
    learning_rate: float = option(1e-4, "Adam learning rate after warm-up.")
    warmup_steps: int = option(500, "Linear warm-up iterations (from lr x --warmup_ratio).")
    warmup_ratio: float = option(1.0 / 3.0, "Learning rate at the start of warm-up, as a fraction "
                                 "of --learning_rate.")
    decay_steps: Tuple[int, ...] = option((), "Steps at which the learning rate is multiplied by "
                                          "--decay_factor.")
    decay_factor: float = option(0.5, "Step-decay factor.")
    grad_clip_norm: float = option(35.0, "Global-norm gradient clipping (0 = off).")
    accumulate_steps: int = option(1, "Update every N batches with their mean gradient (an effective "
                                   "batch of N x --batch_size; BatchNorm statistics stay per batch). "
                                   "--num_steps, warm-up, decay and checkpoints count updates.",
                                   lower_bound=1)
    seed: int = option(1024, "Random seed (data, initialisation, noise).")
    num_train_samples: int = option(256, "Synthetic training triplets rendered up front.")
    num_val_samples: int = option(16, "Held-out frames for the AbsRel figures (synthetic, or the "
                                  "first of --val_split with a Velodyne scan); -1 = every frame of "
                                  "--val_split.", lower_bound=-1)
    data_path: str = option("", "KITTI raw root (date folders), or a video file / folder of frames.")
    split: str = option("eigen_zhou", "KITTI: split name (eigen_zhou, eigen, ...) or split file.")
    splits_dir: str = option("", "KITTI: Monodepth2's splits/ folder holding the named splits.")
    val_split: str = option("", "KITTI: split whose Velodyne ground truth gives the before/after "
                            "AbsRel (optional).")
    use_calibration: bool = option(False, "KITTI: the drive's P_rect instead of the normalised K.")
    calibration: str = option("", "Video: YAML/JSON intrinsics (fx, fy, cx, cy [, width, height]).")
    # Video: (fx, fy, cx, cy) pixels of the original frames; the flags --fx --fy --cx --cy.
    intrinsics: Tuple[float, ...] = option((), "Video: fx, fy, cx, cy in pixels.", flag=False)
    frame_stride: int = option(1, "Video: use every k-th frame.")
    min_motion: float = option(0.0, "Video: drop frames whose change from the previous kept frame is "
                               "below this (static camera).")
    skip_bad_frames: bool = option(False, "Skip and count unreadable / missing frames instead of "
                                   "stopping with an error naming the file.")
    # Pretrained encoders: an init name (-> <weights_dir>/<init>_resnet<layers>.npz, else the published
    # checkpoint downloaded and converted into the cache) or a path; "" / "none" = random init. Pose
    # and extractor follow the depth encoder's init name when empty.
    encoder_weights: str = option("", "Depth-encoder init: swav | supervised | moco | simclr (-> "
                                  "<weights_dir>/<init>_resnet<layers>.npz if there, else the "
                                  "published checkpoint, downloaded and converted into "
                                  "$TRIPLED_TF_CACHE on first use), a weights path, or none (random).")
    pose_encoder_weights: str = option("", "Pose-encoder init, as above; empty = follow "
                                       "--encoder_weights' init name (swav -> supervised: there is "
                                       "no SwAV ResNet-18).")
    extractor_weights: str = option("", "Feature-extractor init, as above; empty = follow "
                                    "--encoder_weights' init name.")
    weights_dir: str = option("weights", "Folder where init names resolve to converted weights "
                              "first (before the download cache).")
    init_checkpoint: str = option("", "Start from the weights of a run folder, e.g. a published model "
                                  "converted with python -m tripled_tf.convert (replaces "
                                  "--encoder_weights).")
    augment: bool = option(True, "Colour jitter and horizontal flips (docs/method.md §5).")
    jitter_per_frame: bool = option(True, "Independent colour jitter per frame (TripleD reference); "
                                    "False = one draw per sample (Monodepth2).")
    flip_keeps_intrinsics: bool = option(False, "Keep K unchanged when a sample is flipped, as the "
                                         "references do (their principal point is then 1 px off); "
                                         "default: mirror cx.")
    checkpoint_every: int = option(0, "Checkpoint every N steps (0 = only at the end).")
    # --log_dir is absl.logging's flag (defined there, it cannot be redefined); it names the run
    # folder (checkpoints, preview, TensorBoard logs).
    log_dir: str = option("", "The run folder; empty = runs/<timestamp>.", flag=False)
    resume: bool = option(False, "Continue the run folder's last checkpoint: same step, optimiser "
                          "state and data position.")
    overwrite: bool = option(False, "Start afresh in a run folder that already holds a checkpoint.")
    skip_nonfinite: bool = option(False, "Skip batches whose loss is NaN/Inf (counted) instead of "
                                  "stopping with a message naming the step and the term.")
    max_consecutive_nonfinite: int = option(20, "With --skip_nonfinite: stop after this many "
                                            "non-finite batches in a row (0 = never).")
    summary_every: int = option(50, "TensorBoard scalars (every loss term, learning rate, images/s) "
                                "every N steps.")
    image_summary_every: int = option(500, "TensorBoard images (input, disparity, reconstruction, "
                                      "pretext output) every N steps; 0 = off.")
    eval_every: int = option(0, "Held-out depth evaluation (AbsRel, RMSE, δ<1.25 printed; all seven "
                             "metrics to TensorBoard held_out/*) every N steps; 0 = only before and "
                             "after.")
    eval_every_epoch: bool = option(False, "Held-out evaluation once per epoch instead of every "
                                    "--eval_every steps (the references validate every epoch). With "
                                    "either, the model with the lowest held-out AbsRel is kept in "
                                    "<log_dir>/best/, a run folder of its own.")
    # XLA did not pay off on CPU (docs/performance.md); worth trying on GPU.
    jit_compile: bool = option(False, "Compile the train step with XLA.")
    run_eagerly: bool = option(False, "Run the train step eagerly (debugging, quick smoke runs).")
    mixed_precision: bool = option(False, "mixed_float16 compute with dynamic loss scaling (GPU).")
    strategy: str = option("default", "tf.distribute strategy; multi_worker reads TF_CONFIG. "
                           "--batch_size is global.", choices=STRATEGIES)
    deterministic: bool = option(False, "Same seed -> identical losses (op determinism, ordered "
                                 "input pipeline; slower).")
    num_preview: int = option(3, "Rows in preview.png.")
    verbose: int = option(1, "Console output: 0 silent; 1 a progress bar on a terminal, one progress "
                          "line per --summary_every steps otherwise; 2 (or more) progress lines "
                          "plus TensorFlow's own log messages (hidden below 2).",
                          lower_bound=0)

    def __post_init__(self):
        self.decay_steps = tuple(int(s) for s in self.decay_steps)
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if not conventions.is_stride_multiple(self.height, self.width):
            raise ValueError(f"height and width must be positive multiples of {conventions.STRIDE} "
                             f"(the encoder's stride), got {self.height}x{self.width}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        self.decay_epochs = tuple(int(e) for e in self.decay_epochs)
        if any(e <= 0 for e in self.decay_epochs) or list(self.decay_epochs) != sorted(self.decay_epochs):
            raise ValueError(f"decay_epochs must be increasing positive epochs, got {self.decay_epochs}")
        for name in ("batch_size", "num_train_samples", "accumulate_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_val_samples < -1:
            raise ValueError(f"num_val_samples must be >= -1 (-1 = all), got {self.num_val_samples}")
        if self.num_val_samples == -1 and self.dataset != "kitti":
            raise ValueError("num_val_samples=-1 (every frame of --val_split) needs --dataset=kitti")
        for name in ("num_steps", "num_epochs", "checkpoint_every", "warmup_steps",
                     "summary_every", "image_summary_every", "eval_every", "num_preview",
                     "max_consecutive_nonfinite"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")
        # not (x > 0) also refuses NaN.
        for name in ("learning_rate", "decay_factor"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}")
        if not 0 < self.warmup_ratio <= 1:
            raise ValueError(f"warmup_ratio must be in (0, 1], got {self.warmup_ratio}")
        if not (np.isfinite(self.grad_clip_norm) and self.grad_clip_norm >= 0):
            raise ValueError(f"grad_clip_norm must be >= 0 (0 = off), got {self.grad_clip_norm}")
        if any(s <= 0 for s in self.decay_steps) or list(self.decay_steps) != sorted(self.decay_steps):
            raise ValueError(f"decay_steps must be increasing positive steps, got {self.decay_steps}")
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
        if self.verbose < 0:
            raise ValueError(f"verbose must be >= 0, got {self.verbose}")


def schedule_in_steps(config: TrainConfig, num_samples: int) -> TrainConfig:
    """Resolves num_epochs / decay_epochs into optimiser steps (one epoch = one pass over the
    training triplets in global batches, incomplete batch dropped; with accumulate_steps N, an update
    per N batches)."""
    steps_per_epoch = max(1, num_samples // (config.batch_size * config.accumulate_steps))
    num_steps = config.num_steps or config.num_epochs * steps_per_epoch
    decay_steps = config.decay_steps or tuple(e * steps_per_epoch for e in config.decay_epochs)
    eval_every = steps_per_epoch if config.eval_every_epoch else config.eval_every
    return dataclasses.replace(config, num_steps=num_steps, decay_steps=decay_steps,
                               eval_every=eval_every)
