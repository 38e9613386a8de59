"""Phase timers for the decoding step: where a step's time goes.

Every step of :func:`specdec.decoding.generate` runs its work inside ``ctx.timer.phase(name)`` blocks. The default
timer is :data:`NULL_TIMER`, whose ``phase`` returns one shared no-op context manager: no clock reads, no device
synchronisation, nothing allocated on the normal path. :class:`PhaseTimer` (used by ``specdec profile``) reads the
clock at every phase boundary (synchronising the device first on CUDA, so the time lands in the phase that queued
the work) and charges each interval to the innermost open phase; what a step spends outside every named phase is
charged to ``"python"`` (the loop's own Python and small-tensor glue).
"""

import time
from contextlib import nullcontext
from typing import Dict, List

import torch

#: The phases of a step, in the order the profile reports them.
PHASES = ("target_forward", "draft", "tree_masks", "logits", "verify", "bookkeeping", "python")

PHASE_TITLES = {
    "target_forward": "target forward",
    "draft": "draft model / head passes and draft sampling",
    "tree_masks": "tree building and attention masks",
    "logits": "draft-side logits processing (CFG, temperature, top-k, softmax of draft model / head logits)",
    "verify": "verification (kernels, uniforms; with the target logits processing, which the verifier may fuse)",
    "bookkeeping": "cache and state bookkeeping",
    "python": "Python overhead (everything else in the step)",
}

_NOOP = nullcontext()


class NullTimer:
    """The timer of a normal run: every phase is the same no-op context manager."""

    enabled = False

    def phase(self, name: str):
        return _NOOP

    def step(self):
        return _NOOP


NULL_TIMER = NullTimer()


class _Phase:
    __slots__ = ("timer", "name")

    def __init__(self, timer: "PhaseTimer", name: str):
        self.timer, self.name = timer, name

    def __enter__(self):
        self.timer._push(self.name)

    def __exit__(self, *exc):
        self.timer._pop()
        return False


class PhaseTimer:
    """Exclusive wall-clock seconds per phase, summed over the steps it saw.

    ``seconds[name]``: time spent inside phase ``name`` but outside any phase nested in it; ``steps``: how many
    steps were timed. Phases must be among :data:`PHASES`.
    """

    enabled = True

    def __init__(self, device: torch.device | str = "cpu"):
        device = torch.device(device)
        self._sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self.seconds: Dict[str, float] = {name: 0.0 for name in PHASES}
        self.steps = 0
        self._stack: List[str] = []
        self._mark = 0.0

    def _charge(self) -> float:
        self._sync()
        now = time.perf_counter()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._mark
        self._mark = now
        return now

    def _push(self, name: str) -> None:
        if name not in self.seconds:
            raise ValueError(f"phase: unknown {name!r}; choose from {PHASES}")
        self._charge()
        self._stack.append(name)

    def _pop(self) -> None:
        self._charge()
        self._stack.pop()

    def phase(self, name: str) -> _Phase:
        return _Phase(self, name)

    def step(self) -> _Phase:
        """One whole step: time not claimed by a nested phase is Python overhead."""
        self.steps += 1
        return _Phase(self, "python")

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def fractions(self) -> Dict[str, float]:
        total = self.total or 1.0
        return {name: s / total for name, s in self.seconds.items()}
