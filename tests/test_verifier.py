"""SpeculativeVerifier: raw logits -> the same tokens as the ops on the reference processing, for every method,
with CFG, temperature, top-k, top-p, ragged rows, trees; tables built once; clear errors."""

from typing import Optional

import pytest
import torch
import torch.nn.functional as F

import specdec_kernels as sk
from specdec import SpeculativeVerifier
from specdec.verifier import sampling_probs as process_logits
from specdec_kernels.reference.verify_logits import process_logits as reference_process

B, L, V = 5, 6, 64


def _oracle_process(logits: torch.Tensor, *, cfg_scale: Optional[float] = None, temperature: float = 1.0,
                    top_k: Optional[int] = 0, top_p: float = 1.0) -> torch.Tensor:
    """The reference processing (specdec_kernels.reference) on ``(rows, V)`` or ``(rows, S, V)`` logits; the
    verifier's own processing path is what the tests compare with it."""
    if cfg_scale is not None and float(cfg_scale) == 1.0:
        cfg_scale = None
    rows = logits if logits.dim() == 3 else logits[:, None]
    probs = reference_process(rows, cfg_scale=cfg_scale, temperature=temperature, top_k=int(top_k or 0),
                              top_p=top_p)
    return probs if logits.dim() == 3 else probs[:, 0]



def _inputs(seed=0, cfg=True):
    gen = torch.Generator().manual_seed(seed)
    rows = 2 * B if cfg else B
    logits = 3 * torch.randn(rows, L + 1, V, generator=gen)
    drafts = torch.randint(0, V, (B, L), generator=gen)
    num_drafts = torch.tensor([0, 1, 3, L, 4])
    u_accept, u_sample = torch.rand(B, L, generator=gen), torch.rand(B, generator=gen)
    return logits, drafts, num_drafts, u_accept, u_sample


def _codebook():
    return torch.randn(V, 8, generator=torch.Generator().manual_seed(7))


SAMPLING = [dict(cfg_scale=4.0, temperature=1.0, top_k=0, top_p=1.0),
            dict(cfg_scale=2.0, temperature=0.7, top_k=20, top_p=0.9),
            dict(cfg_scale=None, temperature=1.3, top_k=5, top_p=1.0)]


def _expected_kwargs(method):
    codebook = _codebook()
    if method == "gsd":
        return dict(method="gsd", embeddings=F.normalize(codebook, dim=-1), rank_window=(1, 1), p_thr=0.15, d_thr=0.5)
    if method == "lantern":
        return dict(method="lantern", neighbors=sk.neighbor_table(codebook, V // 16), delta=0.1)
    return dict(method="exact")


@pytest.mark.parametrize("sampling", SAMPLING)
@pytest.mark.parametrize("method", ["exact", "gsd", "lantern"])
@pytest.mark.parametrize("with_q", [False, True])
def test_step_equals_verify_chain_on_processed_logits(method, sampling, with_q):
    cfg = sampling["cfg_scale"] is not None
    logits, drafts, num_drafts, u_accept, u_sample = _inputs(cfg=cfg)
    codebook = None if method == "exact" else _codebook()
    verifier = SpeculativeVerifier(method, codebook=codebook, **sampling)
    q = torch.softmax(torch.randn(B, L, V, generator=torch.Generator().manual_seed(3)), -1) if with_q else None
    out = verifier.step(logits, drafts, num_drafts=num_drafts, draft_probs=q, u_accept=u_accept, u_sample=u_sample,
                        lengths=torch.full((B,), 10))
    p = _oracle_process(logits, **sampling)
    accept_len, next_token = sk.verify_chain(p, q, drafts, u_accept, u_sample, num_drafts=num_drafts,
                                             **_expected_kwargs(method))
    torch.testing.assert_close(out.accept_len, accept_len)
    torch.testing.assert_close(out.next_token, next_token)
    torch.testing.assert_close(out.probs, p)
    torch.testing.assert_close(out.num_kept, accept_len + 1)
    torch.testing.assert_close(out.new_length, 10 + accept_len + 1)
    for b in range(B):
        a = int(accept_len[b])
        assert out.tokens[b, :a].tolist() == drafts[b, :a].tolist()
        assert int(out.tokens[b, a]) == int(next_token[b])
        assert (out.tokens[b, a + 1:] == -1).all()


def test_generator_draws_the_uniforms_it_would_pass():
    logits, drafts, num_drafts, _, _ = _inputs()
    verifier = SpeculativeVerifier("sjd", cfg_scale=3.0)
    out = verifier.step(logits, drafts, num_drafts=num_drafts, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    u_accept, u_sample = torch.rand(B, L, generator=gen), torch.rand(B, generator=gen)
    ref = verifier.step(logits, drafts, num_drafts=num_drafts, u_accept=u_accept, u_sample=u_sample)
    assert torch.equal(out.tokens, ref.tokens)


def test_draft_logits_are_processed_like_the_target_without_cfg():
    logits, drafts, num_drafts, u_accept, u_sample = _inputs()
    draft_logits = torch.randn(B, L, V, generator=torch.Generator().manual_seed(9))
    verifier = SpeculativeVerifier("exact", cfg_scale=3.0, temperature=0.8, top_k=10, top_p=0.95)
    out = verifier.step(logits, drafts, num_drafts=num_drafts, draft_logits=draft_logits, u_accept=u_accept,
                        u_sample=u_sample)
    q = _oracle_process(draft_logits, temperature=0.8, top_k=10, top_p=0.95)
    ref = verifier.step(logits, drafts, num_drafts=num_drafts, draft_probs=q, u_accept=u_accept, u_sample=u_sample)
    assert torch.equal(out.tokens, ref.tokens)


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass():
    logits = torch.randn(200, V, generator=torch.Generator().manual_seed(1)) * 2
    for top_p in (0.05, 0.5, 0.9, 0.999):
        probs = process_logits(logits, top_p=top_p)
        full = torch.softmax(logits, -1)
        kept = probs > 0
        kept_mass = (full * kept).sum(-1)
        assert (kept_mass >= top_p - 1e-6).all()
        # dropping the least likely kept token would fall below top_p (smallest such prefix) unless it is alone
        least = torch.where(kept, full, torch.inf).min(-1).values
        alone = kept.sum(-1) == 1
        assert ((kept_mass - least < top_p + 1e-6) | alone).all()
        # the kept set is a prefix of the sorted order and p is renormalised on it
        dropped_max = torch.where(kept, -torch.inf, full).max(-1).values
        assert (torch.where(kept, full, torch.inf).min(-1).values >= dropped_max).all()
        torch.testing.assert_close(probs.sum(-1), torch.ones(200))


def test_top_p_matches_transformers_warper():
    transformers = pytest.importorskip("transformers")
    logits = torch.randn(50, V, generator=torch.Generator().manual_seed(2)) * 2
    for top_p in (0.3, 0.8):
        warped = transformers.TopPLogitsWarper(top_p)(None, logits.clone())
        torch.testing.assert_close(process_logits(logits, top_p=top_p), torch.softmax(warped, -1))


@pytest.mark.parametrize("method", ["exact", "lantern"])
def test_step_tree_equals_verify_tree(method):
    gen = torch.Generator().manual_seed(4)
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2]]).expand(B, 6).contiguous()
    tokens = torch.randint(0, V, (B, 6), generator=gen)
    logits = torch.randn(2 * B, 6, V, generator=gen) * 3
    num_nodes = torch.tensor([1, 2, 6, 4, 6])
    u_accept, u_sample = torch.rand(B, 6, generator=gen), torch.rand(B, generator=gen)
    codebook = None if method == "exact" else _codebook()
    kwargs = {} if method == "exact" else {"delta": 0.2}
    verifier = SpeculativeVerifier(method, codebook=codebook, cfg_scale=2.5, top_k=16, **kwargs)
    out = verifier.step_tree(logits, tokens, parents, num_nodes=num_nodes, u_accept=u_accept, u_sample=u_sample)
    p = _oracle_process(logits, cfg_scale=2.5, top_k=16)
    ref_kwargs = {"method": "exact"} if method == "exact" else {
        "method": "lantern", "neighbors": sk.neighbor_table(codebook, V // 16), "delta": 0.2}
    accepted, accept_len, next_token = sk.verify_tree(p, None, tokens, parents, u_accept, u_sample,
                                                      num_nodes=num_nodes, **ref_kwargs)
    assert torch.equal(out.accepted_nodes, accepted) and torch.equal(out.accept_len, accept_len)
    assert torch.equal(out.next_token, next_token)
    for b in range(B):
        a = int(accept_len[b])
        path = [0] + accepted[b, :a].tolist()
        assert out.path[b, : a + 1].tolist() == path
        assert out.tokens[b, :a].tolist() == tokens[b, path[1:]].tolist()
        assert int(out.tokens[b, a]) == int(next_token[b])


def test_tables_are_built_once_and_shared_by_with_sampling():
    codebook = _codebook()
    verifier = SpeculativeVerifier("lantern", codebook=codebook, k=5, delta=0.3)
    table = verifier.kernel_kwargs["neighbors"]
    assert torch.equal(table, sk.neighbor_table(codebook, 5))
    other = verifier.with_sampling(cfg_scale=3.0, top_k=2)
    assert other.kernel_kwargs["neighbors"] is table and other.uses_cfg and not verifier.uses_cfg
    gsd = SpeculativeVerifier("gsd", codebook=codebook)
    torch.testing.assert_close(gsd.kernel_kwargs["embeddings"], F.normalize(codebook, dim=-1))
    assert gsd.kernel_kwargs["rank_window"] == (1, 1)  # the project default scaled to V = 64


def test_relaxations_reduce_to_exact():
    logits, drafts, num_drafts, u_accept, u_sample = _inputs()
    kwargs = dict(num_drafts=num_drafts, u_accept=u_accept, u_sample=u_sample)
    exact = SpeculativeVerifier("exact", cfg_scale=3.0).step(logits, drafts, **kwargs)
    lantern0 = SpeculativeVerifier("lantern", codebook=_codebook(), delta=0.0, cfg_scale=3.0).step(logits, drafts,
                                                                                                     **kwargs)
    gsd0 = SpeculativeVerifier("gsd", codebook=_codebook(), p_thr=0.0, cfg_scale=3.0).step(logits, drafts, **kwargs)
    assert torch.equal(exact.tokens, lantern0.tokens) and torch.equal(exact.tokens, gsd0.tokens)


def test_sample_is_a_zero_draft_step():
    logits = torch.randn(2 * B, V, generator=torch.Generator().manual_seed(8))
    u = torch.rand(B, generator=torch.Generator().manual_seed(9))
    verifier = SpeculativeVerifier("exact", cfg_scale=2.0, top_k=7)
    p = _oracle_process(logits, cfg_scale=2.0, top_k=7)
    cdf = p.double().cumsum(-1)
    expected = (cdf <= (u.double() * cdf[:, -1])[:, None]).sum(-1)
    assert torch.equal(verifier.sample(logits, u), expected.clamp_max(V - 1))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="method"):
        SpeculativeVerifier("nope")
    with pytest.raises(ValueError, match="codebook"):
        SpeculativeVerifier("exact", codebook=_codebook())
    with pytest.raises(ValueError, match="codebook"):
        SpeculativeVerifier("lantern")
    with pytest.raises(ValueError, match="top_p"):
        SpeculativeVerifier("exact", top_p=0.0)
    with pytest.raises(ValueError, match="delta"):
        SpeculativeVerifier("lantern", codebook=_codebook(), delta=0.1, lam=2.0)
    logits, drafts, num_drafts, u_accept, u_sample = _inputs()
    with pytest.raises(ValueError, match="logits"):
        SpeculativeVerifier("exact").step(logits, drafts)  # CFG rows given to a verifier without CFG
    with pytest.raises(ValueError, match="u_accept"):
        SpeculativeVerifier("exact", cfg_scale=2.0).step(logits, drafts, u_accept=u_accept)
    with pytest.raises(ValueError, match="chains only"):
        SpeculativeVerifier("gsd", codebook=_codebook()).step_tree(logits, drafts, drafts)


def test_fused_logits_op_is_used_when_probs_are_not_needed(monkeypatch):
    """With ``return_probs=False`` the verifier hands raw logits to ``specdec_kernels.verify_chain_logits`` /
    ``verify_tree_logits`` when the library has them (here a stand-in with the contract's semantics, which
    records its calls); the tokens equal the processed path's."""
    calls = []

    def chain_logits(logits, draft, u_accept, u_sample, *, cfg_scale, temperature, top_k, top_p, draft_probs,
                     draft_logits, **kwargs):
        calls.append("chain")
        p = _oracle_process(logits, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)
        return sk.verify_chain(p, draft_probs, draft, u_accept, u_sample, **kwargs)

    def tree_logits(logits, tokens, parents, u_accept, u_sample, *, cfg_scale, temperature, top_k, top_p,
                    draft_probs, **kwargs):
        calls.append("tree")
        p = _oracle_process(logits, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)
        return sk.verify_tree(p, draft_probs, tokens, parents, u_accept, u_sample, **kwargs)

    logits, drafts, num_drafts, u_accept, u_sample = _inputs()
    verifier = SpeculativeVerifier("lantern", codebook=_codebook(), cfg_scale=3.0, top_k=9, top_p=0.8)
    expected = verifier.step(logits, drafts, num_drafts=num_drafts, u_accept=u_accept, u_sample=u_sample)
    parents = torch.tensor([[-1, 0, 0, 1, 1, 2, 3]]).expand(B, 7).contiguous()
    monkeypatch.setattr(sk, "verify_chain_logits", chain_logits, raising=False)
    monkeypatch.setattr(sk, "verify_tree_logits", tree_logits, raising=False)
    out = verifier.step(logits, drafts, num_drafts=num_drafts, u_accept=u_accept, u_sample=u_sample,
                        return_probs=False)
    assert calls == ["chain"] and out.probs is None and torch.equal(out.tokens, expected.tokens)
    kept = verifier.step(logits, drafts, num_drafts=num_drafts, u_accept=u_accept, u_sample=u_sample)
    assert calls == ["chain"] and torch.equal(kept.probs, expected.probs)  # return_probs=True: processed path
    # the tree path: same check on a 7-node tree
    tree_tokens = torch.randint(0, V, (B, 7), generator=torch.Generator().manual_seed(12))
    u_tree = torch.rand(B, 7, generator=torch.Generator().manual_seed(13))
    ref_tree = verifier.step_tree(logits, tree_tokens, parents, u_accept=u_tree, u_sample=u_sample)
    fused_tree = verifier.step_tree(logits, tree_tokens, parents, u_accept=u_tree, u_sample=u_sample,
                                    return_probs=False)
    assert calls == ["chain", "tree"] and torch.equal(fused_tree.tokens, ref_tree.tokens)
    assert torch.equal(fused_tree.path, ref_tree.path)
