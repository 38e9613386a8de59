"""Logits processing shared by target and drafters: CFG -> temperature -> top-k -> softmax (TESTBED.md 1.4).

Every method verifies against these processed distributions, and a drafter's q goes through the same chain
(ALGORITHMS.md section 1), so truncation is part of p and q.
"""

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How raw logits become the distribution p.

    cfg_scale: classifier-free guidance scale s (``l = l_u + s * (l_c - l_u)``); None or 1.0 runs no uncond
        rows at all (cond logits only), anything else doubles the batch (cond rows first).
    temperature: divides the guided logits (clamped to 1e-5, so 0 is near-greedy).
    top_k: keep the k largest logits (and ties with the k-th); 0 or None keeps all.
    """

    cfg_scale: Optional[float] = 4.0
    temperature: float = 1.0
    top_k: Optional[int] = 0

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale is not None and float(self.cfg_scale) != 1.0


def process_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Turn raw logits into float32 probabilities.

    Parameters
    ----------
    logits : ``(rows, ..., vocab_size)``; with CFG ``rows = 2 * batch_size``, cond rows first.

    Returns
    -------
    ``(batch_size, ..., vocab_size)`` float32 probabilities (softmax in at least float32).
    """
    work = logits if logits.dtype == torch.float64 else logits.float()
    if cfg.uses_cfg:
        cond, uncond = work.chunk(2, dim=0)
        work = uncond + float(cfg.cfg_scale) * (cond - uncond)
    work = work / max(float(cfg.temperature), 1e-5)
    k = cfg.top_k or 0
    if 0 < k < work.shape[-1]:
        kth = torch.topk(work, k, dim=-1).values[..., -1:]
        work = work.masked_fill(work < kth, float("-inf"))
    return torch.softmax(work, dim=-1).to(torch.float32)
