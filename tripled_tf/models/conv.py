"""2-D convolution whose kernel gradient is computed as matrix products on CPU.

On CPUs without AVX-512 (AVX2 only: most AMD servers and laptops), TensorFlow's oneDNN kernel for a
convolution's *kernel* gradient (Conv2DBackpropFilter, oneDNN's ``jit:avx2`` backward-weights) runs
at a third of the speed of the forward convolution or slower, and it was the largest single cost of
the training step: 2.5 s of a 6.9 s Monodepth2-configuration step at 640x192 (tf.profiler, one
inter-op thread), against 0.9 s for all forward convolutions.

For a stride-1 convolution the kernel gradient is a sum of k·k matrix products:

    dW[i, j] = Σ_{b, h, w} x_pad[b, h + i, w + j, :]ᵀ · dy[b, h, w, :]          [C_in, C_out]

- Large maps (>= :data:`MIN_OUTPUT_PIXELS` output pixels per image): flatten the padded input to rows
  ``X [B·Hp·Wp, C_in]`` and the output gradient, zero-padded to the same Hp x Wp grid, to
  ``D [B·Hp·Wp, C_out]``; tap (i, j) is then ``X[o : o + L]ᵀ · D[:L]`` with row offset o = i·Wp + j.
  The padded rows of D are zero, so a product never mixes pixels of different rows or images, and
  ``X[o : o + L]`` is a dim-0 slice, which TensorFlow hands out as a view, not a copy.
- Small maps: there the padding would be a large share of the rows (8x22 padded vs 6x20 valid), so
  the k·k shifted windows are gathered once (im2col: k·k copies of a small tensor) into one product.
- 1x1 kernels: one product.

The forward convolution and the input gradient stay TensorFlow's own kernels. Used only where it
pays (measured below): float32, a machine without GPUs (cuDNN's kernel gradients are fast), stride 1,
no dilation, static spatial sizes, at least :data:`MIN_INPUT_CHANNELS` input channels, and in a
traced graph (tf.function) while a gradient tape is recording. Everything else is
``keras.ops.conv``.
"""
from __future__ import annotations

import contextlib
import functools

import keras
import tensorflow as tf

# Kernel gradient alone, oneDNN -> matrix products, batch 4, 2-core AVX2 EPYC (medians of 7):
# shifted rows: 64->64 at 48x160 45 -> 25 ms, 128->128 at 24x80 37 -> 24 ms, 96->32 at 96x320
# 145 -> 68 ms, 32->16 at 96x320 26 -> 19 ms; but 16->16 at 192x640 43 -> 66 ms (too few channels
# for efficient products). im2col on small maps: 512->512 at 6x20 33 -> 19 ms, 256->256 at 12x40
# 29 -> 23 ms, where shifted rows took 34 -> 39 and 27 -> 50 ms. Stride 2 (not handled): im2col
# was slower than oneDNN (64->128 at 48x160 output 21 -> 43 ms; the 7x7 stems 36 -> 183 ms).
MIN_INPUT_CHANNELS = 32
MIN_OUTPUT_PIXELS = 24 * 80

_ENABLED = None  # None: decide from the devices present (no GPU -> on)


def matmul_kernel_gradients_enabled() -> bool:
    """Whether eligible convolutions use the matrix-product kernel gradient (see module docstring)."""
    if _ENABLED is not None:
        return _ENABLED
    return _no_gpu()


@functools.lru_cache(maxsize=1)
def _no_gpu() -> bool:
    return not tf.config.list_physical_devices("GPU")


def set_matmul_kernel_gradients(enabled) -> None:
    """True / False forces the matrix-product kernel gradient on / off for convolutions traced from
    now on; None restores the default (on when no GPU is present)."""
    global _ENABLED
    _ENABLED = None if enabled is None else bool(enabled)


@contextlib.contextmanager
def matmul_kernel_gradients(enabled: bool):
    """Forces the matrix-product kernel gradient on or off while tracing inside the block."""
    previous = _ENABLED
    set_matmul_kernel_gradients(enabled)
    try:
        yield
    finally:
        set_matmul_kernel_gradients(previous)


def _same_padding(size: int) -> tuple:
    # TensorFlow's "same" at stride 1: k - 1 pixels in all, the extra one after.
    total = size - 1
    return total // 2, total - total // 2


@tf.autograph.experimental.do_not_convert  # Python control flow on static shapes only
def kernel_gradient(x_padded: tf.Tensor, output_gradient: tf.Tensor, kernel_size) -> tf.Tensor:
    """Gradient of a stride-1 "valid" convolution's loss w.r.t. its kernel, by matrix products.

    Args:
      x_padded: [B, Hp, Wp, C_in], the convolution's (already padded) input; static H, W, C.
      output_gradient: [B, Hp - kh + 1, Wp - kw + 1, C_out], the loss gradient w.r.t. its output.
      kernel_size: (kh, kw).
    Returns:
      [kh, kw, C_in, C_out], equal to ``tf.raw_ops.Conv2DBackpropFilter(..., padding="VALID")``.
    """
    kh, kw = kernel_size
    _, height, width, in_channels = x_padded.shape
    out_channels = output_gradient.shape[-1]
    out_height, out_width = height - kh + 1, width - kw + 1
    if kh == kw == 1:
        product = tf.matmul(tf.reshape(x_padded, [-1, in_channels]),
                            tf.reshape(output_gradient, [-1, out_channels]), transpose_a=True)
        return tf.reshape(product, [1, 1, in_channels, out_channels])
    if out_height * out_width < MIN_OUTPUT_PIXELS:
        # Small maps: the zero rows of the shifted products below would be a large share of the
        # work (8x22 padded vs 6x20 valid), so gather the taps once (im2col, k·k copies of a small
        # tensor) and do one product with a long inner dimension.
        taps = [x_padded[:, i:i + out_height, j:j + out_width, :]
                for i in range(kh) for j in range(kw)]
        patches = tf.reshape(tf.concat(taps, axis=-1), [-1, kh * kw * in_channels])
        product = tf.matmul(patches, tf.reshape(output_gradient, [-1, out_channels]),
                            transpose_a=True)
        return tf.reshape(product, [kh, kw, in_channels, out_channels])
    rows = tf.reshape(x_padded, [-1, in_channels])
    grad = tf.pad(output_gradient, [[0, 0], [0, kh - 1], [0, kw - 1], [0, 0]])
    length = tf.shape(rows)[0] - ((kh - 1) * width + (kw - 1))
    grad_rows = tf.reshape(grad, [-1, out_channels])[:length]
    products = [tf.matmul(rows[i * width + j:i * width + j + length], grad_rows, transpose_a=True)
                for i in range(kh) for j in range(kw)]
    return tf.reshape(tf.stack(products), [kh, kw, in_channels, out_channels])


def _gradient_may_be_recorded() -> bool:
    """False only when no gradient tape is active, e.g. while tracing an inference or export graph,
    which then keeps plain convolutions (the custom gradient's IdentityN would stop Grappler from
    fusing the bias and activation into the convolution). Uses TensorFlow's own test for whether an
    op could be recorded; if that internal function moves, every eligible convolution is wrapped."""
    try:
        from tensorflow.python.eager import record
        return bool(record.could_possibly_record())
    except (ImportError, AttributeError):
        return True


def _eligible(x: tf.Tensor, kernel, strides, padding: str, dilation_rate) -> bool:
    if not matmul_kernel_gradients_enabled() or keras.backend.backend() != "tensorflow":
        return False
    if tf.executing_eagerly() or not _gradient_may_be_recorded():
        # Eager steps (run_eagerly, debugging) pay per op dispatched: one op beats a dozen there.
        return False
    if tuple(strides) != (1, 1) or tuple(dilation_rate) != (1, 1):
        return False
    if x.dtype != tf.float32 or kernel.dtype != tf.float32 or x.shape.rank != 4:
        return False
    if None in (x.shape[1], x.shape[2], x.shape[3]) or None in kernel.shape:
        return False
    return x.shape[3] >= MIN_INPUT_CHANNELS


def conv2d(x, kernel, strides=(1, 1), padding: str = "valid", dilation_rate=(1, 1)) -> tf.Tensor:
    """``keras.ops.conv`` for NHWC ``x`` [B, H, W, C_in] and HWIO ``kernel`` [kh, kw, C_in, C_out],
    with the matrix-product kernel gradient where that is faster (module docstring)."""
    x = tf.convert_to_tensor(x)
    kernel = tf.convert_to_tensor(kernel)
    padding = padding.lower()
    if not _eligible(x, kernel, strides, padding, dilation_rate):
        return keras.ops.conv(x, kernel, strides=list(strides), padding=padding,
                              dilation_rate=list(dilation_rate), data_format="channels_last")
    return _conv2d_stride1(x, kernel, padding.upper())


def _conv2d_stride1(x, kernel, padding):
    kernel_size = tuple(kernel.shape[:2])

    @tf.custom_gradient
    def convolve(x, kernel):
        y = tf.nn.conv2d(x, kernel, 1, padding)

        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel,
                                                out_backprop=dy, strides=[1, 1, 1, 1],
                                                padding=padding)
            x_padded = x
            if padding == "SAME":
                (top, bottom), (left, right) = (_same_padding(k) for k in kernel_size)
                x_padded = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
            return dx, kernel_gradient(x_padded, dy, kernel_size)

        return y, grad

    return convolve(x, kernel)


@keras.saving.register_keras_serializable(package="tripled_tf")
class Conv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` (NHWC) whose kernel gradient uses :func:`conv2d`.

    Same arguments, weights and outputs as Keras' layer; only the training speed differs.
    """

    def convolution_op(self, inputs, kernel):
        if self.data_format != "channels_last":
            return super().convolution_op(inputs, kernel)
        return conv2d(inputs, kernel, self.strides, self.padding, self.dilation_rate)
