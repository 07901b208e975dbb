"""Train a depth model: ``python -m tripled_tf.train --flagfile=configs/demo.cfg [--flag=value ...]``.

Every flag can be set in a flagfile (one ``--flag=value`` per line) and overridden on the command
line after it. The last line printed is one JSON object (abs_rel_before, abs_rel_after, checkpoint,
preview, ...) so scripts can read the result.
"""
from __future__ import annotations

import json
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402,F401  (logging defines --log_dir)

FLAGS = flags.FLAGS

# Data and schedule
flags.DEFINE_enum("model", "tripled", ["tripled", "baseline"],
                  "TripleDNet, or the plain depth + pose baseline (no appearance branch / pretext).")
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
flags.DEFINE_string("encoder_weights", "", "Depth-encoder init: swav | supervised | moco | simclr "
                    "(-> <weights_dir>/<init>_resnet<layers>.npz from tools/convert_resnet_weights.py), "
                    "a weights path, or none (random).")
flags.DEFINE_string("pose_encoder_weights", "", "Pose-encoder init, as above; empty = follow "
                    "--encoder_weights' init name (swav -> supervised: there is no SwAV ResNet-18).")
flags.DEFINE_string("extractor_weights", "", "Feature-extractor init, as above; empty = follow "
                    "--encoder_weights' init name.")
flags.DEFINE_string("weights_dir", "weights", "Folder where init names resolve to converted weights.")
flags.DEFINE_bool("augment", True, "Colour jitter and horizontal flips (METHOD.md §5).")
flags.DEFINE_bool("jitter_per_frame", True, "Independent colour jitter per frame (TripleD reference); "
                  "False = one draw per sample (Monodepth2).")
flags.DEFINE_integer("height", 192, "Training height in pixels (multiple of 32).")
flags.DEFINE_integer("width", 640, "Training width in pixels (multiple of 32).")
flags.DEFINE_integer("batch_size", 4, "Frame triplets per step.")
flags.DEFINE_integer("num_steps", 1000, "Optimiser steps (0 = --num_epochs passes over the data).")
flags.DEFINE_integer("num_epochs", 0, "Passes over the training triplets, used when --num_steps=0.")
flags.DEFINE_list("decay_epochs", [], "Epochs after which the learning rate is multiplied by "
                  "--decay_factor (used when --decay_steps is empty).")
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate after warm-up.")
flags.DEFINE_integer("warmup_steps", 500, "Linear warm-up iterations (from lr/3).")
flags.DEFINE_list("decay_steps", [], "Steps at which the learning rate is multiplied by --decay_factor.")
flags.DEFINE_float("decay_factor", 0.5, "Step-decay factor.")
flags.DEFINE_float("grad_clip_norm", 35.0, "Global-norm gradient clipping (0 = off).")
flags.DEFINE_integer("seed", 1024, "Random seed (data, initialisation, noise).")
flags.DEFINE_integer("num_train_samples", 256, "Synthetic training triplets rendered up front.")
flags.DEFINE_integer("num_val_samples", 16, "Held-out synthetic frames for the AbsRel figures.")
flags.DEFINE_integer("checkpoint_every", 0, "Checkpoint every N steps (0 = only at the end).")
flags.DEFINE_bool("resume", False, "Continue the run folder's last checkpoint: same step, optimiser "
                  "state and data position.")
flags.DEFINE_bool("overwrite", False, "Start afresh in a run folder that already holds a checkpoint.")
flags.DEFINE_bool("skip_nonfinite", False, "Skip batches whose loss is NaN/Inf (counted) instead of "
                  "stopping with a message naming the step and the term.")
flags.DEFINE_integer("summary_every", 50, "TensorBoard scalars (every loss term, learning rate, "
                     "images/s) every N steps.")
flags.DEFINE_integer("image_summary_every", 500, "TensorBoard images (input, disparity, "
                     "reconstruction, pretext output) every N steps; 0 = off.")
flags.DEFINE_integer("eval_every", 0, "Held-out depth evaluation (AbsRel, RMSE, δ<1.25 printed; all seven "
                     "metrics to TensorBoard held_out/*) every N steps; 0 = only before and after.")
flags.DEFINE_bool("mixed_precision", False, "mixed_float16 compute with dynamic loss scaling (GPU).")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy; multi_worker reads TF_CONFIG. --batch_size is global.")
flags.DEFINE_bool("deterministic", False, "Same seed -> identical losses (op determinism, ordered "
                  "input pipeline; slower).")
flags.DEFINE_bool("run_eagerly", False, "Run the train step eagerly (debugging, quick smoke runs).")
# --log_dir is absl.logging's flag (it already defines it, so it cannot be redefined); here it names
# the run folder (checkpoints, preview, TensorBoard logs); default runs/<timestamp>.
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_integer("num_preview", 3, "Rows in preview.png.")
flags.DEFINE_integer("verbose", 1, "Keras progress output: 0 silent, 1 progress bar, 2 one line.")

# Model and loss
flags.DEFINE_enum("depth_layers", "50", ["18", "34", "50", "101"], "ResNet depth encoder depth.")
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
flags.DEFINE_enum("depth_decoder", "featdepth", ["featdepth", "monodepth2"], "Depth decoder of the "
                  "baseline: FeatDepth's (METHOD.md 2.3, TripleDNet's) or Monodepth2's U-Net.")
flags.DEFINE_float("dropout", None, "Dropout on the depth decoder's level-4/5 inputs (default: the "
                   "decoder's reference value, 0.5 for FeatDepth's, none for Monodepth2's).")

# TripleDNet (METHOD.md §1.2, §3.8); ignored with --model=baseline
flags.DEFINE_list("disentangle_levels", ["0", "0", "0", "0", "1"], "Encoder levels 1..5 whose "
                  "channels are split into geometry / appearance (1 = split).")
flags.DEFINE_enum("depth_split", "first_half", ["first_half", "conv1x1"], "Geometry part of a split level.")
flags.DEFINE_enum("color_split", "second_half", ["second_half", "conv1x1"], "Appearance part.")
flags.DEFINE_enum("attention", "none", ["none", "ca", "pa"], "Attention before the split.")
flags.DEFINE_bool("use_appearance", True, "Appearance decoder with distillation skips (L_pr).")
flags.DEFINE_float("skip_multiplier", 1.0, "Factor on the disparities added into the appearance decoder.")
flags.DEFINE_list("color_encoder_skips", ["0", "0", "0", "0"], "Encoder skips into the appearance decoder.")
flags.DEFINE_bool("use_extractor", True, "Feature extractor: feature-metric loss, regulariser, "
                  "masked reconstruction.")
flags.DEFINE_enum("extractor_layers", "50", ["18", "34", "50", "101"], "Feature-extractor ResNet depth.")
flags.DEFINE_bool("extractor_input_masked", False, "The extractor sees the erased image I·m.")
flags.DEFINE_enum("pretext_task", "none", ["none", "d2g", "dg2c", "d2c"], "Pretext head on σ_0: "
                  "disparity -> gray, disparity + gray -> colour, disparity -> colour.")
flags.DEFINE_bool("head_mask", False, "Masked head variants (MD2C, MDG2C): erased input, loss on holes.")
flags.DEFINE_bool("head_use_normals", False, "Surface normals as extra head input.")
flags.DEFINE_bool("use_lab_gray", True, "D2G target: Lab lightness (else BT.601 luma).")
flags.DEFINE_float("auto_res_weight", 5e-3, "Weight of the appearance reconstruction L_pr.")
flags.DEFINE_float("perception_weight", 1e-3, "Weight of the feature-metric loss L_fm.")
flags.DEFINE_float("dis_weight", 1e-3, "Feature regulariser, first-order (discriminative) weight.")
flags.DEFINE_float("cvt_weight", 1e-3, "Feature regulariser, second-order (convergent) weight.")
flags.DEFINE_float("reconstruct_weight", 1.0, "Weight of the extractor's masked reconstruction.")
flags.DEFINE_float("head_weight", 5e-3, "Weight of the pretext head loss.")


def _intrinsics_from_flags():
    values = [FLAGS.fx, FLAGS.fy, FLAGS.cx, FLAGS.cy]
    if all(v is None for v in values):
        return ()
    if any(v is None for v in values):
        raise ValueError("give all four of --fx --fy --cx --cy (or --calibration=FILE)")
    return tuple(values)


def _flag_bools(name: str):
    values = getattr(FLAGS, name)
    out = []
    for value in values:
        if value.strip().lower() not in ("0", "1", "true", "false"):
            raise ValueError(f"--{name}: expected a comma-separated list of 0/1, got {values}")
        out.append(value.strip().lower() in ("1", "true"))
    return tuple(out)


def configs_from_flags():
    """(TrainConfig, model config) from the parsed flags: a TripleDConfig with --model=tripled, a
    DepthModelConfig with --model=baseline."""
    from tripled_tf.models.depth_model import DepthModelConfig
    from tripled_tf.models.tripled_net import TripleDConfig
    from tripled_tf.training import TrainConfig

    train_config = TrainConfig(
        model=FLAGS.model, dataset=FLAGS.dataset, num_epochs=FLAGS.num_epochs,
        decay_epochs=tuple(int(e) for e in FLAGS.decay_epochs),
        extractor_weights=FLAGS.extractor_weights, weights_dir=FLAGS.weights_dir,
        resume=FLAGS.resume, overwrite=FLAGS.overwrite, skip_nonfinite=FLAGS.skip_nonfinite,
        summary_every=FLAGS.summary_every, image_summary_every=FLAGS.image_summary_every,
        eval_every=FLAGS.eval_every,
        mixed_precision=FLAGS.mixed_precision, strategy=FLAGS.strategy,
        deterministic=FLAGS.deterministic, run_eagerly=FLAGS.run_eagerly, height=FLAGS.height, width=FLAGS.width, batch_size=FLAGS.batch_size,
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
    common = dict(
        depth_layers=int(FLAGS.depth_layers), pose_layers=int(FLAGS.pose_layers),
        pose_input_size=pose_size, num_scales=FLAGS.num_scales, min_depth=FLAGS.min_depth,
        max_depth=FLAGS.max_depth, ssim_weight=FLAGS.ssim_weight,
        smoothness_weight=FLAGS.smoothness_weight, automask=FLAGS.automask,
        sampling=FLAGS.sampling, depth_decoder=FLAGS.depth_decoder, dropout=FLAGS.dropout)
    if FLAGS.model == "baseline":
        return train_config, DepthModelConfig(**common)
    model_config = TripleDConfig(
        **common, disentangle_levels=_flag_bools("disentangle_levels"),
        depth_split=FLAGS.depth_split, color_split=FLAGS.color_split, attention=FLAGS.attention,
        use_appearance=FLAGS.use_appearance, skip_multiplier=FLAGS.skip_multiplier,
        color_encoder_skips=_flag_bools("color_encoder_skips"), use_extractor=FLAGS.use_extractor,
        extractor_layers=int(FLAGS.extractor_layers),
        extractor_input_masked=FLAGS.extractor_input_masked, pretext_task=FLAGS.pretext_task,
        head_mask=FLAGS.head_mask, head_use_normals=FLAGS.head_use_normals,
        use_lab_gray=FLAGS.use_lab_gray, auto_res_weight=FLAGS.auto_res_weight,
        perception_weight=FLAGS.perception_weight, dis_weight=FLAGS.dis_weight,
        cvt_weight=FLAGS.cvt_weight, reconstruct_weight=FLAGS.reconstruct_weight,
        head_weight=FLAGS.head_weight)
    return train_config, model_config


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        train_config, model_config = configs_from_flags()
    except ValueError as error:
        raise app.UsageError(str(error))
    import tensorflow as tf

    from tripled_tf.checkpoint import RunFolderError
    from tripled_tf.cli import exit_with_error
    from tripled_tf.data.records import BadInputError
    from tripled_tf.models.pretrained import CheckpointError
    from tripled_tf.training import NonFiniteLossError, train

    try:
        result = train(train_config, model_config)
    except NonFiniteLossError as error:
        exit_with_error(str(error), 3)
    except (BadInputError, CheckpointError, RunFolderError) as error:
        # A bad data or weights file: one clear line naming it, no stack trace.
        exit_with_error(str(error), 2)
    except tf.errors.OpError as error:
        # A file that turned out unreadable while the pipeline decoded it mid-training.
        found = re.search(r"BadInputError: ([^\n]*)", error.message or "")
        if not found:
            raise
        exit_with_error(f"{found.group(1)} (use --skip_bad_frames to skip and count such samples)", 2)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
