"""Model building and pretrained-encoder resolution (tripled_tf.train_sources): init names per encoder,
the pose net's fall-back, converted weights loaded into every encoder.
"""
import dataclasses
import pathlib

import numpy as np
import pytest

from tripled_tf import train_sources
from tripled_tf.models.depth_model import DepthModelConfig, MonoDepthModel
from tripled_tf.train_config import TrainConfig


# ------------------------------------------------------------------------------------------------
# Encoder initialisation by name.


def test_init_names_resolve_per_encoder_and_pose_falls_back_from_swav_moco_simclr(tmp_path):
    from tripled_tf.models.pretrained import CheckpointError
    from tripled_tf.models.tripled_net import TripleDConfig, TripleDNet

    for name in ("swav_resnet18.npz", "supervised_resnet18.npz"):
        (tmp_path / name).write_bytes(b"")
    model = TripleDNet(TripleDConfig(depth_layers=18, extractor_layers=18, pose_input_size=None))
    config = TrainConfig(height=64, width=64, encoder_weights="swav", weights_dir=str(tmp_path))
    chosen = {flag: pathlib.Path(path).name
              for _, path, flag in train_sources.pretrained_encoders(config, model)}
    # SwAV published no ResNet-18: the pose net takes the supervised one; the extractor follows.
    assert chosen == {"encoder_weights": "swav_resnet18.npz",
                      "pose_encoder_weights": "supervised_resnet18.npz",
                      "extractor_weights": "swav_resnet18.npz"}
    none = dataclasses.replace(config, encoder_weights="none")
    assert train_sources.pretrained_encoders(none, model) == []
    missing = dataclasses.replace(config, encoder_weights="moco")
    with pytest.raises(CheckpointError, match=r"moco_resnet18.npz does not exist.*convert_resnet_weights"):
        train_sources.pretrained_encoders(missing, model)
    # MoCo and SimCLR published ResNet-50s only, like SwAV: a ResNet-50 depth encoder takes them,
    # the ResNet-18 pose net the supervised one (not a moco_resnet18.npz nobody can have).
    deep = MonoDepthModel(DepthModelConfig(depth_layers=50, pose_layers=18, pose_input_size=None))
    for name in ("moco", "simclr"):
        (tmp_path / f"{name}_resnet50.npz").write_bytes(b"")
        chosen = {flag: pathlib.Path(path).name for _, path, flag in train_sources.pretrained_encoders(
            dataclasses.replace(config, encoder_weights=name), deep)}
        assert chosen == {"encoder_weights": f"{name}_resnet50.npz",
                          "pose_encoder_weights": "supervised_resnet18.npz"}


def test_build_model_loads_converted_encoder_weights(tmp_path):
    from tripled_tf.models import pretrained
    from tripled_tf.models.resnet import ResNetEncoder, torchvision_key_map
    from tripled_tf.train_config import TrainConfig
    from tripled_tf.train_sources import build_model

    # A torchvision-layout state (OIHW kernels) from a differently initialised encoder.
    source = ResNetEncoder(18)
    state = {}
    for key, variable in torchvision_key_map(source).items():
        value = variable.numpy() + 0.5
        state[key] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
    path = tmp_path / "rn18.npz"
    pretrained.save_state_npz(state, path)
    config = TrainConfig(model="baseline", height=64, width=64, encoder_weights=str(path),
                         pose_encoder_weights=str(path))
    model = build_model(config, DepthModelConfig(pose_input_size=None))
    loaded = torchvision_key_map(model.encoder)
    np.testing.assert_array_equal(loaded["layer3.1.bn2.weight"].numpy(), state["layer3.1.bn2.weight"])
    np.testing.assert_array_equal(loaded["conv1.weight"].numpy(), state["conv1.weight"].transpose(2, 3, 1, 0))
    # The pose encoder's 6-channel conv1 = the 3-channel kernel repeated for both frames, halved.
    pose_conv1 = torchvision_key_map(model.pose_net.encoder)["conv1.weight"].numpy()
    expected = np.concatenate([state["conv1.weight"]] * 2, axis=1).transpose(2, 3, 1, 0) / 2
    np.testing.assert_allclose(pose_conv1, expected, rtol=1e-6)
