"""The plain self-supervised depth + pose model (Monodepth2 / FeatDepth baseline) with its train step.

``MonoDepthModel`` is the ablation baseline of TripleDNet: a ResNet depth encoder, the FeatDepth depth
decoder (4 sigmoid disparity scales) and a pose network, trained from frame triplets (t-1, t, t+1) with
the minimum-reprojection photometric loss with identity auto-masking and mean-normalised edge-aware
smoothness (docs/method.md §3.1, §3.3). TripleDNet extends it with the appearance branch and pretext losses.

Training batches are dicts (see ``tripled_tf.data``):
  "target", "source_prev", "source_next": [B, H, W, 3] un-augmented frames t, t-1, t+1 in [0, 1]
  "K": [B, 4, 4] intrinsics of those frames (pixels)
  optional "target_aug", "source_prev_aug", "source_next_aug": colour-augmented copies that the
  networks see (the losses always compare un-augmented images, as the references do).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from tripled_tf import checks, geometry, losses, visualize
from tripled_tf.models.depth_branch import DepthBranch
from tripled_tf.models.depth_decoder import DepthDecoder
from tripled_tf.models.monodepth2_decoder import Monodepth2Decoder
from tripled_tf.models.pose_net import PoseNet
from tripled_tf.models.model_config import DepthModelConfig
from tripled_tf.models.resnet import ResNetEncoder

SOURCE_KEYS = ("source_prev", "source_next")
NONFINITE_KEY = "nonfinite_terms"
# Checked every step besides the logged terms: the batch itself (a NaN loss on a finite batch means
# the weights diverged), the BatchNorm moving statistics the forward pass updated (a step where they
# overflow is not applied, like a NaN loss), and every weight and optimiser variable after the update
# (an update that overflows cannot be undone: training must stop).
INPUT_TERM = "input batch"
STATISTICS_TERM = "batchnorm statistics"
WEIGHTS_TERM = "weights after update"


def nonfinite_term_names(bits: float, terms) -> List[str]:
    """Names of the terms flagged in a ``nonfinite_terms`` bit set (bit i = terms[i]); ``terms`` is
    a model's :attr:`~MonoDepthModel.checked_terms`."""
    bits = int(round(float(bits)))
    return [name for i, name in enumerate(terms) if bits & (1 << i)]


def all_finite(variables) -> tf.Tensor:
    """Scalar bool: every floating-point variable of ``variables`` holds only finite values (one
    is_finite + reduce per variable: each value is read once)."""
    checks_ = [tf.reduce_all(tf.math.is_finite(v.value)) for v in variables
               if tf.as_dtype(v.dtype).is_floating]
    return tf.reduce_all(tf.stack(checks_)) if checks_ else tf.constant(True)


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
        # tf.function traces the step. _trackers: running means since fit started (progress bar,
        # history); _interval_trackers: means since the last TensorBoard summary (read and reset by
        # the trainer). The latter are not in `metrics`, so fit does not reset them: they are saved
        # with the training state and a resumed run continues an interval exactly.
        self._trackers = {name: keras.metrics.Mean(name=name) for name in self.logged_terms}
        self._interval_trackers = {name: keras.metrics.Mean(name=f"{name}_interval")
                                   for name in self.logged_terms}
        # Randomness of the automask tie-breaking noise; its state is checkpointed with the optimiser.
        self.noise_generator = keras.random.SeedGenerator(name="identity_noise")
        # Per-step health: bit i set = logged_terms[i] was NaN/Inf in the last step (whole batch).
        self._nonfinite_tracker = LastValue(name=NONFINITE_KEY)

    @property
    def checked_terms(self) -> Tuple[str, ...]:
        """Names of the bits of ``nonfinite_terms``: the logged terms, then the model state."""
        return tuple(self.logged_terms) + (INPUT_TERM, STATISTICS_TERM, WEIGHTS_TERM)

    @property
    def interval_variables(self) -> list:
        """The interval trackers' sums and counts: training state a checkpoint must keep (Keras
        does not list metric variables among the model's variables)."""
        return [v for tracker in self._interval_trackers.values() for v in tracker.variables]

    def interval_means(self, reset: bool = True) -> Dict[str, float]:
        """Mean of every logged term over the finite steps since the last call (a term without any
        finite step since then is left out); ``reset`` starts the next interval."""
        values = {name: float(tracker.result()) for name, tracker in self._interval_trackers.items()
                  if float(tracker.count.numpy()) > 0}
        if reset:
            for tracker in self._interval_trackers.values():
                tracker.reset_state()
        return values

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

    def depth_branch(self) -> DepthBranch:
        """The layers inference runs (encoder, depth decoder) as one layer: see :class:`DepthBranch`."""
        return DepthBranch(self.encoder, self.depth_decoder, name="depth_branch")

    def predict_depth(self, images, training=False) -> Tuple[tf.Tensor, tf.Tensor]:
        """Depth at the input resolution, the references' evaluation recipe.

        σ_0 (H/2) -> bilinear resize to H x W -> scaled disparity -> depth (docs/method.md §7 / pitfall 20).

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
        """T_{0->s} [B, 4, 4] for each source from the (augmented) frames, docs/method.md §2.5.

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
            # Upsample the disparity (not depth) to full resolution, then convert (docs/method.md §4).
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
        """One optimiser step; returns the running mean of every logged term and ``nonfinite_terms``
        (bit set over :attr:`checked_terms`).

        Distribution: each replica's loss is divided by the number of replicas R, so that the sum of
        the replicas' gradients is the gradient of the global batch, G. The sum is taken here, not
        by the optimiser, so that ``grad_norm`` and the clipping see G rather than one replica's
        part: every replica passes G / R to an optimiser that clips at ``grad_clip_norm / R`` and
        sums the R equal parts again (see ``training.make_optimizer``). Mixed precision: the loss is
        scaled by the LossScaleOptimizer Keras wraps around the optimiser, which also skips steps
        whose scaled gradients overflow. A step with a NaN / Inf loss term, input value or BatchNorm
        statistic is never applied (on one replica). After the update every weight is checked: an
        update that made one NaN / Inf (a learning rate far too high) sets the ``weights after
        update`` bit, and the trainer stops before saving it.
        """
        strategy = tf.distribute.get_strategy()
        replicas = strategy.num_replicas_in_sync
        # BatchNorm moving statistics are updated by the forward pass itself; a non-finite batch
        # would poison them even when its update is skipped, so they are put back then. (Per-channel
        # vectors: the copy is negligible.)
        statistics = list(self.non_trainable_weights) if replicas == 1 else []
        saved = [tf.identity(v) for v in statistics]
        values, pairs = self._global_gradients(data, replicas)
        checked, bad = self._nonfinite_checks(values, data, replicas)
        finite = tf.equal(tf.reduce_sum(bad), 0.0)
        self._apply_if_finite(pairs, finite, statistics, saved, replicas)
        self._nonfinite_tracker.update_state(self._nonfinite_bits(checked, bad))
        self._update_trackers(values, finite)
        logs = {**{name: self._trackers[name].result() for name in values},
                NONFINITE_KEY: self._nonfinite_tracker.result()}
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Keras averages per-replica logs across workers with strategy.reduce("MEAN", axis=0),
            # which needs a batch axis: scalars become [1].
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def _global_gradients(self, data, replicas: int):
        """(loss terms with "grad_norm", [(gradient, variable)]): each replica's gradient of its
        loss / R, summed over the R replicas (G, the global batch's gradient), handed back as G / R;
        grad_norm is |G| without the loss scale."""
        with tf.GradientTape() as tape:
            values = self.compute_losses(data, training=True)
            scaled_loss = self.optimizer.scale_loss(values["loss"] / replicas)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
        if replicas > 1:
            summed = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, [g for g, _ in pairs])
            pairs = [(g / replicas, v) for g, (_, v) in zip(summed, pairs)]
        loss_scale = self.optimizer.scale_loss(tf.constant(1.0))
        values["grad_norm"] = (tf.linalg.global_norm([g for g, _ in pairs])
                               * tf.cast(replicas, tf.float32) / tf.cast(loss_scale, tf.float32))
        return values, pairs

    def _nonfinite_checks(self, values: dict, data, replicas: int):
        """(checked term names, [len] float 1 where that term is NaN / Inf on any replica): the
        logged terms (gradients too unless the loss scaler handles them), the BatchNorm statistics
        the forward pass wrote, the input batch."""
        checked = [name for name in self.logged_terms if name in values
                   and not (name == "grad_norm" and isinstance(
                       self.optimizer, keras.optimizers.LossScaleOptimizer))]
        checks_ = [tf.reduce_all(tf.math.is_finite(values[name])) for name in checked]
        # The moving statistics this forward pass wrote: a huge activation overflows them (inf
        # variance) while the batch-normalised loss stays finite, and inference would then be NaN.
        checks_.append(all_finite(self.non_trainable_weights))
        inputs = [tf.reduce_all(tf.math.is_finite(x)) for x in tf.nest.flatten(data)
                  if x.dtype.is_floating]
        checks_.append(tf.reduce_all(tf.stack(inputs)) if inputs else tf.constant(True))
        checked = checked + [STATISTICS_TERM, INPUT_TERM]
        bad = tf.stack([tf.cast(tf.logical_not(ok), tf.float32) for ok in checks_])
        if replicas > 1:
            bad = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, bad)
        return checked, bad

    def _apply_if_finite(self, pairs, finite, statistics, saved, replicas: int) -> None:
        """The optimiser update where every check passed; else the BatchNorm statistics put back."""
        if replicas == 1:
            tf.cond(finite, lambda: self._apply(pairs),
                    lambda: self._restore(statistics, saved))
        else:
            # A cond around the optimiser's cross-replica merge is not allowed under tf.distribute,
            # so with several replicas the step is applied and the trainer stops before any
            # checkpoint (the trainer refuses skip_nonfinite there).
            self.optimizer.apply_gradients(pairs)

    def _nonfinite_bits(self, checked, bad) -> tf.Tensor:
        """The ``nonfinite_terms`` bit set over :attr:`checked_terms`, with the weights checked after
        the (possibly skipped) update; mirrored variables are equal on every replica."""
        terms = self.checked_terms
        # The optimiser's moments need no per-step check (it would triple the cost, ~3.6 % of a demo
        # step on CPU): a finite grad_norm bounds every squared gradient they accumulate, and the
        # loss scaler skips non-finite gradients itself. save_checkpoint checks everything again.
        weights_ok = all_finite(self.trainable_variables)
        bits = tf.reduce_sum(tf.cast(bad > 0, tf.float32) * tf.constant(
            [float(2 ** terms.index(name)) for name in checked]))
        bits += tf.where(weights_ok, 0.0, float(2 ** terms.index(WEIGHTS_TERM)))
        return bits

    def _update_trackers(self, values: dict, finite) -> None:
        """Running and interval means of every term, leaving out a skipped step and non-finite
        values: they would poison the means for the rest of the epoch (also the overflowing gradient
        norm of a step the loss scaler skips)."""
        for name, value in values.items():
            keep = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(value)))
            for trackers in (self._trackers, self._interval_trackers):
                trackers[name].update_state(tf.where(keep, value, 0.0),
                                            sample_weight=tf.cast(keep, tf.float32))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' version first reduces one distributed batch with strategy.reduce, which
        # MultiWorkerMirroredStrategy cannot do for dict batches (ValueError before the first step);
        # it only serves to create variables, and build_for_size + optimizer.build do that.
        # Without a strategy Keras would create the optimiser's slots inside the first traced step:
        # tf.function then traces the step twice and wraps every slot's initialiser in a cond
        # (~340 for the ResNet-18 baseline), doubling the first step (43 -> 23 s at 64x128).
        if self.built and self.optimizer is not None:
            if not self.optimizer.built:
                with self.distribute_strategy.scope():
                    self.optimizer.build(self.trainable_variables)
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
