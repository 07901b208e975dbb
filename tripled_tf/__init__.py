"""tripled_tf: TripleDNet self-supervised monocular depth estimation in Keras 3 / TensorFlow."""

__version__ = "0.1.0"
