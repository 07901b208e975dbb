"""Learning-rate schedule of the references: linear warm-up, then step decay (docs/method.md §6)."""
from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf


class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr(it) = base · (1 − (1 − it/warmup_steps) · (1 − warmup_ratio)) during warm-up (mmcv's linear
    warm-up, per iteration), then base · decay_factor^k where k = number of ``decay_steps`` boundaries
    already passed (the references decay per epoch: pass epoch boundaries in iterations).

    Args:
      base_learning_rate: lr after warm-up (1e-4).
      warmup_steps: iterations of warm-up (500); 0 disables it.
      warmup_ratio: lr at iteration 0 as a fraction of the base (1/3).
      decay_steps: iterations at which the lr is multiplied by ``decay_factor`` (0.5).
      steps_per_update: batches per optimiser update (gradient accumulation): the optimiser calls the
        schedule with its batch counter, and iteration = batch // steps_per_update.
    """

    def __init__(self, base_learning_rate: float = 1e-4, warmup_steps: int = 500,
                 warmup_ratio: float = 1.0 / 3.0, decay_steps: Sequence[int] = (),
                 decay_factor: float = 0.5, steps_per_update: int = 1):
        if base_learning_rate <= 0:
            raise ValueError(f"base_learning_rate must be positive, got {base_learning_rate}")
        if warmup_steps < 0 or not 0 < warmup_ratio <= 1:
            raise ValueError(f"need warmup_steps >= 0 and 0 < warmup_ratio <= 1, got {warmup_steps}, "
                             f"{warmup_ratio}")
        self.base_learning_rate = float(base_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.warmup_ratio = float(warmup_ratio)
        self.decay_steps = [int(s) for s in sorted(decay_steps)]
        self.decay_factor = float(decay_factor)
        if steps_per_update < 1:
            raise ValueError(f"steps_per_update must be >= 1, got {steps_per_update}")
        self.steps_per_update = int(steps_per_update)

    def __call__(self, step):
        if self.steps_per_update > 1:
            step = tf.math.floordiv(step, self.steps_per_update)
        step = tf.cast(step, tf.float32)
        passed = tf.zeros([], tf.float32)
        for boundary in self.decay_steps:
            passed += tf.cast(step >= boundary, tf.float32)
        decayed = self.base_learning_rate * tf.pow(self.decay_factor, passed)
        if self.warmup_steps == 0:
            return decayed
        progress = tf.minimum(step / self.warmup_steps, 1.0)
        warmup = 1.0 - (1.0 - progress) * (1.0 - self.warmup_ratio)
        return decayed * warmup

    def get_config(self):
        return {"base_learning_rate": self.base_learning_rate, "warmup_steps": self.warmup_steps,
                "warmup_ratio": self.warmup_ratio, "decay_steps": list(self.decay_steps),
                "decay_factor": self.decay_factor, "steps_per_update": self.steps_per_update}
