"""Train a depth model: ``python -m tripled_tf.train --flagfile=configs/demo.cfg [--flag=value ...]``.

Every flag can be set in a flagfile (one ``--flag=value`` per line) and overridden on the command
line after it. The last line printed is one JSON object (abs_rel_before, abs_rel_after, checkpoint,
preview, ...) so scripts can read the result.
"""
from __future__ import annotations

import json
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402,F401  (logging defines --log_dir)

FLAGS = flags.FLAGS

# Data and schedule
flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "kitti", "video"],
                  "Training data: the built-in synthetic scene, KITTI raw, or your own video / frames.")
flags.DEFINE_string("data_path", "", "KITTI raw root (date folders), or a video file / folder of frames.")
flags.DEFINE_string("split", "eigen_zhou", "KITTI: split name (eigen_zhou, eigen, ...) or split file.")
flags.DEFINE_string("splits_dir", "", "KITTI: Monodepth2's splits/ folder holding the named splits.")
flags.DEFINE_string("val_split", "", "KITTI: split whose Velodyne ground truth gives the before/after "
                    "AbsRel (optional).")
flags.DEFINE_bool("use_calibration", False, "KITTI: the drive's P_rect instead of the normalised K.")
flags.DEFINE_string("calibration", "", "Video: YAML/JSON intrinsics (fx, fy, cx, cy [, width, height]).")
flags.DEFINE_float("fx", None, "Video: focal length x, pixels of the original frames.")
flags.DEFINE_float("fy", None, "Video: focal length y, pixels.")
flags.DEFINE_float("cx", None, "Video: principal point x, pixels.")
flags.DEFINE_float("cy", None, "Video: principal point y, pixels.")
flags.DEFINE_integer("frame_stride", 1, "Video: use every k-th frame.")
flags.DEFINE_float("min_motion", 0.0, "Video: drop frames whose change from the previous kept frame "
                   "is below this (static camera).")
flags.DEFINE_bool("skip_bad_frames", False, "Skip and count unreadable / missing frames instead of "
                  "stopping with an error naming the file.")
flags.DEFINE_string("encoder_weights", "", "Pretrained depth-encoder weights: the .npz of "
                    "tools/convert_resnet_weights.py (or a torchvision-format checkpoint); none = random.")
flags.DEFINE_string("pose_encoder_weights", "", "Pretrained pose-encoder (ResNet) weights, as above.")
flags.DEFINE_bool("augment", True, "Colour jitter and horizontal flips (METHOD.md §5).")
flags.DEFINE_bool("jitter_per_frame", True, "Independent colour jitter per frame (TripleD reference); "
                  "False = one draw per sample (Monodepth2).")
flags.DEFINE_integer("height", 192, "Training height in pixels (multiple of 32).")
flags.DEFINE_integer("width", 640, "Training width in pixels (multiple of 32).")
flags.DEFINE_integer("batch_size", 4, "Frame triplets per step.")
flags.DEFINE_integer("num_steps", 1000, "Optimiser steps.")
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate after warm-up.")
flags.DEFINE_integer("warmup_steps", 500, "Linear warm-up iterations (from lr/3).")
flags.DEFINE_list("decay_steps", [], "Steps at which the learning rate is multiplied by --decay_factor.")
flags.DEFINE_float("decay_factor", 0.5, "Step-decay factor.")
flags.DEFINE_float("grad_clip_norm", 35.0, "Global-norm gradient clipping (0 = off).")
flags.DEFINE_integer("seed", 1024, "Random seed (data, initialisation, noise).")
flags.DEFINE_integer("num_train_samples", 256, "Synthetic training triplets rendered up front.")
flags.DEFINE_integer("num_val_samples", 16, "Held-out synthetic frames for the AbsRel figures.")
flags.DEFINE_integer("checkpoint_every", 0, "Checkpoint every N steps (0 = only at the end).")
# --log_dir is absl.logging's flag (it already defines it, so it cannot be redefined); here it names
# the run folder (checkpoints, preview, TensorBoard logs); default runs/<timestamp>.
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_integer("num_preview", 3, "Rows in preview.png.")
flags.DEFINE_integer("verbose", 1, "Keras progress output: 0 silent, 1 progress bar, 2 one line.")

# Model and loss
flags.DEFINE_enum("depth_layers", "18", ["18", "34", "50", "101"], "ResNet depth encoder depth.")
flags.DEFINE_enum("pose_layers", "18", ["18", "34", "50", "101"], "ResNet pose encoder depth.")
flags.DEFINE_integer("pose_height", 192, "Pose-net input height (the references hard-code 192; 0 = "
                     "training size).")
flags.DEFINE_integer("pose_width", 640, "Pose-net input width (640 in the references; 0 = training size).")
flags.DEFINE_integer("num_scales", 4, "Disparity scales in the loss.")
flags.DEFINE_float("min_depth", 0.1, "Depth at disparity 1 (metres).")
flags.DEFINE_float("max_depth", 100.0, "Depth at disparity 0 (metres).")
flags.DEFINE_float("ssim_weight", 0.85, "SSIM weight in the photometric error.")
flags.DEFINE_float("smoothness_weight", 1e-3, "Edge-aware smoothness weight.")
flags.DEFINE_bool("automask", True, "Identity auto-masking in the minimum reprojection.")
flags.DEFINE_enum("sampling", "exact", ["exact", "torch_default"],
                  "Warp sampling: exact pixel centres, or the references' half-pixel-biased grid_sample.")
flags.DEFINE_float("dropout", 0.5, "Dropout on the depth decoder's level-4/5 inputs.")


def _intrinsics_from_flags():
    values = [FLAGS.fx, FLAGS.fy, FLAGS.cx, FLAGS.cy]
    if all(v is None for v in values):
        return ()
    if any(v is None for v in values):
        raise ValueError("give all four of --fx --fy --cx --cy (or --calibration=FILE)")
    return tuple(values)


def configs_from_flags():
    """(TrainConfig, DepthModelConfig) from the parsed flags."""
    from tripled_tf.models.depth_model import DepthModelConfig
    from tripled_tf.training import TrainConfig

    train_config = TrainConfig(
        dataset=FLAGS.dataset, height=FLAGS.height, width=FLAGS.width, batch_size=FLAGS.batch_size,
        num_steps=FLAGS.num_steps, learning_rate=FLAGS.learning_rate,
        warmup_steps=FLAGS.warmup_steps, decay_steps=tuple(int(s) for s in FLAGS.decay_steps),
        decay_factor=FLAGS.decay_factor, grad_clip_norm=FLAGS.grad_clip_norm, seed=FLAGS.seed,
        num_train_samples=FLAGS.num_train_samples, num_val_samples=FLAGS.num_val_samples,
        checkpoint_every=FLAGS.checkpoint_every, log_dir=FLAGS.log_dir,
        jit_compile=FLAGS.jit_compile, num_preview=FLAGS.num_preview, verbose=FLAGS.verbose,
        data_path=FLAGS.data_path, split=FLAGS.split, splits_dir=FLAGS.splits_dir,
        val_split=FLAGS.val_split, use_calibration=FLAGS.use_calibration,
        calibration=FLAGS.calibration, intrinsics=_intrinsics_from_flags(),
        frame_stride=FLAGS.frame_stride, min_motion=FLAGS.min_motion,
        skip_bad_frames=FLAGS.skip_bad_frames, augment=FLAGS.augment,
        jitter_per_frame=FLAGS.jitter_per_frame, encoder_weights=FLAGS.encoder_weights,
        pose_encoder_weights=FLAGS.pose_encoder_weights)
    pose_size = (FLAGS.pose_height, FLAGS.pose_width) if FLAGS.pose_height and FLAGS.pose_width else None
    model_config = DepthModelConfig(
        depth_layers=int(FLAGS.depth_layers), pose_layers=int(FLAGS.pose_layers),
        pose_input_size=pose_size, num_scales=FLAGS.num_scales, min_depth=FLAGS.min_depth,
        max_depth=FLAGS.max_depth, ssim_weight=FLAGS.ssim_weight,
        smoothness_weight=FLAGS.smoothness_weight, automask=FLAGS.automask,
        sampling=FLAGS.sampling, dropout=FLAGS.dropout)
    return train_config, model_config


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        train_config, model_config = configs_from_flags()
    except ValueError as error:
        raise app.UsageError(str(error))
    import tensorflow as tf

    from tripled_tf.data.records import BadInputError
    from tripled_tf.models.pretrained import CheckpointError
    from tripled_tf.training import train

    try:
        result = train(train_config, model_config)
    except (BadInputError, CheckpointError) as error:
        # A bad data or weights file: one clear line naming it, no stack trace.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except tf.errors.OpError as error:
        # A file that turned out unreadable while the pipeline decoded it mid-training.
        found = re.search(r"BadInputError: ([^\n]*)", error.message or "")
        if not found:
            raise
        print(f"error: {found.group(1)} (use --skip_bad_frames to skip and count such samples)",
              file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
