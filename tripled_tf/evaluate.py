"""Evaluate a trained depth model: ``python -m tripled_tf.evaluate --checkpoint=RUN_DIR [flags]``.

Depth (``--task=depth``, the default), Monodepth2's protocol: each frame is resized to the model's
input size, the finest disparity is resized to the ground truth's size and inverted, depths are capped
to [--min_depth, --max_depth] (1e-3, 80 m), the Garg crop is applied on KITTI, and each prediction is
median-scaled to its ground truth (``--nomedian_scaling`` for stereo / metric models). Printed as the
references' table (abs_rel sq_rel rmse rmse_log a1 a2 a3) with the scale ratios' median and std.

  KITTI Eigen (697 frames), ground truth from the Velodyne scans on the fly:
    python -m tripled_tf.evaluate --checkpoint=runs/kitti --dataset=kitti --data_path=/data/kitti_raw \
        --split=eigen --splits_dir=/data/splits --output_json=eigen.json
  The improved ground truth (KITTI depth benchmark PNGs under <drive>/proj_depth/groundtruth/) is used
  automatically when every frame of the split has one (e.g. --split=eigen_benchmark with its split
  file); Monodepth2's exported gt_depths.npz with --gt_depths=PATH. Any split file in the raw layout
  works, e.g. a few lines naming frames of one drive.
  The built-in synthetic scene (exact ground truth, no crop):
    python -m tripled_tf.evaluate --checkpoint=runs/demo --dataset=synthetic

Pose (``--task=pose``): absolute trajectory error of 5-frame snippets, each scale-aligned to the
ground truth, mean ± std per sequence (Monodepth2's evaluate_pose):
    python -m tripled_tf.evaluate --checkpoint=runs/kitti --task=pose --dataset=kitti \
        --data_path=/data/kitti_odometry --pose_sequences=9,10
  (<data_path>/sequences/XX/image_2/*.png and <data_path>/poses/XX.txt, or --poses_dir); on the
  synthetic scene: one drive of --num_samples frames.

Exported models: ``--checkpoint`` may also be a SavedModel folder or a .tflite file (``python -m
tripled_tf.export``), evaluated at their exported size through the same code (tripled_tf.inference),
e.g. to check what int8 quantisation costs. Pose needs the run folder (the pose net is not exported).

The last stdout line is one JSON object (also written to --output_json): for depth the seven metrics
under exactly their names plus ratio_median, ratio_std, num_images and the settings; for pose
``sequences: {name: {ate_mean, ate_std, num_snippets}}``. Bad input: one ``error:`` line, exit 2.
"""
from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from tripled_tf.conventions import STRIDE, is_stride_multiple  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint", None, "A training run folder (holds config.json and checkpoints/), or "
                    "for --task=depth an exported SavedModel folder or .tflite file.")
flags.DEFINE_enum("task", "depth", ["depth", "pose"], "What to evaluate.")
flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "kitti"],
                  "The built-in synthetic scene (exact ground truth) or KITTI (raw for depth, odometry "
                  "for pose).")
flags.DEFINE_string("data_path", "", "KITTI raw root (depth) or KITTI odometry root (pose).")
flags.DEFINE_string("split", "eigen", "KITTI depth: a split name (eigen, ...) or the path of any split "
                    "file in the raw layout ('<drive folder> <frame index> l|r' per line).")
flags.DEFINE_string("splits_dir", "", "Monodepth2's splits/ folder, for split names.")
flags.DEFINE_enum("ground_truth", "auto", ["auto", "benchmark", "velodyne"],
                  "KITTI depth ground truth: the depth benchmark's improved PNGs when every frame has one "
                  "(auto), required (benchmark), or projected from the Velodyne scans.")
flags.DEFINE_string("gt_depths", "", "Monodepth2's exported gt_depths.npz for the split (overrides "
                    "--ground_truth; loaded with pickle: give only a file you made).")
flags.DEFINE_enum("crop", "auto", ["auto", "garg", "eigen", "none"],
                  "Evaluation crop: auto = garg on KITTI, none on synthetic.")
flags.DEFINE_bool("median_scaling", True, "Per-image median scaling (monocular models); "
                  "--nomedian_scaling for stereo / metric-scale models.")
flags.DEFINE_float("min_depth", 1e-3, "Depth cap, metres (lower).")
flags.DEFINE_float("max_depth", 80.0, "Depth cap, metres (upper).")
flags.DEFINE_integer("height", 0, "Model input height (0 = the training size).")
flags.DEFINE_integer("width", 0, "Model input width (0 = the training size).")
flags.DEFINE_integer("num_samples", 64, "Synthetic: test frames (depth) or sequence length (pose).")
flags.DEFINE_integer("seed", 0, "Synthetic: the test world's seed.")
flags.DEFINE_list("pose_sequences", ["9", "10"], "KITTI odometry sequences for --task=pose.")
flags.DEFINE_string("poses_dir", "", "Folder of the odometry ground-truth poses XX.txt "
                    "(default <data_path>/poses).")
flags.DEFINE_integer("batch_size", 8, "Frames per forward pass.")
flags.DEFINE_string("output_json", "", "Also write the result JSON here.")

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")


def format_table(values: dict) -> str:
    """The references' two-line table: names, then values as LaTeX-ready '&' cells."""
    header = "  " + ("{:>8} | " * 7).format(*METRIC_NAMES)
    row = ("&{: 8.3f}  " * 7).format(*[values[name] for name in METRIC_NAMES]) + "\\\\"
    return header + "\n" + row


def _input_size(default_size, any_size: bool = True):
    height = FLAGS.height or int(default_size[0])
    width = FLAGS.width or int(default_size[1])
    if not is_stride_multiple(height, width):
        raise ValueError(f"--height/--width must be positive multiples of {STRIDE}, got {height}x{width}")
    if not any_size and (height, width) != tuple(default_size):
        raise ValueError(f"--checkpoint={FLAGS.checkpoint} runs at {default_size[0]}x{default_size[1]} only "
                         "(exported model): drop --height/--width")
    return height, width


def evaluate_depth_task(depth_fn) -> dict:
    from tripled_tf import evaluation
    from tripled_tf.data import kitti, synthetic

    height, width = _input_size(depth_fn.input_size, depth_fn.any_size)
    if FLAGS.dataset == "synthetic":
        data = synthetic.make_triplets(FLAGS.num_samples, height, width, seed=FLAGS.seed, split="test")
        images, depths, source = data["target"], list(data["depth"][..., 0]), "synthetic (exact)"
        split = f"synthetic test world, seed {FLAGS.seed}"
    else:
        if not FLAGS.data_path:
            raise ValueError("--dataset=kitti needs --data_path (the KITTI raw root)")
        frames = kitti.eval_frames(FLAGS.data_path, FLAGS.split, splits_dir=FLAGS.splits_dir or None)
        if not frames:
            raise ValueError(f"--split={FLAGS.split}: no frames")
        images, depths, source = evaluation.kitti_depth_samples(
            frames, height, width, FLAGS.ground_truth, FLAGS.gt_depths or None)
        split = FLAGS.split
    crop = FLAGS.crop if FLAGS.crop != "auto" else ("garg" if FLAGS.dataset == "kitti" else "none")
    values = evaluation.evaluate_depth(depth_fn, images, depths, crop=None if crop == "none" else crop,
                                       median_scaling=FLAGS.median_scaling, min_depth=FLAGS.min_depth,
                                       max_depth=FLAGS.max_depth, batch_size=FLAGS.batch_size)
    print(f"Evaluating {values['num_images']} frames of {split} ({FLAGS.dataset}, ground truth: "
          f"{source}, crop: {crop}, input {height}x{width})")
    if FLAGS.median_scaling:
        print(f" Scaling ratios | med: {values['ratio_median']:0.3f} | std: {values['ratio_std']:0.3f}")
    else:
        print(" No median scaling (metric-scale evaluation)")
    print(format_table(values))
    result = {name: float(values[name]) for name in METRIC_NAMES}
    result.update(ratio_median=float(values["ratio_median"]), ratio_std=float(values["ratio_std"]),
                  num_images=int(values["num_images"]), median_scaling=FLAGS.median_scaling,
                  crop=crop, ground_truth=source, split=split, dataset=FLAGS.dataset,
                  height=height, width=width, min_depth=FLAGS.min_depth, max_depth=FLAGS.max_depth)
    return result


def evaluate_pose_task(model, config: dict) -> dict:
    import numpy as np

    from tripled_tf import evaluation
    from tripled_tf.data import frame_files, kitti, pipeline, synthetic
    from tripled_tf.inference import NonFiniteOutputError

    height, width = _input_size((config["train"]["height"], config["train"]["width"]))
    sequences = {}
    if FLAGS.dataset == "synthetic":
        data = synthetic.make_sequence(FLAGS.num_samples, height, width, seed=FLAGS.seed, split="test")
        sequences[f"synthetic_seed{FLAGS.seed}"] = (data["frames"], data["camera_to_world"])
    else:
        if not FLAGS.data_path:
            raise ValueError("--task=pose --dataset=kitti needs --data_path (the KITTI odometry root)")
        resize = pipeline.PipelineConfig(height=height, width=width, batch_size=1)
        for name in FLAGS.pose_sequences:
            number = int(name)
            poses_path = (os.path.join(FLAGS.poses_dir, f"{number:02d}.txt") if FLAGS.poses_dir
                          else None)
            paths, poses = kitti.odometry_sequence(FLAGS.data_path, number, poses_path)
            frames = np.stack([frame_files.load_resized_frame(p, resize) for p in paths])
            sequences[f"{number:02d}"] = (frames, poses)
    result = {"sequences": {}, "dataset": FLAGS.dataset, "height": height, "width": width,
              "snippet_length": 5}
    for name, (frames, poses) in sequences.items():
        values = evaluation.evaluate_pose(model, frames, poses, batch_size=FLAGS.batch_size)
        if not np.isfinite([values["ate_mean"], values["ate_std"]]).all():
            raise NonFiniteOutputError(FLAGS.checkpoint, f"the pose network's output is NaN/Inf on "
                                                         f"sequence {name}: its weights are not finite "
                                                         f"(a diverged training run?)")
        print(f"Sequence {name}: {len(frames)} frames, trajectory error (5-frame snippets, scale-aligned): "
              f"{values['ate_mean']:0.4f} ± {values['ate_std']:0.4f} m")
        result["sequences"][name] = values
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.checkpoint:
        raise app.UsageError("--checkpoint is required (a training run folder, SavedModel or .tflite)")

    from tripled_tf import checkpoint, inference
    from tripled_tf.cli import exit_with_error
    from tripled_tf.data.records import BadInputError

    try:
        if FLAGS.task == "depth":
            depth_fn = inference.load_depth_fn(FLAGS.checkpoint, FLAGS.batch_size)
            result = evaluate_depth_task(depth_fn)
            result["model"] = depth_fn.description
        else:
            inference.check_run_folder(FLAGS.checkpoint, depth_only_ok=False)
            model, config = checkpoint.load_model(FLAGS.checkpoint, depth_only=False)
            result = evaluate_pose_task(model, config)
    except (BadInputError, FileNotFoundError, ValueError) as error:
        exit_with_error(str(error), 2)
    result.update(checkpoint=os.path.abspath(FLAGS.checkpoint), task=FLAGS.task)
    if FLAGS.output_json:
        checkpoint.write_json(FLAGS.output_json, result)
    print(json.dumps(result))


if __name__ == "__main__":
    from tripled_tf.cli import use_onednn_by_default

    use_onednn_by_default()
    app.run(main)
