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
import numpy as np
import tensorflow as tf

from tripled_tf import checks, geometry, losses, visualize
from tripled_tf.models.depth_decoder import DepthDecoder
from tripled_tf.models.monodepth2_decoder import Monodepth2Decoder
from tripled_tf.models.pose_net import PoseNet
from tripled_tf.models.resnet import ResNetEncoder

SOURCE_KEYS = ("source_prev", "source_next")
NONFINITE_KEY = "nonfinite_terms"
DEPTH_DECODERS = ("featdepth", "monodepth2")


def nonfinite_term_names(bits: float, terms) -> List[str]:
    """Names of the terms flagged in a ``nonfinite_terms`` bit set (bit i = terms[i])."""
    bits = int(round(float(bits)))
    return [name for i, name in enumerate(terms) if bits & (1 << i)]


class LastValue(keras.metrics.Metric):
    """Holds the value of the last update (not a mean): per-step flags in the training logs."""

    def __init__(self, name="last_value", **kwargs):
        super().__init__(name=name, **kwargs)
        # Every replica computes the same all-reduced value; reading one avoids summing copies.
        self.value = self.add_variable(shape=(), initializer="zeros", name="value",
                                       aggregation="only_first_replica")

    def update_state(self, value):
        self.value.assign(tf.cast(value, self.value.dtype))

    def result(self):
        return self.value


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
    # "featdepth" (METHOD.md 2.3, sigma_0 at H/2) or "monodepth2" (Monodepth2's U-Net, sigma_0 at H).
    depth_decoder: str = "featdepth"
    # On the decoder's level-4/5 inputs; None = the decoder's reference value (FeatDepth 0.5,
    # Monodepth2 none).
    dropout: Optional[float] = None

    def __post_init__(self):
        if self.depth_decoder not in DEPTH_DECODERS:
            raise ValueError(f"depth_decoder must be one of {sorted(DEPTH_DECODERS)}, got "
                             f"{self.depth_decoder!r}")
        if self.dropout is None:
            self.dropout = 0.5 if self.depth_decoder == "featdepth" else 0.0
        if self.depth_decoder == "monodepth2" and self.dropout:
            raise ValueError(f"Monodepth2's depth decoder has no dropout; got dropout={self.dropout}")
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


def _resize_bilinear_to(disp: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """``disp`` resized bilinearly to the spatial size of ``like``; unchanged when it already has it
    (σ_0 of Monodepth2's decoder is at full resolution)."""
    if disp.shape[1:3].is_fully_defined() and disp.shape[1:3] == like.shape[1:3]:
        return disp
    return geometry.resize_bilinear(disp, tf.shape(like)[1:3])


def _batch_tensor(batch: dict, key: str) -> tf.Tensor:
    if key not in batch:
        raise ValueError(f"training batch is missing {key!r}; it has {sorted(batch)}")
    return batch[key]


class MonoDepthModel(keras.Model):
    """Depth network + pose network trained by view synthesis.

    ``call(images)`` returns the multi-scale sigmoid disparities [σ_0 (H/2), σ_1 (H/4), σ_2 (H/8),
    σ_3 (H/16)], each [B, h, w, 1] (with ``depth_decoder="monodepth2"``: H, H/2, H/4, H/8, see
    :attr:`output_stride`); :meth:`predict_depth` gives metric-free depth at the input size.
    """

    # Every scalar compute_losses returns, plus the gradient norm of train_step; logged separately.
    logged_terms = ("loss", "photometric", "smoothness", "automask_fraction", "grad_norm")

    def __init__(self, config: Optional[DepthModelConfig] = None, **kwargs):
        super().__init__(**kwargs)
        self.config = config if isinstance(config, DepthModelConfig) else DepthModelConfig.from_dict(
            config or {})
        cfg = self.config
        self.encoder = ResNetEncoder(num_layers=cfg.depth_layers, name="depth_encoder")
        if cfg.depth_decoder == "monodepth2":
            self.depth_decoder = Monodepth2Decoder(self._depth_decoder_channels(), name="depth_decoder")
        else:
            self.depth_decoder = DepthDecoder(self._depth_decoder_channels(), dropout=cfg.dropout,
                                              name="depth_decoder")
        self.pose_net = PoseNet(num_layers=cfg.pose_layers, input_size=cfg.pose_input_size,
                                name="pose_net")
        # Trackers are created here, not lazily in train_step: variables must not be created while
        # tf.function traces the step.
        self._trackers = {name: keras.metrics.Mean(name=name) for name in self.logged_terms}
        # Randomness of the automask tie-breaking noise; its state is checkpointed with the optimiser.
        self.noise_generator = keras.random.SeedGenerator(name="identity_noise")
        # Per-step health: bit i set = logged_terms[i] was NaN/Inf in the last step (whole batch).
        self._nonfinite_tracker = LastValue(name=NONFINITE_KEY)

    @property
    def output_stride(self) -> int:
        """Input size / size of σ_0: 2 for FeatDepth's decoder, 1 for Monodepth2's."""
        return self.depth_decoder.output_stride

    def _depth_decoder_channels(self) -> List[int]:
        """Channels of the 5 levels the depth decoder receives (subclasses that split features differ)."""
        return list(self.encoder.num_ch_enc)

    # ----------------------------------------------------------------------------------- inference
    def call(self, images, training=None) -> List[tf.Tensor]:
        images = checks.as_images(images, "images", channels=3)
        features = self.encoder(images, training=training)
        # float32 out whatever the compute dtype: geometry and losses always run in float32.
        return [tf.cast(d, tf.float32) for d in self.depth_decoder(features, training=training)]

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
        axisangle, translation = self._pose((prev, target), training)
        pose_prev = geometry.pose_to_matrix(axisangle, translation, invert=True)
        axisangle, translation = self._pose((target, nxt), training)
        pose_next = geometry.pose_to_matrix(axisangle, translation)
        return {"source_prev": pose_prev, "source_next": pose_next}

    def _pose(self, frames, training):
        axisangle, translation = self.pose_net(frames, training=training)
        return tf.cast(axisangle, tf.float32), tf.cast(translation, tf.float32)

    def summary_images(self, batch: dict) -> Dict[str, np.ndarray]:
        """Images for TensorBoard from a training batch: name -> [B, H, W, 3] float in [0, 1].

        "input" (the target frame) and "disparity" (σ_0 at input size, magma, per-image scaling).
        """
        target = checks.as_images(_batch_tensor(batch, "target"), "target", channels=3)
        disp, _ = self.predict_depth(target, training=False)
        coloured = np.stack([visualize.colorize_disparity(d) for d in disp.numpy()])
        return {"input": target.numpy(), "disparity": coloured.astype(np.float32) / 255.0}

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
          disparities: [σ_0 .. σ_3], σ_s [B, H/2^(s+1), W/2^(s+1), 1] sigmoid disparities
            (H/2^s with Monodepth2's decoder).
          poses: {"source_prev": T_{0->-1}, "source_next": T_{0->+1}}, each [B, 4, 4].
        Returns:
          the dict of :meth:`compute_losses`.
        """
        cfg = self.config
        target = checks.as_images(_batch_tensor(batch, "target"), "target", channels=3)
        sources = [checks.as_images(_batch_tensor(batch, k), k, channels=3) for k in SOURCE_KEYS]
        K = checks.as_matrices(_batch_tensor(batch, "K"), "K")
        inv_K = tf.linalg.inv(K)

        # The target's SSIM statistics are shared by all ten comparisons (two identity, eight warped).
        target_statistics = losses.ssim_statistics(target)
        identity_errors = None
        if cfg.automask:
            # Independent of depth and pose: computed once, shared by all scales.
            identity_errors = [losses.photometric_error(s, target, cfg.ssim_weight,
                                                        target_statistics=target_statistics)
                               for s in sources]

        photometric_total = 0.0
        smoothness_total = 0.0
        automask_fraction = 0.0
        for scale in range(cfg.num_scales):
            disp = disparities[scale]
            # Upsample the disparity (not depth) to full resolution, then convert (METHOD.md §4).
            # (Stacking the scales along the batch axis to warp each source once was measured: no
            # faster on CPU, +1 GiB peak memory.)
            _, depth = geometry.disp_to_depth(_resize_bilinear_to(disp, target),
                                              cfg.min_depth, cfg.max_depth)
            warped_errors = []
            for key, source in zip(SOURCE_KEYS, sources):
                warped = geometry.warp(source, depth, poses[key], K, inv_K, cfg.sampling)
                warped_errors.append(losses.photometric_error(
                    warped, target, cfg.ssim_weight, target_statistics=target_statistics))
            loss_map, automask = losses.min_reprojection(warped_errors, identity_errors,
                                                         cfg.identity_noise, self.noise_generator)
            photometric_total += tf.reduce_mean(loss_map) / cfg.num_scales
            automask_fraction += tf.reduce_mean(automask) / cfg.num_scales
            smooth = losses.smoothness_loss(losses.normalize_disparity(disp), target)
            smoothness_total += smooth / (2 ** scale) / cfg.num_scales

        total = photometric_total + cfg.smoothness_weight * smoothness_total
        return {"loss": total, "photometric": photometric_total, "smoothness": smoothness_total,
                "automask_fraction": automask_fraction}

    # ------------------------------------------------------------------------------- keras hooks
    @property
    def metrics(self):
        return list(self._trackers.values()) + [self._nonfinite_tracker]

    def train_step(self, data):
        """One optimiser step; returns the running mean of every logged term and ``nonfinite_terms``.

        Distribution: each replica's loss is divided by the number of replicas, because the optimiser
        sums the replicas' gradients; with a global batch split evenly, that equals one replica on the
        whole batch. Mixed precision: the loss is scaled by the LossScaleOptimizer Keras wraps around
        the optimiser, which also skips steps whose scaled gradients overflow. A step with a NaN / Inf
        loss term is never applied (on one replica; see apply_if_finite).
        """
        strategy = tf.distribute.get_strategy()
        replicas = strategy.num_replicas_in_sync
        # BatchNorm moving statistics are updated by the forward pass itself; a non-finite batch
        # would poison them even when its update is skipped, so they are put back then. (Per-channel
        # vectors: the copy is negligible.)
        statistics = list(self.non_trainable_weights) if replicas == 1 else []
        saved = [tf.identity(v) for v in statistics]
        with tf.GradientTape() as tape:
            values = self.compute_losses(data, training=True)
            scaled_loss = self.optimizer.scale_loss(values["loss"] / replicas)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
        loss_scale = self.optimizer.scale_loss(tf.constant(1.0))
        values["grad_norm"] = (tf.linalg.global_norm([g for g, _ in pairs])
                               * tf.cast(replicas, tf.float32) / tf.cast(loss_scale, tf.float32))

        # Which terms are not finite; gradients count too unless the loss scaler handles them.
        checked = [name for name in self.logged_terms if name in values
                   and not (name == "grad_norm" and isinstance(
                       self.optimizer, keras.optimizers.LossScaleOptimizer))]
        bad = tf.stack([tf.cast(tf.logical_not(tf.reduce_all(tf.math.is_finite(values[name]))),
                                tf.float32) for name in checked])
        if replicas > 1:
            bad = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, bad)
        finite = tf.equal(tf.reduce_sum(bad), 0.0)
        if replicas == 1:
            tf.cond(finite, lambda: self._apply(pairs),
                    lambda: self._restore(statistics, saved))
        else:
            # A cond around the optimiser's cross-replica merge is not allowed under tf.distribute,
            # so with several replicas the step is applied and the trainer stops before any
            # checkpoint (the trainer refuses skip_nonfinite there).
            self.optimizer.apply_gradients(pairs)
        bits = tf.reduce_sum(tf.cast(bad > 0, tf.float32) * tf.constant(
            [float(2 ** self.logged_terms.index(name)) for name in checked]))
        self._nonfinite_tracker.update_state(bits)
        # Non-finite values would poison the running means for the rest of the epoch (also the
        # overflowing gradient norm of a step the loss scaler skips).
        for name, value in values.items():
            keep = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(value)))
            self._trackers[name].update_state(tf.where(keep, value, 0.0),
                                              sample_weight=tf.cast(keep, tf.float32))
        logs = {**{name: self._trackers[name].result() for name in values},
                NONFINITE_KEY: self._nonfinite_tracker.result()}
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Keras averages per-replica logs across workers with strategy.reduce("MEAN", axis=0),
            # which needs a batch axis: scalars become [1].
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' version first reduces one distributed batch with strategy.reduce, which
        # MultiWorkerMirroredStrategy cannot do for dict batches (ValueError before the first step);
        # it only serves to create variables, and build_for_size + optimizer.build have done that.
        if self.built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _apply(self, pairs):
        self.optimizer.apply_gradients(pairs)
        return tf.constant(True)

    @staticmethod
    def _restore(variables, values):
        for variable, value in zip(variables, values):
            variable.assign(value)
        return tf.constant(False)

    def test_step(self, data):
        values = self.compute_losses(data, training=False)
        for name, value in values.items():
            self._trackers[name].update_state(value)
        return {name: self._trackers[name].result() for name in values}

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
