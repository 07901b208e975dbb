"""``tripled_tf.load(path)``: a depth model in one line, whatever its format.

    >>> import numpy as np, tripled_tf
    >>> model = tripled_tf.load("runs/md2_mono_640x192")         # doctest: +SKIP
    >>> depth = model.predict("street.jpg")                       # doctest: +SKIP
    >>> depth.shape, depth.dtype                                  # doctest: +SKIP
    ((375, 1242), dtype('float32'))

``path``: a training run folder, a folder written by ``python -m tripled_tf.convert`` (the same
thing), an exported SavedModel folder or a .tflite file (``python -m tripled_tf.export``). The frames
go through exactly what ``python -m tripled_tf.predict`` does to them (:func:`tripled_tf.inference.
predict_frames`), so the arrays equal predict's ``<stem>_depth.npy`` /
``<stem>_sigmoid.npy``.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from tripled_tf import inference
from tripled_tf import frame_sources, ground_plane

ImageLike = Union[np.ndarray, str, os.PathLike]


def _as_rgb(image: ImageLike) -> np.ndarray:
    """A uint8 RGB [H, W, 3] array: given as such, or decoded from an image file."""
    if isinstance(image, (str, os.PathLike)):
        import cv2

        bgr = frame_sources.read_frame(image)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected a uint8 RGB array [H, W, 3] or an image path, got "
                         f"{image.dtype} {list(image.shape)}")
    return image


class DepthEstimator:
    """A loaded depth model (see :func:`load`).

    Attributes:
      input_size: (height, width) frames are resized to for the network.
      min_depth, max_depth: the depth range of the network's units.
      format: "run_folder", "saved_model" or "tflite".
      description: what was loaded.
    """

    def __init__(self, depth_fn: inference.DepthFunction):
        self.depth_fn = depth_fn
        self.input_size: Tuple[int, int] = tuple(depth_fn.input_size)
        self.min_depth = depth_fn.min_depth
        self.max_depth = depth_fn.max_depth
        self.format = depth_fn.format
        self.description = depth_fn.description

    def __repr__(self):
        return (f"DepthEstimator({self.description}, input {self.input_size[0]}x"
                f"{self.input_size[1]}, depth {self.min_depth:g}..{self.max_depth:g})")

    def _maps(self, images: Sequence[ImageLike]) -> List[Tuple[np.ndarray, np.ndarray]]:
        return inference.predict_frames(self.depth_fn, [_as_rgb(image) for image in images])

    def _metric(self, depth: np.ndarray, camera_height: Optional[float], intrinsics) -> np.ndarray:
        if camera_height is None:
            return depth
        if not (np.isfinite(camera_height) and camera_height > 0):
            raise ValueError(f"camera_height must be a positive number of metres, got "
                             f"{camera_height}")
        if intrinsics is None:
            resolved = frame_sources.Intrinsics()
        elif isinstance(intrinsics, frame_sources.Intrinsics):
            resolved = intrinsics
        else:
            fx, fy, cx, cy = (float(v) for v in intrinsics)
            resolved = frame_sources.resolve_intrinsics(fx, fy, cx, cy)
        height, width = depth.shape
        plane = ground_plane.scale_from_camera_height(depth, resolved.matrix(width, height),
                                                     camera_height)
        return (depth * np.float32(plane.scale)).astype(np.float32)

    def predict(self, image: ImageLike, camera_height: Optional[float] = None,
                intrinsics=None) -> np.ndarray:
        """Depth of one image at its own size.

        Args:
          image: uint8 RGB ``[H, W, 3]`` of any size, or an image file path.
          camera_height: metres above a flat ground filling the bottom third of the image: metric
            depth, as ``predict --camera_height`` (see :func:`tripled_tf.ground_plane.
            scale_from_camera_height` for the assumption); None = the network's relative units.
          intrinsics: for camera_height: (fx, fy, cx, cy) in pixels of this image, or a
            :class:`tripled_tf.frame_sources.Intrinsics`; None = the KITTI-like stand-in predict uses.
        Returns:
          ``[H, W]`` float32 depth.
        Raises:
          ValueError (BadInputError for an unreadable file, GroundPlaneError when no ground plane).
        """
        _, depth = self._maps([image])[0]
        return self._metric(depth, camera_height, intrinsics)

    def predict_batch(self, images: Sequence[ImageLike], camera_height: Optional[float] = None,
                      intrinsics=None) -> np.ndarray:
        """Depth of several images of one size in one forward pass: ``[N, H, W]`` float32 (each
        image scaled on its own with ``camera_height``, as predict does per frame)."""
        maps = self._maps(images)
        sizes = {depth.shape for _, depth in maps}
        if len(sizes) > 1:
            raise ValueError(f"predict_batch: images of different sizes {sorted(sizes)}; call "
                             f"predict() per image")
        if not maps:
            return np.zeros((0, 0, 0), np.float32)
        return np.stack([self._metric(depth, camera_height, intrinsics) for _, depth in maps])

    def predict_sigmoid(self, image: ImageLike) -> np.ndarray:
        """The network's sigmoid output σ in [0, 1] at the image's size, ``[H, W]`` float32
        (predict's ``<stem>_sigmoid.npy``)."""
        return self._maps([image])[0][0]


def load(path, batch_size: int = 8) -> DepthEstimator:
    """Loads a depth model from a run folder, a converted folder, a SavedModel or a .tflite file.

    Example (runnable: a baseline with random weights saved as a 64x64 run folder)::

        import numpy as np, tripled_tf
        from tripled_tf.models.depth_model import DepthModelConfig, MonoDepthModel
        from tripled_tf.convert import save_run_folder

        model = MonoDepthModel(DepthModelConfig(depth_decoder="monodepth2"))
        model.build_for_size(64, 64)
        save_run_folder(model, "/tmp/tiny_run", 64, 64, {"format": "random"}, overwrite=True)

        estimator = tripled_tf.load("/tmp/tiny_run")
        image = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
        depth = estimator.predict(image)                        # [120, 200] float32
        depths = estimator.predict_batch([image, image])        # [2, 120, 200]
        # Metric depth from the camera height (a photo with a flat road in its bottom third):
        # metres = estimator.predict("street.jpg", camera_height=1.65)

    Args:
      path: see the module docstring, or a published model's name ("monodepth2:mono_640x192", ...:
        :data:`tripled_tf.presets.PRESETS`), downloaded, checked and converted on first use.
      batch_size: frames per forward pass (run folders, SavedModels).
    Raises:
      BadInputError (a ValueError) naming the path: missing, not a model, or weights that do not load.
    """
    from tripled_tf import presets

    if presets.is_preset_name(path):
        path = presets.fetch(os.fspath(path))
    return DepthEstimator(inference.load_depth_fn(path, batch_size=batch_size))
