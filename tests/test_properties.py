"""Hypothesis property tests: on arbitrary small shapes and inputs, every compiled backend matches the reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import specdec_kernels as sk
from specdec_kernels import reference

from _inputs import chain_case, codebook, tree_case

BACKENDS = [b for b in ("cpu", "cuda") if b in sk.available_backends()]


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 6), drafts=st.integers(0, 6), vocab=st.integers(1, 40), seed=st.integers(0, 10**6),
       with_q=st.booleans(), method=st.sampled_from(["exact", "gsd", "lantern"]),
       budget=st.floats(0.0, 1.0), ragged=st.booleans())
def test_verify_chain_matches_reference(backend, batch, drafts, vocab, seed, with_q, method, budget, ragged):
    device = "cuda" if backend == "cuda" else "cpu"
    case = chain_case(batch=batch, drafts=drafts, vocab=vocab, with_q=with_q, seed=seed, ragged=ragged,
                      device=device, zeros=0.3 if vocab > 2 else 0.0)
    kw = {}
    if method == "lantern" and vocab >= 2:
        kw = {"neighbors": reference.neighbor_table(codebook(vocab, seed=seed), max(1, min(5, vocab - 1))).to(device),
              "delta": budget}
    elif method == "gsd":
        kw = {"p_thr": budget, "rank_window": (seed % 5, seed % 3)}
    else:
        method = "exact"
    got = sk.verify_chain(**case, method=method, backend=backend, **kw)
    want = sk.verify_chain(**case, method=method, backend="reference", **kw)
    assert torch.equal(got[0].cpu(), want[0].cpu()) and torch.equal(got[1].cpu(), want[1].cpu())


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 4), nodes=st.integers(1, 12), vocab=st.integers(2, 30), seed=st.integers(0, 10**6),
       with_q=st.booleans(), lam=st.one_of(st.none(), st.floats(1.0, 20.0)))
def test_verify_tree_matches_reference(backend, batch, nodes, vocab, seed, with_q, lam):
    device = "cuda" if backend == "cuda" else "cpu"
    case = tree_case(batch=batch, nodes=nodes, vocab=vocab, with_q=with_q, seed=seed, device=device,
                     duplicate_siblings=nodes >= 3)
    kw = {} if lam is None else {"method": "lantern", "lam": lam,
                                 "neighbors": reference.neighbor_table(codebook(vocab, seed=seed), 3 if vocab > 3 else 1
                                                                       ).to(device)}
    got = sk.verify_tree(**case, backend=backend, **kw)
    want = sk.verify_tree(**case, backend="reference", **kw)
    for g, w in zip(got, want):
        assert torch.equal(g.cpu(), w.cpu())
