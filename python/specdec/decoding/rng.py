"""Counter-based per-row uniform streams.

Every uniform the loop consumes is a pure function of (row key, row step, lane): a row's randomness does not
depend on which other rows share the batch, how many steps they take, or when they finish. This is what makes
batched generation equal per-row generation token for token (given the same keys), and it matches the ops'
contract that uniforms are inputs (docs/ALGORITHMS.md §3.1). One ``torch.Generator`` per call only derives the keys.
"""

from typing import Optional

import torch

_MASK32 = 0xFFFFFFFF

# Lane bases: which purpose a uniform serves within one (row, step). Each purpose has 4096 lanes.
LANE_ACCEPT = 0  # u_accept of draft/node i
LANE_SAMPLE = 1 << 12  # u_sample (recovered / bonus / plain AR sample)
LANE_DRAFT = 2 << 12  # drawing draft i from its q (draft model, Jacobi refresh, static-tree siblings)
LANE_INIT = 3 << 12  # fresh Jacobi init i


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """(h * c) mod 2**32 for int64 tensors holding uint32, split in 16-bit halves so nothing overflows int64."""
    lo, hi = h & 0xFFFF, h >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: a bijection with full avalanche."""
    h = h & _MASK32
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def derive_row_keys(batch_size: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-row 31-bit keys from one generator seeded with ``seed`` (``(batch_size,)`` int64)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2**31 - 1, (batch_size,), generator=gen, dtype=torch.int64).to(device)


class RowStreams:
    """Uniforms in [0, 1) (float32, 24 random bits) addressed by (row key, row step, lane)."""

    def __init__(self, keys: torch.Tensor):
        self.keys = keys.to(torch.int64) & _MASK32

    @classmethod
    def from_seed(cls, batch_size: int, seed: int = 0, keys: Optional[torch.Tensor] = None, device="cpu"):
        return cls(derive_row_keys(batch_size, seed, device) if keys is None else keys.to(device))

    def uniform(self, step: torch.Tensor, lane_base: int, count: int) -> torch.Tensor:
        """``(batch_size, count)`` uniforms for lanes ``lane_base .. lane_base + count - 1`` at each row's step."""
        lanes = torch.arange(lane_base, lane_base + count, device=self.keys.device, dtype=torch.int64)
        base = _fmix32(_fmix32(self.keys + 0x9E3779B9) ^ (step.to(torch.int64) & _MASK32))
        h = _fmix32(_fmix32(base[:, None] ^ _mul32(lanes[None, :] + 1, 0x27D4EB2F)) + self.keys[:, None])
        return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))
