"""The baseline model's configuration: :class:`DepthModelConfig` (TripleDNet's extends it).

Each field is declared with :func:`~tripled_tf.options.option`: the trainer's flag of the same
name takes its default, help text and choices from it.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from tripled_tf import geometry
from tripled_tf.options import option
from tripled_tf.models.resnet import RESNET_SPECS

DEPTH_DECODERS = ("featdepth", "monodepth2")
RESNET_DEPTHS = tuple(sorted(RESNET_SPECS))  # 10, 18, 34, 50, 101


@dataclasses.dataclass
class DepthModelConfig:
    """Hyper-parameters of the baseline model and its loss (defaults: docs/method.md main config)."""
    depth_layers: int = option(18, "ResNet depth encoder depth.", choices=RESNET_DEPTHS)
    pose_layers: int = option(18, "ResNet pose encoder depth.", choices=RESNET_DEPTHS)
    # The references resize pose inputs to a hard-coded 192x640; None feeds frames at training size.
    # The flags --pose_height --pose_width.
    pose_input_size: Optional[Tuple[int, int]] = option((192, 640), "Pose-net input (height, width).",
                                                        flag=False)
    num_scales: int = option(4, "Disparity scales in the loss.")
    min_depth: float = option(0.1, "Depth at disparity 1 (metres).")
    max_depth: float = option(100.0, "Depth at disparity 0 (metres).")
    ssim_weight: float = option(0.85, "SSIM weight in the photometric error.")
    smoothness_weight: float = option(1e-3, "Edge-aware smoothness weight.")
    automask: bool = option(True, "Identity auto-masking in the minimum reprojection.")
    identity_noise: float = option(1e-5, "Noise added to the identity reprojection errors (breaks "
                                   "ties in the minimum, as Monodepth2).")
    sampling: str = option("exact", "Warp sampling: exact pixel centres, or the references' "
                           "half-pixel-biased grid_sample.", choices=geometry.SAMPLING_MODES)
    # "featdepth" (docs/method.md 2.3, sigma_0 at H/2) or "monodepth2" (Monodepth2's U-Net, sigma_0 at H).
    depth_decoder: str = option("featdepth", "Depth decoder of the baseline: FeatDepth's (docs/method.md "
                                "2.3, TripleDNet's) or Monodepth2's U-Net.", choices=DEPTH_DECODERS)
    # On the decoder's level-4/5 inputs; None = the decoder's reference value (FeatDepth 0.5,
    # Monodepth2 none).
    dropout: Optional[float] = option(None, "Dropout on the depth decoder's level-4/5 inputs "
                                      "(default: the decoder's reference value, 0.5 for FeatDepth's, "
                                      "none for Monodepth2's).")

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

    @property
    def needs_erase_mask(self) -> bool:
        """Whether training batches must carry "erase_mask" (TripleDNet's inpainting parts; never
        the baseline)."""
        return False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "DepthModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
