"""TripleDNet: the disentangled, distilled depth network and its combined loss (docs/method.md §1, §2, §3).

``TripleDNet`` extends the baseline :class:`MonoDepthModel` with
  * a channel split of the shared depth encoder's features (:class:`FeatureSplit`): the depth decoder
    reads the geometry part, the appearance decoder the appearance part (§2.2);
  * the appearance decoder with the depth decoder's disparities added at every stride (§2.4): its
    reconstruction loss L_pr back-propagates into the depth decoder through those additions;
  * FeatDepth's jointly trained feature extractor: feature-metric loss, discriminative/convergent
    regulariser, and the masked reconstruction of its decoder (§2.6, §3.2, §3.4, §3.5);
  * optionally a tiny pretext head on σ_0 (D2G, DG2C, D2C and their masked variants, §2.7, §3.7).

With ``use_appearance=False, use_extractor=False, pretext_task="none"`` and no level split, the model
and its loss are exactly the baseline's. At inference only encoder -> split -> depth decoder runs.

Training batches (``tripled_tf.data.pipeline``): "target", "source_prev", "source_next" [B, H, W, 3]
un-augmented frames in [0, 1]; optional "*_aug" jittered copies the networks see; "K" [B, 4, 4] pixels;
"erase_mask" [B, H, W, 1] (1 = keep, 0 = hole), needed when the extractor or a masked head is on.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from tripled_tf import checks, color, geometry, losses
from tripled_tf.models.appearance_decoder import AppearanceDecoder
from tripled_tf.options import option
from tripled_tf.models.depth_branch import DepthBranch
from tripled_tf.models.depth_model import (SOURCE_KEYS, DepthModelConfig, MonoDepthModel,
                                          _batch_tensor)
from tripled_tf.models.model_config import RESNET_DEPTHS
from tripled_tf.models.disentangle import (ATTENTIONS, COLOR_SPLITS, DEPTH_SPLITS,
                                           MAIN_DISENTANGLE_LEVELS, FeatureSplit)
from tripled_tf.models.extractor import ExtractorDecoder, FeatureExtractor
from tripled_tf.models.pretext_heads import (PRETEXT_TASKS, PretextHead, pretext_head_spec,
                                             pretext_inputs)

PRETEXT_TASK_CHOICES = ("none",) + PRETEXT_TASKS


def _bools(values, count: int, name: str) -> Tuple[bool, ...]:
    flags = tuple(bool(v) for v in values)
    if len(flags) != count:
        raise ValueError(f"{name} must have {count} booleans, got {list(values)}")
    return flags


@dataclasses.dataclass
class TripleDConfig(DepthModelConfig):
    """Switches and loss weights of TripleDNet (defaults: the main model, docs/method.md §1.1, §1.2, §3.8).

    Architecture: depth_layers (ResNet depth), disentangle_levels (5 flags, levels 1..5),
    depth_split ("first_half" | "conv1x1"), color_split ("second_half" | "conv1x1"), attention
    ("none" | "ca" | "pa", before the split), use_appearance (appearance decoder + L_pr),
    skip_multiplier (factor on the disparities added into it), color_encoder_skips (4 flags),
    use_extractor (feature extractor: L_fm, regulariser, reconstruction), extractor_layers,
    extractor_input_masked (extractor sees I·m), pretext_task ("none" | "d2g" | "dg2c" | "d2c"),
    head_mask (M-variants), head_use_normals, use_lab_gray (D2G target L/100, else BT.601 luma).
    Weights (dimensionless): auto_res_weight (L_pr), perception_weight (L_fm), dis_weight /
    cvt_weight (regulariser first / second order), reconstruct_weight (extractor reconstruction),
    head_weight (pretext head); smoothness_weight is inherited.
    """
    depth_layers: int = option(50, "ResNet depth encoder depth.", choices=RESNET_DEPTHS)
    disentangle_levels: Tuple[bool, ...] = option(MAIN_DISENTANGLE_LEVELS, "Encoder levels 1..5 whose "
                                                  "channels are split into geometry / appearance "
                                                  "(1 = split).")
    depth_split: str = option("first_half", "Geometry part of a split level.", choices=DEPTH_SPLITS)
    color_split: str = option("second_half", "Appearance part.", choices=COLOR_SPLITS)
    attention: str = option("none", "Attention before the split.", choices=ATTENTIONS)
    use_appearance: bool = option(True, "Appearance decoder with distillation skips (L_pr).")
    skip_multiplier: float = option(1.0, "Factor on the disparities added into the appearance "
                                    "decoder.")
    color_encoder_skips: Tuple[bool, ...] = option((False, False, False, False), "Encoder skips into "
                                                   "the appearance decoder.")
    use_extractor: bool = option(True, "Feature extractor: feature-metric loss, regulariser, masked "
                                 "reconstruction.")
    extractor_layers: int = option(50, "Feature-extractor ResNet depth.", choices=RESNET_DEPTHS)
    extractor_input_masked: bool = option(False, "The extractor sees the erased image I·m.")
    pretext_task: str = option("none", "Pretext head on σ_0: disparity -> gray, disparity + gray -> "
                               "colour, disparity -> colour.", choices=PRETEXT_TASK_CHOICES)
    head_mask: bool = option(False, "Masked head variants (MD2C, MDG2C): erased input, loss on holes.")
    head_use_normals: bool = option(False, "Surface normals as extra head input.")
    use_lab_gray: bool = option(True, "D2G target: Lab lightness (else BT.601 luma).")
    auto_res_weight: float = option(5e-3, "Weight of the appearance reconstruction L_pr.")
    perception_weight: float = option(1e-3, "Weight of the feature-metric loss L_fm.")
    dis_weight: float = option(1e-3, "Feature regulariser, first-order (discriminative) weight.")
    cvt_weight: float = option(1e-3, "Feature regulariser, second-order (convergent) weight.")
    reconstruct_weight: float = option(1.0, "Weight of the extractor's masked reconstruction.")
    head_weight: float = option(5e-3, "Weight of the pretext head loss.")

    @property
    def needs_erase_mask(self) -> bool:
        """Whether training batches must carry "erase_mask": the extractor's inpainting or a masked
        pretext head uses it."""
        return self.use_extractor or (self.pretext_task != "none" and self.head_mask)

    def __post_init__(self):
        super().__post_init__()
        if self.depth_decoder != "featdepth":
            raise ValueError("TripleDNet uses FeatDepth's depth decoder (its appearance decoder and "
                             f"pretext heads are sized for it); got depth_decoder={self.depth_decoder!r}")
        self.disentangle_levels = _bools(self.disentangle_levels, 5, "disentangle_levels")
        self.color_encoder_skips = _bools(self.color_encoder_skips, 4, "color_encoder_skips")
        if self.depth_split not in DEPTH_SPLITS:
            raise ValueError(f"depth_split must be one of {DEPTH_SPLITS}, got {self.depth_split!r}")
        if self.color_split not in COLOR_SPLITS:
            raise ValueError(f"color_split must be one of {COLOR_SPLITS}, got {self.color_split!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.pretext_task not in PRETEXT_TASK_CHOICES:
            raise ValueError(f"pretext_task must be one of {PRETEXT_TASK_CHOICES}, got "
                             f"{self.pretext_task!r}")
        if self.num_scales != 4 and self.use_appearance:
            raise ValueError("use_appearance needs all 4 disparity scales (num_scales=4), got "
                             f"num_scales={self.num_scales}")


class TripleDNet(MonoDepthModel):
    """Disentangled + distilled depth network trained with the combined loss of docs/method.md §3.8.

    ``call(images)``: images [B, H, W, 3] in [0, 1] (H, W multiples of 32) -> disparities
    [σ_0 (H/2), σ_1 (H/4), σ_2 (H/8), σ_3 (H/16)], each [B, h, w, 1] sigmoid, through encoder ->
    feature split -> depth decoder only. :meth:`compute_losses` adds the training-only branches.

    Args:
      config: :class:`TripleDConfig` or a dict of its fields (None: the main model's defaults).
      name etc.: as for ``keras.Model``.

    Sub-networks: ``encoder``, ``feature_split``, ``depth_decoder``, ``pose_net`` and, where switched
    on, ``appearance_decoder``, ``extractor`` + ``extractor_decoder``, ``pretext_head``.
    """

    logged_terms = ("loss", "photometric", "smoothness", "reconstruction", "feature_metric",
                    "feature_regularization", "appearance", "pretext", "automask_fraction",
                    "grad_norm")

    def __init__(self, config: Optional[TripleDConfig] = None, **kwargs):
        if not isinstance(config, TripleDConfig):
            config = TripleDConfig.from_dict(
                dataclasses.asdict(config) if isinstance(config, DepthModelConfig) else (config or {}))
        super().__init__(config, **kwargs)
        cfg = self.config
        self.feature_split = FeatureSplit(cfg.disentangle_levels, depth_split=cfg.depth_split,
                                          color_split=cfg.color_split, attention=cfg.attention,
                                          name="feature_split")
        self.appearance_decoder = None
        if cfg.use_appearance:
            self.appearance_decoder = AppearanceDecoder(cfg.color_encoder_skips,
                                                        skip_multiplier=cfg.skip_multiplier,
                                                        name="appearance_decoder")
        self.extractor = self.extractor_decoder = None
        if cfg.use_extractor:
            self.extractor = FeatureExtractor(num_layers=cfg.extractor_layers, name="extractor")
            self.extractor_decoder = ExtractorDecoder(name="extractor_decoder")
        self.pretext_head = None
        if cfg.pretext_task != "none":
            _, c_out, residual = pretext_head_spec(cfg.pretext_task, cfg.head_use_normals)
            self.pretext_head = PretextHead(c_out, residual=residual, name="pretext_head")

    def _depth_decoder_channels(self) -> List[int]:
        # Split levels reach the depth decoder with half their channels (slice or 1x1 projection).
        return [c // 2 if flag else c
                for c, flag in zip(self.encoder.num_ch_enc, self.config.disentangle_levels)]

    # ----------------------------------------------------------------------------------- inference
    def _forward(self, images, training=None):
        """(depth features, appearance features, disparities [σ_0 .. σ_3]) of images [B, H, W, 3]."""
        images = checks.as_images(images, "images", channels=3)
        features = self.encoder(images, training=training)
        depth_features, appearance_features = self.feature_split(features, training=training)
        disparities = [tf.cast(d, tf.float32)
                       for d in self.depth_decoder(depth_features, training=training)]
        return depth_features, appearance_features, disparities

    def call(self, images, training=None) -> List[tf.Tensor]:
        return self._forward(images, training=training)[2]

    def depth_branch(self) -> DepthBranch:
        """Encoder -> feature split (depth part) -> depth decoder as one layer (:class:`DepthBranch`)."""
        return DepthBranch(self.encoder, self.depth_decoder, feature_split=self.feature_split,
                           name="depth_branch")

    # ---------------------------------------------------------------------------------------- loss
    def _erase_mask(self, batch: dict, target: tf.Tensor) -> tf.Tensor:
        mask = checks.as_images(_batch_tensor(batch, "erase_mask"), "erase_mask")
        if mask.shape[-1] not in (None, 1, 3):
            raise ValueError(f"erase_mask: expected [B, H, W, 1] (1 = keep, 0 = hole), got shape "
                             f"{list(mask.shape)}")
        checks.same_spatial_size(target, mask, "target", "erase_mask")
        return mask[..., :1]

    def compute_losses(self, batch: dict, training=None) -> Dict[str, tf.Tensor]:
        """All loss terms for one batch (docs/method.md §3.8); ``"loss"`` is their weighted total.

        Returns a dict of scalars (each already averaged as §3 says, unweighted unless noted):
          photometric = Σ_s L_ph,s / 4; smoothness = Σ_s S_s / 2^s / 4 (× smoothness_weight);
          reconstruction = Σ_s R_s / 4 (× reconstruct_weight); feature_metric = L_fm
          (× perception_weight); feature_regularization = Σ_i (−dis_weight·S1_i + cvt_weight·S2_i)
          / (5·2^i) (already weighted, × 1); appearance = L_pr (× auto_res_weight); pretext = head
          loss (× head_weight); automask_fraction (diagnostic, not in the loss). Disabled terms are 0.
        """
        cfg = self.config
        target = checks.as_images(_batch_tensor(batch, "target"), "target", channels=3)
        mask = None
        if cfg.needs_erase_mask:
            mask = self._erase_mask(batch, target)

        _, appearance_features, disparities = self._forward(batch.get("target_aug", target),
                                                            training=training)
        poses = self.predict_poses(batch, training=training)
        values = self._reprojection_losses(batch, disparities, poses)
        zero = tf.constant(0.0)
        values.update(reconstruction=zero, feature_metric=zero, feature_regularization=zero,
                      appearance=zero, pretext=zero)

        if cfg.use_appearance:
            reconstruction = self.appearance_decoder(appearance_features, disparities,
                                                     training=training)[0]
            # Compared with the un-augmented frame although decoded from the augmented one (§3.6).
            values["appearance"] = tf.reduce_mean(losses.charbonnier(reconstruction, target))

        if cfg.use_extractor:
            values.update(self._extractor_losses(batch, target, mask, disparities[0], poses,
                                                 training))

        if cfg.pretext_task != "none":
            values["pretext"] = self._pretext_loss(target, mask, disparities[0], training)

        values["loss"] = (values["loss"]
                          + cfg.reconstruct_weight * values["reconstruction"]
                          + cfg.perception_weight * values["feature_metric"]
                          + values["feature_regularization"]
                          + cfg.auto_res_weight * values["appearance"]
                          + cfg.head_weight * values["pretext"])
        return values

    def _extractor_losses(self, batch, target, mask, sigma_0, poses, training):
        """Feature-metric (§3.2), regulariser (§3.4) and masked reconstruction (§3.5) terms."""
        cfg = self.config
        extractor_input = (lambda image: image * mask) if cfg.extractor_input_masked else (
            lambda image: image)
        target_features = [tf.cast(f, tf.float32)
                           for f in self.extractor(extractor_input(target), training=training)]

        reconstruction = 0.0
        reconstructions = self.extractor_decoder(target_features, training=training)
        for res in reconstructions:
            res = tf.cast(res, tf.float32)
            size = tf.shape(res)[1:3]
            target_s = geometry.resize_bilinear(target, size)
            # Fractional weights at hole borders after resizing, as the reference does.
            holes_s = 1.0 - geometry.resize_bilinear(mask, size)
            error = losses.photometric_error(res, target_s, cfg.ssim_weight)
            reconstruction += losses.masked_mean(error, holes_s) / len(reconstructions)

        regularization = 0.0
        for level, feature in enumerate(target_features):
            first_order, second_order = losses.feature_regularization_loss(feature, target)
            regularization += ((-cfg.dis_weight * first_order + cfg.cvt_weight * second_order)
                               / (5 * 2 ** level))

        # Feature-metric at level 1 (H/2): σ_0 is already at that size, K is halved to match.
        K_half = geometry.scale_intrinsics(checks.as_matrices(_batch_tensor(batch, "K"), "K"),
                                           0.5, 0.5)
        inv_K_half = tf.linalg.inv(K_half)
        _, depth_half = geometry.disp_to_depth(sigma_0, cfg.min_depth, cfg.max_depth)
        warped = []
        for key in SOURCE_KEYS:
            source = checks.as_images(_batch_tensor(batch, key), key, channels=3)
            # Only level 1 of a source is compared: the rest of the extractor would be computed for
            # nothing (same loss and gradients; the deeper BN statistics are never used in training mode).
            source_level1 = tf.cast(self.extractor(extractor_input(source), training=training,
                                                   num_levels=1)[0], tf.float32)
            warped.append(geometry.warp(source_level1, depth_half, poses[key], K_half, inv_K_half,
                                        cfg.sampling))
        feature_metric = losses.feature_metric_loss(target_features[0], warped)
        return {"reconstruction": reconstruction, "feature_metric": feature_metric,
                "feature_regularization": regularization}

    def _pretext_loss(self, target, mask, sigma_0, training):
        """Pretext head loss (§2.7, §3.7): mean ρ̄, or ρ̄ averaged over the holes with head_mask."""
        cfg = self.config
        task = cfg.pretext_task
        disparity_full = geometry.resize_bilinear(sigma_0, tf.shape(target)[1:3])
        l_norm, ab_norm = color.normalize_lab(color.rgb_to_lab(target))
        head_input = pretext_inputs(task, disparity_full, l_norm, mask if cfg.head_mask else None,
                                    cfg.head_use_normals, cfg.min_depth, cfg.max_depth)
        prediction = tf.cast(self.pretext_head(head_input, training=training), tf.float32)
        if task == "d2g":
            head_target = color.lab_lightness(target) if cfg.use_lab_gray else color.rgb_to_gray(target)
        else:
            head_target = ab_norm
        error = tf.reduce_mean(losses.charbonnier(prediction, head_target), axis=-1, keepdims=True)
        if cfg.head_mask:
            return losses.masked_mean(error, 1.0 - mask)
        return tf.reduce_mean(error)

    def summary_images(self, batch: dict) -> Dict[str, np.ndarray]:
        """The baseline's images plus "reconstruction" (appearance decoder Â_0 at H/2) and "pretext"
        (the head's prediction as an image: gray for D2G, its ab with the frame's L for colour tasks)."""
        images = super().summary_images(batch)
        cfg = self.config
        target = tf.constant(images["input"])
        _, appearance_features, disparities = self._forward(target, training=False)
        if cfg.use_appearance:
            reconstruction = self.appearance_decoder(appearance_features, disparities,
                                                     training=False)[0]
            images["reconstruction"] = tf.clip_by_value(reconstruction, 0.0, 1.0).numpy()
        if cfg.pretext_task != "none":
            mask = None
            if cfg.head_mask:
                mask = self._erase_mask(batch, target)
            disparity_full = geometry.resize_bilinear(disparities[0], tf.shape(target)[1:3])
            l_norm, _ = color.normalize_lab(color.rgb_to_lab(target))
            head_input = pretext_inputs(cfg.pretext_task, disparity_full, l_norm, mask,
                                        cfg.head_use_normals, cfg.min_depth, cfg.max_depth)
            prediction = tf.cast(self.pretext_head(head_input, training=False), tf.float32)
            if cfg.pretext_task == "d2g":
                gray = tf.clip_by_value(prediction, 0.0, 1.0)
                images["pretext"] = tf.repeat(gray, 3, axis=-1).numpy()
            else:
                rgb = color.lab_to_rgb(color.denormalize_lab(l_norm, prediction))
                images["pretext"] = tf.clip_by_value(rgb, 0.0, 1.0).numpy()
        return images

    # ------------------------------------------------------------------------------- keras hooks
    def build_for_size(self, height: int, width: int) -> None:
        """Creates every variable of every sub-network by running it once on a dummy batch."""
        cfg = self.config
        dummy = tf.zeros([1, height, width, 3])
        _, appearance_features, disparities = self._forward(dummy, training=False)
        self.pose_net((dummy, dummy), training=False)
        if self.appearance_decoder is not None:
            self.appearance_decoder(appearance_features, disparities, training=False)
        if self.extractor is not None:
            self.extractor_decoder(self.extractor(dummy, training=False), training=False)
        if self.pretext_head is not None:
            c_in = pretext_head_spec(cfg.pretext_task, cfg.head_use_normals)[0]
            self.pretext_head(tf.zeros([1, height, width, c_in]), training=False)
        self.built = True

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(TripleDConfig.from_dict(config.pop("config", {})), **config)
