"""Where a decoding step's time goes: phase timers (:mod:`.timer`) and ``specdec profile`` (:mod:`.profile`)."""

from .timer import NULL_TIMER, PHASE_TITLES, PHASES, NullTimer, PhaseTimer

__all__ = ["NULL_TIMER", "NullTimer", "PhaseTimer", "PHASES", "PHASE_TITLES"]
