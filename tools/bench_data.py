"""Throughput of the input pipeline (records -> augmented batches), in images (samples) per second.

    python -m tools.bench_data [--data_path=../shared/data] [--num_batches=20] [--batch_size=4]

Runs the full pipeline (decode, resize, flip, colour jitter, erase mask, batching) at 640x192 and
1024x320 on the KITTI raw snippet (drive 0000, targets 1..10 with their neighbours, cycled) for each
resize method, once with one parallel call (to show how decoding scales), and on in-memory synthetic
frames (``arrays_dataset``). One line per setting, then a JSON summary. A sample = one triplet.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tripled_tf.cli import use_onednn_by_default  # noqa: E402

use_onednn_by_default()  # a script: before TensorFlow is imported, as the trainer does

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tripled_tf.conventions import KITTI_NORMALIZED_INTRINSICS  # noqa: E402
from tripled_tf.data import augmentation, pipeline  # noqa: E402
from tripled_tf.data.records import TripletRecord  # noqa: E402

SIZES = ((192, 640), (320, 1024))
DRIVE = "2011_09_26/2011_09_26_drive_0000_sync"


def snippet_records(data_path: pathlib.Path):
    """Triplets (t-1, t, t+1) for t = 1..10 of the snippet drive, via tripled_tf.data.kitti if present."""
    try:
        from tripled_tf.data import kitti  # written in parallel; preferred when it exists
        split = [(DRIVE, i, "l") for i in range(1, 11)]  # parsed split lines
        records, _ = kitti.kitti_records(data_path / "kitti_raw", split)
        if records:
            return list(records)
    except Exception as error:  # noqa: BLE001  (any API mismatch: fall back to the local helper)
        print(f"(tripled_tf.data.kitti not usable here: {type(error).__name__}: {error}; "
              f"building records locally)")
    folder = data_path / "kitti_raw" / DRIVE / "image_02" / "data"
    paths = [str(folder / f"{i:010d}.png") for i in range(12)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise SystemExit(f"KITTI snippet not found: {missing[0]} (pass --data_path)")
    return [TripletRecord(paths[i - 1], paths[i], paths[i + 1], KITTI_NORMALIZED_INTRINSICS, name=str(i))
            for i in range(1, 11)]


def measure(dataset: tf.data.Dataset, num_batches: int, batch_size: int) -> float:
    """Samples per second over ``num_batches`` batches after 2 warm-up batches."""
    iterator = iter(dataset)
    for _ in range(2):
        next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
        batch = next(iterator)
    _ = batch["target_aug"].numpy()
    elapsed = time.perf_counter() - start
    del iterator  # a live iterator with numpy_function work in flight aborts the interpreter at exit
    return num_batches * batch_size / elapsed


def main(argv=None):
    repo = pathlib.Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_path", default=str(repo.parent / "shared" / "data"))
    parser.add_argument("--num_batches", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--methods", default=",".join(pipeline.RESIZE_METHODS),
                        help="comma-separated resize methods to time on the KITTI snippet")
    args = parser.parse_args(argv)
    records = snippet_records(pathlib.Path(args.data_path))
    results = []

    def report(source, height, width, method, parallel, images_per_s):
        results.append(dict(source=source, height=height, width=width, resize_method=method,
                            num_parallel_calls=parallel, images_per_s=round(images_per_s, 2)))
        print(f"{source:9s} {width}x{height} resize={method:11s} parallel={parallel:3d}: "
              f"{images_per_s:7.2f} images/s", flush=True)

    for height, width in SIZES:
        base = dict(height=height, width=width, batch_size=args.batch_size, seed=0)
        for method in args.methods.split(","):
            config = pipeline.PipelineConfig(**base, resize_method=method)
            report("kitti", height, width, method, -1,
                   measure(pipeline.records_dataset(records, config), args.num_batches, args.batch_size))
        config = pipeline.PipelineConfig(**base, num_parallel_calls=1)
        report("kitti", height, width, config.resize_method, 1,
               measure(pipeline.records_dataset(records, config), args.num_batches, args.batch_size))
        rng = np.random.default_rng(0)
        n = 2 * args.batch_size
        arrays = {key: rng.uniform(0, 1, (n, height, width, 3)).astype(np.float32)
                  for key in augmentation.FRAME_KEYS}
        arrays["K"] = np.stack([np.eye(4, dtype=np.float32)] * n)
        config = pipeline.PipelineConfig(**base)
        report("synthetic", height, width, "-", -1,
               measure(pipeline.arrays_dataset(arrays, config), args.num_batches, args.batch_size))
    print(json.dumps({"cpu_count": os.cpu_count(), "batch_size": args.batch_size,
                      "num_batches": args.num_batches, "results": results}, indent=1))


if __name__ == "__main__":
    main()
