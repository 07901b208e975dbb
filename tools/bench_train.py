r"""Speed of one optimiser step of the training model (forward, losses, backward, Adam update).

    python tools/bench_train.py --flagfile=configs/demo.cfg --height=192 --width=640 --batch_size=4 \
        --steps=5 [--warmup=1] [--threads=2]
    python -m tools.bench_train ...   (same flags)

Accepts every flag of ``python -m tripled_tf.train`` (flagfiles and overrides included) and builds the
same model, optimiser and compiled train step as training does (``tripled_tf.train_sources.build_model``,
``make_optimizer``, ``model.compile(jit_compile=...)``, Keras' own ``train_function`` fed by a tf.data
iterator, as ``fit`` runs it), from random initialisation: every ``*_weights`` path of the configs is
forced to "none". Data loading is excluded: one batch of the built-in synthetic scene at the requested
size goes through the training input pipeline once (augmentation, erase masks as configured) and that
same batch is fed at every step, whatever ``--dataset`` says. On a GPU the step still includes the
small host-to-device copy of that batch, as in training.

The first call traces the step (and compiles it with XLA under ``--jit_compile``) and is timed on its
own; ``--warmup`` more steps run untimed; then ``--steps`` steps are timed one by one, each ending with
its loss fetched to the host so the time covers the finished step. Extra flags:
  --steps   timed steps (default 5)
  --warmup  untimed steps after the first traced call (default 1)
  --threads TensorFlow intra-op (compute) threads, like torch.set_num_threads (default 2; 0 =
            TensorFlow's default)
  --inter_op_threads  TensorFlow's inter-op scheduling pool (default: TensorFlow's default, as
            `python -m tripled_tf.train` runs; pinning it to 2 on 2 cores made the step ~5 % slower)
  --conv_kernel_gradient  auto (default, as training runs) | matmul | tensorflow: how convolution
            kernel gradients are computed (tripled_tf/models/conv.py), to compare the two
  --serve   after the first step and the warm-up, print {"ready": true, ...}, then answer lines on
            stdin: "steps N" runs N timed steps and prints {"step_s": [...], "loss": x}; "quit" ends
            with the JSON below (tools/bench_compare.py interleaves several such processes)

Progress lines go to stdout; the LAST line is one JSON object:
  images_per_s     batch_size / step_s_median (frame triplets per second)
  step_s_median, step_s_min, step_s_max   over the timed steps, seconds
  first_step_s     the first call: tracing (+ XLA compilation) + one step, seconds
  build_s, data_s  model construction (variables created) / rendering + pipelining the batch, seconds
  peak_rss_gib     peak resident memory of the process (ru_maxrss), GiB
  model, height, width, batch_size, steps, warmup, threads, inter_op_threads, depth_layers,
                   jit_compile (the setting the model ran with), dtype_policy (Keras global policy),
                   conv_kernel_gradient ("matmul" or "tensorflow", as the step ran),
                   mixed_precision (only if the train config has such a field)
  loss_last        loss of the last timed step (null if not finite), loss_finite
  tensorflow, keras, device ("CPU" or the first GPU's name)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import resource
import statistics
import sys
import time
from typing import Any, Dict, Iterator, Sequence, Tuple

if __package__ in (None, ""):  # run as a file: make `tripled_tf` / `tools` importable from the repo
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from tripled_tf.cli import use_onednn_by_default  # noqa: E402

from tools.bench_protocol import serve  # noqa: E402

# The thread counts are set in main, before TensorFlow runs its first op (define_flags imports the
# trainer, and with it TensorFlow, but creates no tensor).

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the trainer's flags (by importing tripled_tf.train) and the bench's own.

    Only called when run as a script, so importing this module does not define flags that could clash
    with those of a test or another tool.
    """
    import tripled_tf.train  # noqa: F401  (defines every training flag at import time)

    flags.DEFINE_integer("steps", 5, "Timed training steps.", lower_bound=1)
    flags.DEFINE_integer("warmup", 1, "Untimed steps after the first (tracing) call.", lower_bound=0)
    flags.DEFINE_integer("threads", 2, "TensorFlow intra-op threads (0 = TensorFlow's default).",
                         lower_bound=0)
    flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0 = TensorFlow's "
                         "default, as the trainer runs).", lower_bound=0)
    flags.DEFINE_enum("conv_kernel_gradient", "auto", ["auto", "matmul", "tensorflow"],
                      "Convolution kernel gradients: matrix products (tripled_tf/models/conv.py), "
                      "TensorFlow's own kernels, or auto (matrix products on a machine without GPU).")
    flags.DEFINE_bool("serve", False, "Answer the line protocol of tools/bench_compare.py on stdin "
                      "instead of timing --steps steps (progress then goes to stderr).")


# ------------------------------------------------------------------------------- pure helpers


def summarize(step_times: Sequence[float], batch_size: int) -> Dict[str, float]:
    """Throughput and spread of the timed steps.

    Args:
      step_times: seconds per timed step (at least one).
      batch_size: frame triplets per step.
    Returns:
      {"images_per_s": batch_size / median, "step_s_median", "step_s_min", "step_s_max"}; the median
      rather than the mean, so one step disturbed by the machine does not move the figure.
    """
    if not step_times:
        raise ValueError("summarize needs at least one step time")
    median = statistics.median(step_times)
    return {"images_per_s": round(batch_size / median, 4), "step_s_median": round(median, 6),
            "step_s_min": round(min(step_times), 6), "step_s_max": round(max(step_times), 6)}


def peak_rss_gib(maxrss_kib: int | None = None) -> float:
    """Peak resident set size in GiB; ``maxrss_kib`` defaults to this process's ru_maxrss (KiB on
    Linux)."""
    if maxrss_kib is None:
        maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(maxrss_kib / 1024 ** 2, 3)


def random_init(config: Any) -> Any:
    """A copy of a config dataclass with every ``*_weights`` path set to "none".

    The bench measures speed from random initialisation; covering any string field named
    ``*_weights`` (encoder_weights, pose_encoder_weights, a TripleDNet extractor_weights, ...) keeps it
    from reading weight files that may not exist here. Loss weights (``*_weight``, floats) are kept.
    """
    changes = {field.name: "none" for field in dataclasses.fields(config)
               if field.name.endswith("_weights") and isinstance(getattr(config, field.name), str)}
    return dataclasses.replace(config, **changes) if changes else config


# ------------------------------------------------------------------------------ TensorFlow side


def set_threads(threads: int, inter_op_threads: int = 0) -> None:
    """Fixes TensorFlow's intra-op (compute) pool at ``threads`` and, when non-zero, the inter-op
    pool at ``inter_op_threads``; 0 leaves a pool at TensorFlow's default. Must run before TensorFlow
    executes any op.

    The inter-op pool only schedules ops; the compute threads are the intra-op ones (PyTorch's
    ``set_num_threads``). Why the inter-op default is kept: the module docstring.
    """
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    if inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)


def device_name() -> str:
    """"CPU", or the first visible GPU's name (e.g. "NVIDIA H100 80GB HBM3")."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    return str(tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name))


def apply_precision(train_config: Any) -> str:
    """Sets the Keras global dtype policy a ``mixed_precision`` train-config field asks for, if any;
    returns the policy in effect.

    Accepts a bool (True = "mixed_float16") or a policy name; training sets the policy before building
    the model, so the bench must too or it would time float32 while reporting mixed precision.
    """
    import keras

    value = getattr(train_config, "mixed_precision", None)
    if isinstance(value, str) and value.lower() not in ("", "none", "float32"):
        keras.mixed_precision.set_global_policy(value)
    elif value is True:
        keras.mixed_precision.set_global_policy("mixed_float16")
    return keras.mixed_precision.global_policy().name


def one_batch(train_config: Any, model_config: Any):
    """One training batch (dict of tensors) of the synthetic scene, through the training pipeline."""
    from tripled_tf import train_sources
    from tripled_tf.data import pipeline, synthetic

    arrays = synthetic.make_triplets(train_config.batch_size, train_config.height, train_config.width,
                                     seed=train_config.seed, split="train")
    dataset = pipeline.arrays_dataset(arrays, train_sources.pipeline_config(train_config, model_config))
    # take(1) runs to its end, so no tf.data iterator with work in flight outlives this function.
    return next(iter(dataset.take(1)))


def repeated_batches(batch) -> Iterator:
    """A tf.data iterator yielding ``batch`` forever: Keras' train_function then runs the same graph
    as in ``fit`` (next element fetched inside the traced function)."""
    import tensorflow as tf

    return iter(tf.data.Dataset.from_tensors(batch).repeat())


def run_step(model, iterator) -> Tuple[float, float]:
    """Runs one compiled training step; returns (seconds, loss of that step).

    The trackers are running means, so they are reset first (outside the timing) to make the returned
    loss this step's own. The loss and the optimiser's step counter are fetched to the host before
    the clock stops, so the step has really finished (GPU work is asynchronous).
    """
    model.reset_metrics()
    start = time.perf_counter()
    logs = model.train_function(iterator)
    loss = float(logs["loss"].numpy())
    model.optimizer.iterations.numpy()
    return time.perf_counter() - start, loss


def say(message: str) -> None:
    """A progress line: stdout, or stderr under --serve (stdout then carries the protocol)."""
    print(message, file=sys.stderr if FLAGS.serve else sys.stdout, flush=True)


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    set_threads(FLAGS.threads, FLAGS.inter_op_threads)  # first: before any TensorFlow op runs

    import keras
    import tensorflow as tf

    from tripled_tf import train as trainer
    from tripled_tf import train_sources, training
    from tripled_tf.models import conv

    if FLAGS.conv_kernel_gradient != "auto":
        conv.set_matmul_kernel_gradients(FLAGS.conv_kernel_gradient == "matmul")

    try:
        train_config, model_config = trainer.configs_from_flags()
        train_config, model_config = random_init(train_config), random_init(model_config)
    except ValueError as error:
        raise app.UsageError(str(error))
    device = device_name()
    policy = apply_precision(train_config)
    keras.utils.set_random_seed(train_config.seed)
    say(f"bench_train: {type(model_config).__name__} depth_layers={model_config.depth_layers} "
          f"{train_config.width}x{train_config.height} batch {train_config.batch_size}, "
          f"{FLAGS.threads or 'default'} threads, jit_compile={train_config.jit_compile}, "
          f"policy {policy}, device {device}")

    start = time.perf_counter()
    batch = one_batch(train_config, model_config)
    data_s = time.perf_counter() - start
    say(f"data: one synthetic batch in {data_s:.2f} s")

    start = time.perf_counter()
    model = train_sources.build_model(train_config, model_config)
    model.compile(optimizer=training.make_optimizer(train_config), jit_compile=train_config.jit_compile)
    # What fit's symbolic build does: create the Adam slots now, not while the step is being traced.
    model.optimizer.build(model.trainable_variables)
    model.make_train_function()
    build_s = time.perf_counter() - start
    say(f"model: {type(model).__name__}, {model.count_params():,} parameters, built in "
        f"{build_s:.2f} s")

    iterator = repeated_batches(batch)
    first_step_s, loss = run_step(model, iterator)
    say(f"first step (trace{' + XLA compile' if model.jit_compile else ''}): {first_step_s:.2f} s, "
        f"loss {loss:.4f}")
    for index in range(FLAGS.warmup):
        seconds, loss = run_step(model, iterator)
        say(f"warm-up {index + 1}/{FLAGS.warmup}: {seconds:.3f} s, loss {loss:.4f}")
    step_times = []
    if FLAGS.serve:
        loss = serve(lambda: run_step(model, iterator), step_times, first_step_s)
    for index in range(0 if FLAGS.serve else FLAGS.steps):
        seconds, loss = run_step(model, iterator)
        step_times.append(seconds)
        say(f"step {index + 1}/{FLAGS.steps}: {seconds:.3f} s, loss {loss:.4f}")
    if not step_times:
        raise app.UsageError("no step was timed (--serve ended before any 'steps N')")

    summary = summarize(step_times, train_config.batch_size)
    finite = math.isfinite(loss)
    say(f"{summary['images_per_s']:.2f} images/s (median step {summary['step_s_median']:.3f} s)"
        + ("" if finite else "  WARNING: the loss is not finite"))
    result = dict(summary, first_step_s=round(first_step_s, 3), build_s=round(build_s, 3),
                  data_s=round(data_s, 3), peak_rss_gib=peak_rss_gib(), model=type(model).__name__,
                  height=train_config.height, width=train_config.width,
                  batch_size=train_config.batch_size, warmup=FLAGS.warmup,
                  steps=len(step_times), threads=FLAGS.threads,
                  inter_op_threads=FLAGS.inter_op_threads or "default",
                  depth_layers=model_config.depth_layers,
                  depth_decoder=getattr(model_config, "depth_decoder", None),
                  jit_compile=bool(model.jit_compile), dtype_policy=policy,
                  conv_kernel_gradient=("matmul" if conv.matmul_kernel_gradients_enabled()
                                        else "tensorflow"))
    if hasattr(train_config, "mixed_precision"):
        result["mixed_precision"] = train_config.mixed_precision
    result.update(loss_last=round(loss, 6) if finite else None, loss_finite=finite,
                  tensorflow=tf.__version__, keras=keras.__version__, device=device)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    use_onednn_by_default()  # as python -m tripled_tf.train does, before TensorFlow is imported
    define_flags()
    app.run(main)
