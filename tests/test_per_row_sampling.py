"""Per-row sampling parameters (temperature, top-k, top-p as ``(B,)`` tensors) in the eager processing path and
:class:`SpeculativeVerifier`: each row is processed and verified as if it ran alone with its own scalars;
temperature-0 rows follow vLLM's greedy rule (accept while the draft is the argmax); sampled rows of a mixed
batch keep the target distribution (chi-square)."""

import pytest
import torch

from stats import ALPHA, chi_square_pvalue

from specdec import SpeculativeVerifier
from specdec.verifier import _eager_process, sampling_probs as process_logits

B, L, V = 6, 5, 40
TEMPERATURE = torch.tensor([0.0, 0.7, 1.0, 1.3, 0.0, 0.9])
TOP_K = torch.tensor([0, 5, 0, 12, 3, V + 10])  # 0 and >= V keep every token
TOP_P = torch.tensor([1.0, 1.0, 0.8, 0.95, 0.5, 1.0])


def _row_config(b):
    return dict(temperature=float(TEMPERATURE[b]), top_k=int(TOP_K[b]), top_p=float(TOP_P[b]))


def _logits(seed=0, rows=B, positions=L + 1, vocab=V):
    return 3 * torch.randn(rows, positions, vocab, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cfg_scale", [None, 2.5])
def test_each_row_is_processed_as_with_its_own_scalars(cfg_scale):
    logits = _logits(rows=2 * B if cfg_scale else B)
    per_row = process_logits(logits, cfg_scale=cfg_scale, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P)
    assert per_row.shape == (B, L + 1, V) and per_row.dtype == torch.float32
    for b in range(B):
        rows = [b, B + b] if cfg_scale else [b]
        alone = _eager_process(logits[rows], cfg_scale=cfg_scale, **_row_config(b))
        if TEMPERATURE[b] == 0:  # exactly greedy: one-hot on the argmax of the mixed logits
            mixed = logits[b] if not cfg_scale else logits[B + b] + cfg_scale * (logits[b] - logits[B + b])
            alone = torch.nn.functional.one_hot(mixed.argmax(-1), V).float()[None]
        torch.testing.assert_close(per_row[b:b + 1], alone)


def test_rows_with_equal_settings_match_the_scalar_path():
    logits = _logits(1)
    for config in [dict(temperature=0.8, top_k=7, top_p=0.9), dict(temperature=1.0, top_k=0, top_p=1.0)]:
        rows = {name: torch.full((B,), value) for name, value in config.items()}
        rows["top_k"] = rows["top_k"].long()
        torch.testing.assert_close(process_logits(logits, **rows), process_logits(logits, **config))


def _greedy_case(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = _logits(seed)
    argmax = logits.argmax(-1)
    drafts = argmax[:, :L].clone()
    wrong_at = torch.randint(0, L + 1, (B,), generator=gen)  # L: every draft is the argmax
    for b in range(B):
        if wrong_at[b] < L:
            drafts[b, wrong_at[b]] = (argmax[b, wrong_at[b]] + 1) % V
    num_drafts = torch.tensor([L, 3, L, 0, 2, L])
    return logits, drafts, num_drafts, argmax, wrong_at


@pytest.mark.parametrize("method", ["exact", "gsd", "lantern"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_rows_accept_while_the_draft_is_the_argmax(method, seed):
    logits, drafts, num_drafts, argmax, wrong_at = _greedy_case(seed)
    codebook = None if method == "exact" else torch.randn(V, 4, generator=torch.Generator().manual_seed(5))
    verifier = SpeculativeVerifier(method, codebook=codebook, temperature=torch.zeros(B), top_k=TOP_K)
    for u_seed in (0, 1):  # greedy rows do not depend on the uniforms
        gen = torch.Generator().manual_seed(u_seed)
        out = verifier.step(logits, drafts, num_drafts=num_drafts, u_accept=torch.rand(B, L, generator=gen),
                            u_sample=torch.rand(B, generator=gen))
        expected_len = torch.minimum(wrong_at, num_drafts)
        assert out.accept_len.tolist() == expected_len.tolist()
        assert out.next_token.tolist() == argmax.gather(1, expected_len[:, None])[:, 0].tolist()
    scalar = SpeculativeVerifier(method, codebook=codebook, temperature=0.0)
    for return_probs in (True, False):  # the scalar-0 path (fused op when the library has it) agrees
        same = scalar.step(logits, drafts, num_drafts=num_drafts, u_accept=torch.zeros(B, L),
                           u_sample=torch.zeros(B), return_probs=return_probs)
        assert same.accept_len.tolist() == out.accept_len.tolist()
        assert same.next_token.tolist() == out.next_token.tolist()


@pytest.mark.parametrize("method", ["exact", "gsd", "lantern"])
@pytest.mark.parametrize("cfg_scale", [None, 3.0])
def test_mixed_batch_equals_its_rows_run_alone(method, cfg_scale):
    gen = torch.Generator().manual_seed(4)
    logits = _logits(4, rows=2 * B if cfg_scale else B)
    drafts = torch.randint(0, V, (B, L), generator=gen)
    drafts[:, :2] = process_logits(logits, cfg_scale=cfg_scale, temperature=1.0).argmax(-1)[:, :2]  # some accept
    num_drafts = torch.tensor([L, 1, 3, L, 0, 4])
    q = torch.softmax(torch.randn(B, L, V, generator=gen), -1)
    u_accept, u_sample = torch.rand(B, L, generator=gen), torch.rand(B, generator=gen)
    codebook = None if method == "exact" else torch.randn(V, 4, generator=torch.Generator().manual_seed(5))
    base = SpeculativeVerifier(method, codebook=codebook, delta=0.2 if method == "lantern" else None)
    batched = base.with_sampling(cfg_scale=cfg_scale, temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P).step(
        logits, drafts, num_drafts=num_drafts, draft_probs=q, u_accept=u_accept, u_sample=u_sample)
    for b in range(B):
        rows = [b, B + b] if cfg_scale else [b]
        alone = base.with_sampling(cfg_scale=cfg_scale, **_row_config(b)).step(
            logits[rows], drafts[b:b + 1], num_drafts=num_drafts[b:b + 1], draft_probs=q[b:b + 1],
            u_accept=u_accept[b:b + 1], u_sample=u_sample[b:b + 1])
        assert batched.tokens[b].tolist() == alone.tokens[0].tolist(), b


def test_sampled_rows_of_a_mixed_batch_keep_the_target_distribution():
    """Half the rows greedy, half sampled with T 0.8 / top-p 0.9, each with two drafts from q: the first
    committed token of the sampled rows is distributed as p (exact acceptance), the greedy rows give the argmax."""
    n, vocab = 8000, 8
    gen = torch.Generator().manual_seed(0)
    row_logits = 2 * torch.randn(1, 3, vocab, generator=gen)
    logits = row_logits.expand(2 * n, -1, -1)
    temperature = torch.tensor([0.0, 0.8]).repeat(n)
    top_p = torch.tensor([1.0, 0.9]).repeat(n)
    q = torch.softmax(torch.randn(1, 2, vocab, generator=gen), -1).expand(2 * n, -1, -1)
    drafts = torch.multinomial(q.reshape(-1, vocab), 1, generator=gen).view(2 * n, 2)
    verifier = SpeculativeVerifier("exact", temperature=temperature, top_p=top_p)
    out = verifier.step(logits, drafts, draft_probs=q.contiguous(), generator=gen)
    first = out.tokens[:, 0]
    p = process_logits(row_logits[:, 0], temperature=0.8, top_p=0.9)[0]
    observed = torch.bincount(first[1::2], minlength=vocab)
    assert chi_square_pvalue(observed, p) > ALPHA
    assert (first[0::2] == row_logits[0, 0].argmax()).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=torch.ones(B + 1)), "temperature"),
    (dict(temperature=torch.tensor([1.0, -0.5, 1, 1, 1, 1])), "temperature"),
    (dict(top_p=torch.tensor([1.0, 0.0, 1, 1, 1, 1])), "top_p"),
    (dict(top_k=torch.full((B,), 2.0)), "top_k"),
    (dict(top_k=torch.tensor([1, -1, 1, 1, 1, 1])), "top_k"),
    (dict(temperature=torch.ones(B, 2)), "temperature"),
])
def test_bad_per_row_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpeculativeVerifier("exact", **kwargs).step(_logits(), torch.zeros(B, L, dtype=torch.int64))
