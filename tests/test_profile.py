"""The phase timer behind ``specdec profile``: exclusive time per phase, a no-op default, and profiled generation
producing the same tokens as unprofiled generation."""

import pytest
import torch

from specdec.decoding import SamplingConfig, generate, methods
from specdec.decoding.toy import ToyARModel, ToyDraftHead
from specdec.profiling import NULL_TIMER, PHASES, PhaseTimer
from specdec.profiling import timer as timer_module

TARGET = ToyARModel(vocab_size=8, num_tokens=9, seed=0)
HEAD = ToyDraftHead(TARGET)
SAMPLING = SamplingConfig(cfg_scale=2.0, top_k=6)


def test_nested_phases_are_charged_exclusively(monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr(timer_module.time, "perf_counter", lambda: float(next(clock)))
    t = PhaseTimer()
    with t.step():  # t = 0
        with t.phase("draft"):  # 1
            with t.phase("logits"):  # 2
                pass  # 3
        # 4 (draft ends)
    # 5 (step ends)
    assert t.seconds["logits"] == 1 and t.seconds["draft"] == 2 and t.seconds["python"] == 2
    assert t.total == 5 and t.steps == 1 and abs(sum(t.fractions().values()) - 1) < 1e-12
    with pytest.raises(ValueError, match="phase"):
        t.phase("nope").__enter__()


def test_null_timer_is_one_shared_no_op():
    assert NULL_TIMER.phase("draft") is NULL_TIMER.phase("verify") is NULL_TIMER.step()
    with NULL_TIMER.phase("anything"):
        pass


@pytest.mark.parametrize("factory", [lambda: methods.SJD(window=5), lambda: methods.Eagle2(HEAD, total_tokens=8,
                                     depth=2, top_k=3), lambda: methods.LanternPP(HEAD, TARGET.codebook, k=3)])
def test_profiled_generation_is_unchanged_and_charges_every_step(factory):
    classes = torch.tensor([0, 1, 2])
    plain = generate(TARGET, classes, factory(), sampling=SAMPLING, seed=3)
    t = PhaseTimer()
    timed = generate(TARGET, classes, factory(), sampling=SAMPLING, seed=3, timer=t)
    assert torch.equal(plain.tokens, timed.tokens)
    assert t.steps == int(timed.metrics.row_steps.max())
    assert set(t.seconds) == set(PHASES)
    for phase in ("target_forward", "verify", "bookkeeping", "tree_masks", "python"):
        assert t.seconds[phase] > 0, phase
