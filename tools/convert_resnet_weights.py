"""Converts a torchvision-format ResNet checkpoint into the .npz the Keras encoders load.

    python -m tools.convert_resnet_weights --input=ckpt.pth --output=encoder_rn50.npz --num_layers=50 \
        [--source=auto|torchvision|swav|moco|simclr]

Reads torchvision (ImageNet-supervised), SwAV, MoCo v1/v2/v3 and SimCLR (torchvision-layout converted)
checkpoints without PyTorch, in either serialisation (zip, torch >= 1.6; legacy, torch < 1.6, as the
published SwAV and MoCo files), strips their wrappers and prefixes, drops the heads (fc, projection_head,
prototypes, MoCo's key encoder), checks strictly that the backbone fills every variable of a ResNet of
``--num_layers`` (a missing or extra key is an error naming the keys) and writes the backbone as an
uncompressed .npz: torchvision keys, float32, torch layout (conv OIHW). Training reads it with
``--encoder_weights=PATH`` via ``tripled_tf.models.pretrained.load_encoder_weights``.
"""
from __future__ import annotations

import sys

from absl import app, flags

from tripled_tf.models import pretrained

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags; only when run as a script, so that importing this module
    (tests, other tools) does not clash with other absl flags of the same name."""
    flags.DEFINE_string("input", None, "Checkpoint to convert (.pth / .pth.tar / .pt, zip or legacy "
                        "format, or .npz).")
    flags.DEFINE_string("output", None, "Output .npz of torchvision backbone keys.")
    flags.DEFINE_integer("num_layers", 50, "ResNet depth the checkpoint must fill: 10, 18, 34, 50 or 101.")
    flags.DEFINE_enum("source", "auto", list(pretrained.SOURCES),
                      "Publisher layout; auto finds the backbone prefix (MoCo's query encoder preferred).")


def convert(input_path: str, output_path: str, num_layers: int, source: str = "auto") -> int:
    """Converts ``input_path`` to ``output_path``; returns the number of backbone tensors written.

    Raises CheckpointError (ValueError) if the checkpoint does not fill a ResNet-``num_layers``
    exactly; the output is not written then. (:func:`tripled_tf.models.pretrained.convert_checkpoint`,
    which the encoder presets run too.)
    """
    return pretrained.convert_checkpoint(input_path, output_path, num_layers, source)


def main(argv):
    del argv
    if not FLAGS.input or not FLAGS.output:
        raise app.UsageError("--input and --output are required")
    try:
        count = convert(FLAGS.input, FLAGS.output, FLAGS.num_layers, FLAGS.source)
    except pretrained.CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {count} ResNet-{FLAGS.num_layers} backbone tensors to {FLAGS.output}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
