"""(b) Exact methods reproduce plain AR sampling: the generated sequences' distribution equals the toy
target's exact joint (teacher-forced enumeration), judged by chi-square on token pairs (docs/ALGORITHMS.md §5.2).

One batched call of N_SAMPLES rows per method, one class, CFG + temperature + top-k on. Each test's
significance is stats.ALPHA = 1e-6."""

import pytest
import torch
from stats import ALPHA, chi_square_pvalue, histogram

from specdec.decoding import SamplingConfig, generate, methods
from specdec.decoding.toy import ToyARModel, ToyDraftHead, exact_sequence_distribution

N_SAMPLES = 20_000
VOCAB, NUM_TOKENS, CLS = 8, 5, 1
SAMPLING = SamplingConfig(cfg_scale=2.0, temperature=0.9, top_k=6)
TARGET = ToyARModel(vocab_size=VOCAB, num_tokens=NUM_TOKENS, seed=0)
DRAFT = ToyARModel(vocab_size=VOCAB, num_tokens=NUM_TOKENS, seed=5)
HEAD = ToyDraftHead(TARGET)
PAIRS = [(0, 1), (2, 3), (3, 4)]

EXACT = {
    "ar": (lambda: methods.AR(), PAIRS[:1]),
    "sd": (lambda: methods.SD(DRAFT, gamma=3), PAIRS),
    "sjd": (lambda: methods.SJD(window=5), PAIRS),
    "sjd_repeat_left": (lambda: methods.SJD(window=5, init="repeat_left"), PAIRS[1:2]),
    "mc_sjd": (lambda: methods.MCSJD(window=5), PAIRS),
    "eagle2": (lambda: methods.Eagle2(HEAD, total_tokens=8, depth=2, top_k=3), PAIRS),
    "static": (lambda: methods.StaticTreeMethod(HEAD, choices=[(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]),
               PAIRS[1:]),
}


@pytest.fixture(scope="module")
def joint():
    return exact_sequence_distribution(TARGET, CLS, SAMPLING)


def _pair_pvalues(tokens, joint, pairs):
    out = []
    for i, j in pairs:
        others = tuple(k for k in range(NUM_TOKENS) if k not in (i, j))
        expected = joint.sum(dim=others).reshape(-1)
        out.append(chi_square_pvalue(histogram(tokens[:, i] * VOCAB + tokens[:, j], VOCAB * VOCAB), expected))
    return out


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_method_matches_ar_distribution(name, joint):
    factory, pairs = EXACT[name]
    torch.set_num_threads(1)
    res = generate(TARGET, torch.full((N_SAMPLES,), CLS), factory(), sampling=SAMPLING, seed=2024)
    pvalues = _pair_pvalues(res.tokens, joint, pairs)
    assert min(pvalues) > ALPHA, (name, pvalues)
    if name != "ar":
        assert res.metrics.mean_accept_len > 0.05  # drafts are really being accepted, not only recovered


class _SDWrongQ(methods.SD):
    """Mutation: drafts drawn from the draft model but verified against a uniform q (a loop that loses track
    of which distribution its drafts came from)."""

    def propose(self, ctx):
        drafts, q = super().propose(ctx)
        return drafts, torch.full_like(q, 1.0 / q.shape[-1])


def test_oracle_detects_a_biased_loop(joint):
    """Power check: the same test rejects the mutated SD loop at the same sample size."""
    res = generate(TARGET, torch.full((N_SAMPLES,), CLS), _SDWrongQ(DRAFT, gamma=3), sampling=SAMPLING, seed=7)
    assert min(_pair_pvalues(res.tokens, joint, PAIRS)) < ALPHA
