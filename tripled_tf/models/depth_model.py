"""The plain self-supervised depth + pose model (Monodepth2 / FeatDepth baseline) with its train step.

``MonoDepthModel`` is the ablation baseline of TripleDNet: a ResNet depth encoder, the FeatDepth depth
decoder (4 sigmoid disparity scales) and a pose network, trained from frame triplets (t-1, t, t+1) with
the minimum-reprojection photometric loss with identity auto-masking and mean-normalised edge-aware
smoothness (METHOD.md §3.1, §3.3). TripleDNet extends it with the appearance branch and pretext losses.

Training batches are dicts (see ``tripled_tf.data``):
  "target", "source_prev", "source_next": [B, H, W, 3] un-augmented frames t, t-1, t+1 in [0, 1]
  "K": [B, 4, 4] intrinsics of those frames (pixels)
  optional "target_aug", "source_prev_aug", "source_next_aug": colour-augmented copies that the
  networks see (the losses always compare un-augmented images, as the references do).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import keras
import tensorflow as tf

from tripled_tf import checks, geometry, losses
from tripled_tf.models.depth_decoder import DepthDecoder
from tripled_tf.models.pose_net import PoseNet
from tripled_tf.models.resnet import ResNetEncoder

SOURCE_KEYS = ("source_prev", "source_next")


@dataclasses.dataclass
class DepthModelConfig:
    """Hyper-parameters of the baseline model and its loss (defaults: METHOD.md main config)."""
    depth_layers: int = 18
    pose_layers: int = 18
    # The references resize pose inputs to a hard-coded 192x640; None feeds frames at training size.
    pose_input_size: Optional[Tuple[int, int]] = (192, 640)
    num_scales: int = 4
    min_depth: float = 0.1
    max_depth: float = 100.0
    ssim_weight: float = 0.85
    smoothness_weight: float = 1e-3
    automask: bool = True
    identity_noise: float = 1e-5
    sampling: str = "exact"
    dropout: float = 0.5

    def __post_init__(self):
        if self.pose_input_size is not None:
            self.pose_input_size = tuple(int(v) for v in self.pose_input_size)
        if not 1 <= self.num_scales <= 4:
            raise ValueError(f"num_scales must be in 1..4 (the decoder has 4 heads), got {self.num_scales}")
        if self.sampling not in geometry.SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {geometry.SAMPLING_MODES}, got {self.sampling!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DepthModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _batch_tensor(batch: dict, key: str) -> tf.Tensor:
    if key not in batch:
        raise ValueError(f"training batch is missing {key!r}; it has {sorted(batch)}")
    return batch[key]


class MonoDepthModel(keras.Model):
    """Depth network + pose network trained by view synthesis.

    ``call(images)`` returns the multi-scale sigmoid disparities [σ_0 (H/2), σ_1 (H/4), σ_2 (H/8),
    σ_3 (H/16)], each [B, h, w, 1]; :meth:`predict_depth` gives metric-free depth at the input size.
    """

    # Every scalar compute_losses returns, plus the gradient norm of train_step; logged separately.
    logged_terms = ("loss", "photometric", "smoothness", "automask_fraction", "grad_norm")

    def __init__(self, config: Optional[DepthModelConfig] = None, **kwargs):
        super().__init__(**kwargs)
        self.config = config if isinstance(config, DepthModelConfig) else DepthModelConfig.from_dict(
            config or {})
        cfg = self.config
        self.encoder = ResNetEncoder(num_layers=cfg.depth_layers, name="depth_encoder")
        self.depth_decoder = DepthDecoder(self._depth_decoder_channels(), dropout=cfg.dropout,
                                          name="depth_decoder")
        self.pose_net = PoseNet(num_layers=cfg.pose_layers, input_size=cfg.pose_input_size,
                                name="pose_net")
        # Trackers are created here, not lazily in train_step: variables must not be created while
        # tf.function traces the step.
        self._trackers = {name: keras.metrics.Mean(name=name) for name in self.logged_terms}

    def _depth_decoder_channels(self) -> List[int]:
        """Channels of the 5 levels the depth decoder receives (subclasses that split features differ)."""
        return list(self.encoder.num_ch_enc)

    # ----------------------------------------------------------------------------------- inference
    def call(self, images, training=None) -> List[tf.Tensor]:
        images = checks.as_images(images, "images", channels=3)
        features = self.encoder(images, training=training)
        return self.depth_decoder(features, training=training)

    def predict_depth(self, images, training=False) -> Tuple[tf.Tensor, tf.Tensor]:
        """Depth at the input resolution, the references' evaluation recipe.

        σ_0 (H/2) -> bilinear resize to H x W -> scaled disparity -> depth (METHOD.md §7 / pitfall 20).

        Args:
          images: [B, H, W, 3] in [0, 1].
        Returns:
          (disp [B, H, W, 1] sigmoid disparity, depth [B, H, W, 1] in (min_depth, max_depth), relative
          scale for monocular models).
        """
        images = checks.as_images(images, "images", channels=3)
        disp = self(images, training=training)[0]
        disp = geometry.resize_bilinear(disp, tf.shape(images)[1:3])
        _, depth = geometry.disp_to_depth(disp, self.config.min_depth, self.config.max_depth)
        return disp, depth

    def predict_poses(self, batch: dict, training=None) -> Dict[str, tf.Tensor]:
        """T_{0->s} [B, 4, 4] for each source from the (augmented) frames, METHOD.md §2.5.

        The pose net always sees frames in temporal order: (t-1, t) predicts the motion t-1 -> t, whose
        inverse is T_{0->-1}; (t, t+1) predicts T_{0->+1}.
        """
        target = batch.get("target_aug", _batch_tensor(batch, "target"))
        prev = batch.get("source_prev_aug", _batch_tensor(batch, "source_prev"))
        nxt = batch.get("source_next_aug", _batch_tensor(batch, "source_next"))
        axisangle, translation = self.pose_net((prev, target), training=training)
        pose_prev = geometry.pose_to_matrix(axisangle, translation, invert=True)
        axisangle, translation = self.pose_net((target, nxt), training=training)
        pose_next = geometry.pose_to_matrix(axisangle, translation)
        return {"source_prev": pose_prev, "source_next": pose_next}

    # ---------------------------------------------------------------------------------------- loss
    def compute_losses(self, batch: dict, training=None) -> Dict[str, tf.Tensor]:
        """All loss terms for one batch; ``"loss"`` is their weighted total.

        Returns a dict of scalars: loss, photometric, smoothness, automask_fraction (share of target
        pixels where a warped source beat the identity, a useful health signal).
        """
        target = _batch_tensor(batch, "target")
        disparities = self(batch.get("target_aug", target), training=training)
        poses = self.predict_poses(batch, training=training)
        return self._reprojection_losses(batch, disparities, poses)

    def _reprojection_losses(self, batch: dict, disparities: List[tf.Tensor],
                             poses: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """Min-reprojection photometric + smoothness terms of the given disparities and poses.

        Args:
          batch: the training batch (un-augmented frames and "K" are read from it).
          disparities: [σ_0 .. σ_3], σ_s [B, H/2^(s+1), W/2^(s+1), 1] sigmoid disparities.
          poses: {"source_prev": T_{0->-1}, "source_next": T_{0->+1}}, each [B, 4, 4].
        Returns:
          the dict of :meth:`compute_losses`.
        """
        cfg = self.config
        target = checks.as_images(_batch_tensor(batch, "target"), "target", channels=3)
        sources = [checks.as_images(_batch_tensor(batch, k), k, channels=3) for k in SOURCE_KEYS]
        K = checks.as_matrices(_batch_tensor(batch, "K"), "K")
        inv_K = tf.linalg.inv(K)
        size = tf.shape(target)[1:3]

        identity_errors = None
        if cfg.automask:
            # Independent of depth and pose: computed once, shared by all scales.
            identity_errors = [losses.photometric_error(s, target, cfg.ssim_weight) for s in sources]

        photometric_total = 0.0
        smoothness_total = 0.0
        automask_fraction = 0.0
        for scale in range(cfg.num_scales):
            disp = disparities[scale]
            # Upsample the disparity (not depth) to full resolution, then convert (METHOD.md §4).
            _, depth = geometry.disp_to_depth(geometry.resize_bilinear(disp, size),
                                              cfg.min_depth, cfg.max_depth)
            warped_errors = []
            for key, source in zip(SOURCE_KEYS, sources):
                warped = geometry.warp(source, depth, poses[key], K, inv_K, cfg.sampling)
                warped_errors.append(losses.photometric_error(warped, target, cfg.ssim_weight))
            loss_map, automask = losses.min_reprojection(warped_errors, identity_errors,
                                                         cfg.identity_noise)
            photometric_total += tf.reduce_mean(loss_map) / cfg.num_scales
            automask_fraction += tf.reduce_mean(automask) / cfg.num_scales
            smooth = losses.smoothness_loss(losses.normalize_disparity(disp), target)
            smoothness_total += smooth / (2 ** scale) / cfg.num_scales

        total = photometric_total + cfg.smoothness_weight * smoothness_total
        return {"loss": total, "photometric": photometric_total, "smoothness": smoothness_total,
                "automask_fraction": automask_fraction}

    # ------------------------------------------------------------------------------- keras hooks
    def _update_trackers(self, values: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        for name, value in values.items():
            self._trackers[name].update_state(value)
        return {name: self._trackers[name].result() for name in values}

    @property
    def metrics(self):
        return list(self._trackers.values())

    def train_step(self, data):
        with tf.GradientTape() as tape:
            values = self.compute_losses(data, training=True)
        variables = self.trainable_variables
        gradients = tape.gradient(values["loss"], variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        values["grad_norm"] = tf.linalg.global_norm([g for g in gradients if g is not None])
        return self._update_trackers(values)

    def test_step(self, data):
        return self._update_trackers(self.compute_losses(data, training=False))

    def build(self, input_shape=None):
        """Creates every variable (Keras calls this before the first call, with the image shape)."""
        height, width = 64, 64  # any multiple of 32 creates the same variables
        if input_shape is not None and len(input_shape) == 4 and None not in tuple(input_shape)[1:3]:
            height, width = int(input_shape[1]), int(input_shape[2])
        self.build_for_size(height, width)

    def build_for_size(self, height: int, width: int) -> None:
        """Creates every variable by running the sub-networks once on a dummy batch of that size."""
        dummy = tf.zeros([1, height, width, 3])
        self.depth_decoder(self.encoder(dummy, training=False), training=False)
        self.pose_net((dummy, dummy), training=False)
        self.built = True

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(DepthModelConfig.from_dict(config.pop("config", {})), **config)
