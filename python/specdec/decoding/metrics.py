"""Per-call generation metrics."""

from dataclasses import dataclass, field
from typing import Dict, List

import torch


@dataclass
class GenerationMetrics:
    """What one :func:`~specdec.decoding.generate` call cost.

    target_forwards: batched target-model calls, the prefill included (an AR image of N tokens takes N).
    draft_forwards: batched draft-model / draft-head calls.
    row_steps: ``(batch_size,)`` speculative steps each row took (prefill excluded).
    accept_lens: ``(batch_size, max_steps)`` accepted drafts per step, -1 after a row finished.
    wall_time_s: wall-clock seconds of the whole call.
    """

    target_forwards: int = 0
    draft_forwards: int = 0
    row_steps: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    accept_lens: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.int64))
    wall_time_s: float = 0.0
    num_tokens: int = 0

    @property
    def tokens_per_step(self) -> torch.Tensor:
        """``(batch_size,)`` tokens emitted per speculative step (the prefill's first token excluded)."""
        return (self.num_tokens - 1) / self.row_steps.clamp_min(1).double()

    @property
    def mean_accept_len(self) -> float:
        """Mean accepted drafts per (row, step)."""
        taken = self.accept_lens[self.accept_lens >= 0]
        return float(taken.double().mean()) if taken.numel() else 0.0

    def summary(self) -> Dict[str, float]:
        return {
            "target_forwards": self.target_forwards,
            "draft_forwards": self.draft_forwards,
            "tokens_per_step": float(self.tokens_per_step.mean()) if self.row_steps.numel() else 0.0,
            "mean_accept_len": self.mean_accept_len,
            "wall_time_s": self.wall_time_s,
        }


class MetricsRecorder:
    def __init__(self, batch_size: int, num_tokens: int):
        self.metrics = GenerationMetrics(num_tokens=num_tokens)
        self.batch_size = batch_size
        self._accepts: List[torch.Tensor] = []

    def record_step(self, active: torch.Tensor, accept_len: torch.Tensor) -> None:
        self._accepts.append(torch.where(active, accept_len, -1).cpu())

    def finish(self, wall_time_s: float) -> GenerationMetrics:
        m = self.metrics
        m.accept_lens = (
            torch.stack(self._accepts, dim=1) if self._accepts else torch.zeros(self.batch_size, 0, dtype=torch.int64)
        )
        m.row_steps = (m.accept_lens >= 0).sum(1)
        m.wall_time_s = wall_time_s
        return m
