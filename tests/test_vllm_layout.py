"""vLLM v1 rejection-sampler layout: flattened drafts with cu_num_draft_tokens in, [B, max_spec_len + 1] int32
padded with -1 out; equal to padded verify_chain on the same uniforms for exact, GSD and LANTERN."""

import pytest
import torch
import torch.nn.functional as F

import specdec_kernels as sk
from specdec import SpeculativeVerifier
from specdec.adapters.vllm import PLACEHOLDER_TOKEN_ID, rejection_sample

V = 48
NUM_DRAFTS = [3, 0, 5, 1, 5]


def _flat(seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch, num_tokens = len(NUM_DRAFTS), sum(NUM_DRAFTS)
    cu = torch.tensor(NUM_DRAFTS).cumsum(0).to(torch.int32)
    return dict(
        draft_token_ids=torch.randint(0, V, (num_tokens,), generator=gen, dtype=torch.int32),
        cu_num_draft_tokens=cu,
        target_logits=2 * torch.randn(num_tokens, V, generator=gen),
        bonus_logits=2 * torch.randn(batch, V, generator=gen),
        draft_probs=torch.softmax(torch.randn(num_tokens, V, generator=gen), -1),
        uniform_probs=torch.rand(num_tokens, generator=gen),
        uniform_bonus=torch.rand(batch, generator=gen),
    )


def _padded(inputs, verifier, use_q):
    """The same batch in verify_chain's padded layout, built by a plain Python loop."""
    batch, width = len(NUM_DRAFTS), max(NUM_DRAFTS)
    p = torch.zeros(batch, width + 1, V)
    q = torch.zeros(batch, width, V)
    drafts = torch.zeros(batch, width, dtype=torch.int64)
    u_accept = torch.zeros(batch, width)
    start = 0
    target = verifier.process(inputs["target_logits"])
    bonus = verifier.process(inputs["bonus_logits"])
    for b, n in enumerate(NUM_DRAFTS):
        p[b, :n] = target[start:start + n]
        p[b, n:] = bonus[b]
        q[b, :n] = inputs["draft_probs"][start:start + n]
        drafts[b, :n] = inputs["draft_token_ids"][start:start + n].long()
        u_accept[b, :n] = inputs["uniform_probs"][start:start + n]
        start += n
    return p, (q if use_q else None), drafts, u_accept


def _codebook():
    return torch.randn(V, 8, generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("method", ["exact", "gsd", "lantern"])
@pytest.mark.parametrize("use_q", [True, False])
def test_equals_padded_verify_chain(method, use_q):
    inputs = _flat()
    codebook = None if method == "exact" else _codebook()
    verifier = SpeculativeVerifier(method, codebook=codebook, temperature=0.9, top_k=30)
    kwargs = {k: v for k, v in inputs.items() if k != "draft_probs" or use_q}
    out = rejection_sample(verifier=verifier, **kwargs)
    width = max(NUM_DRAFTS)
    assert out.dtype == torch.int32 and out.shape == (len(NUM_DRAFTS), width + 1)
    p, q, drafts, u_accept = _padded(inputs, verifier, use_q)
    accept_len, next_token = sk.verify_chain(p, q, drafts, u_accept, inputs["uniform_bonus"],
                                             num_drafts=torch.tensor(NUM_DRAFTS), **verifier.kernel_kwargs)
    for b in range(len(NUM_DRAFTS)):
        a = int(accept_len[b])
        expected = drafts[b, :a].tolist() + [int(next_token[b])] + [PLACEHOLDER_TOKEN_ID] * (width - a)
        assert out[b].tolist() == expected


def test_built_from_method_name_and_codebook():
    inputs = _flat(1)
    codebook = _codebook()
    out = rejection_sample(method="lantern", codebook=codebook, delta=0.2, **inputs)
    verifier = SpeculativeVerifier("lantern", codebook=codebook, delta=0.2)
    assert torch.equal(out, rejection_sample(verifier=verifier, **inputs))
    table = sk.neighbor_table(codebook, V // 16)
    assert torch.equal(verifier.kernel_kwargs["neighbors"], table)
    gsd = rejection_sample(method="gsd", codebook=codebook, **inputs)
    ref = rejection_sample(verifier=SpeculativeVerifier("gsd", embeddings=F.normalize(codebook, dim=-1),
                                                        rank_window=(1, 1)), **inputs)
    assert torch.equal(gsd, ref)


def test_bonus_token_ids_sampled_outside_are_emitted_when_all_drafts_pass():
    inputs = _flat(2)
    inputs.pop("bonus_logits")
    # Target rows one-hot on the drafts: every draft passes, so every request ends with its bonus token.
    inputs["target_logits"] = torch.full_like(inputs["target_logits"], -30.0)
    inputs["target_logits"].scatter_(1, inputs["draft_token_ids"].long()[:, None], 30.0)
    bonus = torch.arange(len(NUM_DRAFTS), dtype=torch.int64)[:, None] + 7
    out = rejection_sample(bonus_token_ids=bonus, **inputs)
    start = 0
    for b, n in enumerate(NUM_DRAFTS):
        assert out[b, :n].tolist() == inputs["draft_token_ids"][start:start + n].tolist()
        assert int(out[b, n]) == int(bonus[b])
        assert (out[b, n + 1:] == PLACEHOLDER_TOKEN_ID).all()
        start += n


def test_target_probs_and_max_spec_len_and_generator():
    inputs = _flat(3)
    verifier = SpeculativeVerifier("exact")
    probs = dict(inputs, target_probs=verifier.process(inputs["target_logits"]),
                 bonus_probs=verifier.process(inputs["bonus_logits"]))
    del probs["target_logits"], probs["bonus_logits"]
    assert torch.equal(rejection_sample(**probs), rejection_sample(**inputs))
    wide = rejection_sample(max_spec_len=8, **inputs)
    assert wide.shape == (len(NUM_DRAFTS), 9) and (wide[:, 6:] == PLACEHOLDER_TOKEN_ID).all()
    no_u = {k: v for k, v in inputs.items() if not k.startswith("uniform")}
    a = rejection_sample(generator=torch.Generator().manual_seed(0), **no_u)
    b = rejection_sample(generator=torch.Generator().manual_seed(0), **no_u)
    assert torch.equal(a, b)


def test_bad_layout_is_a_clear_error():
    inputs = _flat()
    with pytest.raises(ValueError, match="cu_num_draft_tokens"):
        rejection_sample(**dict(inputs, cu_num_draft_tokens=torch.tensor([3, 3, 8, 9, 13], dtype=torch.int32)))
    with pytest.raises(ValueError, match="max_spec_len"):
        rejection_sample(max_spec_len=2, **inputs)
    with pytest.raises(ValueError, match="bonus"):
        rejection_sample(bonus_token_ids=torch.zeros(5, 1, dtype=torch.int64), **inputs)
    with pytest.raises(ValueError, match="draft_probs"):
        rejection_sample(**dict(inputs, draft_probs=inputs["draft_probs"][:3]))
