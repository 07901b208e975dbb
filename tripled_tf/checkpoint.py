"""Run folders: the saved configuration, atomic weight checkpoints, and loading a trained model.

Layout of a run folder::

    config.json                  training + model configuration (enough to rebuild the model)
    checkpoints/latest.weights.h5  weights of the last checkpoint (Keras format)
    checkpoints/latest.json      {"step": N, "weights": "latest.weights.h5"}
    preview.png, result.json, logs/ (TensorBoard)
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Optional

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
WEIGHTS_FILE = "latest.weights.h5"
INDEX_FILE = "latest.json"


def write_json(path, payload: dict) -> str:
    """Writes JSON atomically: a temporary file renamed over the target."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return str(path)


def save_checkpoint(model, run_dir, step: int) -> str:
    """Saves the model weights so that a kill at any moment leaves the previous checkpoint intact.

    The weights go to a temporary file that is renamed over the old one (atomic on POSIX), and only
    then is the index updated. Returns the weights path.
    """
    directory = pathlib.Path(run_dir) / CHECKPOINT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / ("tmp-" + WEIGHTS_FILE)  # Keras insists on the .weights.h5 suffix
    model.save_weights(str(tmp))
    final = directory / WEIGHTS_FILE
    os.replace(tmp, final)
    write_json(directory / INDEX_FILE, {"step": int(step), "weights": WEIGHTS_FILE})
    return str(final)


def latest_checkpoint(run_dir) -> Optional[dict]:
    """{"step", "weights" (absolute path)} of the last complete checkpoint, or None."""
    index = pathlib.Path(run_dir) / CHECKPOINT_DIR / INDEX_FILE
    if not index.is_file():
        return None
    info = json.loads(index.read_text())
    info["weights"] = str(index.parent / info["weights"])
    return info


def read_config(run_dir) -> dict:
    path = pathlib.Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a tripled_tf run folder (no {CONFIG_FILE})")
    return json.loads(path.read_text())


def load_model(run_dir):
    """Rebuilds the model of a run folder and loads its last checkpoint.

    Returns:
      (model, config dict). The model is built at the run's training resolution and accepts any
      size whose sides are multiples of 32.
    """
    from tripled_tf.models.depth_model import DepthModelConfig, MonoDepthModel

    config = read_config(run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint in {CHECKPOINT_DIR}/")
    model = MonoDepthModel(DepthModelConfig.from_dict(config["model"]))
    model.build_for_size(config["train"]["height"], config["train"]["width"])
    model.load_weights(checkpoint["weights"])
    return model, config
