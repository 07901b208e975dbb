"""tripled_tf: TripleDNet self-supervised monocular depth estimation in Keras 3 / TensorFlow."""
__version__ = "0.1.0"

# Importing tripled_tf changes no environment variable: the command lines turn TensorFlow's oneDNN
# kernels on (tripled_tf.cli.use_onednn_by_default, before TensorFlow is imported).


def load(path, batch_size: int = 8):
    """A depth model from a run folder, a converted folder, a SavedModel or a .tflite file: an object
    whose ``.predict(image)`` takes a uint8 RGB ``[H, W, 3]`` array of any size (or a path) and returns
    float32 ``[H, W]`` depth. See :func:`tripled_tf.api.load` (example there) and
    :class:`tripled_tf.api.DepthEstimator` (``predict_batch``, ``predict_sigmoid``,
    ``camera_height=`` for metric scale). Importing tripled_tf stays light: TensorFlow loads here."""
    from tripled_tf.api import load as _load

    return _load(path, batch_size=batch_size)
