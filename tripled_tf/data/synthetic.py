"""Built-in synthetic driving scene with exact ground truth (depth, ego-motion, intrinsics).

A seeded procedural street is ray cast in vectorised numpy. It is the default data of the demo
training, of the tests and of the evaluation checks, so it is built to be *learnable by photometric
self-supervision*: the world is static, every surface is Lambertian (colour = albedo x constant
per-face shading, no specular or view-dependent term), and every albedo is a function of WORLD
coordinates with rich mid-frequency texture, so the photometric constancy assumption holds.

World frame: X right, Y down, Z forward (the camera convention at yaw 0); the ground is the plane
Y = 0 and the camera rides ``camera_height`` above it (Y = -camera_height).

One scene (``SyntheticScene``) is one short drive of ``num_frames`` frames inside a closed "room":

* the floor is the ground: a gently curving road (centreline X = x_c(Z), a sum of two long sines)
  with asphalt texture, a dashed centre line, solid lines along the parking strips, kerb stones,
  tiled pavements and a grass verge beyond;
* building blocks line both sides at varied set-backs and heights (facades with window grids);
* ``num_boxes`` street objects: cars (body + cabin boxes), poles and planters, on and beside the road;
* the room's walls and ceiling are the far backdrop (a distant skyline under a cloudy sky). Because
  they are real, static geometry, every pixel has a finite, exact depth, and the end wall is placed
  so that no pixel of any trajectory frame is deeper than ``MAX_DEPTH`` = 80 m (the KITTI cap).

Everything is an axis-aligned box or a plane, so rays are intersected exactly with slab tests; the
camera centre is shared by all rays of a frame, which makes a box test a few multiplies per ray.
Depth is z-depth along the optical axis: rays are generated as K^-1 [u, v, 1] (z component 1), so the
ray parameter of the first hit *is* the depth.

Anti-aliasing: with ``supersample = n > 1`` a pixel's colour is the mean of an n x n grid of sub-pixel
rays, while its depth is that of the ray through the pixel centre (averaging depths across an
occlusion edge would invent a surface). Textures are additionally band-limited: they are read from a
mip-mapped periodic tile of multi-octave value noise at a level chosen from the pixel footprint
(like a GPU's trilinear filtering) and stripe patterns use exact box-filtered coverage. This makes a
surface point's colour depend very slightly on its distance to the camera, as in a real camera.

Public API: ``SceneConfig``, ``SyntheticScene``, ``kitti_intrinsics``, ``relative_pose``,
``make_triplets``, ``synthetic_dataset``.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import cv2
import numpy as np
import tensorflow as tf

from tripled_tf import checks, geometry

__all__ = ["MAX_DEPTH", "SPLITS", "SceneConfig", "SyntheticScene", "kitti_intrinsics",
           "relative_pose", "make_triplets", "synthetic_dataset"]

MAX_DEPTH = 80.0  # metres; the KITTI evaluation cap, no pixel of a trajectory frame is deeper
SPLITS = ("train", "val", "test")

_CAP_MARGIN = 1.0  # the backdrop is placed so that depths stay below MAX_DEPTH - this
_MIN_BACKDROP_CLEARANCE = 12.0  # metres between the last camera and the end wall
_ROOM_BACK = 25.0  # metres of street behind the first camera
_PARKING_WIDTH = 2.1  # metres: parking strip along each kerb, inside the road width
_KERB_WIDTH = 0.25

# Materials.
_BACKDROP, _SKY, _GROUND, _BUILDING, _CAR_BODY, _CAR_CABIN, _POLE, _PLANTER = range(8)
# Texel size (metres) of the noise tile per material, before SceneConfig.texture_scale.
_TEXEL = np.array([0.25, 0.6, 0.05, 0.06, 0.03, 0.03, 0.03, 0.04], np.float32)

_SUN = np.array([-0.45, -1.0, 0.55], np.float32) / np.float32(np.linalg.norm([-0.45, -1.0, 0.55]))
_AMBIENT = 0.5  # shading = ambient + (1 - ambient) * max(0, n . sun) on every lit face

_CORNER_SELECT = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], bool)
_BOX_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]

_TILE = 256  # texels per side of the periodic noise tile (a power of two, for the mip pyramid)
_MIP_LEVELS = 9
_MIP_ROW = np.cumsum([0] + [(_TILE >> k) + 2 for k in range(_MIP_LEVELS)])  # atlas row of level k
_MIP_ROW_F32 = _MIP_ROW.astype(np.float32)
_MIP_SCALE = np.array([2.0 ** -k for k in range(_MIP_LEVELS)], np.float32)
_MIP_SIZE = np.array([_TILE >> k for k in range(_MIP_LEVELS)], np.float32)


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Parameters of one synthetic drive. Lengths in metres, angles in degrees.

    Attributes:
      seed: seeds everything (layout, textures, trajectory).
      num_frames: frames in the drive (valid frame indices are 0 .. num_frames - 1).
      road_width: kerb-to-kerb width of the road: two driving lanes plus a 2.1 m parking strip
        along each kerb.
      pavement_width: width of the tiled pavement on each side.
      lane_offset: lateral offset of the ego camera to the right of the centre line.
      num_boxes: number of street objects (cars, poles, planters) placed along the drive.
      buildings: whether building blocks line the street.
      camera_height: height of the camera above the ground (KITTI: 1.65 m).
      speed: mean forward motion per frame (KITTI at ~30 km/h and 10 Hz: ~0.85 m).
      speed_variation: relative amplitude of the smooth speed changes (clipped to 0.5..1.2 m/frame).
      curviness: scales the amplitude of the road's bends (0 = straight road).
      yaw_wobble: amplitude of the camera's yaw oscillation around the road heading.
      pitch_wobble: amplitude of the camera's pitch oscillation.
      texture_scale: multiplies every texture's texel size (> 1 = coarser texture).
      backdrop_distance: nominal distance from the first camera to the far backdrop (end wall); it is
        reduced where needed to keep every depth below MAX_DEPTH.
      side_distance: lateral distance of the backdrop side walls from the road.
      sky_height: height of the sky ceiling.
      supersample: n for n x n sub-pixel rays per pixel colour (1 = none).
    """
    seed: int = 0
    num_frames: int = 24
    road_width: float = 10.0
    pavement_width: float = 3.0
    lane_offset: float = 1.7
    num_boxes: int = 24
    buildings: bool = True
    camera_height: float = 1.65
    speed: float = 0.85
    speed_variation: float = 0.2
    curviness: float = 1.0
    yaw_wobble: float = 0.6
    pitch_wobble: float = 0.3
    texture_scale: float = 1.0
    backdrop_distance: float = 75.0
    side_distance: float = 30.0
    sky_height: float = 30.0
    supersample: int = 2

    def __post_init__(self):
        positive = ("road_width", "pavement_width", "camera_height", "speed", "texture_scale",
                    "backdrop_distance", "side_distance", "sky_height")
        for name in positive:
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"SceneConfig.{name} must be a positive number, got {value!r}")
        for name in ("speed_variation", "curviness", "yaw_wobble", "pitch_wobble"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"SceneConfig.{name} must be >= 0, got {value!r}")
        if int(self.num_frames) < 1:
            raise ValueError(f"SceneConfig.num_frames must be >= 1, got {self.num_frames!r}")
        if int(self.num_boxes) < 0:
            raise ValueError(f"SceneConfig.num_boxes must be >= 0, got {self.num_boxes!r}")
        if int(self.supersample) < 1:
            raise ValueError(f"SceneConfig.supersample must be >= 1, got {self.supersample!r}")
        if self.backdrop_distance > MAX_DEPTH - _CAP_MARGIN:
            raise ValueError(f"SceneConfig.backdrop_distance must be <= {MAX_DEPTH - _CAP_MARGIN} m "
                             f"(depth cap {MAX_DEPTH} m), got {self.backdrop_distance!r}")
        if abs(self.lane_offset) > self.road_width / 2:
            raise ValueError(f"SceneConfig.lane_offset {self.lane_offset} puts the camera off the "
                             f"road (half width {self.road_width / 2})")
        if self.sky_height <= self.camera_height:
            raise ValueError("SceneConfig.sky_height must be above camera_height")


def kitti_intrinsics(height: int, width: int) -> np.ndarray:
    """KITTI's normalised intrinsics scaled to an image: fx = 0.58 W, fy = 1.92 H, cx = W/2, cy = H/2.

    Returns:
      K: [4, 4] float32 (pixels), pixel centres at integer coordinates.
    """
    height, width = _check_size(height, width)
    return geometry.kitti_intrinsics(height, width)


def _check_size(height, width) -> Tuple[int, int]:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not float(value).is_integer() or int(value) < 1:
            raise ValueError(f"{name} must be a positive integer number of pixels, got {value!r}")
    return int(height), int(width)


def _as_numpy_matrix(x, name: str, allowed: Tuple[Tuple[int, int], ...]) -> np.ndarray:
    """Validates a single (unbatched) matrix and returns it as float64 numpy."""
    checks.as_float_tensor(x, name, rank=2)  # raises on a wrong rank (e.g. a batched [1, 4, 4])
    value = np.asarray(x.numpy() if tf.is_tensor(x) else x, dtype=np.float64)
    if value.shape not in allowed:
        expected = " or ".join(str(list(s)) for s in allowed)
        raise ValueError(f"{name}: expected shape {expected}, got shape {list(value.shape)}")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"{name}: contains non-finite values")
    return value


# ------------------------------------------------------------------------------------------------
# Texture: a periodic, mip-mapped tile of multi-octave value noise.


def _noise_mips(rng: np.random.Generator) -> np.ndarray:
    """Mip pyramid of a periodic noise tile, packed into one atlas [rows, _TILE + 2, 3] float32.

    The three channels are independent multi-octave value noise (fBm, persistence 0.62, lattices of
    4..128 cells per tile), normalised to zero mean and unit variance. Level k (_TILE / 2^k texels per
    side) is the 2^k x 2^k box average of level 0, the band limit a pixel footprint of 2^k texels can
    represent. Each level sits at rows _MIP_ROW[k] + 1 .. with a one-texel periodic border, so a
    single bilinear remap over the atlas samples every level with wrap-around.
    """
    coords = (np.arange(_TILE) + 0.5) / _TILE
    tile = np.zeros((_TILE, _TILE, 3))
    for octave, lattice in enumerate((4, 8, 16, 32, 64, 128)):
        # Value noise: random values on a periodic lattice, smoothstep-interpolated (separable).
        x = coords * lattice - 0.5
        i0 = np.floor(x).astype(np.int64)
        s = x - i0
        s = (s * s * (3.0 - 2.0 * s))[:, None, None]
        i0 %= lattice
        i1 = (i0 + 1) % lattice
        values = rng.random((lattice, lattice, 3))
        rows = values[i0] * (1.0 - s) + values[i1] * s
        tile += 0.62 ** octave * (rows[:, i0] * (1.0 - s[None, :, 0]) + rows[:, i1] * s[None, :, 0])
    level = ((tile - tile.mean(axis=(0, 1))) / tile.std(axis=(0, 1))).astype(np.float32)
    atlas = np.zeros((_MIP_ROW[-1], _TILE + 2, 3), np.float32)
    for k in range(_MIP_LEVELS):
        if k:
            level = 0.25 * (level[0::2, 0::2] + level[1::2, 0::2] + level[0::2, 1::2] +
                            level[1::2, 1::2])
        size = _TILE >> k
        atlas[_MIP_ROW[k]:_MIP_ROW[k] + size + 2, :size + 2] = np.pad(level, ((1, 1), (1, 1), (0, 0)),
                                                                      mode="wrap")
    return atlas


def _sample_mips(atlas: np.ndarray, u: np.ndarray, v: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Trilinear, periodic lookup of the noise tile (texel centres at integers).

    Args:
      atlas: from ``_noise_mips``.
      u, v: [N] float32 level-0 texel coordinates.
      level: [N] float32 mip level (fractional levels blend the two nearest).

    Returns:
      [N, 3] float32.
    """
    level = np.clip(level, np.float32(0.0), np.float32(_MIP_LEVELS - 1.001))
    l0 = np.floor(level)
    fraction = (level - l0)[:, None]
    k = np.concatenate([l0, l0 + 1]).astype(np.int32)  # both levels of every point, one remap
    # Texel j of level k covers level-0 texels [j 2^k, (j + 1) 2^k).
    scale, size, row = _MIP_SCALE[k], _MIP_SIZE[k], _MIP_ROW_F32[k]
    map_u = (np.concatenate([u, u]) + np.float32(0.5)) * scale - np.float32(0.5)
    map_v = (np.concatenate([v, v]) + np.float32(0.5)) * scale - np.float32(0.5)
    # Periodic wrap into [0, size) (np.mod is several times slower), then into the atlas.
    map_u -= np.floor(map_u / size) * size
    map_v -= np.floor(map_v / size) * size
    map_u += np.float32(1.0)
    map_v += row + np.float32(1.0)
    n = map_u.size
    # cv2.remap wants 2-D maps below 32767 per side; its fixed-point weights (1/32 texel) are
    # plenty for texture.
    cols = min(n, 4096)
    rows = -(-n // cols)
    pad = rows * cols - n
    sampled = cv2.remap(atlas, np.pad(map_u, (0, pad)).reshape(rows, cols),
                        np.pad(map_v, (0, pad)).reshape(rows, cols), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE).reshape(-1, 3)
    lower, upper = sampled[:n // 2], sampled[n // 2:n]
    return lower + (upper - lower) * fraction


def _coverage(distance: np.ndarray, half_width, footprint: np.ndarray) -> np.ndarray:
    """Exact fraction of a pixel-sized interval (width ``footprint``) centred at ``distance`` that lies
    inside the stripe |x| < half_width: box-filtered, so thin far stripes fade instead of aliasing."""
    lo = np.maximum(distance - 0.5 * footprint, -half_width)
    hi = np.minimum(distance + 0.5 * footprint, half_width)
    return np.clip((hi - lo) / footprint, 0.0, 1.0)


def _step(x: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Box-filtered coverage of the half-line x > 0 by a pixel of width ``footprint`` at x."""
    return np.clip(x / footprint + 0.5, 0.0, 1.0)


def _periodic_coverage(x, period, half_width, footprint) -> np.ndarray:
    """Coverage of stripes |x - k * period| < half_width; tends to their mean duty cycle once the
    footprint exceeds the period (where the pattern can no longer be resolved)."""
    distance = x - period * np.round(x / period)
    cov = _coverage(distance, half_width, footprint)
    unresolved = np.clip(2.0 * footprint / period - 0.5, 0.0, 1.0)
    return cov + (2.0 * half_width / period - cov) * unresolved


def _rays(rotation: np.ndarray, K_inv: np.ndarray, u: np.ndarray, v: np.ndarray):
    """Rays through pixel positions (u, v) (any shape, pixels): world directions [3, ...] float32
    scaled so that their camera z component is 1 (ray parameter = z-depth), and their camera-space
    lengths [...] float32."""
    cam = np.einsum("ij,j...->i...", K_inv, np.stack([u, v, np.ones_like(u)]))
    cam = cam / cam[2:3]
    world = np.einsum("ij,j...->i...", rotation, cam)
    return world.astype(np.float32), np.sqrt(np.sum(cam ** 2, axis=0)).astype(np.float32)


def _mix(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return a + (b - a) * weight[:, None]


# ------------------------------------------------------------------------------------------------
# The scene.


class SyntheticScene:
    """One seeded synthetic drive: static world geometry, textures and the camera trajectory.

    Args:
      config: SceneConfig (default: SceneConfig()).

    World frame: X right, Y down, Z forward, ground plane Y = 0 (metres).
    """

    def __init__(self, config: Optional[SceneConfig] = None):
        self.config = config if config is not None else SceneConfig()
        if not isinstance(self.config, SceneConfig):
            raise ValueError(f"config: expected a SceneConfig, got {type(self.config).__name__}")
        cfg = self.config
        rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed) & 0xFFFFFFFF, 7]))
        # Road centreline x_c(Z) = sum_i A_i sin(2 pi Z / L_i + phase_i): bends of a few metres over
        # 50-240 m give yaw changes below ~1 degree per metre.
        self._bend_amplitude = cfg.curviness * np.array([rng.uniform(1.0, 5.0), rng.uniform(0.3, 1.2)])
        self._bend_wavelength = np.array([rng.uniform(120.0, 240.0), rng.uniform(50.0, 100.0)])
        self._bend_phase = rng.uniform(0.0, 2.0 * np.pi, size=2)
        self._make_trajectory(rng)
        self._make_room()
        self._mips = _noise_mips(rng)
        self._skyline = rng.uniform(4.0, 20.0, size=64)
        self._make_boxes(rng)

    # -- road and trajectory -----------------------------------------------------------------

    def road_centre(self, z) -> Tuple[np.ndarray, np.ndarray]:
        """Road centreline at world Z (metres): returns (x_c(Z) metres, dx_c/dZ), in z's float type."""
        z = np.asarray(z)
        dtype = z.dtype if z.dtype == np.float32 else np.float64
        wavenumber = (2.0 * np.pi / self._bend_wavelength).astype(dtype)
        amplitude = self._bend_amplitude.astype(dtype)
        phase = z.astype(dtype)[..., None] * wavenumber + self._bend_phase.astype(dtype)
        return np.sin(phase) @ amplitude, np.cos(phase) @ (amplitude * wavenumber)

    def _make_trajectory(self, rng: np.random.Generator) -> None:
        cfg = self.config
        k = np.arange(cfg.num_frames, dtype=np.float64)

        def smooth_wave(period_range):
            return np.sin(2.0 * np.pi * k / rng.uniform(*period_range) + rng.uniform(0, 2 * np.pi))

        speed = cfg.speed * (1.0 + cfg.speed_variation * (0.6 * smooth_wave((30, 80)) +
                                                          0.4 * smooth_wave((10, 25))))
        speed = np.clip(speed, 0.5, 1.2)
        yaw_wobble = np.deg2rad(cfg.yaw_wobble) * smooth_wave((20, 50))
        pitch = np.deg2rad(cfg.pitch_wobble) * smooth_wave((8, 20))
        wander = 0.15 * smooth_wave((25, 60))
        z = np.zeros(cfg.num_frames)
        heading = np.zeros(cfg.num_frames)
        for i in range(cfg.num_frames):
            heading[i] = np.arctan(self.road_centre(z[i])[1])
            if i + 1 < cfg.num_frames:
                z[i + 1] = z[i] + speed[i] * np.cos(heading[i])
        x = self.road_centre(z)[0] + cfg.lane_offset + wander
        yaw = heading + yaw_wobble
        poses = np.zeros((cfg.num_frames, 4, 4))
        cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
        # Columns of R are the camera axes in world coordinates; R = R_yaw(about Y) @ R_pitch(about X).
        poses[:, 0, 0], poses[:, 0, 1], poses[:, 0, 2] = cy, sy * sp, sy * cp
        poses[:, 1, 1], poses[:, 1, 2] = cp, -sp
        poses[:, 2, 0], poses[:, 2, 1], poses[:, 2, 2] = -sy, cy * sp, cy * cp
        poses[:, 0, 3], poses[:, 1, 3], poses[:, 2, 3] = x, -cfg.camera_height, z
        poses[:, 3, 3] = 1.0
        self._poses = poses

    def _make_room(self) -> None:
        """Bounds of the closed room whose walls and ceiling are the backdrop."""
        cfg = self.config
        z_first = self._poses[0, 2, 3]
        z_samples = np.linspace(z_first - _ROOM_BACK, z_first + cfg.backdrop_distance, 256)
        xc = self.road_centre(z_samples)[0]
        x_lo = xc.min() - cfg.road_width / 2 - cfg.side_distance
        x_hi = xc.max() + cfg.road_width / 2 + cfg.side_distance
        z_end = z_first + cfg.backdrop_distance
        # Depth is linear in the point, so its maximum over the room is at a corner; pull the end
        # wall in until every frame's deepest corner is below the cap.
        limit = MAX_DEPTH - _CAP_MARGIN
        for pose in self._poses:
            forward, origin = pose[:3, 2], pose[:3, 3]
            lateral = max((x - origin[0]) * forward[0] + (y - origin[1]) * forward[1]
                          for x in (x_lo, x_hi) for y in (-cfg.sky_height, 0.0))
            z_end = min(z_end, origin[2] + (limit - lateral) / forward[2])
        z_last = self._poses[-1, 2, 3]
        if z_end < z_last + _MIN_BACKDROP_CLEARANCE:
            raise ValueError(
                f"the drive ({cfg.num_frames} frames at ~{cfg.speed} m/frame) runs into the backdrop; "
                f"use fewer frames, a lower speed or a larger backdrop_distance")
        self.room_min = np.array([x_lo, -cfg.sky_height, z_first - _ROOM_BACK])
        self.room_max = np.array([x_hi, 0.0, z_end])

    # -- objects ------------------------------------------------------------------------------

    def _make_boxes(self, rng: np.random.Generator) -> None:
        cfg = self.config
        half_road = cfg.road_width / 2
        z0, z1 = self.room_min[2], self.room_max[2]
        boxes = []  # (min xyz, max xyz, material, rgb albedo, window params)

        def side_extreme(za, zb, side):
            xc = self.road_centre(np.linspace(za, zb, 16))[0]
            return xc.max() if side > 0 else xc.min()

        if cfg.buildings:
            palette = np.array([[0.62, 0.36, 0.30], [0.78, 0.72, 0.60], [0.60, 0.60, 0.62],
                                [0.85, 0.82, 0.76], [0.50, 0.56, 0.64], [0.70, 0.55, 0.40]])
            for side in (-1.0, 1.0):
                z = z0 - rng.uniform(0.0, 10.0)
                while z < z1:
                    length = rng.uniform(6.0, 20.0)
                    za, zb = z, min(z + length, z1)
                    setback = rng.uniform(0.0, 6.0)
                    depth = rng.uniform(6.0, 14.0)
                    height = rng.uniform(5.0, 22.0)
                    inner = side_extreme(za, zb, side) + side * (half_road + cfg.pavement_width +
                                                                 setback)
                    outer = inner + side * depth
                    albedo = palette[rng.integers(len(palette))] * rng.uniform(0.85, 1.1, size=3)
                    sx, sy = rng.uniform(2.4, 3.6), rng.uniform(2.9, 3.6)
                    window = (sx, sy, rng.uniform(0.35, 0.6) * sx, rng.uniform(0.4, 0.6) * sy,
                              rng.uniform(0, sx))
                    boxes.append(((min(inner, outer), -height, za), (max(inner, outer), 0.0, zb),
                                  _BUILDING, albedo, window))
                    z = zb + (rng.uniform(1.0, 6.0) if rng.random() < 0.4 else 0.0)

        no_window = (1.0, 1.0, 0.0, 0.0, 0.0)
        z_first = self._poses[0, 2, 3]
        placed = 0
        for _ in range(cfg.num_boxes * 20):
            if placed >= cfg.num_boxes:
                break
            kind = rng.choice(3, p=(0.5, 0.3, 0.2))
            z = rng.uniform(z_first - 5.0, z1 - 6.0)
            xc = self.road_centre(z)[0]
            if kind == 0:  # car: parked at either kerb or stopped in the oncoming lane
                parked = half_road - _PARKING_WIDTH / 2
                lane = rng.choice([-parked, -cfg.lane_offset, parked])
                length, width = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9)
                height = rng.uniform(1.35, 1.6)
                lo = np.array([xc + lane - width / 2, -0.55 * height, z])
                hi = np.array([xc + lane + width / 2, 0.0, z + length])
                hue = rng.random(3)
                albedo = 0.15 + 0.7 * hue / hue.max() * rng.uniform(0.5, 1.0)
                cabin_lo = np.array([lo[0] + 0.08, -height, z + 0.25 * length])
                cabin_hi = np.array([hi[0] - 0.08, hi[1] - 0.55 * height, z + 0.8 * length])
                parts = [(lo, hi, _CAR_BODY, albedo, no_window),
                         (cabin_lo, cabin_hi, _CAR_CABIN, albedo, no_window)]
            elif kind == 1:  # pole at the kerb
                side = rng.choice([-1.0, 1.0])
                x = xc + side * (half_road + rng.uniform(0.3, 0.8))
                w, height = rng.uniform(0.12, 0.3), rng.uniform(3.0, 8.0)
                parts = [(np.array([x - w / 2, -height, z]), np.array([x + w / 2, 0.0, z + w]),
                          _POLE, np.array([0.45, 0.46, 0.48]) * rng.uniform(0.7, 1.3), no_window)]
            else:  # planter / kerb block on the pavement
                side = rng.choice([-1.0, 1.0])
                x = xc + side * (half_road + rng.uniform(0.5, cfg.pavement_width - 0.5))
                w, length = rng.uniform(0.5, 1.2), rng.uniform(0.5, 2.5)
                height = rng.uniform(0.2, 0.8)
                parts = [(np.array([x - w / 2, -height, z]), np.array([x + w / 2, 0.0, z + length]),
                          _PLANTER, np.array([0.62, 0.60, 0.56]) * rng.uniform(0.8, 1.15, 3),
                          no_window)]
            lo_all = np.min([p[0] for p in parts], axis=0)
            hi_all = np.max([p[1] for p in parts], axis=0)
            overlaps = any(np.all(lo_all < np.asarray(b[1]) + 0.3) and
                           np.all(hi_all > np.asarray(b[0]) - 0.3)
                           for b in boxes if b[2] != _BUILDING)
            if overlaps or self._blocks_camera(lo_all, hi_all):
                continue
            boxes.extend(parts)
            placed += 1

        self.box_min = np.array([b[0] for b in boxes], np.float64).reshape(-1, 3)
        self.box_max = np.array([b[1] for b in boxes], np.float64).reshape(-1, 3)
        self.box_material = np.array([b[2] for b in boxes], np.int32)
        self.box_albedo = np.array([b[3] for b in boxes], np.float32).reshape(-1, 3)
        self.box_window = np.array([b[4] for b in boxes], np.float32).reshape(-1, 5)
        self.box_texture_offset = rng.uniform(0.0, 500.0, size=(len(boxes), 2)).astype(np.float32)
        # Lookup tables indexed by the traced object id, whose -1 (the room) reads the last row.
        self._material_table = np.append(self.box_material, _BACKDROP).astype(np.int32)
        self._offset_table = np.concatenate([self.box_texture_offset, np.zeros((1, 2), np.float32)])
        self._painters = (self._paint_backdrop, self._paint_sky, self._paint_ground,
                          self._paint_building, self._paint_car_body, self._paint_car_cabin,
                          self._paint_plain, self._paint_planter)

    def _blocks_camera(self, lo, hi, clearance: float = 1.0) -> bool:
        """True if a box comes within ``clearance`` metres (in X and Z) of any trajectory camera."""
        centres = self._poses[:, :3, 3]
        inside = ((centres[:, 0] > lo[0] - clearance) & (centres[:, 0] < hi[0] + clearance) &
                  (centres[:, 2] > lo[2] - clearance) & (centres[:, 2] < hi[2] + clearance))
        return bool(np.any(inside))

    # -- public API --------------------------------------------------------------------------

    @property
    def num_frames(self) -> int:
        """Number of frames of the drive."""
        return int(self.config.num_frames)

    def camera_to_world(self, frame_index: int) -> np.ndarray:
        """Camera-to-world transform of a trajectory frame.

        Returns:
          [4, 4] float64: maps camera coordinates (x right, y down, z forward, metres) to world
          coordinates (X right, Y down, Z forward, ground at Y = 0).
        """
        if isinstance(frame_index, bool) or not float(frame_index).is_integer():
            raise ValueError(f"frame_index must be an integer, got {frame_index!r}")
        frame_index = int(frame_index)
        if not 0 <= frame_index < self.num_frames:
            raise ValueError(f"frame_index must be in [0, {self.num_frames - 1}], got {frame_index}")
        return self._poses[frame_index].copy()

    def render(self, cam_to_world, K, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
        """Ray casts the scene.

        Args:
          cam_to_world: [4, 4] camera-to-world transform (e.g. ``camera_to_world(i)``).
          K: [4, 4] or [3, 3] intrinsics in pixels for an image of ``height`` x ``width``.
          height, width: image size in pixels.

        Returns:
          image: [H, W, 3] float32 RGB in [0, 1].
          depth: [H, W] float32 z-depth in metres along the optical axis (of the ray through each
            pixel centre). Finite everywhere; <= MAX_DEPTH for cameras on the scene's trajectory.
        """
        height, width = _check_size(height, width)
        pose = _as_numpy_matrix(cam_to_world, "cam_to_world", ((4, 4),))
        K = _as_numpy_matrix(K, "K", ((3, 3), (4, 4)))[:3, :3]
        rotation, origin = pose[:3, :3], pose[:3, 3]
        if not np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-5):
            raise ValueError("cam_to_world: the rotation part is not orthonormal")
        if np.any(origin <= self.room_min) or np.any(origin >= self.room_max):
            raise ValueError(f"cam_to_world: camera centre {origin.tolist()} is outside the scene "
                             f"(X, Y, Z bounds {self.room_min.tolist()} .. {self.room_max.tolist()})")
        if abs(np.linalg.det(K)) < 1e-12:
            raise ValueError("K: intrinsics matrix is singular")
        K_inv = np.linalg.inv(K)
        focal = float(np.sqrt(abs(K[0, 0] * K[1, 1])))
        rects = self._screen_rects(origin, rotation, K, height, width)

        v, u = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64),
                           indexing="ij")
        centre = _rays(rotation, K_inv, u, v)
        t, obj, axis = self._trace(origin, centre[0], rects,
                                   lambda v0, v1, u0, u1: (slice(v0, v1), slice(u0, u1)))
        depth = t.astype(np.float32)

        n = int(self.config.supersample)
        edge = np.zeros((height, width), bool)
        if n > 1:
            # Adaptive supersampling: within one face the texture is already band-limited (mip
            # levels, box-filtered stripes), so only pixels next to a change of face need sub-rays.
            # A face boundary crossing a pixel separates its centre from one of its 4 neighbours'.
            face = obj * 3 + axis
            vertical = face[1:] != face[:-1]
            horizontal = face[:, 1:] != face[:, :-1]
            edge[1:] |= vertical
            edge[:-1] |= vertical
            edge[:, 1:] |= horizontal
            edge[:, :-1] |= horizontal
        flat = ~edge.reshape(-1)
        parts = [(centre[0].reshape(3, -1)[:, flat], centre[1].reshape(-1)[flat],
                  t.reshape(-1)[flat], obj.reshape(-1)[flat], axis.reshape(-1)[flat])]
        if edge.any():
            steps = (np.arange(n) + 0.5) / n - 0.5
            dv, du = (s.reshape(-1) for s in np.meshgrid(steps, steps, indexing="ij"))
            sub_v = (v[edge][:, None] + dv).reshape(-1)
            sub_u = (u[edge][:, None] + du).reshape(-1)
            sub = _rays(rotation, K_inv, sub_u, sub_v)
            pixel_v, pixel_u = np.floor(sub_v + 0.5), np.floor(sub_u + 0.5)

            def select(v0, v1, u0, u1):
                return np.nonzero((pixel_v >= v0) & (pixel_v < v1) & (pixel_u >= u0) &
                                  (pixel_u < u1))[0]

            parts.append(sub + self._trace(origin, sub[0], rects, select))
        dirs, ray_length, t_all, obj_all, axis_all = (np.concatenate(p, axis=-1)
                                                       for p in zip(*parts))
        colour = self._shade(origin, dirs, ray_length, t_all, obj_all, axis_all, focal)
        image = np.empty((height * width, 3), np.float32)
        count = int(flat.sum())
        image[flat] = colour[:count]
        image[~flat] = colour[count:].reshape(-1, n * n, 3).mean(axis=1)
        return np.clip(image.reshape(height, width, 3), 0.0, 1.0), depth

    # -- ray casting ---------------------------------------------------------------------------

    def _screen_rects(self, origin, rotation, K, height, width):
        """[(box index, v0, v1, u0, u1)]: pixel rectangles (1 px margin) each visible box can cover."""
        if len(self.box_min) == 0:
            return []
        corners = np.where(_CORNER_SELECT[None], self.box_max[:, None], self.box_min[:, None])
        cam = (corners - origin) @ rotation  # [M, 8, 3] camera coordinates
        near = 1e-3
        front = cam[..., 2] > near
        with np.errstate(divide="ignore", invalid="ignore"):
            proj = cam @ K.T
            u = proj[..., 0] / proj[..., 2]
            v = proj[..., 1] / proj[..., 2]
        bounds = np.stack([v.min(1), v.max(1), u.min(1), u.max(1)], axis=1)
        rects = []
        for index in np.nonzero(front.any(axis=1))[0]:
            box_bounds = bounds[index]
            if not front[index].all():
                # Clip the box against the near plane: its screen extent is that of the front
                # corners plus the points where its edges cross the plane.
                pts = cam[index]
                extra = [pts[a] + (near - pts[a, 2]) / (pts[b, 2] - pts[a, 2]) * (pts[b] - pts[a])
                         for a, b in _BOX_EDGES if front[index, a] != front[index, b]]
                clipped = np.concatenate([pts[front[index]], np.array(extra)]) @ K.T
                cu, cv = clipped[:, 0] / clipped[:, 2], clipped[:, 1] / clipped[:, 2]
                box_bounds = (cv.min(), cv.max(), cu.min(), cu.max())
            v0 = int(max(np.floor(box_bounds[0]) - 1, 0))
            v1 = int(min(np.ceil(box_bounds[1]) + 2, height))
            u0 = int(max(np.floor(box_bounds[2]) - 1, 0))
            u1 = int(min(np.ceil(box_bounds[3]) + 2, width))
            if u0 < u1 and v0 < v1:
                rects.append((index, v0, v1, u0, u1))
        return rects

    def _trace(self, origin, dirs, rects, select):
        """First hits of rays from ``origin`` along ``dirs`` [3, ...] (camera z component 1).

        ``select(v0, v1, u0, u1)`` turns a box's screen rectangle into an index of the ray arrays.
        Returns (t [...] float32 = z-depth in metres, object [...] int32 with -1 for the room's floor,
        ceiling and walls, axis [...] int8 of the hit face's normal).
        """
        safe = np.where(np.abs(dirs) < 1e-12, np.float32(1e-12), dirs)
        inv = (1.0 / safe).astype(np.float32)
        # Exit point from inside the room box.
        t, axis = None, None
        for a in range(3):
            to_max = np.float32(self.room_max[a] - origin[a])
            to_min = np.float32(self.room_min[a] - origin[a])
            # The sign of ``safe`` (zeros replaced by +1e-12) picks the wall the ray is heading to.
            t_a = np.where(safe[a] > 0, to_max, to_min) * inv[a]
            if t is None:
                t, axis = t_a, np.zeros(t_a.shape, np.int8)
            else:
                closer = t_a < t
                t = np.where(closer, t_a, t)
                axis[closer] = a
        obj = np.full(t.shape, -1, np.int32)
        for index, v0, v1, u0, u1 in rects:
            window = select(v0, v1, u0, u1)
            lo = (self.box_min[index] - origin).astype(np.float32)
            hi = (self.box_max[index] - origin).astype(np.float32)
            t_near = t_far = near_axis = None
            for a in range(3):
                inv_a = inv[a][window]
                t1, t2 = lo[a] * inv_a, hi[a] * inv_a
                enter, leave = np.minimum(t1, t2), np.maximum(t1, t2)
                if t_near is None:
                    t_near, t_far, near_axis = enter, leave, np.zeros(enter.shape, np.int8)
                else:
                    later = enter > t_near
                    t_near = np.where(later, enter, t_near)
                    near_axis[later] = a
                    t_far = np.minimum(t_far, leave)
            t_window = t[window]
            hit = (t_near <= t_far) & (t_near > 0) & (t_near < t_window)
            t[window] = np.where(hit, t_near, t_window)
            obj[window] = np.where(hit, np.int32(index), obj[window])
            axis[window] = np.where(hit, near_axis, axis[window])
        return t, obj, axis

    # -- appearance ------------------------------------------------------------------------------

    def _shade(self, origin, d, ray_length, t, obj, axis, focal) -> np.ndarray:
        """Colour [N, 3] of the first hits of N rays (albedo x Lambertian face shading).

        d: [3, N] world directions (camera z component 1); ray_length: [N] |camera direction|;
        t, obj, axis: from ``_trace``; focal: pixels, to turn depth into a pixel footprint.
        """
        point = origin.astype(np.float32)[:, None] + d * t
        along_axis = np.where(axis == 0, d[0], np.where(axis == 1, d[1], d[2]))
        room = obj < 0
        # Index -1 (the room) reads the sentinel last row of the per-box tables.
        material = self._material_table[obj]
        material[room & (axis == 1)] = np.where(d[1][room & (axis == 1)] > 0, _GROUND, _SKY)

        # Surface coordinates (metres): the two world axes spanning the hit face; "b" is the height
        # above ground on vertical faces.
        x, y, z = point
        a = np.where(axis == 0, z, x)
        b = np.where(axis == 1, z, -y)
        # Pixel footprint on the surface (metres): grows with distance and with grazing incidence.
        cosine = np.abs(along_axis) / np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
        footprint = t * ray_length / np.float32(focal) / np.sqrt(np.maximum(cosine, np.float32(0.05)))

        texel = _TEXEL[material] * np.float32(self.config.texture_scale)
        offset = self._offset_table[obj]
        level = np.log2(np.maximum(footprint / texel, np.float32(1e-6))) - np.float32(0.5)
        noise = _sample_mips(self._mips, (a + offset[:, 0]) / texel, (b + offset[:, 1]) / texel,
                             level)

        colour = np.empty((t.size, 3), np.float32)
        order = np.argsort(material.astype(np.int8), kind="stable")
        counts = np.bincount(material, minlength=len(self._painters))
        start = 0
        for mat, count in enumerate(counts):
            if count:
                sel = order[start:start + count]
                colour[sel] = self._painters[mat](a[sel], b[sel], axis[sel], obj[sel],
                                                  footprint[sel], noise[sel])
                start += count

        normal_sign = -np.sign(along_axis)  # every visible face faces the camera
        lit = _AMBIENT + (1.0 - _AMBIENT) * np.maximum(normal_sign * _SUN[axis], 0.0)
        emissive = (material == _SKY) | (material == _BACKDROP)
        shading = np.where(emissive, np.float32(1.0), lit.astype(np.float32))
        return colour * shading[:, None]

    def _paint_sky(self, a, b, axis, obj, footprint, noise):
        blue = np.array([0.42, 0.58, 0.86], np.float32)
        cloud = np.clip(0.5 + 0.55 * noise[:, 0], 0.0, 1.0)
        colour = _mix(np.broadcast_to(blue, (a.size, 3)), np.array([0.93, 0.93, 0.95], np.float32),
                      cloud)
        return colour * (1.0 + 0.06 * noise[:, 1:2])

    def _paint_backdrop(self, a, b, axis, obj, footprint, noise):
        """Room walls: a distant blocky skyline under a cloudy sky, painted on the wall."""
        block = np.floor(a / 9.0).astype(np.int64) % len(self._skyline)
        skyline = self._skyline[block].astype(np.float32)
        below = _coverage(b - 0.5 * skyline, 0.5 * skyline, footprint)
        sky = self._paint_sky(a, b, axis, obj, footprint, noise)
        sky *= (1.0 - 0.12 * np.clip(b / 30.0, 0, 1))[:, None]  # deeper blue higher up
        windows = (_periodic_coverage(a - 1.0, 2.0, 0.5, footprint) *
                   _periodic_coverage(b - 1.5, 3.0, 0.7, footprint))
        city = np.array([0.46, 0.48, 0.54], np.float32) * (1.0 + 0.18 * noise[:, 1:2] +
                                                           0.08 * noise[:, 2:3])
        city = _mix(city, city * 0.62, windows)
        return _mix(sky, city, below)

    def _paint_ground(self, a, b, axis, obj, footprint, noise):
        cfg = self.config
        x, z = a, b  # ground faces are spanned by world X and Z
        centre, slope = self.road_centre(z)
        # Distance to the centreline measured perpendicular to the road (to first order).
        lateral = (x - centre) / np.sqrt(np.float32(1.0) + slope * slope)
        distance = np.abs(lateral)
        half_road = cfg.road_width / 2
        n0, n1, n2 = noise[:, 0:1], noise[:, 1:2], noise[:, 2:3]
        fp = footprint

        asphalt = (np.float32(0.33) * (1.0 + 0.22 * n0 + 0.12 * n1) *
                   np.array([1.0, 1.0, 1.04], np.float32))
        paint = np.array([0.9, 0.9, 0.86], np.float32) * (1.0 + 0.06 * n1)
        # Dashed centre line; solid lines between the driving lanes and the parking strips.
        dashes = _coverage(lateral, 0.075, fp) * _periodic_coverage(z, 9.0, 1.5, fp)
        lines = _coverage(distance - (half_road - _PARKING_WIDTH), 0.07, fp)
        worn = np.clip(0.9 + 0.1 * n2[:, 0], 0.0, 1.0)
        road = _mix(asphalt, paint, np.clip(dashes + lines, 0.0, 1.0) * worn)
        kerb = np.array([0.68, 0.67, 0.64], np.float32) * (1.0 + 0.12 * n0)
        tiles = np.array([0.58, 0.54, 0.50], np.float32) * (1.0 + 0.14 * n0 + 0.06 * n2)
        grout = np.maximum(_periodic_coverage(x, 0.6, 0.025, fp),
                           _periodic_coverage(z, 0.6, 0.025, fp))
        pavement = _mix(tiles, tiles * 0.7, grout)
        grass = np.array([0.27, 0.38, 0.15], np.float32) * (1.0 + 0.3 * n0)
        verge = _mix(grass, np.array([0.42, 0.36, 0.26], np.float32) * (1.0 + 0.2 * n1),
                     np.clip(0.5 + 0.6 * n2[:, 0], 0.0, 1.0))

        colour = _mix(road, kerb, _step(distance - half_road, fp))
        colour = _mix(colour, pavement, _step(distance - half_road - _KERB_WIDTH, fp))
        return _mix(colour, verge, _step(distance - half_road - cfg.pavement_width, fp))

    def _paint_building(self, a, b, axis, obj, footprint, noise):
        sx, sy, ww, wh, phase = self.box_window[obj].T
        wall = self.box_albedo[obj] * (1.0 + 0.16 * noise[:, 0:1] + 0.08 * noise[:, 1:2])
        storey = np.floor((b - 0.5 * sy) / sy)
        windows = (_periodic_coverage(a - phase, sx, 0.5 * ww, footprint) *
                   _periodic_coverage(b - 0.5 * sy, sy, 0.5 * wh, footprint) *
                   (storey >= 0) * (axis != 1))
        glass = np.array([0.16, 0.19, 0.24], np.float32) * (1.0 + 0.35 * noise[:, 2:3])
        return _mix(wall, glass, windows)

    def _paint_car_body(self, a, b, axis, obj, footprint, noise):
        body = self.box_albedo[obj] * (1.0 + 0.1 * noise[:, 0:1])
        tyres = _coverage(b - 0.15, 0.15, footprint) * (axis != 1)
        return _mix(body, np.array([0.08, 0.08, 0.09], np.float32) * (1.0 + 0.3 * noise[:, 1:2]),
                    tyres)

    def _paint_car_cabin(self, a, b, axis, obj, footprint, noise):
        glass = np.array([0.13, 0.15, 0.19], np.float32) * (1.0 + 0.4 * noise[:, 2:3])
        roof = self.box_albedo[obj] * (1.0 + 0.1 * noise[:, 0:1])
        return np.where((axis == 1)[:, None], roof, glass)

    def _paint_plain(self, a, b, axis, obj, footprint, noise):
        return self.box_albedo[obj] * (1.0 + 0.2 * noise[:, 0:1] + 0.08 * noise[:, 1:2])

    def _paint_planter(self, a, b, axis, obj, footprint, noise):
        concrete = self._paint_plain(a, b, axis, obj, footprint, noise)
        plants = np.array([0.22, 0.4, 0.14], np.float32) * (1.0 + 0.35 * noise[:, 2:3])
        return np.where((axis == 1)[:, None], plants, concrete)


# ------------------------------------------------------------------------------------------------
# Triplets and the tf.data pipeline.


def relative_pose(scene: SyntheticScene, i: int, j: int) -> np.ndarray:
    """T_{i->j} = inv(camera_to_world(j)) @ camera_to_world(i).

    Returns:
      [4, 4] float64: maps points in camera-i coordinates to camera-j coordinates (metres), i.e.
      T_{0->s} for target frame i and source frame j.
    """
    return np.linalg.inv(scene.camera_to_world(j)) @ scene.camera_to_world(i)


def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def _render_triplets(num_samples, height, width, seed, split, frame_gap, config, target_stride):
    """Renders the frames of ``num_samples`` triplets once; neighbouring triplets share frames.

    Returns a dict with "frames" [F, H, W, 3], "frame_depths" [F, H, W, 1], integer index arrays
    "prev", "target", "next" [N] into them, and "K", "pose_prev", "pose_next" as in make_triplets.
    """
    if isinstance(num_samples, bool) or not float(num_samples).is_integer() or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    height, width = _check_size(height, width)
    split_code = _split_code(split)
    for name, value in (("frame_gap", frame_gap), ("target_stride", target_stride)):
        if isinstance(value, bool) or not float(value).is_integer() or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    frame_gap, target_stride, num_samples = int(frame_gap), int(target_stride), int(num_samples)
    base = config if config is not None else SceneConfig()
    if not isinstance(base, SceneConfig):
        raise ValueError(f"config: expected a SceneConfig, got {type(base).__name__}")
    targets = list(range(frame_gap, base.num_frames - frame_gap, target_stride))
    if not targets:
        raise ValueError(f"frame_gap {frame_gap} needs drives of more than {2 * frame_gap} frames; "
                         f"SceneConfig.num_frames is {base.num_frames}")
    K = kitti_intrinsics(height, width)
    frames, depths = [], []
    prev, target, nxt, pose_prev, pose_next = [], [], [], [], []
    drive = 0
    while len(target) < num_samples:
        # Splits are separate worlds: their drives are seeded from disjoint seed sequences.
        drive_seed = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, split_code, drive])
        scene = SyntheticScene(dataclasses.replace(base, seed=int(drive_seed.generate_state(1)[0])))
        rendered = {}

        def frame(index):
            if index not in rendered:
                image, depth = scene.render(scene.camera_to_world(index), K, height, width)
                rendered[index] = len(frames)
                frames.append(image)
                depths.append(depth[..., None])
            return rendered[index]

        for t in targets:
            if len(target) == num_samples:
                break
            prev.append(frame(t - frame_gap))
            target.append(frame(t))
            nxt.append(frame(t + frame_gap))
            pose_prev.append(relative_pose(scene, t, t - frame_gap))
            pose_next.append(relative_pose(scene, t, t + frame_gap))
        drive += 1
    return {
        "frames": np.stack(frames), "frame_depths": np.stack(depths),
        "prev": np.array(prev), "target": np.array(target), "next": np.array(nxt),
        "K": np.broadcast_to(K, (num_samples, 4, 4)).copy(),
        "pose_prev": np.array(pose_prev, np.float32), "pose_next": np.array(pose_next, np.float32),
    }


def make_triplets(num_samples: int, height: int, width: int, seed: int = 0, split: str = "train",
                  frame_gap: int = 1, *, config: Optional[SceneConfig] = None,
                  target_stride: int = 1) -> Dict[str, np.ndarray]:
    """Renders ``num_samples`` (previous, target, next) frame triplets with exact ground truth.

    Samples come from successive drives (scenes) whose seeds derive from (seed, split, drive index),
    so "train", "val" and "test" are disjoint worlds. Within a drive the target frames are every
    ``target_stride``-th frame, the sources are ``frame_gap`` frames before / after.

    Args:
      num_samples: N, number of triplets.
      height, width: image size in pixels.
      seed: dataset seed.
      split: "train", "val" or "test".
      frame_gap: frame distance between target and sources.
      config: SceneConfig template for every drive (its seed is replaced); default SceneConfig().
      target_stride: frame step between consecutive targets of a drive. With the default 1 every
        frame is a target (as in KITTI's training lists) and neighbouring triplets share frames,
        so a drive of ``num_frames`` frames yields ``num_frames - 2 * frame_gap`` triplets for
        about one rendered frame each; 2 halves the correlation between samples at twice the cost.

    Returns:
      dict of numpy float32 arrays: "target", "source_prev", "source_next" [N, H, W, 3] in [0, 1];
      "depth" [N, H, W, 1] z-depth of the target in metres; "K" [N, 4, 4] pixels;
      "pose_prev", "pose_next" [N, 4, 4] = T_{0->-1}, T_{0->+1} (target camera to source camera,
      metres).
    """
    data = _render_triplets(num_samples, height, width, seed, split, frame_gap, config, target_stride)
    frames = data["frames"]
    return {
        "target": frames[data["target"]], "source_prev": frames[data["prev"]],
        "source_next": frames[data["next"]], "depth": data["frame_depths"][data["target"]],
        "K": data["K"], "pose_prev": data["pose_prev"], "pose_next": data["pose_next"],
    }


def make_sequence(num_frames: int, height: int, width: int, seed: int = 0, split: str = "test", *,
                  config: Optional[SceneConfig] = None) -> Dict[str, np.ndarray]:
    """Renders consecutive frames of one drive with their camera poses (the pose protocol's input).

    The drive is the first one of ``split`` for ``seed`` (the same world make_triplets starts with).

    Args:
      num_frames: M consecutive frames (at most the drive's SceneConfig.num_frames; more are made by
        lengthening the drive).
      height, width: image size in pixels.
    Returns:
      dict of numpy arrays: "frames" [M, H, W, 3] float32 in [0, 1]; "depth" [M, H, W, 1] z-depth,
      metres; "K" [4, 4] pixels; "camera_to_world" [M, 4, 4] float64 (X_world = G_i X_i, metres,
      KITTI odometry's convention).
    """
    if isinstance(num_frames, bool) or not float(num_frames).is_integer() or num_frames < 2:
        raise ValueError(f"num_frames must be an integer >= 2, got {num_frames!r}")
    num_frames = int(num_frames)
    height, width = _check_size(height, width)
    base = config if config is not None else SceneConfig()
    if not isinstance(base, SceneConfig):
        raise ValueError(f"config: expected a SceneConfig, got {type(base).__name__}")
    drive_seed = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _split_code(split), 0])
    scene = SyntheticScene(dataclasses.replace(base, seed=int(drive_seed.generate_state(1)[0]),
                                               num_frames=max(base.num_frames, num_frames)))
    K = kitti_intrinsics(height, width)
    frames, depths, poses = [], [], []
    for index in range(num_frames):
        pose = scene.camera_to_world(index)
        image, depth = scene.render(pose, K, height, width)
        frames.append(image)
        depths.append(depth[..., None])
        poses.append(pose)
    return {"frames": np.stack(frames), "depth": np.stack(depths), "K": K,
            "camera_to_world": np.asarray(poses, np.float64)}


def synthetic_dataset(num_samples: int, height: int, width: int, batch_size: int, seed: int = 0,
                      split: str = "train", shuffle: bool = True, repeat: bool = True, *,
                      frame_gap: int = 1, config: Optional[SceneConfig] = None,
                      target_stride: int = 1) -> tf.data.Dataset:
    """tf.data pipeline over ``make_triplets`` samples, rendered once up front and kept in memory.

    Args: as ``make_triplets``, plus
      batch_size: samples per batch (batches are dropped when incomplete, so every batch is full).
      shuffle: reshuffle the samples every epoch (deterministic given ``seed``).
      repeat: repeat forever.

    Returns:
      tf.data.Dataset of dicts with the keys of ``make_triplets``, float32, each with a leading
      batch axis of size ``batch_size``.
    """
    if isinstance(batch_size, bool) or not float(batch_size).is_integer() or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size > num_samples:
        raise ValueError(f"batch_size {batch_size} > num_samples {num_samples}: with "
                         f"drop_remainder no batch would ever be produced")
    data = _render_triplets(num_samples, height, width, seed, split, frame_gap, config, target_stride)
    # Frames are stored once and gathered per sample, since neighbouring triplets share frames.
    frames = tf.constant(data["frames"])
    depths = tf.constant(data["frame_depths"])
    indices = {key: data[key].astype(np.int32) for key in ("prev", "target", "next")}
    per_sample = {"K": data["K"], "pose_prev": data["pose_prev"], "pose_next": data["pose_next"]}
    dataset = tf.data.Dataset.from_tensor_slices({**indices, **per_sample})
    if shuffle:
        dataset = dataset.shuffle(int(num_samples), seed=int(seed), reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    def gather(item):
        return {
            "target": tf.gather(frames, item["target"]),
            "source_prev": tf.gather(frames, item["prev"]),
            "source_next": tf.gather(frames, item["next"]),
            "depth": tf.gather(depths, item["target"]),
            "K": item["K"], "pose_prev": item["pose_prev"], "pose_next": item["pose_next"],
        }

    dataset = dataset.batch(int(batch_size), drop_remainder=True)
    return dataset.map(gather, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True).prefetch(tf.data.AUTOTUNE)
