"""Run folders: the saved configuration, atomic weight checkpoints, and loading a trained model.

Layout of a run folder::

    config.json                          training + model configuration (enough to rebuild the model)
    checkpoints/ckpt-<step>.weights.h5   model weights (Keras format), without the optimiser
    checkpoints/ckpt-<step>.state.npz    training state: optimiser variables (the only copy of Adam's
                                         moments), dropout RNG states, the summary accumulators
    checkpoints/latest.json              {"step", "weights", "state", "batches"}: the last complete one
    depth.weights.h5                     the depth network alone (encoder [+ feature split] + depth
                                         decoder), written when training ends: with config.json, the
                                         lean run folder to share or deploy
    preview.png, result.json, logs/ (TensorBoard)

A checkpoint is complete once latest.json names it: both files are written under temporary names and
renamed, then the index is replaced atomically, and only then are older files removed. Every file is
fsynced before its rename (and the folder after it), so a power cut cannot leave latest.json naming
files whose data never reached the disk. A kill at any moment therefore leaves latest.json pointing
at a complete checkpoint; a write that fails (a full disk) removes what it wrote and leaves the
previous checkpoint the latest.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import re
from typing import List, Optional

import numpy as np

from tripled_tf.atomic_files import atomic_write_bytes, replace_synced

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
INDEX_FILE = "latest.json"
DEPTH_WEIGHTS_FILE = "depth.weights.h5"


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (would overwrite a run, or cannot be resumed)."""


class NonFiniteStateError(ValueError):
    """A checkpoint was refused because a weight or training-state variable holds NaN / Inf."""


class CheckpointWriteError(RunFolderError):
    """A checkpoint could not be written (full disk, quota, permissions); nothing partial is left."""


def write_json(path, payload: dict) -> str:
    """Writes JSON atomically and durably: a temporary file, fsynced, renamed over the target. On
    failure (OSError, e.g. a full disk) the temporary file is removed and the target is unchanged."""
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"), durable=True)


def save_model_weights(model, path) -> None:
    """The model's variables (weights, BatchNorm statistics) as a Keras .weights.h5, without the
    optimiser: its state is saved once, in the checkpoint's state.npz."""
    import keras
    skip = [model.optimizer] if getattr(model, "optimizer", None) is not None else None
    keras.saving.save_weights(model, str(path), objects_to_skip=skip)


def load_model_weights(model, path) -> None:
    """Loads :func:`save_model_weights`' file (or an older one that also holds the optimiser, which
    is then ignored) into a built model; the optimiser, if any, is left to the training state."""
    import keras
    skip = [model.optimizer] if getattr(model, "optimizer", None) is not None else None
    keras.saving.load_weights(model, str(path), objects_to_skip=skip)


def save_depth_weights(model, run_dir) -> str:
    """Writes ``<run_dir>/depth.weights.h5``: the variables of ``model.depth_branch()`` only (what
    inference runs), atomically. With config.json it is a complete folder for predict, evaluate
    (depth), export and ``tripled_tf.load``. Returns its path."""
    import keras
    path = pathlib.Path(run_dir) / DEPTH_WEIGHTS_FILE
    tmp = path.with_name("tmp-" + path.name)  # Keras insists on the .weights.h5 suffix
    try:
        keras.saving.save_weights(model.depth_branch(), str(tmp))
        replace_synced(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return str(path)


def depth_weights(run_dir) -> Optional[str]:
    """The path of the run folder's depth.weights.h5, or None."""
    path = pathlib.Path(run_dir) / DEPTH_WEIGHTS_FILE
    return str(path) if path.is_file() else None


def training_state_variables(model) -> List:
    """Variables a resumed run needs besides the weights: the optimiser's (moments, iteration count,
    loss scale), the models' random-generator states (dropout) and the TensorBoard interval sums, in
    a fixed order."""
    weight_ids = {id(w) for w in model.weights}
    rng_states = [v for v in model.variables if id(v) not in weight_ids]
    optimizer_variables = list(model.optimizer.variables) if model.optimizer is not None else []
    return optimizer_variables + rng_states + list(getattr(model, "interval_variables", []))


def read_training_state(model) -> List[np.ndarray]:
    """The values of :func:`training_state_variables`. Under MultiWorkerMirroredStrategy reading the
    per-replica metric sums is a collective: when the chief saves a checkpoint, every other worker
    must call this too (at the same step), or the workers' collectives fall out of step."""
    return [np.asarray(v.numpy()) for v in training_state_variables(model)]


def state_digest(model) -> str:
    """SHA-256 of every weight (trainable and not: BatchNorm moving statistics) and the training
    state (optimiser iteration and moments, RNG states), in a fixed order: equal digests mean
    bit-identical models. Multi-worker runs report it on every worker."""
    digest = hashlib.sha256()
    for variable in list(model.weights) + training_state_variables(model):
        value = np.ascontiguousarray(variable.numpy())
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save_checkpoint(model, run_dir, step: int, batches: Optional[int] = None,
                    with_state: bool = True, index_extra: Optional[dict] = None) -> str:
    """Saves weights (and the training state) so that a kill at any moment leaves the last complete
    checkpoint intact (see the module docstring). Returns the weights path.

    Args:
      step: optimiser steps done; batches: training batches consumed (>= step when steps were
        skipped), default step.
      index_extra: more entries for latest.json, written atomically with it (e.g. the metrics that
        made this the best checkpoint).
    Raises:
      NonFiniteStateError: a weight or state variable is NaN / Inf (nothing is written).
      CheckpointWriteError: a file could not be written (e.g. the disk is full). The files of this
        checkpoint are removed again; the previous checkpoint stays the latest.
    """
    state = read_training_state(model) if with_state else []  # once: see read_training_state
    # The last line of defence: whatever the caller checked, a poisoned model is never saved.
    named = [(w.path, np.asarray(w.numpy())) for w in model.weights] + list(zip(
        [v.path for v in training_state_variables(model)] if with_state else [], state))
    poisoned = [path for path, value in named
                if value.dtype.kind == "f" and not np.all(np.isfinite(value))]
    if poisoned:
        raise NonFiniteStateError(
            f"refusing to save the step-{int(step)} checkpoint: {len(poisoned)} variables hold "
            f"NaN/Inf ({', '.join(poisoned[:3])}{', ...' if len(poisoned) > 3 else ''})")
    directory = pathlib.Path(run_dir) / CHECKPOINT_DIR
    stem = f"ckpt-{int(step):08d}"
    weights_name = stem + ".weights.h5"
    state_name = stem + ".state.npz" if with_state else None
    written = []  # every path this call created, removed again if it fails
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / ("tmp-" + weights_name)  # Keras insists on the .weights.h5 suffix
        written.append(tmp)
        save_model_weights(model, tmp)
        written.append(directory / weights_name)
        replace_synced(tmp, directory / weights_name)
        index = {**(index_extra or {}), "step": int(step),
                 "batches": int(step if batches is None else batches), "weights": weights_name}
        if with_state:
            variables = training_state_variables(model)
            tmp = directory / ("tmp-" + state_name)
            written.append(tmp)
            with open(tmp, "wb") as handle:
                np.savez(handle, **{f"{i:04d}": value for i, value in enumerate(state)},
                         paths=np.array([v.path for v in variables]))
            written.append(directory / state_name)
            replace_synced(tmp, directory / state_name)
            index["state"] = state_name
        write_json(directory / INDEX_FILE, index)
    except OSError as error:
        # h5py reports a full disk as OSError too (errno may be missing, the text says why). The
        # index may name this step already (a folder fsync failed after its rename): keep its files.
        previous = latest_checkpoint(run_dir)
        kept = {pathlib.Path(previous[k]).name for k in ("weights", "state")
                if previous and previous.get(k)}
        for path in written:
            if path.name not in kept:  # a re-save of the latest step's names leaves them
                path.unlink(missing_ok=True)
        reason = error.strerror or str(error)
        # h5py's text spans lines and names the C buffer; its "error message = '...'" says why.
        found = re.search(r"error message = '([^']*)'", reason)
        reason = " ".join((found.group(1) if found else reason).split())
        last = (f"the last complete checkpoint is still step {previous['step']} ({previous['weights']})"
                if previous else "no complete checkpoint was written")
        raise CheckpointWriteError(f"could not write the step-{int(step)} checkpoint in {directory}: "
                                   f"{reason}; {last}") from error
    keep = {weights_name, state_name, INDEX_FILE}
    for old in directory.glob("ckpt-*"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    return str(directory / weights_name)


BEST_DIR = "best"


def save_best(model, run_dir, step: int, metrics: dict) -> str:
    """Keeps the model of ``step`` as the run's best: ``<run_dir>/best/`` is itself a run folder
    (config.json, weights only), so predict / evaluate / export take it as they take the run.
    ``metrics`` (the validation figures, "abs_rel" among them) go into its latest.json with the
    weights' name, in one atomic write. Returns that folder."""
    best = pathlib.Path(run_dir) / BEST_DIR
    write_json(best / CONFIG_FILE, read_config(run_dir))
    save_checkpoint(model, best, step, with_state=False,
                    index_extra={"validation": {k: float(v) for k, v in metrics.items()}})
    return str(best)


def best_checkpoint(run_dir) -> Optional[dict]:
    """{"step", "weights", "validation": {metric: value}} of the run's best checkpoint, or None."""
    info = latest_checkpoint(pathlib.Path(run_dir) / BEST_DIR)
    return info if info and "validation" in info else None


def restore_training_state(model, state_path) -> None:
    """Loads what :func:`save_checkpoint` wrote into an already built model *and optimiser*.

    Raises:
      ValueError: the state does not belong to this model / optimiser (different variables).
    """
    variables = training_state_variables(model)
    with np.load(state_path) as data:
        # Matched by order and shape: variable paths carry Keras' per-process unique names
        # ("adam_1/..."), which differ between the saving and the resuming process.
        values = [data[f"{i:04d}"] for i in range(len(data.files) - 1)]
        if len(values) != len(variables) or any(
                tuple(v.shape) != tuple(x.shape) for v, x in zip(variables, values)):
            raise ValueError(f"{state_path}: training state of another model or optimiser "
                             f"({len(values)} saved variables, {len(variables)} here)")
        for variable, value in zip(variables, values):
            variable.assign(value)


def latest_checkpoint(run_dir) -> Optional[dict]:
    """{"step", "weights" (absolute path)} of the last complete checkpoint, or None."""
    index = pathlib.Path(run_dir) / CHECKPOINT_DIR / INDEX_FILE
    if not index.is_file():
        return None
    info = json.loads(index.read_text())
    info["weights"] = str(index.parent / info["weights"])
    if info.get("state"):
        info["state"] = str(index.parent / info["state"])
    info.setdefault("batches", info["step"])
    return info


def read_config(run_dir) -> dict:
    path = pathlib.Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a tripled_tf run folder (no {CONFIG_FILE})")
    return json.loads(path.read_text())


def model_config_from_dict(config: dict):
    """The model config of a run's config.json: TripleDConfig for TripleDNet runs, else baseline."""
    from tripled_tf.models.depth_model import DepthModelConfig
    from tripled_tf.models.tripled_net import TripleDConfig

    kind = config.get("train", {}).get("model", "baseline")
    cls = TripleDConfig if kind == "tripled" else DepthModelConfig
    return cls.from_dict(config["model"])


def model_from_config(config: dict):
    """An unbuilt model of the class and configuration a run's config.json describes."""
    from tripled_tf.models.depth_model import MonoDepthModel
    from tripled_tf.models.tripled_net import TripleDConfig, TripleDNet

    model_config = model_config_from_dict(config)
    return (TripleDNet if isinstance(model_config, TripleDConfig) else MonoDepthModel)(model_config)


def load_model(run_dir, depth_only: Optional[bool] = None):
    """Rebuilds the model of a run folder and loads its last checkpoint, or, in a folder without
    one, its depth.weights.h5 (a lean folder: config.json + the depth network).

    Args:
      depth_only: None: the checkpoint if there is one, else the depth weights; True: the depth
        weights only (the rest of the model keeps its initial values); False: the checkpoint only.
    Returns:
      (model, config dict). The model is built at the run's training resolution and accepts any
      size whose sides are multiples of 32.
    Raises:
      FileNotFoundError: no weights of the kind asked for.
    """
    config = read_config(run_dir)
    checkpoint = latest_checkpoint(run_dir) if not depth_only else None
    depth_file = depth_weights(run_dir) if checkpoint is None and depth_only is not False else None
    if checkpoint is None and depth_file is None:
        wanted = {None: f"no checkpoint in {CHECKPOINT_DIR}/ and no {DEPTH_WEIGHTS_FILE}",
                  True: f"no {DEPTH_WEIGHTS_FILE}",
                  False: f"no checkpoint in {CHECKPOINT_DIR}/" + (
                      f" (its {DEPTH_WEIGHTS_FILE} holds the depth network alone)"
                      if depth_weights(run_dir) else "")}[depth_only]
        raise FileNotFoundError(f"{run_dir}: {wanted}")
    model = model_from_config(config)
    model.build_for_size(config["train"]["height"], config["train"]["width"])
    if checkpoint is not None:
        load_model_weights(model, checkpoint["weights"])
    else:
        import keras
        keras.saving.load_weights(model.depth_branch(), depth_file)
    return model, config


# Model-config fields that decide the variables of a baseline model (others, e.g. depth range or
# pose input size, do not).
ARCHITECTURE_FIELDS = ("depth_layers", "pose_layers", "depth_decoder")


def check_init_checkpoint(run_dir, model_config) -> dict:
    """Cheap checks (no TensorFlow) that ``run_dir`` can initialise a model of ``model_config``;
    returns its latest checkpoint ({"step", "weights", ...}).

    Raises:
      RunFolderError naming the folder: not a run folder, no checkpoint, or a model of another
      architecture (with the flags that would match it).
    """
    run_dir = pathlib.Path(run_dir)
    try:
        config = read_config(run_dir)
        theirs = model_config_from_dict(config)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunFolderError(f"--init_checkpoint={run_dir}: {error}") from None
    found = latest_checkpoint(run_dir)
    if found is None:
        lean = (f" (its {DEPTH_WEIGHTS_FILE} holds the depth network alone, not the pose network)"
                if depth_weights(run_dir) else "")
        raise RunFolderError(f"--init_checkpoint={run_dir}: no checkpoint in {CHECKPOINT_DIR}/{lean}")
    kind = config.get("train", {}).get("model", "baseline")
    differ = [f for f in ARCHITECTURE_FIELDS
              if getattr(theirs, f, None) != getattr(model_config, f, None)]
    if type(theirs) is not type(model_config) or differ:
        wanted = " ".join(f"--{f}={getattr(theirs, f)}" for f in ARCHITECTURE_FIELDS)
        raise RunFolderError(f"--init_checkpoint={run_dir}: holds a {kind} model ({wanted}); train "
                             f"with --model={kind} {wanted}")
    return found


def load_init_weights(model, run_dir) -> int:
    """Loads the last checkpoint of another run folder (e.g. a converted published model, see
    ``python -m tripled_tf.convert``) into a built ``model`` as its starting point.

    Only the weights are taken (no optimiser state, no data position): training starts at step 0.
    Returns the number of weights loaded. Raises RunFolderError (see :func:`check_init_checkpoint`).
    """
    found = check_init_checkpoint(run_dir, model.config)
    try:
        load_model_weights(model, found["weights"])
    except ValueError as error:
        raise RunFolderError(f"--init_checkpoint={run_dir}: its weights do not fit this model: "
                             f"{str(error).splitlines()[0]}") from None
    return len(model.weights)
