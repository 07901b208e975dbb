"""Seeded random weights for the reference networks, reproducible with numpy alone.

tools/make_reference_fixtures.py (run once with PyTorch and the reference repositories) loads these
weights into the references' own networks and stores their outputs; the tests rebuild the very same
weights from the seed without PyTorch, convert them and compare. Only the layout (keys, shapes, dtypes),
the seed and the per-key scales are committed (tests/fixtures/*/layout.json): a ResNet-18's 45 MB of
weights are not.

Each tensor is drawn from its own generator, ``np.random.default_rng([seed, crc32(key)])``, so the
order of the keys does not matter:
  - conv / linear weights (ndim >= 2): N(0, 1 / fan_in), fan_in = prod(shape[1:]), times the key's
    scale (default 1);
  - BatchNorm running_var: U(0.5, 1.5); BatchNorm weight (1-D ".weight"): U(0.5, 1.5);
  - running_mean and every bias: N(0, 0.1²) times the key's scale;
  - integer tensors (num_batches_tracked): 0.
The random BatchNorm statistics make inference differ from the training-mode statistics, so an encoder
that used batch statistics would fail the comparison.
"""
from __future__ import annotations

import zlib
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np


def seeded_tensor(seed: int, key: str, shape: Sequence[int], dtype: str = "float32",
                  scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """The tensor ``key`` of the seeded weights (see the module docstring), plus ``offset``."""
    shape = tuple(int(s) for s in shape)
    if np.dtype(dtype).kind in "iub":
        return np.zeros(shape, dtype)
    rng = np.random.default_rng([int(seed), zlib.crc32(key.encode())])
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape) * scale
    elif key.endswith("running_var") or key.endswith(".weight"):
        value = rng.uniform(0.5, 1.5, shape)
    else:
        value = rng.normal(0.0, 0.1, shape) * scale
    return (value + offset).astype(dtype)


def seeded_state(seed: int, layout: Iterable[Tuple[str, Sequence[int], str]],
                 scales: Optional[Mapping[str, float]] = None,
                 offsets: Optional[Mapping[str, float]] = None) -> Dict[str, np.ndarray]:
    """{key: array} for a state-dict layout [(key, shape, dtype)], in the layout's order; per-key
    ``scales`` multiply and ``offsets`` are added (disparity heads centred on sigmoid's range)."""
    scales, offsets = scales or {}, offsets or {}
    return {key: seeded_tensor(seed, key, shape, dtype, scales.get(key, 1.0), offsets.get(key, 0.0))
            for key, shape, dtype in layout}
