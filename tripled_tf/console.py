"""Console scripts (setup.py entry_points), beside ``python -m tripled_tf.<tool>``.

    tripled-train     = python -m tripled_tf.train
    tripled-predict   = python -m tripled_tf.predict
    tripled-evaluate  = python -m tripled_tf.evaluate
    tripled-export    = python -m tripled_tf.export
    tripled-convert   = python -m tripled_tf.convert

Each imports its tool only when called (flags are defined at that point), then runs it with absl.
Before that, :func:`tripled_tf.cli.use_onednn_by_default` (TensorFlow reads it at import).
"""
from __future__ import annotations

import sys

from absl import app, flags

from tripled_tf.cli import use_onednn_by_default


def _run(tool) -> None:
    # --help lists the flags of the module named by sys.argv[0]; under a console script that is the
    # script, so the tool's flags are registered for it too.
    for flag in flags.FLAGS.get_flags_for_module(tool.__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    # The trainer's parser also finds a variant config's included flagfile from any folder.
    app.run(tool.main, flags_parser=getattr(tool, "flags_parser", app.parse_flags_with_usage))


def train():
    use_onednn_by_default()
    from tripled_tf import cli

    cli.quiet_tensorflow(sys.argv)  # before tripled_tf.train imports TensorFlow
    from tripled_tf import train as tool
    _run(tool)


def predict():
    use_onednn_by_default()
    from tripled_tf import predict as tool
    tool.define_flags()
    _run(tool)


def evaluate():
    use_onednn_by_default()
    from tripled_tf import evaluate as tool
    _run(tool)


def export():
    use_onednn_by_default()
    from tripled_tf import export as tool
    _run(tool)


def convert():
    use_onednn_by_default()
    from tripled_tf import convert as tool
    tool.define_flags()
    _run(tool)


# name -> function; setup.py's console_scripts are built from it.
SCRIPTS = {"tripled-train": "train", "tripled-predict": "predict", "tripled-evaluate": "evaluate",
           "tripled-export": "export", "tripled-convert": "convert"}
