"""The generation loop shared by every method: CFG-doubled prefill, then speculative steps until every row has
all its image tokens. Rows are ragged (each keeps its own length); finished rows idle as padding."""

import time
from dataclasses import dataclass
from typing import Optional

import torch

from ..profiling.timer import NULL_TIMER
from ..verifier import SpeculativeVerifier
from .logits import SamplingConfig
from .metrics import GenerationMetrics, MetricsRecorder
from .rng import LANE_SAMPLE, RowStreams
from .state import DecodeState


@dataclass
class Context:
    """Everything a method's step needs; built by :func:`generate`."""

    model: object
    cache: object
    num_slots: int
    sampling: SamplingConfig
    streams: RowStreams
    state: DecodeState
    recorder: MetricsRecorder
    validate: bool = False
    verifier: Optional[SpeculativeVerifier] = None  # default: exact, with this context's sampling settings
    timer: object = NULL_TIMER  # phase timer (specdec.profiling); the default is a no-op

    def __post_init__(self):
        if self.verifier is None:
            self.verifier = _configured(SpeculativeVerifier("exact"), self.sampling, self.validate)

    @property
    def cfg_copies(self) -> int:
        return 2 if self.sampling.uses_cfg else 1

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """The verifier's logits processing (drafters use it too, so q is processed like p)."""
        return self.verifier.process(logits)

    def uniform(self, lane_base: int, count: int) -> torch.Tensor:
        """This step's uniforms for every row (idle rows get some too; they are never used)."""
        return self.streams.uniform(self.state.steps, lane_base, count)

    def class_rows(self, num_classes: int) -> torch.Tensor:
        """Condition ids of the (doubled) batch: cond rows first, then the null class ``num_classes``."""
        cls = self.state.classes
        if not self.sampling.uses_cfg:
            return cls
        return torch.cat([cls, torch.full_like(cls, num_classes)])


@dataclass
class GenerationResult:
    tokens: torch.Tensor  # (batch_size, num_tokens) int64 image codes
    metrics: GenerationMetrics
    context: Optional[Context] = None  # kept only with keep_context=True (tests inspect caches)


def _configured(verifier: SpeculativeVerifier, sampling: SamplingConfig, validate: bool) -> SpeculativeVerifier:
    """The method's verifier with this call's logits processing and checking level."""
    return verifier.with_sampling(cfg_scale=sampling.cfg_scale if sampling.uses_cfg else None,
                                  temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                                  validate=validate)


def model_num_tokens(model) -> int:
    return int(model.num_tokens)


def generate(
    model,
    classes: torch.Tensor,
    method,
    *,
    sampling: SamplingConfig = SamplingConfig(),
    seed: int = 0,
    row_keys: Optional[torch.Tensor] = None,
    num_tokens: Optional[int] = None,
    validate: bool = False,
    keep_context: bool = False,
    timer=None,
) -> GenerationResult:
    """Generate ``num_tokens`` image tokens per class id with ``method`` (see :mod:`specdec.decoding.methods`).

    Parameters
    ----------
    model : target following the testbed protocol (``new_cache``, ``prefill``, ``forward_tokens``,
        ``compact_cache``; attributes ``num_tokens``, ``num_classes``).
    classes : ``(batch_size,)`` int64 class ids.
    method : a method instance (``AR()``, ``SJD()``, ``SD(draft)``, ``Eagle2(head)``, ...).
    sampling : CFG / temperature / top-k, applied to target and drafter alike.
    seed, row_keys : randomness. Row b's uniforms depend only on ``row_keys[b]`` (derived from ``seed`` by one
        ``torch.Generator`` when not given), so generating a row alone with its key reproduces it exactly.
    validate : run the ops' value checks (one host sync each).
    timer : a :class:`specdec.profiling.PhaseTimer` to charge each step's phases to (profiling only).
    """
    start = time.perf_counter()
    device = classes.device
    batch = classes.shape[0]
    method.begin(model, batch, sampling, device)
    n_tok = model_num_tokens(model) if num_tokens is None else int(num_tokens)
    state = DecodeState(classes.to(torch.int64), n_tok)
    streams = RowStreams.from_seed(batch, seed, row_keys, device)
    num_slots = n_tok + method.max_feed() + 1  # + trash slot
    recorder = MetricsRecorder(batch, n_tok)
    copies = 2 if sampling.uses_cfg else 1
    verifier = _configured(method.verifier, sampling, validate)
    ctx = Context(model, model.new_cache(copies * batch, num_slots), num_slots, sampling, streams, state, recorder,
                  validate, verifier, NULL_TIMER if timer is None else timer)
    with torch.no_grad():
        logits, hidden = model.prefill(ctx.class_rows(model.num_classes), ctx.cache)
        recorder.metrics.target_forwards += 1
        first = verifier.sample(logits, ctx.uniform(LANE_SAMPLE, 1)[:, 0])
        state.commit(first[:, None], torch.ones_like(first))
        method.start(ctx, hidden)
        # Each step commits at most max_feed tokens per row, so the longest row needs at least
        # ceil(max remaining / max_feed) more steps: read the lengths on the host (one sync) only when that many
        # steps have run, not after every step.
        max_feed, unchecked = method.max_feed(), 0
        while True:
            if unchecked == 0:
                unchecked = -(-int(state.remaining.max()) // max_feed)
                if unchecked <= 0:
                    break
            unchecked -= 1
            with ctx.timer.step():
                active = state.active
                state.steps = state.steps + active.long()
                accept_len = method.step(ctx)
                recorder.record_step(active, accept_len)
    metrics = recorder.finish(time.perf_counter() - start)
    method.end(metrics)
    return GenerationResult(state.tokens, metrics, ctx if keep_context else None)
