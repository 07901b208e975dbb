"""Export the depth network of a training run: ``python -m tripled_tf.export --checkpoint=RUN_DIR ...``.

    # TensorFlow Serving (signatures serving_default: float images, serving_encoded: JPEG/PNG bytes)
    python -m tripled_tf.export --checkpoint=runs/kitti --format=saved_model --output=export/depth/1
    # Edge: TFLite, fixed input size (the training size unless --height/--width), batch 1
    python -m tripled_tf.export --checkpoint=runs/kitti --format=tflite --quantize=fp16 --output=depth_fp16.tflite
    python -m tripled_tf.export --checkpoint=runs/kitti --format=tflite --quantize=int8 --output=depth_int8.tflite
    # Jetson / TensorRT: ONNX (needs pip install tf2onnx onnx)
    python -m tripled_tf.export --checkpoint=runs/kitti --format=onnx --output=depth.onnx

Only the depth branch is exported. Every TFLite file is compiled by LiteRT's GPU accelerator where a
GPU adapter exists (a GPU, or Mesa's software Vulkan driver: tools/install_software_gpu.sh), else
checked operator by operator against the GPU delegate's rules (tripled_edge.gpu_compat); the export
fails with the list of operators the GPU would not take unless ``--allow_cpu_ops``. int8 is calibrated on ``--calibration_frames`` frames of the run's own
training data and keeps the disparity head in float (``--integer_io`` for uint8 input and output).
Metadata (input size, normalisation, depth range, intrinsics) is embedded in the .tflite, written to
``assets.extra/tripled_tf.json`` of a SavedModel and to the ONNX metadata_props. The last stdout line
is one JSON object describing what was written. Bad input: one ``error:`` line on stderr, exit 2.

``--output`` must be new, an empty folder (SavedModel) or a previous export of the same format, which
is replaced; export refuses a file or a non-empty folder it did not write (e.g. ``--output=.``, or a
TensorFlow Serving base folder ``export/depth`` instead of its version folder ``export/depth/1``).
"""
from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "A training run folder (config.json + checkpoints/).")
flags.DEFINE_enum("format", "saved_model", ["saved_model", "tflite", "onnx"], "What to write.")
flags.DEFINE_string("output", None, "Output path: a folder for saved_model, a file otherwise; new, an "
                    "empty folder, or a previous export of ours (replaced). Nothing else is overwritten.")
flags.DEFINE_enum("quantize", "none", ["none", "fp16", "dynamic", "int8"],
                  "TFLite: none (float32), fp16 (float16 weights; GPU), dynamic (int8 weights), int8 "
                  "(int8 weights and activations calibrated on training frames; float head and I/O).")
flags.DEFINE_bool("integer_io", False, "TFLite int8: uint8 input and output too (integer-only "
                  "accelerators); gives up the float disparity head.")
flags.DEFINE_bool("allow_cpu_ops", False, "TFLite: write the model even if some operators would not "
                  "run on the GPU (LiteRT's GPU accelerator where an adapter exists, else the GPU "
                  "delegate's operator rules).")
flags.DEFINE_integer("calibration_frames", 128, "TFLite int8: training frames for calibration.")
flags.DEFINE_integer("height", 0, "Network input height (0 = the training size; multiple of 32).")
flags.DEFINE_integer("width", 0, "Network input width (0 = the training size; multiple of 32).")
flags.DEFINE_integer("opset", 17, "ONNX opset.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # TensorFlow's SavedModel writer logs every step at INFO
    if not FLAGS.checkpoint or not FLAGS.output:
        raise app.UsageError("--checkpoint (a training run folder) and --output are required")
    from tripled_tf import deploy
    from tripled_tf.cli import exit_with_error
    from tripled_tf.inference import check_run_folder

    try:
        deploy.check_output(FLAGS.output, FLAGS.format)  # nothing is deleted that export did not write
        check_run_folder(FLAGS.checkpoint)
        if FLAGS.format != "tflite" and (FLAGS.quantize != "none" or FLAGS.integer_io):
            raise deploy.ExportError("--quantize / --integer_io apply to --format=tflite only")
        run = deploy.load_run(FLAGS.checkpoint, FLAGS.height, FLAGS.width)
        if FLAGS.format == "saved_model":
            result = {"path": deploy.export_saved_model(run, FLAGS.output)}
        elif FLAGS.format == "tflite":
            result = deploy.export_tflite(run, FLAGS.output, FLAGS.quantize, FLAGS.integer_io,
                                          FLAGS.allow_cpu_ops, FLAGS.calibration_frames)
            if result["gpu_incompatible"]:
                print(f"warning: operators the GPU will not take ({result['gpu_check']}; --allow_cpu_ops):\n  "
                      + "\n  ".join(result["gpu_incompatible"]))
        else:
            result = {"path": deploy.export_onnx(run, FLAGS.output, FLAGS.opset)}
    except (ValueError, OSError) as error:  # ExportError and BadInputError are ValueErrors
        exit_with_error(str(error), 2)
    result.update(format=FLAGS.format, quantize=FLAGS.quantize if FLAGS.format == "tflite" else None,
                  checkpoint=os.path.abspath(FLAGS.checkpoint), input_height=run.height,
                  input_width=run.width)
    print(f"Wrote {result['path']} ({FLAGS.format}, input {run.height}x{run.width})")
    print(json.dumps(result))


if __name__ == "__main__":
    from tripled_tf.cli import use_onednn_by_default

    use_onednn_by_default()
    app.run(main)
