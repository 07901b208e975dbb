"""Writes the reference-equivalence fixtures with PyTorch and the references' own code (run by hand).

Not part of the package or the tests: it needs PyTorch and a checkout of the reference repositories,
and is run once, in a separate environment, e.g.

    python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy torchvision
    /tmp/torchenv/bin/python tools/make_reference_fixtures.py --monodepth2=/tmp/monodepth2 \\
        --featdepth=/tmp/FeatDepth --output=tests/fixtures
    /tmp/torchenv/bin/python tools/make_reference_fixtures.py --tripled=/tmp/TripleD  # torch + numpy only

Each of --monodepth2, --featdepth, --tripled writes that reference's fixtures only.
``--monodepth2=CHECKOUT --write_model_dir=DIR [--model_height=192 --model_width=640
--model_layers=18]`` writes no fixture but a Monodepth2 model folder (encoder.pth + depth.pth, as
Monodepth2's trainer saves them) of seeded weights by the same recipe (heads calibrated at that
size), for tools/bench_peer_inference.py:

    /tmp/torchenv/bin/python tools/make_reference_fixtures.py --monodepth2=/tmp/monodepth2 \\
        --write_model_dir=/tmp/peer/md2_seeded_640x192

For each reference model it builds the reference network from the reference code at a tiny input
size, fills it with the seeded weights of tools/reference_weights.py (random BatchNorm statistics; the
disparity heads scaled so that their sigmoid outputs spread over (0, 1)), runs it in eval mode in
float32 on a seeded input, and stores under <output>/<name>/:
  layout.json  the state-dict layout of every .pth file (keys, shapes, dtypes), the seed, the per-key
               scales and the size: enough for the tests to rebuild the weights with numpy;
  input.npy    [1, H, W, 3] float32 image in [0, 1] (NHWC); pose_input.npy [2, H, W, 3] (frames t, t+1);
  disp_<s>.npy [1, H/2^s, W/2^s, 1] the reference's sigmoid disparities; depth.npy [H, W] the
               reference's depth (its disp_to_depth(disp_0, 0.1, 100));
  axisangle.npy, translation.npy [1, 3] the reference pose of (t, t+1) (first prediction).
FeatDepth (sconlyshootery/FeatDepth, mono/model/mono_fm) is one mmcv checkpoint: layout.json then
describes "featdepth.pth" with the mono_fm attribute prefixes (DepthEncoder., DepthDecoder.,
PoseEncoder., PoseDecoder., extractor.); its depth.npy is its evaluation's: disp_to_depth of disp_0
(at H/2) resized bilinearly to H x W, inverted. Its pose net sees the frames resized to 192x640.
TripleD (ufukpage/TripleD-...-Representation-Learning) is one mmcv checkpoint too: the whole model of a
mono_fm_joint* class (TRIPLED_VARIANTS: the main model's class and switches, and the D2G config's), built
from TripleD's own net.py with mmcv's Config imitated, ResNet-18 everywhere; layout.json describes
"tripled.pth" (its model.state_dict()), and besides the disparities and the pose it stores what the other
branches give for the same input: appearance_0.npy (ColorDecoder's full-size reconstruction),
extractor_res_0.npy (Encoder -> Decoder), pretext.npy (DepthToGray on σ_0 resized to H x W).
With --monodepth2 or --featdepth it also writes <output>/torch_format/{zip,legacy}.pth: a small
checkpoint saved by torch.save in both serialisations, for the reader's tests.

torchvision is used for its ResNet code only; its package __init__ (compiled ops, PIL) is bypassed
because the models module is all the references need.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import sys
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference_weights import seeded_state  # noqa: E402  (numpy only; shared with the tests)

SEED = 19
HEIGHT, WIDTH = 64, 96
DISP_LOGIT_STD = 1.5  # spread of the disparity heads' logits: sigmoid outputs over most of (0, 1)


def import_torchvision_models():
    """torchvision.models.resnet without torchvision's package __init__ (see module docstring); the
    resnet constructors accept Monodepth2's positional ``pretrained`` argument (False only)."""
    root = os.path.dirname(importlib.util.find_spec("torchvision").origin)
    for name, sub in (("torchvision", ""), ("torchvision.models", "models"),
                      ("torchvision.transforms", "transforms")):
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(root, sub) if sub else root]
        sys.modules[name] = module
    presets = types.ModuleType("torchvision.transforms._presets")
    presets.ImageClassification = object
    sys.modules["torchvision.transforms._presets"] = presets
    utils = types.ModuleType("torchvision.utils")
    utils._log_api_usage_once = lambda *args, **kwargs: None
    sys.modules["torchvision.utils"] = utils
    import torchvision.models.resnet as resnet

    models = sys.modules["torchvision.models"]
    models.resnet = resnet
    models.ResNet = resnet.ResNet
    for depth in (18, 34, 50, 101, 152):
        def make(pretrained=False, _build=getattr(resnet, f"resnet{depth}")):
            assert not pretrained, "the fixtures use seeded weights, not downloads"
            return _build(weights=None)
        setattr(models, f"resnet{depth}", make)
    sys.modules["torchvision"].models = models


def layout_of(module):
    return [(k, list(v.shape), str(v.dtype).replace("torch.", ""))
            for k, v in module.state_dict().items()]


def load_seeded(torch, module, seed, scales):
    state = seeded_state(seed, layout_of(module), scales)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)


def nhwc(tensor):
    return tensor.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)


def seeded_monodepth2(torch, depth_layers, seed, image, with_pose=False):
    """Monodepth2's ResnetEncoder + DepthDecoder (and pose nets) holding the seeded weights of
    tools/reference_weights.py, in eval mode, the disparity heads scaled so that their logits on
    ``image`` ([1, H, W, 3] in [0, 1]) have DISP_LOGIT_STD (measured with unit scale first).
    Monodepth2's ``networks`` must be importable. Returns (parts {file name: module}, scales)."""
    import networks  # monodepth2's

    torch.manual_seed(0)
    encoder = networks.ResnetEncoder(depth_layers, False)
    decoder = networks.DepthDecoder(encoder.num_ch_enc, scales=range(4))
    parts = {"encoder.pth": encoder, "depth.pth": decoder}
    if with_pose:
        pose_encoder = networks.ResnetEncoder(18, False, num_input_images=2)
        # Monodepth2's trainer: one input feature, two frames predicted (12 outputs), first used.
        pose_decoder = networks.PoseDecoder(pose_encoder.num_ch_enc, num_input_features=1,
                                            num_frames_to_predict_for=2)
        parts.update({"pose_encoder.pth": pose_encoder, "pose.pth": pose_decoder})
    to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    scales = {}
    for module in parts.values():
        load_seeded(torch, module, seed, scales)
        module.eval()
    logits = []
    hooks = [decoder.convs[("dispconv", s)].register_forward_hook(
        lambda m, i, o: logits.append(o.detach().numpy())) for s in range(4)]
    with torch.no_grad():
        decoder(encoder(to_torch(image)))
    for hook in hooks:
        hook.remove()
    for s, value in zip(range(4), logits):
        factor = float(DISP_LOGIT_STD / max(value.std(), 1e-6))
        n = list(decoder.convs.keys()).index(("dispconv", s))
        scales[f"decoder.{n}.conv.weight"] = factor
        scales[f"decoder.{n}.conv.bias"] = factor
    load_seeded(torch, decoder, seed, scales)
    return parts, scales


def monodepth2_fixture(torch, repo, output, name, depth_layers, with_pose):
    sys.path.insert(0, repo)
    from layers import disp_to_depth  # monodepth2's

    seed = SEED + depth_layers
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.0, 1.0, (1, HEIGHT, WIDTH, 3)).astype(np.float32)
    frames = rng.uniform(0.0, 1.0, (2, HEIGHT, WIDTH, 3)).astype(np.float32)
    to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    parts, scales = seeded_monodepth2(torch, depth_layers, seed, image, with_pose)
    encoder, decoder = parts["encoder.pth"], parts["depth.pth"]
    if with_pose:
        pose_encoder, pose_decoder = parts["pose_encoder.pth"], parts["pose.pth"]

    folder = os.path.join(output, name)
    os.makedirs(folder, exist_ok=True)
    with torch.no_grad():
        outputs = decoder(encoder(to_torch(image)))
        disps = [outputs[("disp", s)] for s in range(4)]
        _, depth = disp_to_depth(disps[0], 0.1, 100.0)
        for s, disp in enumerate(disps):
            np.save(os.path.join(folder, f"disp_{s}.npy"), nhwc(disp))
            print(f"{name} disp_{s}: {tuple(disp.shape)} min {disp.min():.4f} max {disp.max():.4f}")
        np.save(os.path.join(folder, "depth.npy"), depth[0, 0].numpy().astype(np.float32))
        if with_pose:
            pair = torch.cat([to_torch(frames[:1]), to_torch(frames[1:])], 1)
            axisangle, translation = pose_decoder([pose_encoder(pair)])
            np.save(os.path.join(folder, "axisangle.npy"), axisangle[:, 0, 0].numpy())
            np.save(os.path.join(folder, "translation.npy"), translation[:, 0, 0].numpy())
            np.save(os.path.join(folder, "pose_input.npy"), frames)
            print(f"{name} pose: {axisangle[:, 0, 0].numpy()} {translation[:, 0, 0].numpy()}")
    np.save(os.path.join(folder, "input.npy"), image)
    layout = {"reference": "nianticlabs/monodepth2", "seed": seed, "height": HEIGHT,
              "width": WIDTH, "use_stereo": False, "depth_layers": depth_layers,
              "scales": scales, "files": {f: layout_of(m) for f, m in parts.items()}}
    with open(os.path.join(folder, "layout.json"), "w") as f:
        json.dump(layout, f, indent=1)
    sys.path.remove(repo)


def monodepth2_model_dir(torch, repo, folder, depth_layers=18, height=192, width=640):
    """A depth-only Monodepth2 model folder (encoder.pth + depth.pth) as Monodepth2's
    ``Trainer.save_model`` writes it (state dicts; encoder.pth also holds height, width, use_stereo),
    with the seeded weights (seed SEED + depth_layers, heads calibrated on a seeded frame of this
    size), plus seeded_weights.json saying so. For benchmarks (tools/bench_peer_inference.py): the
    same weights go through ``python -m tripled_tf.convert --from=monodepth2``."""
    sys.path.insert(0, repo)
    seed = SEED + depth_layers
    image = np.random.default_rng(seed).uniform(0.0, 1.0, (1, height, width, 3)).astype(np.float32)
    parts, scales = seeded_monodepth2(torch, depth_layers, seed, image)
    os.makedirs(folder, exist_ok=True)
    for file_name, module in parts.items():
        state = module.state_dict()
        if file_name == "encoder.pth":
            state.update(height=height, width=width, use_stereo=False)
        torch.save(state, os.path.join(folder, file_name))
    record = {"reference": "nianticlabs/monodepth2", "seeded_by": "tools/make_reference_fixtures.py",
              "seed": seed, "height": height, "width": width, "depth_layers": depth_layers,
              "scales": scales}
    with open(os.path.join(folder, "seeded_weights.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {folder}: Monodepth2 ResNet-{depth_layers} depth model, {width}x{height}, seed {seed}")
    sys.path.remove(repo)


def import_featdepth(repo):
    """FeatDepth's mono_fm / mono_autoencoder modules without their package __init__ (which imports
    the training registry and mmcv)."""
    for name in ("mono", "mono.model", "mono.model.mono_fm", "mono.model.mono_autoencoder"):
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(repo, *name.split("."))]
        sys.modules[name] = module
    from mono.model.mono_fm import depth_decoder, depth_encoder, pose_decoder, pose_encoder
    from mono.model.mono_autoencoder import encoder
    return depth_encoder, depth_decoder, pose_encoder, pose_decoder, encoder


def calibrate_disparity_heads(torch, decoder, depth_outputs, load):
    """(scales, offsets) per state-dict key that make FeatDepth's / TripleD's disparity heads spread
    their sigmoid outputs over (0, 1), loaded last: ``load(scales, offsets)`` loads the seeded weights
    with such per-key factors, ``depth_outputs()`` runs the depth network.

    Each stage's head sees the previous stage's disparity: calibrated one stage at a time, deepest
    first, each with the scales of the deeper ones in place. The heads' inputs are large and mostly
    positive (chained residual pooling sums five terms), so the logits are also centred: the bias
    gets an offset.
    """
    scales, offsets = {}, {}
    for stage in (4, 3, 2, 1):
        load(scales, offsets)
        logits = []
        hook = getattr(decoder, f"disp{stage}")[0].register_forward_hook(
            lambda m, i, o: logits.append(o.detach().numpy()))
        with torch.no_grad():
            depth_outputs()
        hook.remove()
        factor = float(DISP_LOGIT_STD / max(logits[0].std(), 1e-6))
        scales[f"DepthDecoder.disp{stage}.0.conv.weight"] = factor
        scales[f"DepthDecoder.disp{stage}.0.conv.bias"] = factor
        offsets[f"DepthDecoder.disp{stage}.0.conv.bias"] = -factor * float(logits[0].mean())
    load(scales, offsets)
    return scales, offsets


def featdepth_fixture(torch, repo, output, name, depth_layers):
    import torch.nn.functional as F

    depth_encoder, depth_decoder, pose_encoder, pose_decoder, autoencoder = import_featdepth(repo)
    torch.manual_seed(0)
    # mono_fm's attributes, in its order; the extractor is the frozen feature-metric encoder.
    parts = collections.OrderedDict()
    parts["DepthEncoder"] = depth_encoder.DepthEncoder(depth_layers)
    parts["DepthDecoder"] = depth_decoder.DepthDecoder(parts["DepthEncoder"].num_ch_enc)
    parts["PoseEncoder"] = pose_encoder.PoseEncoder(18)
    parts["PoseDecoder"] = pose_decoder.PoseDecoder(parts["PoseEncoder"].num_ch_enc)
    parts["extractor"] = autoencoder.Encoder(depth_layers)
    seed = SEED + 1000 + depth_layers
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.0, 1.0, (1, HEIGHT, WIDTH, 3)).astype(np.float32)
    frames = rng.uniform(0.0, 1.0, (2, HEIGHT, WIDTH, 3)).astype(np.float32)
    to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    def layout():
        return [(f"{prefix}.{k}", s, d) for prefix, module in parts.items()
                for k, s, d in layout_of(module)]

    def load(scales, offsets):
        state = seeded_state(seed, layout(), scales, offsets)
        for prefix, module in parts.items():
            module.load_state_dict({k[len(prefix) + 1:]: torch.from_numpy(v)
                                    for k, v in state.items() if k.startswith(prefix + ".")})
            module.eval()

    encoder, decoder = parts["DepthEncoder"], parts["DepthDecoder"]
    scales, offsets = calibrate_disparity_heads(torch, decoder,
                                                lambda: decoder(encoder(to_torch(image))), load)

    folder = os.path.join(output, name)
    os.makedirs(folder, exist_ok=True)
    with torch.no_grad():
        outputs = decoder(encoder(to_torch(image)))
        disps = [outputs[("disp", 0, s)] for s in range(4)]
        for s, disp in enumerate(disps):
            np.save(os.path.join(folder, f"disp_{s}.npy"), nhwc(disp))
            print(f"{name} disp_{s}: {tuple(disp.shape)} min {disp.min():.4f} max {disp.max():.4f}")
        # FeatDepth's evaluation: disp_to_depth(disp, 0.1, 100), resized (bilinear) to the target
        # size, inverted.
        scaled = 1 / 100.0 + (1 / 0.1 - 1 / 100.0) * disps[0]
        scaled = F.interpolate(scaled, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
        np.save(os.path.join(folder, "depth.npy"), (1.0 / scaled)[0, 0].numpy().astype(np.float32))
        # mono_fm.predict_poses: frames resized to 192x640, (t, t+1) concatenated.
        pair = [F.interpolate(to_torch(frames[i:i + 1]), [192, 640], mode="bilinear",
                              align_corners=False) for i in range(2)]
        axisangle, translation = parts["PoseDecoder"](parts["PoseEncoder"](torch.cat(pair, 1)))
        np.save(os.path.join(folder, "axisangle.npy"), axisangle[:, 0, 0].numpy())
        np.save(os.path.join(folder, "translation.npy"), translation[:, 0, 0].numpy())
        print(f"{name} pose: {axisangle[:, 0, 0].numpy()} {translation[:, 0, 0].numpy()}")
    np.save(os.path.join(folder, "pose_input.npy"), frames)
    np.save(os.path.join(folder, "input.npy"), image)
    record = {"reference": "sconlyshootery/FeatDepth mono_fm", "seed": seed, "height": HEIGHT,
              "width": WIDTH, "depth_layers": depth_layers, "scales": scales, "offsets": offsets,
              "files": {"featdepth.pth": layout()}}
    with open(os.path.join(folder, "layout.json"), "w") as f:
        json.dump(record, f, indent=1)


def import_tripled(repo):
    """TripleD's model classes (mono/model/mono_fm_joint*/net.py) without the package __init__ files,
    which import the training registry, mmcv and a segmentation package missing from the repository.
    Stubbed: the HRNet encoder module (imports torchvision's download helpers and matplotlib; only the
    use_diffnet switch needs it) and torchvision (only tv.transforms.Grayscale is referenced, by the
    D2G head's use_lab=False path)."""
    for name in ("mono", "mono.model", "mono.model.mono_fm_joint", "mono.model.mono_fm_joint_inpaint"):
        module = types.ModuleType(name)
        module.__path__ = [os.path.join(repo, *name.split("."))]
        sys.modules[name] = module
    hrnet = types.ModuleType("mono.model.mono_fm_joint.diffnet_encoder")
    hrnet._hrnet = None
    sys.modules[hrnet.__name__] = hrnet
    if "torchvision" not in sys.modules:
        torchvision = types.ModuleType("torchvision")
        torchvision.transforms = types.SimpleNamespace(Grayscale=None)
        sys.modules["torchvision"] = torchvision
    from mono.model.mono_fm_joint_inpaint import net
    return net


class MmcvOptions(dict):
    """The part of mmcv's Config that TripleD's models use: attribute and item access, .get."""
    __getattr__ = dict.__getitem__


# TripleD variants: (model class, its options beyond the shared ones). "tripled_r18" is the main model
# (cfg_kitti_tripleD.py: mono_fm_joint_inpaint_disentangle, level 5 split in halves, appearance decoder
# without encoder skips, jointly trained extractor) with ResNet-18 everywhere; "tripled_d2g_r18" the
# D2G row's released config (cfg_kitti_fm_joint_inpaint_distill_gs.py: no split, no appearance
# decoder, perception_weight=0 deletes the extractor, DepthToGray head on the disparity).
TRIPLED_VARIANTS = {
    "tripled_r18": ("mono_fm_joint_inpaint_disentangle", dict(
        perception_weight=1e-3, disentangle_layers=[False, False, False, False, True],
        skip_connection_multiplier=1, depth_skip_type=None, color_skip_type=None,
        color_skip_layers=[False, False, False, False], depth_use_shuffle=False,
        depth_disentangle_type="use_half", freeze_extractor=False, auto_res_weight=5e-3)),
    "tripled_d2g_r18": ("mono_fm_joint_inpaint_distill_gs", dict(
        perception_weight=0, d2g_weight=5e-3, use_lab=True, use_normal=False, use_mask=False)),
}


def tripled_fixture(torch, repo, output, name, depth_layers=18):
    import torch.nn.functional as F

    net = import_tripled(repo)
    class_name, extra = TRIPLED_VARIANTS[name]
    options = MmcvOptions(
        depth_num_layers=depth_layers, pose_num_layers=18, extractor_num_layers=depth_layers,
        depth_pretrained_path=None, pose_pretrained_path=None, extractor_pretrained_path=None,
        frame_ids=[0, -1, 1], imgs_per_gpu=1, height=HEIGHT, width=WIDTH, scales=[0, 1, 2, 3],
        min_depth=0.1, max_depth=100.0, automask=True, disp_norm=True, dis=1e-3, cvt=1e-3,
        smoothness_weight=1e-3, **extra)
    torch.manual_seed(0)
    model = getattr(net, class_name)(options)
    seed = SEED + 2000 + depth_layers + 100 * list(TRIPLED_VARIANTS).index(name)
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.0, 1.0, (1, HEIGHT, WIDTH, 3)).astype(np.float32)
    frames = rng.uniform(0.0, 1.0, (2, HEIGHT, WIDTH, 3)).astype(np.float32)
    to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    layout = layout_of(model)  # the mmcv checkpoint's state_dict: keys named after net.py's attributes

    def load(scales, offsets):
        state = seeded_state(seed, layout, scales, offsets)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
        model.eval()

    def depth_outputs():
        # TripleD's eval-mode forward: encoder -> depth_skip_layer_* (the split) -> DepthDecoder.
        return model({("color_aug", 0, 0): to_torch(image)})

    scales, offsets = calibrate_disparity_heads(torch, model.DepthDecoder, depth_outputs, load)

    folder = os.path.join(output, name)
    os.makedirs(folder, exist_ok=True)
    save = lambda file_name, array: np.save(os.path.join(folder, file_name), array)
    with torch.no_grad():
        outputs = depth_outputs()
        disps = [outputs[("disp", 0, s)] for s in range(4)]
        for s, disp in enumerate(disps):
            save(f"disp_{s}.npy", nhwc(disp))
            print(f"{name} disp_{s}: {tuple(disp.shape)} min {disp.min():.4f} max {disp.max():.4f}")
        # scripts/eval_depth.py: disp_to_depth(disp, 0.1, 100), resized bilinearly, inverted.
        scaled = 1 / 100.0 + (1 / 0.1 - 1 / 100.0) * disps[0]
        scaled = F.interpolate(scaled, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
        save("depth.npy", (1.0 / scaled)[0, 0].numpy().astype(np.float32))
        if hasattr(model, "ColorDecoder"):
            # The training-mode lines of mono_fm_joint_inpaint_disentangle.forward (color_skip_type
            # None): the appearance half of each split level, the disparities added inside.
            scene = model.DepthEncoder(to_torch(image))
            color = [e[:, e.size(1) // 2:] if flag else e
                     for e, flag in zip(scene, options.disentangle_layers)]
            appearance = model.ColorDecoder(color, dict(outputs), skip_layers=options.color_skip_layers)
            save("appearance_0.npy", nhwc(appearance[("auto_res_img", 0, 0)]))
        if hasattr(model, "Encoder"):
            # The extractor sees the raw frame; its decoder reconstructs from level 5.
            save("extractor_res_0.npy", nhwc(model.Decoder(model.Encoder(to_torch(image)), 0)[
                ("res_img", 0, 0)]))
        if hasattr(model, "DepthToGray"):
            # compute_distill_gs_loss (use_normal=False, use_mask=False): σ_0 resized to H x W.
            disp = F.interpolate(disps[0], [HEIGHT, WIDTH], mode="bilinear", align_corners=False)
            save("pretext.npy", nhwc(model.DepthToGray(disp)))
        pair = [F.interpolate(to_torch(frames[i:i + 1]), [192, 640], mode="bilinear",
                              align_corners=False) for i in range(2)]
        axisangle, translation = model.PoseDecoder(model.PoseEncoder(torch.cat(pair, 1)))
        save("axisangle.npy", axisangle[:, 0, 0].numpy())
        save("translation.npy", translation[:, 0, 0].numpy())
    save("pose_input.npy", frames)
    save("input.npy", image)
    record = {"reference": f"ufukpage/TripleD {class_name}", "seed": seed, "height": HEIGHT,
              "width": WIDTH, "depth_layers": depth_layers, "options": dict(options),
              "scales": scales, "offsets": offsets, "files": {"tripled.pth": layout}}
    with open(os.path.join(folder, "layout.json"), "w") as f:
        json.dump(record, f, indent=1)


def torch_format_fixture(torch, output):
    """A small checkpoint in both serialisations; the test knows every value from first principles:
    base = arange(12).reshape(3, 4) and its transpose (a strided view of the same storage), halves,
    bfloat16, an int64 counter, a Parameter, nested containers and plain values."""
    folder = os.path.join(output, "torch_format")
    os.makedirs(folder, exist_ok=True)
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    obj = {"state_dict": collections.OrderedDict(
        [("base", base), ("transposed", base.t()), ("row", base[1]),
         ("half", torch.tensor([0.5, -2.0], dtype=torch.float16)),
         ("bf16", torch.tensor([1.5, -3.0], dtype=torch.bfloat16)),
         ("counter", torch.tensor(7, dtype=torch.int64)),
         ("param", torch.nn.Parameter(torch.ones(2, 2)))]),
        "meta": {"epoch": 3, "names": ["a", "b"], "size": (64, 96)}, "height": 64}
    torch.save(obj, os.path.join(folder, "zip.pth"))
    torch.save(obj, os.path.join(folder, "legacy.pth"), _use_new_zipfile_serialization=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--monodepth2", help="checkout of nianticlabs/monodepth2")
    parser.add_argument("--featdepth", help="checkout of sconlyshootery/FeatDepth")
    parser.add_argument("--tripled", help="checkout of ufukpage/TripleD-Exploring-Depth-Estimation-"
                        "with-Self-Supervised-Representation-Learning")
    parser.add_argument("--output", default="tests/fixtures")
    parser.add_argument("--write_model_dir", help="instead of fixtures: write a seeded Monodepth2 "
                        "model folder (encoder.pth, depth.pth) here; needs --monodepth2")
    parser.add_argument("--model_height", type=int, default=192, help="--write_model_dir: height")
    parser.add_argument("--model_width", type=int, default=640, help="--write_model_dir: width")
    parser.add_argument("--model_layers", type=int, default=18, choices=(18, 34, 50, 101, 152),
                        help="--write_model_dir: ResNet depth")
    args = parser.parse_args()
    if not (args.monodepth2 or args.featdepth or args.tripled):
        parser.error("name at least one reference checkout (--monodepth2, --featdepth, --tripled)")
    if args.write_model_dir and (not args.monodepth2 or args.featdepth or args.tripled):
        parser.error("--write_model_dir takes --monodepth2 only")
    import torch

    torch.set_num_threads(1)
    if args.write_model_dir:
        import_torchvision_models()
        monodepth2_model_dir(torch, args.monodepth2, args.write_model_dir, args.model_layers,
                             args.model_height, args.model_width)
        return
    if args.monodepth2 or args.featdepth:
        import_torchvision_models()
        torch_format_fixture(torch, args.output)
    if args.monodepth2:
        monodepth2_fixture(torch, args.monodepth2, args.output, "monodepth2_r18", 18, with_pose=True)
        monodepth2_fixture(torch, args.monodepth2, args.output, "monodepth2_r50", 50, with_pose=False)
    if args.featdepth:
        featdepth_fixture(torch, args.featdepth, args.output, "featdepth_r18", 18)
    if args.tripled:
        for name in TRIPLED_VARIANTS:
            tripled_fixture(torch, args.tripled, args.output, name)


if __name__ == "__main__":
    main()
