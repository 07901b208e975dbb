r"""The speed anchor: one training step of Monodepth2's own PyTorch code (forward, losses, backward, Adam).

    python tools/bench_monodepth2.py --monodepth2_dir=/path/to/monodepth2 [--height=192 --width=640
        --batch_size=4 --num_layers=18 --threads=2 --steps=5 --warmup=1]

Needs a Python with ``torch`` and ``torchvision`` (CPU builds are enough) and a checkout of
https://github.com/nianticlabs/monodepth2 (not shipped with this project: its licence is non-commercial).
Nothing of Monodepth2 is re-implemented here: its networks, ``Trainer.process_batch`` (depth and pose
forward, view synthesis, min-reprojection + automask + smoothness losses) and the optimiser step of
``Trainer.run_epoch`` run as they are, with the default options of ``options.py`` (ResNet encoder
for depth and pose, "separate_resnet" pose net on frame pairs, frames 0 -1 +1, scales 0..3, SSIM,
automasking), ``--weights_init=scratch``. Only the data loader is replaced: random frames at every scale
and KITTI's normalised intrinsics, built once and fed at every step (data loading excluded, as in
tools/bench_train.py).

Prints progress to stderr and one JSON object as the last stdout line: images_per_s, step_s_median /
min / max, first_step_s, build_s, peak_rss_gib, height, width, batch_size, num_layers, threads, torch,
loss_last. ``--serve`` instead answers a line protocol on stdin/stdout (tools/bench_compare.py
interleaves it with tools/bench_train.py): after the build, first step and warm-up it prints
{"ready": true, ...}; each line "steps N" runs N steps and prints {"step_s": [...], "loss": x};
"quit" prints the final JSON and exits.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import resource
import statistics
import sys
import time
import types

if __package__ in (None, ""):  # run as a file: make `tools` importable from the repo
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tools.bench_protocol import serve  # noqa: E402


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 3)


def import_trainer(monodepth2_dir: str):
    """Monodepth2's ``trainer`` module, from its checkout.

    trainer.py imports tensorboardX and IPython (logging, debugging) and its datasets package imports
    scikit-image (ground-truth resizing); none of them is used by the step, so empty stand-ins are
    registered for those that are not installed.
    """
    root = pathlib.Path(monodepth2_dir).resolve()
    if not (root / "trainer.py").is_file() or not (root / "networks").is_dir():
        raise SystemExit(f"error: {root} is not a Monodepth2 checkout (no trainer.py / networks/); "
                         "git clone https://github.com/nianticlabs/monodepth2")
    for name, attributes in (("tensorboardX", ["SummaryWriter"]), ("IPython", ["embed"]),
                             ("skimage", ["transform"]), ("skimage.transform", [])):
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = types.SimpleNamespace(**{a: None for a in attributes})
    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        # A torchvision whose compiled operators cannot load (e.g. PyPI's CUDA build next to a CPU
        # torch) fails while registering them; Monodepth2 needs only torchvision's ResNet classes,
        # which use none of them.
        for name in [n for n in sys.modules if n.startswith("torchvision")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401
    sys.path.insert(0, str(root))
    import options
    import trainer
    return trainer, options


def build(args):
    """A Monodepth2 Trainer with its networks, optimiser and view-synthesis layers, without datasets.

    Mirrors Trainer.__init__ for the default monocular options, minus the DataLoaders, the
    TensorBoard writers and the option file (which need the KITTI split files and a log folder).
    """
    import torch

    trainer_module, options_module = import_trainer(args.monodepth2_dir)
    networks, layers = trainer_module.networks, trainer_module
    opt = options_module.MonodepthOptions().parser.parse_args(
        ["--height", str(args.height), "--width", str(args.width), "--batch_size", str(args.batch_size),
         "--num_layers", str(args.num_layers), "--weights_init", "scratch", "--no_cuda"])
    trainer = trainer_module.Trainer.__new__(trainer_module.Trainer)
    trainer.opt = opt
    trainer.device = torch.device("cpu")
    trainer.num_scales = len(opt.scales)
    trainer.num_input_frames = len(opt.frame_ids)
    trainer.num_pose_frames = 2 if opt.pose_model_input == "pairs" else trainer.num_input_frames
    trainer.use_pose_net = True
    models = {"encoder": networks.ResnetEncoder(opt.num_layers, False)}
    models["depth"] = networks.DepthDecoder(models["encoder"].num_ch_enc, opt.scales)
    models["pose_encoder"] = networks.ResnetEncoder(opt.num_layers, False,
                                                    num_input_images=trainer.num_pose_frames)
    models["pose"] = networks.PoseDecoder(models["pose_encoder"].num_ch_enc, num_input_features=1,
                                          num_frames_to_predict_for=2)
    trainer.models = models
    trainer.parameters_to_train = [p for m in models.values() for p in m.parameters()]
    trainer.model_optimizer = torch.optim.Adam(trainer.parameters_to_train, opt.learning_rate)
    trainer.ssim = layers.SSIM()
    trainer.backproject_depth, trainer.project_3d = {}, {}
    for scale in opt.scales:
        h, w = opt.height // 2 ** scale, opt.width // 2 ** scale
        trainer.backproject_depth[scale] = layers.BackprojectDepth(opt.batch_size, h, w)
        trainer.project_3d[scale] = layers.Project3D(opt.batch_size, h, w)
    trainer.set_train()
    return trainer, opt


def random_inputs(opt, seed: int):
    """What Monodepth2's MonoDataset yields for a batch, with random frames: ("color", f, s) and
    ("color_aug", f, s) [B, 3, H/2^s, W/2^s] in [0, 1], ("K", s) / ("inv_K", s) [B, 4, 4]."""
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(seed)
    # KITTI's normalised intrinsics, as in datasets/kitti_dataset.py.
    K_normalised = np.array([[0.58, 0, 0.5, 0], [0, 1.92, 0.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
                            dtype=np.float32)
    inputs = {}
    for frame_id in opt.frame_ids:
        full = torch.rand(opt.batch_size, 3, opt.height, opt.width, generator=generator)
        for scale in range(4):
            color = full if scale == 0 else torch.nn.functional.interpolate(
                full, scale_factor=0.5 ** scale, mode="bilinear", align_corners=False)
            inputs[("color", frame_id, scale)] = color
            inputs[("color_aug", frame_id, scale)] = color.clone()
    for scale in range(4):
        K = K_normalised.copy()
        K[0, :] *= opt.width // 2 ** scale
        K[1, :] *= opt.height // 2 ** scale
        inputs[("K", scale)] = torch.from_numpy(K).expand(opt.batch_size, 4, 4).contiguous()
        inputs[("inv_K", scale)] = torch.from_numpy(np.linalg.pinv(K)).expand(
            opt.batch_size, 4, 4).contiguous()
    return inputs


def run_step(trainer, inputs):
    """Trainer.run_epoch's body for one batch; returns (seconds, loss)."""
    start = time.perf_counter()
    _, losses = trainer.process_batch(dict(inputs))
    trainer.model_optimizer.zero_grad()
    losses["loss"].backward()
    trainer.model_optimizer.step()
    loss = float(losses["loss"].detach())
    return time.perf_counter() - start, loss


def summary(args, step_times, loss, first_step_s, build_s):
    import torch

    median = statistics.median(step_times) if step_times else float("nan")
    return {"images_per_s": round(args.batch_size / median, 4) if step_times else None,
            "step_s_median": round(median, 6),
            "step_s_min": round(min(step_times), 6) if step_times else None,
            "step_s_max": round(max(step_times), 6) if step_times else None,
            "first_step_s": round(first_step_s, 3), "build_s": round(build_s, 3),
            "peak_rss_gib": peak_rss_gib(), "implementation": "monodepth2 (PyTorch)",
            "height": args.height, "width": args.width, "batch_size": args.batch_size,
            "num_layers": args.num_layers, "threads": args.threads, "torch": torch.__version__,
            "loss_last": round(loss, 6)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--monodepth2_dir", required=True, help="checkout of nianticlabs/monodepth2")
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--num_layers", type=int, default=18, choices=(18, 34, 50, 101, 152))
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (0 = default)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1024)
    parser.add_argument("--serve", action="store_true", help="line protocol on stdin (see the doc)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    trainer, opt = build(args)
    inputs = random_inputs(opt, args.seed)
    build_s = time.perf_counter() - start
    log(f"monodepth2: ResNet-{args.num_layers} {args.width}x{args.height} batch {args.batch_size}, "
        f"{args.threads or 'default'} threads, torch {torch.__version__}; built in {build_s:.2f} s")
    first_step_s, loss = run_step(trainer, inputs)
    log(f"first step: {first_step_s:.2f} s, loss {loss:.4f}")
    for index in range(args.warmup):
        seconds, loss = run_step(trainer, inputs)
        log(f"warm-up {index + 1}/{args.warmup}: {seconds:.3f} s")

    step_times = []
    if args.serve:
        loss = serve(lambda: run_step(trainer, inputs), step_times, first_step_s)
    else:
        for index in range(args.steps):
            seconds, loss = run_step(trainer, inputs)
            step_times.append(seconds)
            log(f"step {index + 1}/{args.steps}: {seconds:.3f} s, loss {loss:.4f}")
    print(json.dumps(summary(args, step_times, loss, first_step_s, build_s)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
