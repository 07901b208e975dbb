"""What runs beside the optimiser steps: the checks, checkpoints, summaries and evaluations of
:class:`TrainingCallback`, and :class:`ProgressLines`, the console progress when it is not a terminal.
"""
from __future__ import annotations

import pathlib
import sys
import time
from typing import Optional

import keras
import numpy as np

from tripled_tf import checkpoint, evaluation
from tripled_tf.data.records import SkipReport
from tripled_tf.models.depth_model import (INPUT_TERM, NONFINITE_KEY, WEIGHTS_TERM,
                                           nonfinite_term_names)
from tripled_tf.train_config import TrainConfig


class NonFiniteLossError(RuntimeError):
    """A loss term, a BatchNorm statistic or a weight became NaN / Inf; the message names the step,
    the terms and the last intact checkpoint."""


class TrainingCallback(keras.callbacks.Callback):
    """Stops on (or counts) non-finite steps, checkpoints every N steps, writes TensorBoard summaries.

    One callback, because the order matters: a step is checked before anything is written, so a
    poisoned model never reaches a checkpoint or a summary; the summaries (which reset the interval
    means) come before the checkpoint, so a resumed run continues the interval exactly.

    Args:
      run_dir: the run folder; batches: batches consumed before this fit (resume); config: the
        TrainConfig; summary_batch: a small batch for image summaries (None: no images); is_chief:
        only the chief writes files (multi-worker); held_out: frames with ground truth
        ({"target", "depth", "crop"}) evaluated every ``config.eval_every`` steps (None: never);
        last_checkpoint: step of the checkpoint this fit resumed from (None: a fresh run);
        skip_report: the training data's SkipReport, whose count goes to TensorBoard
        ("skipped_samples", samples dropped as unusable so far).
    """

    def __init__(self, run_dir, config: TrainConfig, batches: int, summary_batch: Optional[dict] = None,
                 is_chief: bool = True, held_out: Optional[dict] = None,
                 last_checkpoint: Optional[int] = None, skip_report: Optional[SkipReport] = None):
        super().__init__()
        self.skip_report = skip_report
        # The lowest held-out AbsRel so far (also of the run this one resumes) and its step.
        best = (checkpoint.best_checkpoint(run_dir) if is_chief and last_checkpoint is not None
                else None)
        self.best = ((best["step"], best["validation"]["abs_rel"]) if best else None)
        self.held_out = held_out
        self.evaluations = []  # (step, metrics) of the periodic held-out evaluations
        self.run_dir = pathlib.Path(run_dir)
        self.config = config
        self.batches = batches
        self.skipped = 0
        self.consecutive_skipped = 0
        self.summary_batch = summary_batch
        self.is_chief = is_chief
        self.last_checkpoint = last_checkpoint
        self._writer = None
        self._clock = None
        self._clock_batches = 0
        self._last_step = None  # the optimiser step after the previous batch

    # Keras calls these with logs whose values may be tensors.
    def on_train_begin(self, logs=None):
        import tensorflow as tf
        if self.is_chief:
            self._writer = tf.summary.create_file_writer(str(self.run_dir / "logs" / "train"))
        self._clock, self._clock_batches = time.perf_counter(), self.batches
        self._last_step = self._step()

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def _last_intact(self, diverged: bool = False) -> str:
        """What the last checkpoint holds; ``diverged``: the current weights gave a non-finite loss
        on a finite batch, so a checkpoint of exactly these weights is no good either."""
        if self.last_checkpoint is None:
            return "no checkpoint was written"
        if diverged and self.last_checkpoint == self._step():
            return (f"the last checkpoint (step {self.last_checkpoint}) holds these same weights: it "
                    f"may predict NaN/Inf too")
        return f"the last checkpoint (step {self.last_checkpoint}) is intact"

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self.batches += 1
        bad = nonfinite_term_names(float(logs.get(NONFINITE_KEY, 0.0)), self.model.checked_terms)
        if WEIGHTS_TERM in bad:
            # The update was applied and cannot be undone: never skipped, never saved.
            raise NonFiniteLossError(
                f"non-finite {WEIGHTS_TERM} at step {self._step()} (batch {self.batches}): a weight "
                f"or optimiser variable is NaN/Inf; training stopped without saving it "
                f"({self._last_intact()}). Lower --learning_rate or --grad_clip_norm.")
        if bad:
            where = f"step {self._step() + 1} (batch {self.batches})"
            # A NaN loss from finite data: the weights themselves diverged (e.g. a learning rate
            # far too high makes the next forward pass overflow).
            diverged = INPUT_TERM not in bad
            cause = (" on a finite batch: the model diverged (lower --learning_rate)" if diverged
                     else "")
            if not self.config.skip_nonfinite:
                raise NonFiniteLossError(
                    f"non-finite loss at {where}: {', '.join(bad)} is NaN/Inf{cause}; the update was "
                    f"not applied and training stopped ({self._last_intact(diverged)}). "
                    f"--skip_nonfinite skips such batches.")
            self.skipped += 1
            self.consecutive_skipped += 1
            print(f"\nskipped batch {self.batches}: non-finite {', '.join(bad)} "
                  f"({self.skipped} skipped so far)", flush=True)
            limit = self.config.max_consecutive_nonfinite
            if limit and self.consecutive_skipped >= limit:
                raise NonFiniteLossError(
                    f"{self.consecutive_skipped} batches in a row had a non-finite loss (the last at "
                    f"{where}: {', '.join(bad)}); giving up (--max_consecutive_nonfinite={limit}, "
                    f"{self._last_intact(diverged)})")
            return
        self.consecutive_skipped = 0
        step = self._step()
        if step == self._last_step:
            return  # a micro-batch whose gradient was accumulated (--accumulate_steps): no update yet
        self._last_step = step
        if self.config.summary_every and step % self.config.summary_every == 0:
            # Every worker reads (and so resets) the interval means: their training states stay equal.
            interval = self.model.interval_means()
            if self._writer is not None:
                self._write_scalars(step, interval)
        if self.config.checkpoint_every and step % self.config.checkpoint_every == 0:
            if self.is_chief:
                checkpoint.save_checkpoint(self.model, self.run_dir, step, self.batches)
            else:  # the chief's reads of the training state are collectives: take part
                checkpoint.read_training_state(self.model)
            self.last_checkpoint = step
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
        self.keep_if_best(step, values)
        print(f"\nstep {step}: held-out AbsRel {values['abs_rel']:.4f}  RMSE {values['rmse']:.3f} m  "
              f"δ<1.25 {values['a1']:.3f}", flush=True)
        if self._writer is not None:
            with self._writer.as_default(step=step):
                for name in ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3"):
                    tf.summary.scalar(f"held_out/{name}", float(values[name]))
            self._writer.flush()
        return values

    def keep_if_best(self, step: int, values: dict) -> None:
        """Saves the model as the run's best (``<run_dir>/best/``) if its held-out AbsRel is the
        lowest so far (the chief only)."""
        if not self.is_chief or not np.isfinite(values["abs_rel"]):
            return
        if self.best is None or values["abs_rel"] < self.best[1]:
            checkpoint.save_best(self.model, self.run_dir, step, round_values(values))
            self.best = (step, float(values["abs_rel"]))

    def _write_scalars(self, step: int, losses: dict) -> None:
        """Writes ``losses`` (each term's mean over the steps since the last summary) and the
        learning rate, throughput and skip count at ``step``."""
        import tensorflow as tf
        now = time.perf_counter()
        images_per_s = ((self.batches - self._clock_batches) * self.config.batch_size
                        / max(now - self._clock, 1e-9))
        self._clock, self._clock_batches = now, self.batches
        learning_rate = self.model.optimizer.learning_rate
        with self._writer.as_default(step=step):
            for name, value in losses.items():
                tf.summary.scalar(f"loss/{name}" if name != "loss" else "loss", value)
            tf.summary.scalar("learning_rate", float(learning_rate))
            tf.summary.scalar("images_per_s", images_per_s)
            tf.summary.scalar("skipped_batches", self.skipped)
            if self.skip_report is not None:
                tf.summary.scalar("skipped_samples", len(self.skip_report))
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


class ProgressLines(keras.callbacks.Callback):
    """One console line every ``every`` batches (and after the last): batch, loss, images/s.

    Keras' progress bar rewrites one line with carriage returns and escape codes; redirected to a
    file it becomes one huge line. This is the progress where stdout is not a terminal.
    """

    def __init__(self, total_batches: int, every: int, batch_size: int, first_batch: int = 0):
        super().__init__()
        self.total = first_batch + total_batches
        self.every = max(1, every)
        self.batch_size = batch_size
        self.batches = first_batch
        self._clock, self._clock_batches = None, first_batch

    def on_train_begin(self, logs=None):
        self._clock = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches % self.every and self.batches != self.total:
            return
        now = time.perf_counter()
        rate = (self.batches - self._clock_batches) * self.batch_size / max(now - self._clock, 1e-9)
        self._clock, self._clock_batches = now, self.batches
        loss = (logs or {}).get("loss")
        loss_text = f"  loss {float(loss):.4f}" if loss is not None else ""
        print(f"batch {self.batches}/{self.total}{loss_text}  {rate:.1f} images/s", flush=True)


def progress_callbacks(config: TrainConfig, total_batches: int, first_batch: int,
                       is_chief: bool) -> tuple:
    """(Keras' fit verbosity, extra callbacks) for ``config.verbose``: Keras' bar on a terminal,
    :class:`ProgressLines` (every ``summary_every`` batches, else 50) otherwise; nothing from
    workers other than the chief."""
    if not config.verbose or not is_chief:
        return 0, []
    if config.verbose == 1 and sys.stdout.isatty():
        return 1, []
    return 0, [ProgressLines(total_batches, config.summary_every or 50, config.batch_size,
                             first_batch)]


def round_values(values: dict) -> dict:
    """Floats rounded to 6 decimals (result.json, best/)."""
    return {k: (round(float(v), 6) if isinstance(v, (float, np.floating)) else v)
            for k, v in values.items()}
