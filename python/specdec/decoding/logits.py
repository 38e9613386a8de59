"""Logits processing shared by target and drafters: CFG -> temperature -> top-k -> top-p -> softmax
(docs/TESTBED.md §1.4). The processing itself is ``specdec_kernels.process_logits``, the one the verifier
applies to target logits; :meth:`SamplingConfig.process` applies a configuration.

Every method verifies against these processed distributions, and a drafter's q goes through the same chain
(docs/ALGORITHMS.md §1), so truncation is part of p and q.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from .. import verifier


@dataclass(frozen=True)
class SamplingConfig:
    """How raw logits become the distribution p.

    cfg_scale: classifier-free guidance scale s (``l = l_u + s * (l_c - l_u)``); None or 1.0 runs no uncond
        rows at all (cond logits only), anything else doubles the batch (cond rows first).
    temperature: divides the guided logits (clamped to 1e-5); 0 is greedy: the verifier accepts a draft only
        while it is the argmax (:class:`specdec.SpeculativeVerifier`).
    top_k: keep the k largest logits (and ties with the k-th); 0 or None keeps all.
    top_p: nucleus filtering after top-k (1.0 keeps all).
    """

    cfg_scale: Optional[float] = 4.0
    temperature: float = 1.0
    top_k: Optional[int] = 0
    top_p: float = 1.0

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale is not None and float(self.cfg_scale) != 1.0

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Turn raw logits ``(rows, ..., V)`` (with CFG ``rows = 2 * batch``, cond rows first) into float32
        probabilities ``(batch, ..., V)`` with this configuration."""
        return verifier.sampling_probs(logits, cfg_scale=self.cfg_scale if self.uses_cfg else None,
                                 temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
