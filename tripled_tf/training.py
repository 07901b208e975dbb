"""Training: build data, model and optimiser from typed configs, fit, checkpoint, evaluate, preview.

``python -m tripled_tf.train`` only turns flags into a :class:`~tripled_tf.train_config.TrainConfig`
and a :class:`~tripled_tf.models.depth_model.DepthModelConfig` and calls :func:`train`. The parts
live by concern: the options in ``train_config``, the model and data in ``train_sources``, what runs
beside the steps in ``train_callbacks``, tf.distribute in ``train_distribution``; this module is the
run itself.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import shutil
import time
from typing import Optional

import cv2
import keras
import numpy as np

from tripled_tf import checkpoint, evaluation, visualize
from tripled_tf.data.records import SettingError
from tripled_tf.models.depth_model import NONFINITE_KEY, DepthModelConfig
from tripled_tf.models.tripled_net import TripleDConfig
from tripled_tf.schedules import WarmupStepDecay
from tripled_tf.train_callbacks import TrainingCallback, progress_callbacks, round_values
from tripled_tf.train_config import DATA_ORDER_FIELDS, TrainConfig, schedule_in_steps
from tripled_tf.train_distribution import (check_workers_agree, is_chief, make_strategy,
                                           set_synchronized_batch_norm)
from tripled_tf.train_sources import build_model, pipeline_config, training_sources


def _run_dir(config: TrainConfig) -> pathlib.Path:
    if config.log_dir:
        return pathlib.Path(config.log_dir).resolve()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return (pathlib.Path("runs") / stamp).resolve()


def _differing_fields(saved: dict, config: TrainConfig) -> list:
    """``DATA_ORDER_FIELDS`` whose value in a saved config.json differs from ``config``."""
    current = json.loads(json.dumps(dataclasses.asdict(config)))  # tuples -> lists, as saved
    defaults = json.loads(json.dumps(dataclasses.asdict(TrainConfig())))
    return [name for name in DATA_ORDER_FIELDS
            if saved.get(name, defaults[name]) != current[name]]


def _check_run_folder(run_dir: pathlib.Path, config: TrainConfig, model_config) -> Optional[dict]:
    """The checkpoint to resume from, or None; refuses to silently overwrite a trained run, and to
    --resume a folder without a checkpoint or with another data order or model."""
    if run_dir.exists() and not run_dir.is_dir():
        raise checkpoint.RunFolderError(f"--log_dir={run_dir} is a file, not a run folder")
    latest = checkpoint.latest_checkpoint(run_dir)
    if latest is None and config.resume and config.strategy != "multi_worker":
        # (Workers of a multi-worker run check this together, after agreeing on the position.)
        raise checkpoint.RunFolderError(
            f"--resume: {run_dir} holds no checkpoint ({checkpoint.CHECKPOINT_DIR}/"
            f"{checkpoint.INDEX_FILE}); check --log_dir, or leave out --resume to start a new run")
    if latest is None or config.overwrite:
        return None
    if not config.resume:
        raise checkpoint.RunFolderError(
            f"{run_dir} already holds a checkpoint (step {latest['step']}); pass --resume to continue "
            f"it, --overwrite to start again there, or choose another --log_dir")
    try:
        saved = checkpoint.read_config(run_dir)
    except FileNotFoundError as error:
        raise checkpoint.RunFolderError(f"--resume: {error}") from None
    if saved.get("train", {}).get("model", "baseline") != config.model or \
            checkpoint.model_config_from_dict(saved) != model_config:
        raise checkpoint.RunFolderError(f"--resume: {run_dir} was trained with another model "
                                        f"configuration (see its {checkpoint.CONFIG_FILE})")
    differing = _differing_fields(saved.get("train", {}), config)
    if differing:
        was = ", ".join(f"--{name}={saved['train'].get(name)!r} (now {getattr(config, name)!r})"
                        for name in differing)
        raise checkpoint.RunFolderError(
            f"--resume: {run_dir} was trained with {was}; these fix the data order, so the run "
            f"could not continue exactly: pass the run's values (see its {checkpoint.CONFIG_FILE})")
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
    check_tensorboard(config)
    if resume_from is None and config.init_checkpoint:
        checkpoint.check_init_checkpoint(config.init_checkpoint, model_config)
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


def check_tensorboard(config: TrainConfig) -> None:
    """Refuses up front, not at the first summary after minutes of setup, to train with summaries
    when TensorBoard (tf.summary's scalar / image ops) is not installed."""
    if not (config.summary_every or config.image_summary_every or config.eval_every):
        return
    try:
        import tensorboard  # noqa: F401  (tf.summary.scalar / image live in it)
    except ImportError as error:
        raise SettingError(
            f"TensorBoard summaries need the tensorboard package ({error}): pip install tensorboard, "
            f"or pass --summary_every=0 --image_summary_every=0 --eval_every=0") from None


def _train(config, model_config, run_dir, resume_from) -> dict:
    strategy = make_strategy(config.strategy)
    chief = is_chief(strategy)
    _check_replicas(config, strategy.num_replicas_in_sync)
    make_dataset, num_samples, held_out = training_sources(config)
    config = schedule_in_steps(config, num_samples)
    if chief:
        _prepare_run_folder(run_dir, config, model_config, fresh=resume_from is None)
    model = _compiled_model(config, model_config, strategy, fresh=resume_from is None)
    batches = _resume(model, resume_from, run_dir)
    if config.strategy == "multi_worker":
        check_workers_agree(strategy, int(model.optimizer.iterations.numpy()), batches)
        if config.resume and resume_from is None:  # on every worker alike, after the agreement
            raise checkpoint.RunFolderError(f"--resume: {run_dir} holds no checkpoint; check "
                                            f"--log_dir, or leave out --resume to start a new run")

    before = after = None
    if held_out is not None and resume_from is None:
        before = _evaluate(model, held_out, "before training")
    pipe = pipeline_config(config, model_config, start_batch=batches)
    if config.strategy == "default":
        train_data = make_dataset(pipe)
    else:
        train_data = strategy.distribute_datasets_from_function(
            lambda context: make_dataset(pipe, context))
    callback = TrainingCallback(run_dir, config, batches, _summary_batch(config, make_dataset, pipe,
                                                                          chief),
                                chief, held_out,
                                last_checkpoint=int(resume_from["step"]) if resume_from else None,
                                skip_report=make_dataset.skip_report)
    history, train_seconds = _fit(model, config, train_data, callback, chief)
    if make_dataset.skip_report:  # frames found unreadable while decoding are only known now
        print(f"{config.dataset}: training data {make_dataset.skip_report.summary()}", flush=True)
    step = int(model.optimizer.iterations.numpy())
    weights = depth_weights = None
    if chief:
        weights = checkpoint.save_checkpoint(model, run_dir, step, callback.batches)
        depth_weights = checkpoint.save_depth_weights(model, run_dir)
        callback.write_images(step)
    else:  # the chief's reads of the training state are collectives: take part
        checkpoint.read_training_state(model)
    callback.close()

    if held_out is not None:
        after = _evaluate(model, held_out, "after training")
        if config.eval_every:
            callback.keep_if_best(step, after)
    digest = checkpoint.state_digest(model) if config.strategy == "multi_worker" else None
    if not chief:
        return {"steps": step, "chief": False, "weights_sha256": digest}
    result = {"model": type(model).__name__,
              **_result_metrics(before, after, history),
              **_result_progress(config, callback, make_dataset, resume_from, step, train_seconds),
              "replicas": strategy.num_replicas_in_sync,
              "checkpoint": weights,
              "depth_weights": depth_weights,
              # The lowest held-out AbsRel of the periodic evaluations (--eval_every /
              # --eval_every_epoch) and the final one, kept as a run folder of its own.
              "best_step": callback.best[0] if callback.best else None,
              "best_abs_rel": round(callback.best[1], 6) if callback.best else None,
              "best_checkpoint": (str(run_dir / checkpoint.BEST_DIR) if callback.best else None),
              "preview": _write_preview(model, config, run_dir, held_out, lambda: make_dataset(pipe)),
              "run_dir": str(run_dir)}
    if digest is not None:
        result["weights_sha256"] = digest
    checkpoint.write_json(run_dir / "result.json", result)
    return result


def _check_replicas(config: TrainConfig, replicas: int) -> None:
    """Refuses settings the strategy's replicas cannot serve."""
    if config.batch_size % replicas:
        raise SettingError(f"--batch_size={config.batch_size} does not split over {replicas} "
                           f"replicas: use a multiple of {replicas}")
    if replicas > 1 and config.skip_nonfinite:
        raise SettingError("--skip_nonfinite needs a single replica (a conditional update cannot "
                           "wrap tf.distribute's cross-replica merge); without it training stops "
                           "instead")


def _prepare_run_folder(run_dir: pathlib.Path, config: TrainConfig, model_config,
                        fresh: bool) -> None:
    """Creates the run folder and writes config.json ({"train": ..., "model": ...}, the resolved
    schedule); a fresh run (also --overwrite) drops an earlier run's best model. The depth weights
    of an earlier (or resumed) run go until this one ends: a lean copy must never be stale."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise checkpoint.RunFolderError(f"--log_dir={run_dir}: cannot create the run folder "
                                        f"({error.strerror or error})") from None
    checkpoint.write_json(run_dir / checkpoint.CONFIG_FILE,
                          {"train": dataclasses.asdict(config), "model": model_config.to_dict()})
    if fresh:
        shutil.rmtree(run_dir / checkpoint.BEST_DIR, ignore_errors=True)
    (run_dir / checkpoint.DEPTH_WEIGHTS_FILE).unlink(missing_ok=True)


def _compiled_model(config: TrainConfig, model_config, strategy, fresh: bool):
    """The model under ``strategy``'s scope, initialised (pretrained encoders or --init_checkpoint
    for a fresh run), compiled, with its optimiser's variables created."""
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        model = build_model(config, model_config,
                            load_pretrained=fresh and not config.init_checkpoint)
        if fresh and config.init_checkpoint:
            checkpoint.load_init_weights(model, config.init_checkpoint)
            print(f"initialised from {config.init_checkpoint}", flush=True)
        if replicas > 1:
            set_synchronized_batch_norm(model)
        model.compile(optimizer=make_optimizer(config, replicas), jit_compile=config.jit_compile,
                      run_eagerly=config.run_eagerly)
        model.optimizer.build(model.trainable_variables)
    return model


def _resume(model, resume_from: Optional[dict], run_dir) -> int:
    """Restores the checkpoint ``resume_from`` (weights, optimiser state); returns the batches it
    had consumed (0 for a fresh run)."""
    if resume_from is None:
        return 0
    checkpoint.load_model_weights(model, resume_from["weights"])
    checkpoint.restore_training_state(model, resume_from["state"])
    batches = int(resume_from["batches"])
    print(f"resuming {run_dir} at step {resume_from['step']} (batch {batches})", flush=True)
    return batches


def _summary_batch(config: TrainConfig, make_dataset, pipe, chief: bool) -> Optional[dict]:
    """Two samples of the first batch, for the TensorBoard images (None: no image summaries)."""
    if not (config.image_summary_every and chief):
        return None
    first = next(iter(make_dataset(dataclasses.replace(pipe, start_batch=0))))
    return {k: v[:2] for k, v in first.items()}


def _fit(model, config: TrainConfig, train_data, callback, chief: bool):
    """Runs the batches left after ``callback.batches``; returns (Keras history or None, seconds)."""
    remaining = max(config.num_steps * config.accumulate_steps - callback.batches, 0)
    verbose, progress = progress_callbacks(config, remaining, callback.batches, chief)
    start = time.time()
    history = None
    if remaining:
        history = model.fit(train_data, epochs=1, steps_per_epoch=remaining,
                            callbacks=[callback, *progress], verbose=verbose, shuffle=False)
    return history, time.time() - start


def _evaluate(model, held_out: dict, when: str) -> dict:
    values = evaluation.evaluate_depth(model, held_out["target"], held_out["depth"], held_out["crop"])
    print(f"Held-out {values['num_images']} frames, {when}: AbsRel {values['abs_rel']:.4f}  "
          f"RMSE {values['rmse']:.3f} m  δ<1.25 {values['a1']:.3f}  (median-scaled)", flush=True)
    return values


def _result_metrics(before: Optional[dict], after: Optional[dict], history) -> dict:
    """result.json's held-out metrics before / after training and the final loss terms."""
    final = {k: v[-1] for k, v in history.history.items() if k != NONFINITE_KEY} if history else {}
    return {"abs_rel_before": before["abs_rel"] if before else None,
            "abs_rel_after": after["abs_rel"] if after else None,
            "metrics_before": round_values(before) if before else None,
            "metrics_after": round_values(after) if after else None,
            "final_losses": round_values(final)}


def _result_progress(config: TrainConfig, callback, make_dataset, resume_from, step: int,
                     train_seconds: float) -> dict:
    """result.json's counts: steps, batches, skips, the held-out curve, throughput."""
    trained_batches = callback.batches - (int(resume_from["batches"]) if resume_from else 0)
    return {"steps": step,
            "batches": callback.batches,
            "skipped_batches": callback.skipped,
            "skipped_samples": {"train": make_dataset.skip_report.as_dict(),
                                "held_out": make_dataset.held_out_skip_report.as_dict()},
            "held_out_curve": [[s, round(float(v["abs_rel"]), 6)] for s, v in callback.evaluations],
            "resumed_from": int(resume_from["step"]) if resume_from else None,
            "train_seconds": round(train_seconds, 1),
            "images_per_second": round(trained_batches * config.batch_size
                                       / max(train_seconds, 1e-9), 2)}


def _write_preview(model, config: TrainConfig, run_dir, held_out, make_training_data) -> Optional[str]:
    """preview.png: input | predicted depth | ground truth (held-out frames where there are some,
    else training frames); None with num_preview=0."""
    if not config.num_preview:
        return None
    if held_out is not None:
        images = held_out["target"][:config.num_preview]
        ground_truth = [d for d in held_out["depth"][:config.num_preview]]
    else:
        images = np.concatenate([b["target"].numpy() for b in make_training_data().take(
            -(-config.num_preview // config.batch_size))])[:config.num_preview]
        ground_truth = None
    depths = evaluation.predict_depths(model, images)
    if ground_truth is not None:  # shown at the image's size (KITTI's is native size)
        ground_truth = [_resize_nearest(d, images.shape[1:3]) for d in ground_truth]
    return visualize.write_png(pathlib.Path(run_dir) / "preview.png",
                               visualize.preview_grid(images, depths, ground_truth))


def make_optimizer(config: TrainConfig, replicas: int = 1) -> keras.optimizers.Optimizer:
    """Adam with the warm-up / step-decay schedule and global-norm gradient clipping.

    ``replicas``: the strategy's ``num_replicas_in_sync``. Keras clips each replica's gradient
    before it sums them across replicas, so with R replicas a plain ``global_clipnorm`` would clip
    at about R x the norm. :meth:`MonoDepthModel.train_step` therefore sums the gradients itself
    and hands every replica the same G / R; clipping G / R at ``grad_clip_norm / R`` is clipping
    the global gradient G at ``grad_clip_norm``, and the optimiser's own sum of the R equal parts
    gives back the clipped G.

    With ``config.accumulate_steps`` N > 1, Keras' gradient accumulation: each batch's gradient is
    added up and every N-th batch updates with the mean of the N, clipped as above (after the mean:
    the clip sees the accumulated gradient, as the reference's clip sees its whole batch). The
    schedule is called with Keras' batch counter, hence ``steps_per_update``.
    """
    schedule = WarmupStepDecay(config.learning_rate, config.warmup_steps, config.warmup_ratio,
                               config.decay_steps, config.decay_factor,
                               steps_per_update=config.accumulate_steps)
    clip_norm = config.grad_clip_norm / replicas if config.grad_clip_norm else None
    return keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                                 global_clipnorm=clip_norm,
                                 gradient_accumulation_steps=(config.accumulate_steps
                                                              if config.accumulate_steps > 1 else None))


def _resize_nearest(depth, size) -> np.ndarray:
    depth = np.squeeze(np.asarray(depth, np.float32))
    return cv2.resize(depth, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)
