"""Writes the KITTI ground-truth depth archive the depth evaluation reads.

    python -m tools.export_gt_depth --data_path=/data/kitti_raw --split=eigen \
        --splits_dir=/path/to/monodepth2/splits [--output=gt_depths_eigen.npz] [--skip_bad_frames]

For every line of the split (a split name, see ``tripled_tf.data.kitti.SPLIT_FILES``, or any split file
in the Monodepth2 format) the target frame's Velodyne scan is projected into the left colour camera
(camera 2, as Monodepth2's exporter does for every line) with ``kitti.generate_depth_map``.

Output: a compressed ``.npz`` like Monodepth2's ``gt_depths.npz``: key ``data`` is an object array with
one [H, W] float32 map (metres, 0 = unknown) per exported split line, in split order; load it with
``np.load(path, allow_pickle=True)["data"]``. Key ``names`` holds the exported split lines
(``"<folder> <frame> <side>"``) so that, with ``--skip_bad_frames``, maps can still be matched to
frames. Default output: ``gt_depths_<split>.npz`` in the current directory (``<split>`` = the split
name, or the split file's name without extension), because the split folder and the data folder are
often read-only.

A missing or corrupt scan or calibration file raises ``BadInputError`` naming the file, or with
``--skip_bad_frames`` is skipped and counted (the count and the first few are printed).
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional, Tuple

from absl import app, flags

import numpy as np

from tripled_tf.data import kitti
from tripled_tf.data.records import BadInputError, SkipReport

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags; only when run as a script, so that importing this module
    (tests, other tools) does not clash with other absl flags of the same name."""
    flags.DEFINE_string("data_path", None, "KITTI raw root (the folder holding the date folders).")
    flags.DEFINE_string("split", "eigen", "Split name (eigen, eigen_zhou, eigen_zhou_val, ...) or split file.")
    flags.DEFINE_string("splits_dir", None, "Monodepth2's splits/ folder (also searched: <data_path>/splits).")
    flags.DEFINE_string("output", None, "Output .npz (default: gt_depths_<split>.npz in the current folder).")
    flags.DEFINE_bool("skip_bad_frames", False, "Skip and count lines with a missing/corrupt scan instead of "
                      "failing.")


def default_output(split: str) -> str:
    """``gt_depths_<split>.npz`` in the current folder; a split file contributes its name sans extension."""
    name = os.path.splitext(os.path.basename(split))[0] if os.path.isfile(split) else split
    return os.path.abspath(f"gt_depths_{name}.npz")


def export_gt_depths(data_path, split, splits_dir=None, skip_bad_frames: bool = False
                     ) -> Tuple[List[np.ndarray], List[str], SkipReport]:
    """Ground-truth maps of every line of a split.

    Returns:
      (maps, names, report): maps are [H, W] float32 metres (0 = unknown), names the matching split
      lines, report what was skipped (only with skip_bad_frames).
    Raises:
      BadInputError naming the file for a missing split, calibration file or scan, or a corrupt scan.
    """
    data_path = os.fspath(data_path)
    lines = kitti.read_split(kitti.split_path(split, splits_dir=splits_dir, data_path=data_path))
    maps, names, report = [], [], SkipReport()
    for folder, index, side in lines:
        name = f"{folder} {index} {side}"
        calib_dir = os.path.join(data_path, folder.split("/")[0])
        velo_path = os.path.join(data_path, folder, "velodyne_points", "data", f"{index:010d}.bin")
        try:
            if not os.path.isfile(velo_path):
                raise BadInputError(velo_path, f"Velodyne scan of split line {name!r} does not exist")
            depth = kitti.generate_depth_map(calib_dir, velo_path, cam=2)
        except BadInputError as e:
            if not skip_bad_frames:
                raise
            report.add(str(e))  # the message already names the scan and the split line
            continue
        maps.append(depth)
        names.append(name)
    return maps, names, report


def save_gt_depths(path, maps: List[np.ndarray], names: Optional[List[str]] = None) -> None:
    """Writes maps as Monodepth2's ``gt_depths.npz`` layout (object array under key ``data``)."""
    data = np.empty(len(maps), dtype=object)  # object array even when all maps share one size
    for i, depth in enumerate(maps):
        data[i] = depth
    extra = {"names": np.array(names if names is not None else [], dtype=str)}
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(path, data=data, **extra)


def main(argv):
    del argv
    if not FLAGS.data_path:
        raise app.UsageError("--data_path is required")
    output = FLAGS.output or default_output(FLAGS.split)
    try:
        maps, names, report = export_gt_depths(FLAGS.data_path, FLAGS.split, splits_dir=FLAGS.splits_dir,
                                               skip_bad_frames=FLAGS.skip_bad_frames)
    except BadInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not maps:
        print(f"no ground truth exported ({report.summary()})", file=sys.stderr)
        return 1
    save_gt_depths(output, maps, names)
    print(f"wrote {len(maps)} ground-truth depth maps to {output}; {report.summary()}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
