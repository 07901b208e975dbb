"""Train a depth model: ``python -m tripled_tf.train --flagfile=configs/demo.cfg [--flag=value ...]``.

Every flag can be set in a flagfile (one ``--flag=value`` per line) and overridden on the command
line after it. The last line printed is one JSON object (abs_rel_before, abs_rel_after, checkpoint,
preview, ...) so scripts can read the result.

The flags are generated from the fields of TrainConfig and of the model configs (their defaults, help
texts and choices; ``tripled_tf.config_flags``); this module only defines the few flags shaped unlike
a field, builds the configs from the parsed flags and turns errors into one-line messages.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import re
import sys

from absl import app, flags, logging  # noqa: F401  (logging defines --log_dir)

from tripled_tf import cli

if __name__ == "__main__":
    # Before TensorFlow is imported (by the model configs below): its C++ logging reads the level
    # once, and the oneDNN switch is read at import.
    cli.use_onednn_by_default()
    cli.quiet_tensorflow(sys.argv)

from tripled_tf import config_flags  # noqa: E402
from tripled_tf.models.depth_model import DepthModelConfig  # noqa: E402
from tripled_tf.models.tripled_net import TripleDConfig  # noqa: E402
from tripled_tf.train_config import TrainConfig  # noqa: E402

FLAGS = flags.FLAGS

# Every option of TrainConfig and of the model configs (TripleDConfig holds the baseline's fields
# too), with the fields' defaults, help texts and choices. The defaults of the model flags are the
# main model's (TripleDConfig, configs/kitti.cfg): --depth_layers=50 also for --model=baseline, whose
# library default (DepthModelConfig) is ResNet-18; every config in configs/ sets it.
config_flags.define_flags(TrainConfig)
config_flags.define_flags(TripleDConfig)
# The flags whose shape differs from their field. --log_dir (TrainConfig.log_dir) is absl.logging's.
flags.DEFINE_float("fx", None, "Video: focal length x, pixels of the original frames.")
flags.DEFINE_float("fy", None, "Video: focal length y, pixels.")
flags.DEFINE_float("cx", None, "Video: principal point x, pixels.")
flags.DEFINE_float("cy", None, "Video: principal point y, pixels.")
_POSE_SIZE = {f.name: f.default for f in dataclasses.fields(TripleDConfig)}["pose_input_size"]
flags.DEFINE_integer("pose_height", _POSE_SIZE[0], "Pose-net input height (the references hard-code "
                     "192; 0 = training size).")
flags.DEFINE_integer("pose_width", _POSE_SIZE[1], "Pose-net input width (640 in the references; 0 = "
                     "training size).")


def _intrinsics_from_flags():
    values = [FLAGS.fx, FLAGS.fy, FLAGS.cx, FLAGS.cy]
    if all(v is None for v in values):
        return ()
    if any(v is None for v in values):
        raise ValueError("give all four of --fx --fy --cx --cy (or --calibration=FILE)")
    return tuple(values)


def configs_from_flags():
    """(TrainConfig, model config) from the parsed flags: a TripleDConfig with --model=tripled, a
    DepthModelConfig (its fields only) with --model=baseline."""
    train_config = TrainConfig(**config_flags.field_values(TrainConfig), log_dir=FLAGS.log_dir,
                               intrinsics=_intrinsics_from_flags())
    pose_size = (FLAGS.pose_height, FLAGS.pose_width) if FLAGS.pose_height and FLAGS.pose_width else None
    model_class = DepthModelConfig if train_config.model == "baseline" else TripleDConfig
    model_config = model_class(**config_flags.field_values(model_class), pose_input_size=pose_size)
    return train_config, model_config


flags_parser = cli.parse_flags  # for app.run (console.py): finds nested flagfiles from any folder


def main(argv):
    exit_with_error = cli.exit_with_error
    # One line, not app.UsageError: absl would print the ~250 lines of flag help before it.
    if len(argv) > 1:
        exit_with_error(f"unexpected arguments: {' '.join(argv[1:])}", 2)
    try:
        train_config, model_config = configs_from_flags()
    except ValueError as error:
        exit_with_error(str(error), 2)
    import tensorflow as tf

    from tripled_tf.checkpoint import NonFiniteStateError, RunFolderError
    from tripled_tf.data.records import BadInputError, SettingError
    from tripled_tf.models.pretrained import CheckpointError
    from tripled_tf.train_callbacks import NonFiniteLossError
    from tripled_tf.training import train

    try:
        result = train(train_config, model_config)
    except (NonFiniteLossError, NonFiniteStateError) as error:
        exit_with_error(str(error), 3)
    except (BadInputError, CheckpointError, RunFolderError, SettingError) as error:
        # A bad data or weights file, or a setting the data cannot serve: one clear line naming the
        # file or the flag, no stack trace.
        exit_with_error(str(error), 2)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        exit_with_error(f"{error.filename or 'writing the run folder'}: {error.strerror}", 2)
    except tf.errors.OpError as error:
        # A file that turned out unreadable while the pipeline decoded it mid-training.
        found = re.search(r"BadInputError: ([^\n]*)", error.message or "")
        if not found:
            raise
        hint = "" if FLAGS.skip_bad_frames else " (use --skip_bad_frames to skip and count such samples)"
        exit_with_error(f"{found.group(1)}{hint}", 2)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main, flags_parser=flags_parser)
