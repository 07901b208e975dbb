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

import keras
import numpy as np
import tensorflow as tf

from tripled_tf import checkpoint, evaluation, visualize
from tripled_tf.models.depth_model import DepthModelConfig, MonoDepthModel
from tripled_tf.schedules import WarmupStepDecay

DATASETS = ("synthetic",)


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
        if self.num_train_samples < self.batch_size:
            raise ValueError(f"num_train_samples ({self.num_train_samples}) must be >= batch_size "
                             f"({self.batch_size})")


def _run_dir(config: TrainConfig) -> pathlib.Path:
    if config.log_dir:
        return pathlib.Path(config.log_dir).resolve()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return (pathlib.Path("runs") / stamp).resolve()


def build_datasets(config: TrainConfig):
    """(training tf.data.Dataset of batch dicts, validation dict of numpy arrays)."""
    from tripled_tf.data import synthetic

    train = synthetic.synthetic_dataset(config.num_train_samples, config.height, config.width,
                                        config.batch_size, seed=config.seed, split="train",
                                        shuffle=True, repeat=True)
    val = synthetic.make_triplets(config.num_val_samples, config.height, config.width,
                                  seed=config.seed, split="val")
    return train, val


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

    train_data, val = build_datasets(config)
    model = MonoDepthModel(model_config)
    model.build_for_size(config.height, config.width)
    before = evaluation.evaluate_depth(model, val["target"], val["depth"])
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

    after = evaluation.evaluate_depth(model, val["target"], val["depth"])
    _report("after training", after)
    shown = slice(0, config.num_preview)
    depths = evaluation.predict_depths(model, val["target"][shown])
    preview = visualize.write_png(run_dir / "preview.png", visualize.preview_grid(
        val["target"][shown], depths, val["depth"][shown]))

    result = {
        "abs_rel_before": before["abs_rel"],
        "abs_rel_after": after["abs_rel"],
        "metrics_before": _round(before),
        "metrics_after": _round(after),
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
