"""TripleD's own checkpoints (``--from=tripled``) against TripleD's own code.

The fixtures tests/fixtures/tripled_*/ were written by tools/make_reference_fixtures.py --tripled with
PyTorch and ufukpage/TripleD's model classes: their outputs for seeded weights
(tools/reference_weights.py) at 64x96, ResNet-18 everywhere. tripled_r18 is the main model's class and switches
(cfg_kitti_tripleD.py: mono_fm_joint_inpaint_disentangle, level 5 split in halves, appearance decoder,
jointly trained extractor); tripled_d2g_r18 the D2G config (mono_fm_joint_inpaint_distill_gs: no split,
no extractor, DepthToGray head). Here the same weights are rebuilt from the seed with numpy, written as
TripleD's mmcv checkpoint without PyTorch (tests/torch_files.py), converted and compared.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from test_published import (assert_pose_matches, relative_depth_error, write_featdepth_checkpoint,
                            write_monodepth2_folder)
from torch_files import save_torch
from tools.reference_weights import seeded_state
from tripled_tf import checkpoint, convert, geometry
from tripled_tf.models import published_tripled
from tripled_tf.models.torch_checkpoint import CheckpointError

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
SIZE = (64, 96)


def _layout(name):
    return json.loads((FIXTURES / name / "layout.json").read_text())


def tripled_state(name, edit=None):
    """The fixture's seeded TripleD state_dict (keys as TripleD's mmcv checkpoint has them)."""
    layout = _layout(name)
    state = seeded_state(layout["seed"], layout["files"]["tripled.pth"], layout["scales"],
                         layout["offsets"])
    if edit is not None:
        edit(state)
    return state


def write_tripled_checkpoint(path, name="tripled_r18", legacy=False, edit=None):
    """The fixture's seeded TripleD model as its mmcv checkpoint {"meta", "state_dict", "optimizer"}
    (the Adam state, here one entry, is not converted)."""
    adam = {"state": {0: {"step": 3, "exp_avg": np.ones((4, 3), np.float32)}},
            "param_groups": [{"lr": 5e-5, "betas": (0.9, 0.999), "params": [0]}]}
    save_torch({"meta": {"epoch": 20, "iter": 66000, "mmcv_version": "0.2.16"},
                "state_dict": tripled_state(name, edit), "optimizer": adam}, path, legacy=legacy)
    return path


def _close(ours, name, file_name, atol):
    np.testing.assert_allclose(np.asarray(ours), np.load(FIXTURES / name / file_name), rtol=0,
                               atol=atol, err_msg=file_name)


def _assert_depth_matches(model, name):
    """σ at every scale and the evaluation depth against TripleD's: the issue's bar, relative depth
    error median < 1e-4, max < 1e-3."""
    image = np.load(FIXTURES / name / "input.npy")
    for s, disp in enumerate(model(image, training=False)):
        # As for FeatDepth: the chained residual pooling's long float32 sums differ by a few 1e-5.
        _close(disp.numpy(), name, f"disp_{s}.npy", 1e-4)
    _, depth = model.predict_depth(image)
    error = relative_depth_error(depth.numpy()[0, ..., 0], np.load(FIXTURES / name / "depth.npy"))
    print(f"{name}: relative depth error median {np.median(error):.2e} max {error.max():.2e}")
    assert np.median(error) < 1e-4 and error.max() < 1e-3
    return image


def test_tripled_main_model_matches_tripled(tmp_path):
    name = "tripled_r18"
    path = write_tripled_checkpoint(tmp_path / "td.pth", name)
    info = convert.convert("tripled", path, tmp_path / "run", size=SIZE)
    assert (info["depth_layers"], info["pose_layers"]) == (18, 18)
    # The rule-skipped tensors: ColorDecoder's four unused encoder-skip ConvBlocks (weight + bias).
    assert info["skipped"] == 8

    model, config = checkpoint.load_model(tmp_path / "run")
    assert config["train"]["model"] == "tripled"
    assert config["converted_from"]["format"] == "tripled"
    switches = config["model"]
    assert switches["disentangle_levels"] == [False, False, False, False, True]
    assert switches["depth_split"] == "first_half" and switches["use_appearance"]
    assert switches["color_encoder_skips"] == [False] * 4
    assert switches["use_extractor"] and switches["extractor_layers"] == 18
    assert not switches["extractor_input_masked"] and switches["pretext_task"] == "none"
    assert switches["pose_input_size"] == [192, 640]

    image = _assert_depth_matches(model, name)
    # The training-only branches too: TripleD's ColorDecoder on the appearance half with the
    # disparities added, and the extractor's reconstruction.
    _, appearance_features, disparities = model._forward(image, training=False)
    appearance = model.appearance_decoder(appearance_features, disparities, training=False)[0]
    _close(appearance.numpy(), name, "appearance_0.npy", 1e-4)
    res = model.extractor_decoder(model.extractor(image, training=False), training=False)[0]
    _close(res.numpy(), name, "extractor_res_0.npy", 1e-4)
    assert_pose_matches(model, name)


def test_tripled_d2g_model_matches_tripled_legacy_file(tmp_path):
    name = "tripled_d2g_r18"
    path = write_tripled_checkpoint(tmp_path / "d2g.pth", name, legacy=True)
    info = convert.convert("tripled", path, tmp_path / "run", size=SIZE)
    assert info["skipped"] == 0 and "d2g head" in info["switches"]

    model, config = checkpoint.load_model(tmp_path / "run")
    switches = config["model"]
    assert switches["disentangle_levels"] == [False] * 5
    assert not switches["use_appearance"] and not switches["use_extractor"]
    assert switches["pretext_task"] == "d2g" and not switches["head_use_normals"]
    image = _assert_depth_matches(model, name)
    # compute_distill_gs_loss: the head on σ_0 resized to the input size.
    sigma_full = geometry.resize_bilinear(model(image, training=False)[0], SIZE)
    _close(model.pretext_head(sigma_full, training=False).numpy(), name, "pretext.npy", 2e-4)
    assert_pose_matches(model, name)


# --------------------------------------------------------------------------------------------------
# Switches read from the file (no model built)


def test_tripled_switches_from_keys(tmp_path):
    """A 1x1 depth split (depth_disentangle_type 1x1) and used encoder skips map onto TripleDNet's
    layers: the projection and the skip ConvBlocks receive TripleD's tensors."""
    from tripled_tf.models.appearance_decoder import AppearanceDecoder
    from tripled_tf.models.disentangle import FeatureSplit

    def projection(state):
        rng = np.random.default_rng(0)
        state["depth_skip_layer_4.0.conv.weight"] = rng.normal(size=(256, 512, 1, 1)).astype("f4")
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            state[f"depth_skip_layer_4.1.{suffix}"] = rng.uniform(0.5, 1.5, 256).astype("f4")
        state["depth_skip_layer_4.1.num_batches_tracked"] = np.zeros((), np.int64)
    path = write_tripled_checkpoint(tmp_path / "td.pth", edit=projection)
    read = published_tripled.read_tripled(path, color_encoder_skips=[True, False, True, True])
    assert read["config"]["depth_split"] == "conv1x1"
    assert read["config"]["color_encoder_skips"] == (True, False, True, True)
    assert read["skipped"] == 2  # upconv4_skip's weight and bias

    split = FeatureSplit((False,) * 4 + (True,), depth_split="conv1x1")
    shapes = [(1, 32, 48, 64), (1, 16, 24, 64), (1, 8, 12, 128), (1, 4, 6, 256), (1, 2, 3, 512)]
    split([np.zeros(s, np.float32) for s in shapes])
    assert published_tripled.pretrained.assign_strict(published_tripled.split_projection_key_map(split),
                                              read["parts"]["split"], path, "split") == 5
    np.testing.assert_array_equal(split.depth_projections[4].conv.kernel.numpy()[0, 0],
                                  read["parts"]["split"]["4.0.conv.weight"][:, :, 0, 0].T)

    decoder = AppearanceDecoder(encoder_skips=(True, False, True, True))
    features = [np.zeros(s[:3] + (s[3] // 2 if i == 4 else s[3],), np.float32)
                for i, s in enumerate(shapes)]
    decoder(features, [np.zeros((1, 32 // 2 ** s, 48 // 2 ** s, 1), np.float32) for s in range(4)])
    count = published_tripled.pretrained.assign_strict(published_tripled.appearance_decoder_key_map(decoder),
                                               read["parts"]["appearance"], path, "appearance")
    assert count == 28 + 6  # kernel + bias of 10 ConvBlocks and 4 heads, and of 3 skip ConvBlocks


# --------------------------------------------------------------------------------------------------
# Refusals: one line naming the file and the keys


def _one_line(error):
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_tripled_missing_and_leftover_tensors(tmp_path):
    """What build_tripled does after reading the file (convert's path), on one model built once (the
    build is the slow part)."""
    from tripled_tf.models.tripled_net import TripleDNet

    def drop(state):
        del state["DepthToGray.0.bn2.running_var"]
    missing = write_tripled_checkpoint(tmp_path / "missing.pth", "tripled_d2g_r18", edit=drop)
    read = published_tripled.read_tripled(missing)
    model = TripleDNet(published_tripled.tripled_model_config(read))
    model.build_for_size(*SIZE)
    with pytest.raises(CheckpointError) as error:
        published_tripled.load_tripled(model, read)
    message = _one_line(error)
    assert message.startswith(f"{missing} does not match TripleD's d2g head"), message
    assert "Missing keys (1): 0.bn2.running_var" in message

    def shuffle(state):  # depth_use_shuffle: the pixel-shuffle upsamplers' convs
        state["DepthDecoder.up1.1.weight"] = np.ones((1024, 256, 3, 3), np.float32)
    leftover = write_tripled_checkpoint(tmp_path / "leftover.pth", "tripled_d2g_r18", edit=shuffle)
    with pytest.raises(CheckpointError) as error:
        published_tripled.load_tripled(model, published_tripled.read_tripled(leftover))
    message = _one_line(error)
    assert message.startswith(f"{leftover} does not match TripleD's depth decoder"), message
    assert "Unexpected keys (1): up1.1.weight" in message and "depth_use_shuffle" in message

    def foreign(state):
        state["Discriminator.fc.weight"] = np.ones((2, 2), np.float32)
        state["color_skip_layer_0.0.conv.weight"] = np.ones((32, 64, 1, 1), np.float32)
    unknown = write_tripled_checkpoint(tmp_path / "unknown.pth", "tripled_d2g_r18", edit=foreign)
    with pytest.raises(CheckpointError) as error:
        convert.convert("tripled", unknown, tmp_path / "out", size=SIZE)
    message = _one_line(error)
    assert message.startswith(str(unknown)) and "Discriminator.fc.weight" in message
    assert "color_skip_type='1x1'" in message and "color_skip_layer_0.0.conv.weight" in message

    def attention(state):  # depth_skip_type 'ca' before the split: CALayer's 1x1 convs
        state["depth_skip_layer_4.0.conv_att.0.weight"] = np.ones((32, 512, 1, 1), np.float32)
    refused = write_tripled_checkpoint(tmp_path / "attention.pth", edit=attention)
    with pytest.raises(CheckpointError, match=r"depth_skip_layer_4\.\* \(0\.conv_att\.0\.weight\) "
                                              r"is attention"):
        convert.convert("tripled", refused, tmp_path / "out", size=SIZE)
    assert not (tmp_path / "out").exists()


def test_tripled_wrong_files_are_one_line(tmp_path):
    # A FeatDepth mono_fm checkpoint: its frozen extractor.* says which converter to use.
    featdepth = write_featdepth_checkpoint(tmp_path / "fm.pth")
    with pytest.raises(CheckpointError) as error:
        convert.convert("tripled", featdepth, tmp_path / "out", size=SIZE)
    assert "--from=featdepth" in _one_line(error)

    # A truncated download.
    data = write_tripled_checkpoint(tmp_path / "td.pth", "tripled_d2g_r18").read_bytes()
    half = tmp_path / "half.pth"
    half.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError) as error:
        convert.convert("tripled", half, tmp_path / "out", size=SIZE)
    assert _one_line(error).startswith(f"{half}: truncated or corrupt")

    # The command: a Monodepth2 encoder.pth ends in one error line naming it, nothing written.
    encoder = write_monodepth2_folder(tmp_path / "md2", "monodepth2_r18", pose=False) / "encoder.pth"
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "tripled_tf.convert", "--from=tripled",
                             f"--input={encoder}", f"--output={out}"], capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert str(encoder) in lines[0] and "Monodepth2" in lines[0], lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
