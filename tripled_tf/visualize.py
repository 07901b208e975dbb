"""Colour depth maps and training previews (numpy + OpenCV, no TensorFlow)."""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

from tripled_tf.atomic_files import atomic_write_bytes


def colorize_disparity(disp: np.ndarray, vmax: Optional[float] = None,
                       percentile: float = 95.0) -> np.ndarray:
    """Magma colour map of a disparity (inverse-depth) map, Monodepth2's display convention.

    Args:
      disp: [H, W] (or [H, W, 1]) non-negative disparity, any scale.
      vmax: value mapped to the brightest colour; default the ``percentile`` of the finite values
        (robust to a few near-range outliers).
    Returns:
      [H, W, 3] uint8 RGB.
    """
    disp = np.asarray(disp, np.float32)
    if disp.ndim == 3 and disp.shape[-1] == 1:
        disp = disp[..., 0]
    if disp.ndim != 2:
        raise ValueError(f"disp: expected [H, W] or [H, W, 1], got shape {list(disp.shape)}")
    finite = disp[np.isfinite(disp)]
    if vmax is None:
        vmax = float(np.percentile(finite, percentile)) if finite.size else 1.0
    vmin = float(finite.min()) if finite.size else 0.0
    scaled = np.clip((np.nan_to_num(disp, nan=vmin) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def colorize_depth(depth: np.ndarray, vmax: Optional[float] = None) -> np.ndarray:
    """Colour map of depth [H, W] metres through its inverse (near = bright); 0/invalid -> black."""
    depth = np.asarray(depth, np.float32)
    with np.errstate(divide="ignore"):
        disp = np.where(depth > 0, 1.0 / np.maximum(depth, 1e-6), np.nan)
    rgb = colorize_disparity(disp, vmax)
    rgb[~np.isfinite(disp.reshape(rgb.shape[:2]))] = 0
    return rgb


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] float image in [0, 1] -> uint8 RGB."""
    return (np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def preview_grid(images: Sequence[np.ndarray], pred_depths: Sequence[np.ndarray],
                 gt_depths: Optional[Sequence[np.ndarray]] = None) -> np.ndarray:
    """One row per sample: input | predicted depth (coloured) [| ground-truth depth (coloured)].

    Predicted and GT depth of a row share the colour scale of the GT when it is given, so the two are
    comparable at a glance (predictions are median-scaled to the GT first).
    """
    rows = []
    for i, (image, pred) in enumerate(zip(images, pred_depths)):
        pred = np.squeeze(np.asarray(pred, np.float32))
        tiles = [to_uint8(image)]
        if gt_depths is not None:
            gt = np.squeeze(np.asarray(gt_depths[i], np.float32))
            valid = gt > 0
            pred = pred * (np.median(gt[valid]) / np.median(pred[valid]) if valid.any() else 1.0)
            vmax = float(np.percentile(1.0 / gt[valid], 95.0)) if valid.any() else None
            tiles += [colorize_depth(pred, vmax), colorize_depth(gt, vmax)]
        else:
            tiles.append(colorize_depth(pred))
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def write_png(path, rgb: np.ndarray) -> str:
    """Writes an RGB uint8 image atomically (a reader never sees a half-written file)."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise IOError(f"could not encode PNG for {path}")
    return atomic_write_bytes(path, encoded.tobytes())
