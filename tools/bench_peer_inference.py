r"""The peer figure for inference: Monodepth2's own PyTorch depth network against our TFLite files of
the same weights, on the same CPU, at the same size, with the same threads, interleaved in one process.

    TORCH_PYTHON tools/bench_peer_inference.py --monodepth2_dir=/path/to/monodepth2 \
        --model_dir=MD2_MODEL_DIR --tflite=FP32.tflite --tflite=INT8.tflite \
        [--threads=2 --rounds=20 --block=10 --warmup=5 --seed=0]

``TORCH_PYTHON``: a Python with torch (a CPU build is enough), numpy and ``ai-edge-litert``; torchvision
too (Monodepth2's ResnetEncoder takes its ResNet classes from torchvision.models; only that module is
loaded, torchvision's package __init__ and compiled operators are bypassed as in
tools/make_reference_fixtures.py). Neither TensorFlow nor tripled_tf is imported: the TFLite side is
``tripled_edge.runtime``, found in this checkout. ``--monodepth2_dir``: a checkout of
https://github.com/nianticlabs/monodepth2 (not shipped with this project: its licence is
non-commercial); its ``networks`` package is imported from there.

Contestants:
  monodepth2  Monodepth2's ``networks.ResnetEncoder`` + ``networks.DepthDecoder`` (scales 0..3, as its
              test_simple.py / evaluate_depth.py build them) holding ``--model_dir``'s encoder.pth and
              depth.pth, eval mode, under ``torch.no_grad()``, ``torch.set_num_threads(--threads)``;
              one call = ``decoder(encoder(x))`` on x [1, 3, H, W] at the size stored in encoder.pth.
              Its decoder always computes all four disparity heads; the exported network keeps only
              the finest (the three coarse heads are 3x3 convolutions to one channel).
  each --tflite  ``tripled_edge.runtime.load(path, accelerator="cpu", num_threads=--threads)``; one call
              = ``model.network(frame)`` (the network alone: frame [H, W, 3] float32 in [0, 1] -> the
              disparity, no resizing), XNNPACK through LiteRT's CompiledModel. Named ``tflite_fp32``,
              ``tflite_int8``, ... from the quantisation in the file's metadata (the file name when two
              would clash).

Timing: ``--warmup`` untimed calls of each contestant, then ``--rounds`` rounds; each round runs
``--block`` consecutive timed calls of every contestant in turn, the order rotated by one every round
(round r starts with contestant r mod n), so the slow drifts of a shared machine fall on every
contestant alike. Every call sees the same seeded frame. Per contestant: median, 90th percentile
(linear interpolation), min and max of all timed calls. Per TFLite file: ``speedup`` = Monodepth2's
median / the file's median (above 1: the TFLite file is faster) and ``paired_speedup`` = the median over
rounds of that ratio taken within each round (Monodepth2's block median / the file's block median).

Agreement (checked before the timing, on the same frame): each file's disparity is mapped back to the
sigmoid output, sigma = (disparity - 1/max_depth) / (1/min_depth - 1/max_depth) with the depth range
in the file's metadata, and compared with Monodepth2's ``("disp", 0)``: median and max of
|sigma_tflite - sigma_torch| / sigma_torch and the max absolute difference. fp32 should agree to
float rounding; int8 differs by its quantisation (reported, not judged).

Prints progress and a table to stderr and one JSON object as the last stdout line: {"contestants":
{name: {median_s, p90_s, min_s, max_s, calls, first_call_s, ...}}, "reference": "monodepth2",
"speedup_vs_monodepth2": {file name: ratio}, "paired_speedup_vs_monodepth2": {...}, "agreement":
{file name: {median_rel_diff, max_rel_diff, max_abs_diff}}, "height", "width", "threads", "rounds",
"block", "warmup", "machine": {cpu, cpus, features (AVX2 / AVX-512 / VNNI / ARM dot product ... that
the CPU has), load_average_start, load_average_end}, "torch", "litert", "numpy", "python", "model_dir",
"tensorflow_loaded"}. A machine whose load average is above 0.5 when the bench starts gets a warning:
cores shared with other work slow PyTorch's OpenMP threads far more than XNNPACK's (seen: 71 ms ->
1.7 s per Monodepth2 call on 2 busy cores, while the TFLite calls only doubled).

Preparing the inputs (docs/performance.md, "Inference against Monodepth2's PyTorch"):

    # 0. a torch venv with ai-edge-litert; a Monodepth2 checkout at /tmp/monodepth2
    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy ai-edge-litert
    /tmp/torchenv/bin/pip install --no-deps torchvision   # the release that matches the torch
    # 1. a seeded Monodepth2 ResNet-18 640x192 model folder (encoder.pth, depth.pth), with torch
    /tmp/torchenv/bin/python tools/make_reference_fixtures.py --monodepth2=/tmp/monodepth2 \
        --write_model_dir=/tmp/peer/md2_seeded_640x192
    # 2. the same weights through our import and export, with this project's Python (TensorFlow)
    python -m tripled_tf.convert --from=monodepth2 --input=/tmp/peer/md2_seeded_640x192 \
        --output=/tmp/peer/run_md2_seeded_640x192
    python -m tripled_tf.export --checkpoint=/tmp/peer/run_md2_seeded_640x192 --format=tflite \
        --quantize=none --output=/tmp/peer/md2_seeded_fp32.tflite
    python -m tripled_tf.export --checkpoint=/tmp/peer/run_md2_seeded_640x192 --format=tflite \
        --quantize=int8 --output=/tmp/peer/md2_seeded_int8.tflite
    # 3. the bench, in the torch venv
    /tmp/torchenv/bin/python tools/bench_peer_inference.py --monodepth2_dir=/tmp/monodepth2 \
        --model_dir=/tmp/peer/md2_seeded_640x192 --tflite=/tmp/peer/md2_seeded_fp32.tflite \
        --tflite=/tmp/peer/md2_seeded_int8.tflite --threads=2 --rounds=20 --block=10

(the int8 file is calibrated on the synthetic frames recorded by the conversion: its speed does not
depend on them, its agreement does).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Dict, List, Sequence

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE = "monodepth2"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Pure helpers (no torch, no LiteRT): tests/test_bench_peer_inference.py


def schedule(names: Sequence[str], rounds: int) -> List[List[str]]:
    """The order of the contestants in each round: round r starts with contestant r mod n and goes
    round in order, so each contestant runs first, second, ... equally often."""
    names = list(names)
    return [names[r % len(names):] + names[:r % len(names)] for r in range(rounds)]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between the closest ranks (numpy's
    default method)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(times: Sequence[float]) -> Dict:
    """median / p90 / min / max of call times in seconds, and their count."""
    if not times:
        raise ValueError("no timed calls")
    return {"median_s": round(statistics.median(times), 6), "p90_s": round(percentile(times, 90), 6),
            "min_s": round(min(times), 6), "max_s": round(max(times), 6), "calls": len(times)}


def speedups(times: Dict[str, List[float]], rounds: List[Dict[str, float]], reference: str = REFERENCE):
    """(speed-up, paired speed-up) of every contestant but the reference: the reference's median call
    time / the contestant's, over all calls; and the median over rounds of the same ratio of the
    round's block medians."""
    others = [name for name in times if name != reference]
    reference_median = statistics.median(times[reference])
    speedup = {name: round(reference_median / statistics.median(times[name]), 4) for name in others}
    paired = {name: round(statistics.median(r[reference] / r[name] for r in rounds), 4)
              for name in others}
    return speedup, paired


def sigma_of_disparity(disparity: np.ndarray, min_depth: float, max_depth: float) -> np.ndarray:
    """The sigmoid output sigma of an exported disparity: disparity = 1/max + (1/min - 1/max) sigma
    (tripled_tf.serving, Monodepth2's disp_to_depth)."""
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    return (np.asarray(disparity, np.float64) - min_disp) / (max_disp - min_disp)


def agreement(sigma: np.ndarray, reference: np.ndarray) -> Dict:
    """Median / max relative and max absolute difference of ``sigma`` from ``reference`` (same
    shape; the reference is a sigmoid output, so never 0)."""
    sigma, reference = np.asarray(sigma, np.float64), np.asarray(reference, np.float64)
    if sigma.shape != reference.shape:
        raise ValueError(f"shapes differ: {list(sigma.shape)} vs the reference's {list(reference.shape)}")
    difference = np.abs(sigma - reference)
    relative = difference / np.abs(reference)
    return {"median_rel_diff": float(np.median(relative)), "max_rel_diff": float(relative.max()),
            "max_abs_diff": float(difference.max())}


def contestant_names(quantizations: Sequence[str], paths: Sequence[str]) -> List[str]:
    """"tflite_<mode>" per file ("fp32" for quantize "none"), or "tflite_<file stem>" for files whose
    mode names would clash."""
    modes = ["fp32" if q in ("none", "", None) else str(q) for q in quantizations]
    names = []
    for mode, path in zip(modes, paths):
        clash = modes.count(mode) > 1
        stem = "".join(c if c.isalnum() or c in "_-" else "_" for c in pathlib.Path(path).stem)
        names.append(f"tflite_{stem if clash else mode}")
    if len(set(names)) != len(names):
        raise ValueError(f"two --tflite files would have the same name: {names}")
    return names


RESNET_DEPTHS = {(False, 2): 18, (False, 6): 34, (True, 6): 50, (True, 23): 101, (True, 36): 152}


def resnet_depth(keys) -> int:
    """The ResNet depth of a Monodepth2 encoder.pth from its keys: bottleneck blocks (conv3) or not,
    and the number of blocks in layer3."""
    keys = list(keys)
    bottleneck = "encoder.layer1.0.conv3.weight" in keys
    blocks = {k.split(".")[2] for k in keys if k.startswith("encoder.layer3.")}
    try:
        return RESNET_DEPTHS[(bottleneck, len(blocks))]
    except KeyError:
        raise ValueError(f"not a Monodepth2 ResNet encoder: {len(blocks)} blocks in layer3, "
                         f"bottleneck {bottleneck}") from None


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux), else platform's processor string."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Instruction-set extensions that decide the int8 / float speed (x86: AVX2, AVX-512, VNNI, AMX; ARM: the
# dot-product and int8 matrix extensions), recorded when the CPU has them.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
                "asimddp", "i8mm", "sve")


def cpu_features(cpuinfo: str = "/proc/cpuinfo") -> List[str]:
    """Which of CPU_FEATURES the first CPU of /proc/cpuinfo lists ("flags" on x86, "Features" on ARM)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    present = set(line.split(":", 1)[1].split())
                    return [name for name in CPU_FEATURES if name in present]
    except OSError:
        pass
    return []


def load_average():
    """The 1-minute load average (None where the system has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------------
# The contestants


def import_monodepth2_networks(monodepth2_dir: str):
    """Monodepth2's ``networks`` package from its checkout, torchvision reduced to its ResNet module."""
    root = pathlib.Path(monodepth2_dir).resolve()
    if not (root / "networks" / "depth_decoder.py").is_file():
        raise SystemExit(f"error: {root} is not a Monodepth2 checkout (no networks/depth_decoder.py); "
                         "git clone https://github.com/nianticlabs/monodepth2")
    sys.path.insert(0, str(REPO / "tools"))
    from make_reference_fixtures import import_torchvision_models  # noqa: E402  (torch, numpy only)

    import_torchvision_models()
    sys.path.insert(0, str(root))
    import networks  # monodepth2's

    return networks


def load_monodepth2(torch, networks, model_dir: str):
    """(encoder, decoder, height, width, ResNet depth) from a Monodepth2 model folder, as its
    test_simple.py loads it
    (encoder.pth's weights besides height / width / use_stereo; strict otherwise)."""
    folder = pathlib.Path(model_dir)
    for name in ("encoder.pth", "depth.pth"):
        if not (folder / name).is_file():
            raise SystemExit(f"error: {folder / name}: missing; --model_dir is a Monodepth2 model folder")
    encoder_state = torch.load(folder / "encoder.pth", map_location="cpu", weights_only=True)
    height, width = int(encoder_state["height"]), int(encoder_state["width"])
    layers = resnet_depth(encoder_state)
    encoder = networks.ResnetEncoder(layers, False)
    encoder.load_state_dict({k: v for k, v in encoder_state.items() if k in encoder.state_dict()},
                            strict=True)
    decoder = networks.DepthDecoder(num_ch_enc=encoder.num_ch_enc, scales=range(4))
    decoder.load_state_dict(torch.load(folder / "depth.pth", map_location="cpu", weights_only=True),
                            strict=True)
    encoder.eval()
    decoder.eval()
    return encoder, decoder, height, width, layers


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def run_rounds(calls: Dict[str, callable], rounds: int, block: int):
    """({name: all timed call seconds}, [{name: block median} per round])."""
    times = {name: [] for name in calls}
    per_round = []
    for index, order in enumerate(schedule(list(calls), rounds)):
        medians = {}
        for name in order:
            block_times = [timed(calls[name]) for _ in range(block)]
            times[name] += block_times
            medians[name] = statistics.median(block_times)
        per_round.append(medians)
        log(f"round {index + 1}/{rounds}: " + ", ".join(
            f"{name} {medians[name] * 1e3:.1f} ms" for name in calls))
    return times, per_round


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--monodepth2_dir", required=True, help="checkout of nianticlabs/monodepth2")
    parser.add_argument("--model_dir", required=True,
                        help="Monodepth2 model folder (encoder.pth, depth.pth)")
    parser.add_argument("--tflite", action="extend", nargs="+", required=True,
                        help=".tflite files exported from the same weights (repeatable)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every contestant")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=10, help="consecutive timed calls per contestant "
                        "and round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per contestant first")
    parser.add_argument("--seed", type=int, default=0, help="seed of the input frame")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.block < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--rounds, --block and --threads must be at least 1, --warmup at least 0")

    import importlib.metadata

    load_start = load_average()
    if load_start is not None and load_start > 0.5:
        log(f"warning: the machine is busy (1-minute load average {load_start:.2f} on {os.cpu_count()} "
            "CPUs): shared cores slow PyTorch's OpenMP threads far more than XNNPACK's (they wait for "
            "each other at every operator); measure on a quiet machine")
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from tripled_edge import runtime  # numpy + LiteRT, no TensorFlow

    networks = import_monodepth2_networks(args.monodepth2_dir)
    encoder, decoder, height, width, layers = load_monodepth2(torch, networks, args.model_dir)
    frame = np.random.default_rng(args.seed).uniform(0.0, 1.0, (height, width, 3)).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1)[None]))

    def torch_call():
        with torch.no_grad():
            return decoder(encoder(x))

    models = [runtime.load(path, accelerator="cpu", num_threads=args.threads) for path in args.tflite]
    for path, model in zip(args.tflite, models):
        if model.input_size != (height, width):
            raise SystemExit(f"error: {path}: input {model.input_size[1]}x{model.input_size[0]}, but "
                             f"{args.model_dir} is {width}x{height}; export it at the model's size")
    names = contestant_names([m.metadata.get("quantize") for m in models], args.tflite)
    log(f"monodepth2 ResNet-{layers} {width}x{height}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; TFLite: " + ", ".join(
            f"{n} ({p})" for n, p in zip(names, args.tflite)))

    # Agreement on the same frame, and the first (untimed-as-warm-up) call of each contestant.
    first_call = {}
    start = time.perf_counter()
    reference = torch_call()[("disp", 0)][0, 0].numpy()
    first_call[REFERENCE] = time.perf_counter() - start
    agree = {}
    for name, model in zip(names, models):
        start = time.perf_counter()
        disparity = model.network(frame)
        first_call[name] = time.perf_counter() - start
        sigma = sigma_of_disparity(disparity, model.min_depth, model.max_depth)
        agree[name] = {k: float(f"{v:.3g}") for k, v in agreement(sigma, reference).items()}
        log(f"{name} vs monodepth2 disp_0: relative difference median {agree[name]['median_rel_diff']:.2e}"
            f", max {agree[name]['max_rel_diff']:.2e}")

    calls = {REFERENCE: torch_call}
    calls.update({name: (lambda model=model: model.network(frame)) for name, model in zip(names, models)})
    for name, call in calls.items():
        for _ in range(args.warmup):
            call()
    times, per_round = run_rounds(calls, args.rounds, args.block)
    speedup, paired = speedups(times, per_round)

    contestants = {}
    for name in calls:
        row = summarize(times[name])
        row["first_call_s"] = round(first_call[name], 4)
        contestants[name] = row
    contestants[REFERENCE].update(implementation="monodepth2 ResnetEncoder + DepthDecoder (PyTorch)",
                                  num_layers=layers)
    for name, path, model in zip(names, args.tflite, models):
        contestants[name].update(path=str(path), bytes=os.path.getsize(path),
                                 quantize=model.metadata.get("quantize"), runtime=model.runtime,
                                 accelerator=model.accelerator)

    log(f"\n{'contestant':<16} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'x monodepth2':>13} "
        f"{'paired':>7}")
    for name, row in contestants.items():
        log(f"{name:<16} {row['median_s'] * 1e3:>10.2f} {row['p90_s'] * 1e3:>8.2f} "
            f"{row['min_s'] * 1e3:>8.2f} {speedup.get(name, 1.0):>13.3f} {paired.get(name, 1.0):>7.3f}")
    try:
        litert = importlib.metadata.version("ai-edge-litert")
    except importlib.metadata.PackageNotFoundError:
        litert = None
    print(json.dumps({
        "contestants": contestants, "reference": REFERENCE, f"speedup_vs_{REFERENCE}": speedup,
        f"paired_speedup_vs_{REFERENCE}": paired, "agreement": agree, "height": height, "width": width,
        "threads": args.threads, "rounds": args.rounds, "block": args.block, "warmup": args.warmup,
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "features": cpu_features(),
                    "load_average_start": load_start, "load_average_end": load_average()},
        "torch": torch.__version__, "litert": litert, "numpy": np.__version__, "python": platform.python_version(),
        "model_dir": str(args.model_dir), "tensorflow_loaded": "tensorflow" in sys.modules}),
        flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
