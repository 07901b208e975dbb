"""Run folders: the saved configuration, atomic weight checkpoints, and loading a trained model.

Layout of a run folder::

    config.json                          training + model configuration (enough to rebuild the model)
    checkpoints/ckpt-<step>.weights.h5   model weights (Keras format)
    checkpoints/ckpt-<step>.state.npz    training state: optimiser variables, dropout RNG states
    checkpoints/latest.json              {"step", "weights", "state", "batches"}: the last complete one
    preview.png, result.json, logs/ (TensorBoard)

A checkpoint is complete once latest.json names it: both files are written under temporary names and
renamed, then the index is replaced atomically, and only then are older files removed. A kill at any
moment therefore leaves latest.json pointing at a complete checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import List, Optional

import numpy as np

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
INDEX_FILE = "latest.json"


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (would overwrite a run, or cannot be resumed)."""


def write_json(path, payload: dict) -> str:
    """Writes JSON atomically: a temporary file renamed over the target."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return str(path)


def training_state_variables(model) -> List:
    """Variables a resumed run needs besides the weights: the optimiser's (moments, iteration count,
    loss scale) and the models' random-generator states (dropout), in a fixed order."""
    weight_ids = {id(w) for w in model.weights}
    rng_states = [v for v in model.variables if id(v) not in weight_ids]
    optimizer_variables = list(model.optimizer.variables) if model.optimizer is not None else []
    return optimizer_variables + rng_states


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
                    with_state: bool = True) -> str:
    """Saves weights (and the training state) so that a kill at any moment leaves the last complete
    checkpoint intact (see the module docstring). Returns the weights path.

    Args:
      step: optimiser steps done; batches: training batches consumed (>= step when steps were
        skipped), default step.
    """
    directory = pathlib.Path(run_dir) / CHECKPOINT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"ckpt-{int(step):08d}"
    weights_name = stem + ".weights.h5"
    tmp = directory / ("tmp-" + weights_name)  # Keras insists on the .weights.h5 suffix
    model.save_weights(str(tmp))
    os.replace(tmp, directory / weights_name)
    index = {"step": int(step), "batches": int(step if batches is None else batches),
             "weights": weights_name}
    if with_state:
        state_name = stem + ".state.npz"
        variables = training_state_variables(model)
        tmp = directory / ("tmp-" + state_name)
        with open(tmp, "wb") as handle:
            np.savez(handle, **{f"{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(variables)},
                     paths=np.array([v.path for v in variables]))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, directory / state_name)
        index["state"] = state_name
    write_json(directory / INDEX_FILE, index)
    keep = {weights_name, index.get("state"), INDEX_FILE}
    for old in directory.glob("ckpt-*"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    return str(directory / weights_name)


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


def load_model(run_dir):
    """Rebuilds the model of a run folder and loads its last checkpoint.

    Returns:
      (model, config dict). The model is built at the run's training resolution and accepts any
      size whose sides are multiples of 32.
    """
    config = read_config(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint in {CHECKPOINT_DIR}/")
    model = model_from_config(config)
    model.build_for_size(config["train"]["height"], config["train"]["width"])
    model.load_weights(checkpoint["weights"])
    return model, config
