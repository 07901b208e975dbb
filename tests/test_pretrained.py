"""Pretrained encoders (tripled_tf.models.pretrained, with the PyTorch file reader of
tripled_tf.models.torch_checkpoint): wrapper stripping, strict loading, activations, both torch serialisations.

The torch-free tests write checkpoints with tests/torch_files.py, which lays out what ``torch.save``
writes in both serialisations (zip and legacy); tests/fixtures/torch_*.pth were written by PyTorch
itself (tools/make_reference_fixtures.py). The tests marked "torch" compare against a real PyTorch
ResNet-18 and skip when PyTorch is not installed.
"""
import collections

import numpy as np
import pytest

from tripled_tf.models import pretrained, torch_checkpoint
from tripled_tf.models.resnet import ResNetEncoder, torchvision_key_map
from tools import convert_resnet_weights
from torch_files import save_torch, save_torch_zip

# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def encoder18():
    encoder = ResNetEncoder(num_layers=18, name="rn18_test")
    torchvision_key_map(encoder)  # builds it
    return encoder


def random_torch_state(encoder, seed):
    """A random ResNet state_dict in torch layout (OIHW kernels), keyed like torchvision."""
    rng = np.random.default_rng(seed)
    state = collections.OrderedDict()
    for key, variable in torchvision_key_map(encoder).items():
        shape = tuple(variable.shape)
        if len(shape) == 4:
            kh, kw, cin, cout = shape
            state[key] = rng.normal(0, 0.1, (cout, cin, kh, kw)).astype(np.float32)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            state[key] = rng.normal(0, 0.1, shape).astype(np.float32)
    return state


def with_bookkeeping(state, head_prefix="fc"):
    """Adds what real checkpoints also hold: num_batches_tracked counters and a classifier head."""
    full = collections.OrderedDict(state)
    for key in list(state):
        if key.endswith("running_mean"):
            full[key.replace("running_mean", "num_batches_tracked")] = np.array(7, np.int64)
    full[f"{head_prefix}.weight"] = np.ones((10, 512), np.float32)
    full[f"{head_prefix}.bias"] = np.zeros((10,), np.float32)
    return full


def prefixed(state, prefix):
    return collections.OrderedDict((prefix + k, v) for k, v in state.items())


def wrap(state, style):
    if style == "plain":
        return with_bookkeeping(state)
    if style == "swav":
        out = prefixed(with_bookkeeping(state, "projection_head.0"), "module.")
        out["module.prototypes.weight"] = np.ones((30, 128), np.float32)
        return out
    if style == "moco_v2":
        key_encoder = collections.OrderedDict((k, v + 1.0) for k, v in state.items())
        sd = prefixed(with_bookkeeping(state, "fc.0"), "module.encoder_q.")
        sd.update(prefixed(key_encoder, "module.encoder_k."))
        sd["module.queue"] = np.zeros((128, 16), np.float32)
        sd["module.queue_ptr"] = np.zeros((1,), np.int64)
        return {"epoch": 800, "arch": "resnet18", "state_dict": sd, "optimizer": {"state": {}}}
    if style == "simclr":
        sd = prefixed(with_bookkeeping(state), "encoder.")
        sd["projector.0.weight"] = np.ones((64, 512), np.float32)
        return {"state_dict": sd}
    raise ValueError(style)


def assert_loaded(encoder, state):
    for key, variable in torchvision_key_map(encoder).items():
        expected = state[key]
        if expected.ndim == 4:
            expected = np.transpose(expected, (2, 3, 1, 0))
        np.testing.assert_array_equal(variable.numpy(), expected, err_msg=key)


# --------------------------------------------------------------------------------------------------
# Torch-free tests


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reader_handles_dtypes_strides_and_scalars(tmp_path, legacy):
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    obj = {"state_dict": collections.OrderedDict(
        contiguous=base, transposed=base.T, half=np.array([0.5, -2.0], np.float16),
        counter=np.array(7, np.int64), double=np.array([[1.25]], np.float64)),
        "epoch": 3, "arch": "resnet18"}
    path = tmp_path / "x.pth"
    save_torch(obj, path, legacy=legacy)
    loaded = torch_checkpoint.read_checkpoint(path)
    sd = loaded["state_dict"]
    assert loaded["epoch"] == 3 and loaded["arch"] == "resnet18"
    np.testing.assert_array_equal(sd["contiguous"], base)
    np.testing.assert_array_equal(sd["transposed"], base.T)
    assert sd["half"].dtype == np.float16 and sd["half"].tolist() == [0.5, -2.0]
    assert sd["counter"].dtype == np.int64 and int(sd["counter"]) == 7
    assert sd["double"].dtype == np.float64 and sd["double"].tolist() == [[1.25]]


@pytest.mark.parametrize("style", ["plain", "swav", "moco_v2", "simclr"])
def test_each_wrapper_loads_every_backbone_tensor(tmp_path, encoder18, style):
    state = random_torch_state(encoder18, seed=len(style))
    path = tmp_path / f"{style}.pth"
    save_torch_zip(wrap(state, style), path)
    loaded = pretrained.load_torchvision_state(path)
    assert set(loaded) == set(state)  # heads, counters, queue and the MoCo key encoder dropped
    assert pretrained.load_encoder_weights(encoder18, path) == 100
    assert_loaded(encoder18, state)  # for MoCo: the query encoder, not encoder_k (= state + 1)


def test_explicit_source_and_npz_round_trip(tmp_path, encoder18):
    state = random_torch_state(encoder18, seed=11)
    ckpt, npz = tmp_path / "swav.pth", tmp_path / "rn18.npz"
    save_torch_zip(wrap(state, "swav"), ckpt)
    assert convert_resnet_weights.convert(str(ckpt), str(npz), num_layers=18, source="swav") == 100
    with np.load(npz) as data:
        assert set(data.files) == set(state)
        np.testing.assert_array_equal(data["conv1.weight"], state["conv1.weight"])  # torch layout
    pretrained.load_encoder_weights(encoder18, str(npz))
    assert_loaded(encoder18, state)


def test_missing_key_is_an_error_naming_it(tmp_path, encoder18):
    state = random_torch_state(encoder18, seed=3)
    del state["layer3.1.bn2.running_var"]
    path = tmp_path / "missing.pth"
    save_torch_zip(state, path)
    before = encoder18.conv1.kernel.numpy().copy()
    with pytest.raises(ValueError, match=r"Missing keys \(1\): layer3\.1\.bn2\.running_var"):
        pretrained.load_encoder_weights(encoder18, path)
    np.testing.assert_array_equal(encoder18.conv1.kernel.numpy(), before)  # nothing assigned


def test_unstripped_prefixes_are_an_error(tmp_path, encoder18):
    state = random_torch_state(encoder18, seed=4)
    # A raw prefixed state dict (what the reference silently loads nothing from).
    with pytest.raises(ValueError, match=r"Missing keys \(100\).*Unexpected keys.*module\.conv1\.weight"):
        pretrained.load_encoder_weights(encoder18, prefixed(state, "module."))
    # Forcing the torchvision layout on a SwAV checkpoint.
    path = tmp_path / "swav.pth"
    save_torch_zip(wrap(state, "swav"), path)
    with pytest.raises(ValueError, match=r"source=torchvision.*module\."):
        pretrained.load_torchvision_state(path, source="torchvision")


def test_wrong_depth_is_an_error_listing_keys(tmp_path, encoder18):
    path = tmp_path / "rn18.pth"
    save_torch_zip(random_torch_state(encoder18, seed=5), path)
    with pytest.raises(ValueError, match=r"ResNet-34.*Missing keys.*layer1\.2\.conv1\.weight"):
        convert_resnet_weights.convert(str(path), str(tmp_path / "out.npz"), num_layers=34)
    assert not (tmp_path / "out.npz").exists()


def test_no_backbone_is_refused(tmp_path):
    path = tmp_path / "head_only.pth"
    save_torch_zip({"fc.weight": np.ones((2, 2), np.float32)}, path)
    with pytest.raises(ValueError, match="no torchvision ResNet backbone"):
        pretrained.load_torchvision_state(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_legacy_and_zip_backbones_load_the_same(tmp_path, encoder18, legacy):
    state = random_torch_state(encoder18, seed=3)
    path = tmp_path / "moco.pth.tar"
    save_torch(wrap(state, "moco_v2"), path, legacy=legacy)
    loaded = pretrained.load_torchvision_state(path)
    assert set(loaded) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    out = tmp_path / "out.npz"
    assert convert_resnet_weights.convert(str(path), str(out), num_layers=18) == len(state)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_and_foreign_files_are_one_line_naming_the_file(tmp_path, legacy):
    path = tmp_path / "ckpt.pth"
    save_torch({"a": np.arange(1000, dtype=np.float32), "b": np.ones((7, 3), np.float32)}, path,
               legacy=legacy)
    data = path.read_bytes()
    for cut in (len(data) // 3, len(data) - 50, 20, 3):
        half = tmp_path / f"half_{cut}.pth"
        half.write_bytes(data[:cut])
        with pytest.raises(pretrained.CheckpointError) as error:
            torch_checkpoint.read_checkpoint(half)
        message = str(error.value)
        assert message.startswith(str(half)) and "\n" not in message, message
    foreign = tmp_path / "notes.pth"
    foreign.write_text("not a checkpoint\n")
    with pytest.raises(pretrained.CheckpointError, match="notes.pth: not a PyTorch checkpoint"):
        torch_checkpoint.read_checkpoint(foreign)


def test_pickle_cannot_run_code(tmp_path):
    """A checkpoint whose pickle calls os.system gets an inert placeholder, never a call."""
    import os as os_module
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os_module.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    save_torch({"w": np.ones(2, np.float32), "evil": Evil()}, path, legacy=True)
    loaded = torch_checkpoint.read_checkpoint(path)
    assert not marker.exists()
    assert "os.system" in repr(loaded["evil"]) or "posix.system" in repr(loaded["evil"])
    np.testing.assert_array_equal(loaded["w"], [1.0, 1.0])


def test_pose_conv1_repeat_divide_matches_single_frame(encoder18):
    state = random_torch_state(encoder18, seed=6)
    pose = ResNetEncoder(num_layers=18, num_input_images=2, name="pose_rn18_test")
    pretrained.load_encoder_weights(pose, state)
    single = ResNetEncoder(num_layers=18, name="single_rn18_test")
    pretrained.load_encoder_weights(single, state)
    kernel = np.transpose(state["conv1.weight"], (2, 3, 1, 0))
    np.testing.assert_allclose(pose.conv1.kernel.numpy(), np.concatenate([kernel, kernel], 2) / 2,
                               rtol=1e-6)
    frame = np.random.default_rng(0).uniform(size=(1, 64, 64, 3)).astype(np.float32)
    pose_out = pose(np.concatenate([frame, frame], -1), training=False)
    single_out = single(frame, training=False)
    for level, (a, b) in enumerate(zip(pose_out, single_out), start=1):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4, rtol=1e-4,
                                   err_msg=f"level {level}")


# --------------------------------------------------------------------------------------------------
# Against real PyTorch (optional)


def _torch_resnet18():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            widths, cin = (64, 128, 256, 512), 64
            for i, width in enumerate(widths):
                stride = 1 if i == 0 else 2
                setattr(self, f"layer{i + 1}", nn.Sequential(Block(cin, width, stride),
                                                             Block(width, width, 1)))
                cin = width
            self.fc = nn.Linear(512, 1000)

        def levels(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            out = [x]
            x = self.maxpool(x)
            for i in range(1, 5):
                x = getattr(self, f"layer{i}")(x)
                out.append(x)
            return out

    torch.manual_seed(0)
    model = ResNet18()
    with torch.no_grad():  # non-trivial BN statistics, so eval mode exercises every BN tensor
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return torch, model.eval()


def test_torch_saved_resnet18_activations_match_level_by_level(tmp_path):
    torch, model = _torch_resnet18()
    path = tmp_path / "torchvision_rn18.pth"
    torch.save(model.state_dict(), path)
    encoder = ResNetEncoder(num_layers=18, name="rn18_vs_torch")
    pretrained.load_encoder_weights(encoder, path)

    image = np.random.default_rng(1).uniform(size=(2, 64, 64, 3)).astype(np.float32)
    keras_levels = encoder(image, training=False)
    normalised = (image - 0.45) / 0.225  # the encoder normalises inside
    with torch.no_grad():
        torch_levels = model.levels(torch.from_numpy(normalised.transpose(0, 3, 1, 2)).contiguous())
    for level, (k, t) in enumerate(zip(keras_levels, torch_levels), start=1):
        t = t.numpy().transpose(0, 2, 3, 1)
        assert k.shape == t.shape, f"level {level}"
        np.testing.assert_allclose(k.numpy(), t, atol=1e-4, rtol=1e-4, err_msg=f"level {level}")


def test_torch_saved_moco_and_half_checkpoint_reads_exactly(tmp_path):
    torch, model = _torch_resnet18()
    state = model.state_dict()
    moco = {"epoch": 1, "arch": "resnet18",
            "state_dict": {**{f"module.encoder_q.{k}": v for k, v in state.items()},
                           **{f"module.encoder_k.{k}": v + 1 for k, v in state.items()},
                           "module.queue": torch.zeros(128, 4)}}
    path = tmp_path / "moco.pth.tar"
    torch.save(moco, path)
    loaded = pretrained.load_torchvision_state(path)
    backbone = {k: v for k, v in state.items()
                if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert set(loaded) == set(backbone)
    for key, value in backbone.items():
        np.testing.assert_array_equal(loaded[key], value.numpy(), err_msg=key)

    half_path = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, half_path)
    half = pretrained.load_torchvision_state(half_path)
    np.testing.assert_array_equal(half["conv1.weight"], state["conv1.weight"].half().float().numpy())
    assert half["conv1.weight"].dtype == np.float32

    legacy_path = tmp_path / "legacy.pth.tar"
    torch.save(moco, legacy_path, _use_new_zipfile_serialization=False)
    legacy = pretrained.load_torchvision_state(legacy_path, source="moco")
    for key, value in backbone.items():
        np.testing.assert_array_equal(legacy[key], value.numpy(), err_msg=key)


def test_resnet50_moco_checkpoint_loads(tmp_path):
    encoder50 = ResNetEncoder(num_layers=50, name="rn50_test")
    state = random_torch_state(encoder50, seed=50)
    ckpt = tmp_path / "moco50.pth.tar"
    save_torch_zip(wrap(state, "moco_v2"), ckpt)
    assert pretrained.load_encoder_weights(encoder50, ckpt) == 265
    assert_loaded(encoder50, state)
