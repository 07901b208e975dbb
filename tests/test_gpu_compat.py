"""tripled_edge.gpu_compat: the GPU-delegate operator allow-list (the fallback where LiteRT's GPU
accelerator has no adapter; tests/test_edge_gpu.py keeps the two in agreement).
"""
import numpy as np
import tensorflow as tf

from tripled_edge import gpu_compat


def _tflite(function, *specs) -> bytes:
    concrete = tf.function(function).get_concrete_function(*specs)
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()


def test_gpu_gate_accepts_a_conv_net_with_reflect_padding():
    kernel = tf.constant(np.ones((3, 3, 3, 8), np.float32))

    def net(x):
        y = tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], "REFLECT"), kernel, 1, "VALID")
        return tf.sigmoid(tf.image.resize(tf.nn.leaky_relu(y, 0.01), [16, 16], method="nearest"))

    assert gpu_compat.gpu_incompatibilities(_tflite(net, tf.TensorSpec([1, 8, 8, 3], tf.float32))) == []


def test_gpu_gate_names_every_offending_operator():
    def bad(x):
        y = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], "SYMMETRIC")   # only REFLECT on the GPU
        y = tf.gather(y, [0, 2], axis=3)                                # no GATHER
        return tf.reshape(y, [1, 2, 3, 3, 2])                           # rank 5

    problems = gpu_compat.gpu_incompatibilities(_tflite(bad, tf.TensorSpec([1, 4, 1, 4], tf.float32)))
    text = "\n".join(problems)
    assert "MIRROR_PAD: SYMMETRIC" in text
    assert "GATHER: not supported" in text
    assert "rank 5" in text


def test_gpu_gate_rejects_dynamic_shapes():
    problems = gpu_compat.gpu_incompatibilities(
        _tflite(lambda x: tf.nn.relu(x), tf.TensorSpec([None, 4, 4, 3], tf.float32)))
    assert problems and all("dynamic shape" in p for p in problems)
