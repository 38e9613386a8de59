"""Per-call generation metrics."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch


@dataclass
class SizeReport:
    """The size an auto-sized call ran (``size="auto"``, :mod:`specdec.decoding.sizing`) and its predicted vs
    measured speed.

    size / label: the size and its words (``"window 8"``); reason: why it ran (``"explore"``: the first call,
    collecting statistics; ``"probe"``: AR steps timed once; ``"fastest"``: the fastest predicted size; ``"ar"``: no
    size beat AR steps by ``margin``). Tokens per step are per row; seconds per step per batched step, measured
    from the size choice to the call's end over the loop's steps and the prefill (counted as one step).
    ar_tokens_per_second: AR steps' predicted speed when the size was chosen (NaN for explore / probe calls).
    """

    size: object
    label: str
    reason: str
    predicted_tokens_per_step: float
    predicted_seconds_per_step: float
    measured_tokens_per_step: float
    measured_seconds_per_step: float
    margin: float = 0.0
    ar_tokens_per_second: float = float("nan")

    @property
    def predicted_tokens_per_second(self) -> float:
        return _rate(self.predicted_tokens_per_step, self.predicted_seconds_per_step)

    @property
    def measured_tokens_per_second(self) -> float:
        return _rate(self.measured_tokens_per_step, self.measured_seconds_per_step)


def _rate(tokens: float, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else float("nan")


@dataclass
class GenerationMetrics:
    """What one :func:`~specdec.decoding.generate` call cost.

    target_forwards: batched target-model calls, the prefill included (an AR image of N tokens takes N).
    draft_forwards: batched draft-model / draft-head calls.
    row_steps: ``(batch_size,)`` speculative steps each row took (prefill excluded).
    accept_lens: ``(batch_size, max_steps)`` accepted drafts per step, -1 after a row finished.
    wall_time_s: wall-clock seconds of the whole call.
    sizing: the size an auto-sized method ran and its predicted vs measured speed (None for fixed sizes).
    """

    target_forwards: int = 0
    draft_forwards: int = 0
    row_steps: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    accept_lens: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.int64))
    wall_time_s: float = 0.0
    num_tokens: int = 0
    sizing: Optional[SizeReport] = None

    @property
    def tokens_per_step(self) -> torch.Tensor:
        """``(batch_size,)`` tokens emitted per speculative step (the prefill's first token excluded)."""
        return (self.num_tokens - 1) / self.row_steps.clamp_min(1).double()

    @property
    def mean_accept_len(self) -> float:
        """Mean accepted drafts per (row, step)."""
        taken = self.accept_lens[self.accept_lens >= 0]
        return float(taken.double().mean()) if taken.numel() else 0.0

    def summary(self) -> Dict[str, object]:
        out = {
            "target_forwards": self.target_forwards,
            "draft_forwards": self.draft_forwards,
            "tokens_per_step": float(self.tokens_per_step.mean()) if self.row_steps.numel() else 0.0,
            "mean_accept_len": self.mean_accept_len,
            "wall_time_s": self.wall_time_s,
        }
        if self.sizing is not None:
            out.update({"size": self.sizing.label, "size_reason": self.sizing.reason,
                        "predicted_tokens_per_second": self.sizing.predicted_tokens_per_second,
                        "measured_tokens_per_second": self.sizing.measured_tokens_per_second})
        return out


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
