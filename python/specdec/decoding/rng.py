"""Counter-based per-row uniform streams.

Every uniform the loop consumes is a pure function of (row key, row step, lane): a row's randomness does not
depend on which other rows share the batch, how many steps they take, or when they finish. This is what makes
batched generation equal per-row generation token for token (given the same keys), and it matches the ops'
contract that uniforms are inputs (docs/ALGORITHMS.md §3.1). One ``torch.Generator`` per call only derives the keys.
"""

from typing import Optional

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF

# Lane bases: which purpose a uniform serves within one (row, step). Each purpose has 4096 lanes.
LANE_ACCEPT = 0  # u_accept of draft/node i
LANE_SAMPLE = 1 << 12  # u_sample (recovered / bonus / plain AR sample)
LANE_DRAFT = 2 << 12  # drawing draft i from its q (draft model, Jacobi refresh, static-tree siblings)
LANE_INIT = 3 << 12  # fresh Jacobi init i
LANE_KEEP = 4 << 12  # coupled Jacobi refresh (MC-SJD): the keep test of entry i


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """(h * c) mod 2**32 for int64 tensors holding uint32 and ``c < 2**32``: the int64 product wraps modulo 2**64
    (two's complement, as torch's integer kernels compute it), which keeps its low 32 bits exact
    (tests/test_sizing.py checks this against Python integers)."""
    return (h * c) & _MASK32


def _lane_terms(lane_base: int, count: int, device) -> torch.Tensor:
    """The step-independent part of lanes ``lane_base .. lane_base + count - 1``: ``(lane + 1) * 0x27D4EB2F``."""
    lanes = torch.arange(lane_base, lane_base + count, device=device, dtype=torch.int64)
    return _mul32(lanes + 1, 0x27D4EB2F)


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: a bijection with full avalanche."""
    h = h & _MASK32
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _fmix32_np(h: np.ndarray) -> np.ndarray:
    """:func:`_fmix32` on uint32 arrays (NumPy's uint32 products wrap modulo 2**32, as ``_mul32`` computes)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def derive_row_keys(batch_size: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-row 31-bit keys from one generator seeded with ``seed`` (``(batch_size,)`` int64)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2**31 - 1, (batch_size,), generator=gen, dtype=torch.int64).to(device)


class RowStreams:
    """Uniforms in [0, 1) (float32, 24 random bits) addressed by (row key, row step, lane).

    On the CPU the hash runs in NumPy's uint32 arithmetic: the same bits as the torch path (which CUDA tensors
    take), at a fraction of its per-call cost (a decoding step draws uniforms a few times, over a handful of rows,
    where torch's per-op dispatch dominates)."""

    def __init__(self, keys: torch.Tensor):
        self.keys = keys.to(torch.int64) & _MASK32
        self._key_hash = _fmix32(self.keys + 0x9E3779B9)
        self._lanes = {}  # (lane_base, count) -> lane terms: built once per shape
        self._base_step, self._base = None, None  # the last step tensor seen and its per-row hash
        self._numpy = self.keys.device.type == "cpu"
        if self._numpy:
            self._keys_np = self.keys.numpy().astype(np.uint32)
            self._key_hash_np = self._key_hash.numpy().astype(np.uint32)

    @classmethod
    def from_seed(cls, batch_size: int, seed: int = 0, keys: Optional[torch.Tensor] = None, device="cpu"):
        return cls(derive_row_keys(batch_size, seed, device) if keys is None else keys.to(device))

    def uniform(self, step: torch.Tensor, lane_base: int, count: int) -> torch.Tensor:
        """``(batch_size, count)`` uniforms for lanes ``lane_base .. lane_base + count - 1`` at each row's step."""
        lanes = self._lanes.get((lane_base, count))
        if lanes is None:
            lanes = _lane_terms(lane_base, count, self.keys.device)
            lanes = self._lanes[(lane_base, count)] = lanes.numpy().astype(np.uint32) if self._numpy else lanes
        if self._numpy:
            return self._uniform_np(step, lanes)
        if step is not self._base_step:  # one row hash per step, shared by every lane group of the step
            self._base_step, self._base = step, _fmix32(self._key_hash ^ (step.to(torch.int64) & _MASK32))
        h = _fmix32(_fmix32(self._base[:, None] ^ lanes[None, :]) + self.keys[:, None])
        return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))

    def _uniform_np(self, step: torch.Tensor, lanes: np.ndarray) -> torch.Tensor:
        if step is not self._base_step:
            steps = step.detach().numpy().astype(np.uint32)  # int64 -> uint32 keeps the low 32 bits (& _MASK32)
            self._base_step, self._base = step, _fmix32_np(self._key_hash_np ^ steps)
        h = _fmix32_np(_fmix32_np(self._base[:, None] ^ lanes[None, :]) + self._keys_np[:, None])
        return torch.from_numpy((h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24)))
