"""A trained depth network as a plain function, whatever its format: the one place formats are told apart.

``load_depth_fn(path)`` accepts
  - a training run folder (config.json + checkpoints/): the Keras model, any multiple-of-32 size;
  - an exported SavedModel folder (``python -m tripled_tf.export --format=saved_model``): its
    ``model_input`` signature, at the exported size;
  - a .tflite file (``--format=tflite``, any quantisation): through ``tripled_edge.runtime`` (LiteRT), at the
    exported size.
and returns a :class:`DepthFunction` that ``python -m tripled_tf.evaluate`` and ``python -m
tripled_tf.predict`` both use, so a quantised model is checked with the same command and the same
code path as the Keras one. Importing this module does not import TensorFlow; loading does (except
for .tflite files).
"""
from __future__ import annotations

import pathlib
import weakref
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from tripled_tf import checkpoint as run_folder
from tripled_tf.data.records import BadInputError

SAVED_MODEL_FILE = "saved_model.pb"
RUN_FOLDER_HELP = ("expected a training run folder (config.json + checkpoints/), an exported "
                   "SavedModel folder or a .tflite file")


class DepthFunction(NamedTuple):
    """What evaluation and prediction need from a model, whatever its format.

    Attributes:
      predict: images [N, H, W, 3] float32 in [0, 1] at the model's input size -> [N, h, w] float32
        sigmoid disparity σ in [0, 1] (h, w: the network's output size, here H/2 x W/2).
      input_size: (height, width) the model runs at (training or export size; multiples of 32).
      min_depth, max_depth: the depths σ = 1 and σ = 0 map to (the network's units).
      description: what was loaded.
      any_size: whether ``predict`` accepts other input sizes (multiples of 32) than ``input_size``.
      format: "run_folder", "saved_model" or "tflite".
    """
    predict: Callable[[np.ndarray], np.ndarray]
    input_size: Tuple[int, int]
    min_depth: float
    max_depth: float
    description: str = ""
    any_size: bool = True
    format: str = "run_folder"


# ------------------------------------------------------------------------------------------------
# Keras models

# One compiled σ_0 function per model: a training run evaluates the same model many times
# (--eval_every), and a fresh tf.function per call would retrace every time.
_PREDICT_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _predict_function(model):
    import tensorflow as tf

    function = _PREDICT_FUNCTIONS.get(model)
    if function is None:
        model_ref = weakref.ref(model)  # a strong reference here would keep the model alive forever
        function = tf.function(lambda x: model_ref()(x, training=False)[0], reduce_retracing=True)
        _PREDICT_FUNCTIONS[model] = function
    return function


def _check_images(images) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected [N, H, W, 3], got shape {list(images.shape)}")
    return images


def predict_disparities(model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """The finest sigmoid disparity σ_0 of a Keras depth model for frames, in inference mode.

    Args:
      model: a depth model whose call returns the multi-scale disparities, finest first.
      images: [N, H, W, 3] float32 in [0, 1].
    Returns:
      [N, H/2, W/2] float32 σ_0 (the evaluation resizes it once, straight to the ground truth's size).
    """
    import tensorflow as tf

    images = _check_images(images)
    predict = _predict_function(model)
    out = [predict(tf.constant(images[i:i + batch_size]))[..., 0].numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out, axis=0)


def from_keras(model, input_size: Tuple[int, int], batch_size: int = 8,
               description: str = "") -> DepthFunction:
    """A Keras depth model (MonoDepthModel / TripleDNet) as a DepthFunction."""
    return DepthFunction(lambda images: predict_disparities(model, images, batch_size),
                         (int(input_size[0]), int(input_size[1])), float(model.config.min_depth),
                         float(model.config.max_depth), description, True, "run_folder")


def as_depth_function(model) -> DepthFunction:
    """A DepthFunction as is; a Keras model wrapped (any size, described by its class)."""
    if isinstance(model, DepthFunction):
        return model
    return from_keras(model, (0, 0), description=type(model).__name__)


# ------------------------------------------------------------------------------------------------
# Frames in, depth out: the one pre/post-processing of predict, tripled_tf.load and evaluation


def predict_frames(depth_fn: DepthFunction, frames: Sequence[np.ndarray],
                   input_size: Optional[Tuple[int, int]] = None) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Depth of uint8 RGB frames of any size, at their own size.

    Each frame is resized to the model's input size as the training pipeline resizes frames
    (``tripled_edge.resample.prepare_image``: /255, lanczos3 with antialiasing), predicted in one batch, and
    its σ brought back to the frame's size: the scaled disparity is resized bilinearly (half-pixel
    centres) and inverted, as the references' evaluation does (``evaluation.disparity_to_depth_at``).

    Args:
      depth_fn: the model (:func:`load_depth_fn`).
      frames: [H_i, W_i, 3] uint8 RGB arrays (sizes may differ).
      input_size: (height, width) for the model; default ``depth_fn.input_size``.
    Returns:
      per frame (σ [H_i, W_i] float32 sigmoid disparity in [0, 1], depth [H_i, W_i] float32 in the
      network's units, between min_depth and max_depth).
    """
    import cv2

    from tripled_edge.resample import prepare_image
    from tripled_tf.evaluation import disparity_to_depth_at  # TensorFlow; loaded with the model anyway

    if not len(frames):
        return []
    size = tuple(input_size or depth_fn.input_size)
    disps = np.asarray(depth_fn.predict(np.stack([prepare_image(f, size) for f in frames])),
                       np.float32)
    out = []
    for frame, disp in zip(frames, disps):
        height, width = frame.shape[:2]
        disp_full = cv2.resize(disp, (width, height), interpolation=cv2.INTER_LINEAR)
        depth = disparity_to_depth_at(disp, (height, width), depth_fn.min_depth, depth_fn.max_depth)
        out.append((disp_full.astype(np.float32), depth.astype(np.float32)))
    return out


# ------------------------------------------------------------------------------------------------
# Checking and loading paths


def is_tflite(path) -> bool:
    path = pathlib.Path(path)
    return path.is_file() and path.suffix.lower() == ".tflite"


def is_saved_model(path) -> bool:
    return (pathlib.Path(path) / SAVED_MODEL_FILE).is_file()


def check_run_folder(path, depth_only_ok: bool = True) -> pathlib.Path:
    """Cheap checks of a training run folder (no TensorFlow); raises BadInputError naming the path.

    ``depth_only_ok``: a lean folder (config.json + depth.weights.h5, no checkpoint) will do."""
    path = pathlib.Path(path)
    if not path.exists():
        raise BadInputError(path, "checkpoint not found (expected a training run folder holding "
                                  "config.json and checkpoints/)")
    if not path.is_dir():
        raise BadInputError(path, "not a training run folder (config.json + checkpoints/)")
    if not (path / run_folder.CONFIG_FILE).is_file():
        raise BadInputError(path, f"not a tripled_tf run folder: no {run_folder.CONFIG_FILE}")
    try:
        config = run_folder.read_config(path)
        int(config["train"]["height"]), int(config["train"]["width"])
        found = run_folder.latest_checkpoint(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BadInputError(path, f"unreadable run folder: {error}") from None
    if found is None and depth_only_ok and run_folder.depth_weights(path):
        return path
    if found is None:
        lean = run_folder.depth_weights(path)
        raise BadInputError(path, f"no checkpoint in {run_folder.CHECKPOINT_DIR}/ " + (
            f"(its {run_folder.DEPTH_WEIGHTS_FILE} holds the depth network alone, not the pose network)"
            if lean else "(the training run did not save one yet)"))
    if not pathlib.Path(found["weights"]).is_file():
        raise BadInputError(found["weights"], "checkpoint weights file missing")
    return path


def check_model_path(path) -> pathlib.Path:
    """Cheap checks of any accepted model path (no TensorFlow); raises BadInputError."""
    path = pathlib.Path(path)
    if not path.exists():
        raise BadInputError(path, f"checkpoint not found ({RUN_FOLDER_HELP})")
    if path.is_file():
        if path.suffix.lower() != ".tflite":
            raise BadInputError(path, f"not a model ({RUN_FOLDER_HELP})")
        return path
    if is_saved_model(path):
        return path
    if not (path / run_folder.CONFIG_FILE).is_file():
        raise BadInputError(path, f"not a tripled_tf run folder, SavedModel or .tflite ({RUN_FOLDER_HELP})")
    return check_run_folder(path)


def _sigma_of_disparity(disparity: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    return ((np.asarray(disparity, np.float32) - min_disp) / (max_disp - min_disp)).astype(np.float32)


def _load_saved_model(path: pathlib.Path, batch_size: int) -> DepthFunction:
    import tensorflow as tf

    from tripled_tf import serving

    try:
        values = serving.read_metadata(path)
        function = tf.saved_model.load(str(path)).signatures[serving.MODEL_INPUT_SIGNATURE]
    except (OSError, KeyError, ValueError) as error:
        raise BadInputError(path, f"cannot load the SavedModel: {error}") from None
    min_depth, max_depth = float(values["min_depth"]), float(values["max_depth"])

    def predict(images):
        images = _check_images(images)
        out = [function(images=tf.constant(images[i:i + batch_size]))["disparity"].numpy()[..., 0]
               for i in range(0, len(images), batch_size)]
        return _sigma_of_disparity(np.concatenate(out), min_depth, max_depth)

    return DepthFunction(predict, (int(values["input_height"]), int(values["input_width"])), min_depth,
                         max_depth, f"{path} (SavedModel, step {values.get('step')})", False, "saved_model")


def _load_tflite(path: pathlib.Path, num_threads=None) -> DepthFunction:
    from tripled_edge import runtime

    try:
        model = runtime.load(path, num_threads=num_threads)
    except (OSError, ValueError, RuntimeError) as error:
        raise BadInputError(path, f"cannot load the TFLite model: {error}") from None

    def predict(images):
        images = _check_images(images)
        return _sigma_of_disparity(np.stack([model.network(image) for image in images]),
                                   model.min_depth, model.max_depth)

    quantize = model.metadata.get("quantize", "?")
    return DepthFunction(predict, model.input_size, model.min_depth, model.max_depth,
                         f"{path} (TFLite {quantize}, {model.runtime})", False, "tflite")


class NonFiniteOutputError(BadInputError):
    """The model's disparity is NaN / Inf: its weights are poisoned (e.g. a diverged training run)."""


def refuse_non_finite(depth_fn: DepthFunction, path) -> DepthFunction:
    """``depth_fn`` whose ``predict`` raises :class:`NonFiniteOutputError` (naming ``path``) instead of
    returning a NaN / Inf disparity, which would become all-NaN depth maps and metrics downstream.
    The inputs are finite frames in [0, 1], so a non-finite output means non-finite weights."""
    predict = depth_fn.predict

    def checked(images):
        sigma = np.asarray(predict(images))
        finite = np.isfinite(sigma)
        if not finite.all():
            per_image = ~finite.reshape(len(sigma), -1).all(axis=1)
            raise NonFiniteOutputError(path, f"the model's disparity is NaN/Inf for {per_image.sum()} of "
                                             f"{len(sigma)} images ({np.mean(~finite):.0%} of pixels): its "
                                             f"weights are not finite (a diverged training run?); no "
                                             f"output is written for them")
        return sigma

    return depth_fn._replace(predict=checked)


def load_depth_fn(path, batch_size: int = 8) -> DepthFunction:
    """A depth function from a run folder, an exported SavedModel or a .tflite file.

    Its ``predict`` refuses non-finite outputs (:func:`refuse_non_finite`).

    Raises:
      BadInputError naming the path: missing, not a model, weights or file that do not load.
    """
    path = check_model_path(path)
    if is_tflite(path):
        return refuse_non_finite(_load_tflite(path), path)
    if is_saved_model(path):
        return refuse_non_finite(_load_saved_model(path, batch_size), path)
    try:
        model, config = run_folder.load_model(path)
    except (OSError, ValueError, KeyError) as error:
        raise BadInputError(path, f"cannot load the checkpoint: {error}") from None
    found = run_folder.latest_checkpoint(path)
    weights = f"step {found['step']}" if found else run_folder.DEPTH_WEIGHTS_FILE
    size = (int(config["train"]["height"]), int(config["train"]["width"]))
    return refuse_non_finite(from_keras(model, size, batch_size,
                                        f"{path} ({config['train'].get('model', 'baseline')}, {weights})"),
                             path)
