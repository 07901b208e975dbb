"""Latency and accuracy of each TFLite quantisation mode next to the Keras float32 model.

    python -m tools.bench_edge --checkpoint=runs/demo                      # exports none/fp16/dynamic/int8 itself
    python -m tools.bench_edge --checkpoint=runs/demo --model=a.tflite,b.tflite --threads=4
    python -m tools.bench_edge --checkpoint=runs/kitti --dataset=kitti --data_path=/data/kitti_raw \
        --split=/path/to/split.txt --height=192 --width=640

Per model: latency of the network alone (one frame at the network's size; median and 90th
percentile over ``--runs`` calls, the models interleaved in blocks of 5 calls so that a noisy machine
slows all of them alike), the end-to-end ``tripled_edge.runtime`` call (uint8 frame at the data's native
size -> depth, with the numpy pre/post-processing), and AbsRel / δ<1.25 against exact ground truth
(synthetic scene) or LiDAR (KITTI), Monodepth2's protocol with median scaling. The Keras rows are the
same network in TensorFlow: compiled (``tf.function``, how our evaluation runs it) and eager
(``model(x)``, how a Keras user calls it). Needs TensorFlow (it exports and runs the Keras model);
the last stdout line is one JSON object.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from tripled_tf.cli import use_onednn_by_default  # noqa: E402

FLAGS = flags.FLAGS
BLOCK = 5  # consecutive timed calls per model and round
flags.DEFINE_string("checkpoint", None, "Training run folder: the Keras float32 reference (and the "
                    "source of the exports when --model is not given).")
flags.DEFINE_list("model", [], ".tflite files to measure (default: export every --modes from --checkpoint).")
flags.DEFINE_list("modes", ["none", "fp16", "dynamic", "int8"], "Quantisation modes to export.")
flags.DEFINE_integer("height", 0, "Network input height (0 = training size).")
flags.DEFINE_integer("width", 0, "Network input width (0 = training size).")
flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "kitti"], "Ground truth for AbsRel.")
flags.DEFINE_string("data_path", "", "KITTI raw root (--dataset=kitti).")
flags.DEFINE_string("split", "", "KITTI split name or file (--dataset=kitti).")
flags.DEFINE_string("splits_dir", "", "Folder of the split files.")
flags.DEFINE_integer("num_samples", 64, "Synthetic test frames.")
flags.DEFINE_integer("calibration_frames", 64, "int8 calibration frames (training data).")
flags.DEFINE_integer("runs", 30, "Timed calls per model (rounded down to a multiple of 5).")
flags.DEFINE_integer("threads", 2, "CPU threads for TFLite (TensorFlow: intra-op threads).")
flags.DEFINE_enum("accelerator", "cpu", ["cpu", "gpu", "auto"], "Where the TFLite models run "
                  "(tripled_edge.runtime.load). LiteRT's GPU accelerator cannot share a process with "
                  "TensorFlow (this bench runs the Keras reference): 'gpu' stops with that error, 'auto' "
                  "falls back to the CPU.")
flags.DEFINE_string("export_dir", "", "Keep the exported .tflite files here (default: a temporary folder).")
flags.DEFINE_string("output_json", "", "Also write the results here.")


def _percentiles(samples):
    import numpy as np

    return float(np.median(samples)), float(np.percentile(samples, 90))


def _ground_truth(height: int, width: int):
    """(network-size frames [N, h, w, 3] float32, native-size uint8 frames, ground-truth maps, crop)."""
    import numpy as np

    from tripled_tf import evaluation
    from tripled_tf.data import frame_files, kitti, synthetic

    if FLAGS.dataset == "synthetic":
        native = synthetic.make_triplets(FLAGS.num_samples, height, width, seed=0, split="test")
        frames = native["target"]
        uint8 = [np.round(f * 255).astype(np.uint8) for f in frames[:4]]
        return frames, uint8, list(native["depth"][..., 0]), None
    frames_list = kitti.eval_frames(FLAGS.data_path, FLAGS.split, splits_dir=FLAGS.splits_dir or None)
    frames, depths, _ = evaluation.kitti_depth_samples(frames_list, height, width)
    uint8 = [frame_files.load_frame(f.image) for f in frames_list[:4]]
    return frames, uint8, depths, "garg"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # TensorFlow's SavedModel writer logs every step at INFO
    if not FLAGS.checkpoint:
        raise app.UsageError("--checkpoint (the Keras reference run folder) is required")
    import numpy as np
    import tensorflow as tf

    from tripled_edge import runtime
    from tripled_tf import deploy, evaluation, inference
    from tripled_tf.cli import exit_with_error

    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    run = deploy.load_run(FLAGS.checkpoint, FLAGS.height, FLAGS.width)
    size = (run.height, run.width)
    frames, native_frames, depths, crop = _ground_truth(*size)

    models = {os.path.basename(path): path for path in FLAGS.model}
    tmp = None
    if not models:
        export_dir = FLAGS.export_dir or (tmp := tempfile.TemporaryDirectory(prefix="edge_bench_")).name
        network = deploy.write_network_saved_model(run, os.path.join(export_dir, "network_saved_model"))
        calibration = deploy.calibration_frames(run.config, *size, FLAGS.calibration_frames)
        for mode in FLAGS.modes:
            path = os.path.join(export_dir, f"depth_{mode}.tflite")
            deploy.export_tflite(run, path, mode, representative=calibration, saved_model_dir=network)
            models[f"tflite {mode}"] = path

    # Accuracy.
    rows = {}
    keras_fn = inference.from_keras(run.model, size, description="keras fp32")
    rows["keras fp32"] = {"metrics": evaluation.evaluate_depth(keras_fn, frames, depths, crop=crop)}
    loaded = {}
    for name, path in models.items():
        try:
            loaded[name] = runtime.load(path, accelerator=FLAGS.accelerator, num_threads=FLAGS.threads)
        except runtime.RuntimeUnavailableError as error:
            exit_with_error(str(error), 2)
        depth_fn = inference.load_depth_fn(path)
        rows[name] = {"metrics": evaluation.evaluate_depth(depth_fn, frames, depths, crop=crop),
                      "bytes": os.path.getsize(path), "runtime": loaded[name].runtime,
                      "accelerator": loaded[name].accelerator}

    # Latency, interleaved.
    compiled = tf.function(lambda x: run.model(x, training=False)[0])
    one = tf.constant(frames[:1])
    compiled(one)
    run.model(one, training=False)
    calls = {"keras fp32": lambda: compiled(one).numpy(),
             "keras fp32 eager": lambda: run.model(one, training=False)[0].numpy()}
    for name, model in loaded.items():
        calls[name] = (lambda m=model: m.network(frames[0]))
        calls[name + " end-to-end"] = (lambda m=model: m.predict(native_frames[0]))
    for call in calls.values():
        call()  # warm-up
    # Interleaved in blocks: each model runs BLOCK calls in a row, round after round. Call-by-call
    # alternation would make every call pay for the previous runtime's thread pool winding down.
    samples = {name: [] for name in calls}
    for _ in range(max(1, FLAGS.runs // BLOCK)):
        for name, call in calls.items():
            call()  # the block's first call absorbs the switch from the previous model
            for _ in range(BLOCK):
                start = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - start)
    latency = {name: _percentiles(values) for name, values in samples.items()}
    reference = latency["keras fp32"][0]

    print(f"Network {size[0]}x{size[1]}, batch 1, {FLAGS.threads} threads, {FLAGS.runs} calls (interleaved); "
          f"AbsRel on {len(frames)} {FLAGS.dataset} frames (median scaling)")
    print(f"{'model':<28}{'median ms':>10}{'p90 ms':>9}{'vs keras':>9}{'e2e ms':>9}{'AbsRel':>9}"
          f"{'dAbsRel':>9}{'a1':>7}{'MB':>7}")
    base = rows["keras fp32"]["metrics"]["abs_rel"]
    result = {"height": size[0], "width": size[1], "threads": FLAGS.threads, "runs": FLAGS.runs,
              "accelerator": FLAGS.accelerator,
              "dataset": FLAGS.dataset, "num_frames": len(frames), "models": {}}
    for name in ["keras fp32", "keras fp32 eager"] + list(loaded):
        median, p90 = latency[name]
        metrics = rows.get(name, rows["keras fp32"])["metrics"]
        e2e = latency.get(name + " end-to-end", (float("nan"),))[0]
        relative = metrics["abs_rel"] / base - 1.0
        size_mb = rows.get(name, {}).get("bytes", float("nan")) / 2 ** 20
        print(f"{name:<28}{median * 1e3:>10.1f}{p90 * 1e3:>9.1f}{reference / median:>8.2f}x{e2e * 1e3:>9.1f}"
              f"{metrics['abs_rel']:>9.4f}{relative * 100:>8.2f}%{metrics['a1']:>7.3f}{size_mb:>7.1f}")
        result["models"][name] = {"latency_median_s": median, "latency_p90_s": p90,
                                  "speedup_vs_keras_compiled": reference / median,
                                  "end_to_end_median_s": None if np.isnan(e2e) else e2e,
                                  "abs_rel": metrics["abs_rel"], "abs_rel_change": relative,
                                  "a1": metrics["a1"], "path": models.get(name),
                                  "accelerator": rows.get(name, {}).get("accelerator", "cpu (TensorFlow)")}
    if FLAGS.output_json:
        with open(FLAGS.output_json, "w") as handle:
            json.dump(result, handle, indent=2)
    print(json.dumps(result))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    use_onednn_by_default()  # as the command lines do, before TensorFlow is imported
    app.run(main)
