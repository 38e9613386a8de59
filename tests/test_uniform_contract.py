"""The uniform edge contract (docs/ALGORITHMS.md §3.1 item 4): every op accepts a uniform in [0, 1], 1.0 included, on
every backend with the same result; tests are strict in u, so u = 1.0 passes only a ratio above 1; float64 uniforms
cast toward zero keep every decision of the float64 draw (no bias), where rounding to nearest does not.

Regression tests for issue 24: before it, a uniform of exactly 1.0 (what about 2^-25 of vLLM's float64 draws round to
in float32) was a bad row (code 5): a ValueError, a device assertion on CUDA, and no token with validate=False.
"""

import math

import pytest
import torch

import specdec_kernels as sk
from specdec.verifier import SpeculativeVerifier, uniforms_to_float32
from specdec_kernels import reference

from _backends import ALL_BACKENDS, device_for

ONE_BELOW = 1.0 - 2.0**-24  # the largest float32 below 1


def _boundary(cast, r: float) -> float:
    """The smallest float64 U in [0, 1) with ``cast(U) >= r`` (1.0 if none): ``P(cast(U) < r)`` for U uniform on
    [0, 1) is exactly this value, since ``cast`` is monotone. Bisection on the float64 bit patterns."""
    lo = 0  # bits of 0.0: cast(0) = 0 < r for r > 0
    hi = torch.tensor(1.0, dtype=torch.float64).view(torch.int64).item()  # bits of 1.0, outside [0, 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        u = torch.tensor(mid, dtype=torch.int64).view(torch.float64)
        if cast(u.reshape(1)).item() >= r:
            hi = mid
        else:
            lo = mid
    return torch.tensor(hi, dtype=torch.int64).view(torch.float64).item()


THRESHOLDS = [1.0, ONE_BELOW, 1.0 - 2.0**-23, 0.75, 0.5 + 2.0**-24, 0.3, 1e-3, 2.0**-30]


@pytest.mark.parametrize("r", THRESHOLDS)
def test_float64_uniforms_cast_toward_zero_keep_every_decision(r):
    """For a float32 threshold r (a test ``u < r``), P(u32 < r) over a uniform float64 draw is exactly r when the
    draw is cast toward zero, min(1, r) included at r = 1 (a certain acceptance stays certain). Rounding to nearest
    loses half a float32 step at every r, and at r = 1 turns p = q into a rejection with probability 2^-25."""
    r32 = float(torch.tensor(r, dtype=torch.float32))
    assert _boundary(uniforms_to_float32, r32) == r32
    nearest = _boundary(lambda u: u.float(), r32)
    assert nearest < r32
    if r32 == 1.0:
        assert nearest == 1.0 - 2.0**-25


def test_float64_uniforms_never_reach_one():
    u = torch.tensor([1.0 - 2.0**-53, 1.0 - 2.0**-26, 1.0 - 2.0**-25, 0.0, 0.5], dtype=torch.float64)
    assert (u.float() == 1.0).any()  # what the plain cast does
    cast = uniforms_to_float32(u)
    assert cast.dtype == torch.float32 and (cast < 1.0).all() and (cast.double() <= u).all()
    assert cast.tolist()[3:] == [0.0, 0.5]


def test_verifier_takes_float64_uniforms_that_round_to_one():
    """SpeculativeVerifier casts vLLM's float64 uniforms toward zero: one that rounds to 1.0 in float32 is no
    longer a bad row."""
    logits = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0))
    drafts = torch.tensor([[1, 2], [3, 4]])
    u_accept = torch.full((2, 2), 1.0 - 2.0**-60, dtype=torch.float64)
    u_sample = torch.full((2,), 1.0 - 2.0**-60, dtype=torch.float64)
    step = SpeculativeVerifier("exact", backend="reference").step(logits, drafts, u_accept=u_accept,
                                                                  u_sample=u_sample)
    assert (step.next_token >= 0).all()


def _chain_inputs():
    g = torch.Generator().manual_seed(1)
    vocab = 6
    p = torch.softmax(torch.randn(3, 3, vocab, generator=g), -1)
    q = torch.softmax(torch.randn(3, 2, vocab, generator=g), -1)
    p[0, 0] = q[0, 0]  # ratio 1 at row 0's first draft: u = 1 rejects (strict), every u < 1 accepts
    p[0, 0, 5] = 0.0  # the last token has no weight: u_sample = 1 takes the last non-zero one
    p[0, 0] /= p[0, 0].sum()
    q[0, 0] = p[0, 0]
    draft = torch.tensor([[2, 1], [0, 3], [4, 4]])
    return p, q, draft


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("method", ["exact", "gsd", "lantern"])
def test_uniform_one_is_valid_on_verify_chain(backend, method):
    p, q, draft = _chain_inputs()
    u_accept = torch.ones(3, 2)
    u_sample = torch.ones(3)
    kwargs = dict(method=method)
    if method == "lantern":
        kwargs.update(neighbors=reference.neighbor_table(torch.randn(6, 3, generator=torch.Generator().manual_seed(2)),
                                                        2), delta=0.1)
    device = device_for(backend)
    args = [t.to(device) for t in (p, q, draft, u_accept, u_sample)]
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    want = reference.verify_chain(p, q, draft, u_accept, u_sample, **{k: v.cpu() if isinstance(v, torch.Tensor) else v
                                                                    for k, v in kwargs.items()})
    for validate in (None, True, False):
        got = sk.verify_chain(*args, **kwargs, backend=backend, validate=validate)
        assert [t.tolist() for t in got] == [t.tolist() for t in want]
    assert (want[1] >= 0).all()
    if method == "exact":
        assert want[0][0].item() == 0  # ratio exactly 1: the supremum of [0, 1) rejects
        assert want[1][0].item() == 4  # the fallback row p[0, 0]: u_sample = 1 takes the last non-zero token
        below = sk.verify_chain(p, q, draft, torch.full((3, 2), ONE_BELOW), u_sample, backend="reference")
        assert below[0][0].item() >= 1  # every u < 1 accepts ratio 1


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_uniform_one_is_valid_on_verify_tree(backend):
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(2, 4, 5, generator=g), -1)
    tokens = torch.tensor([[0, 1, 2, 3], [0, 4, 4, 1]])
    parents = torch.tensor([[-1, 0, 0, 1], [-1, 0, 0, 2]])
    u_accept = torch.ones(2, 4)
    u_sample = torch.ones(2)
    want = reference.verify_tree(p, None, tokens, parents, u_accept, u_sample)
    assert (want[2] >= 0).all()
    device = device_for(backend)
    args = [t.to(device) for t in (p, None, tokens, parents, u_accept, u_sample) if t is not None]
    args.insert(1, None)
    for validate in (None, True, False):
        got = sk.verify_tree(*args, backend=backend, validate=validate)
        assert [t.tolist() for t in got] == [t.tolist() for t in want]


def test_uniform_one_on_sample_from_probs():
    p = torch.tensor([[0.2, 0.5, 0.3, 0.0], [0.0, 0.0, 1.0, 0.0]])
    assert sk.sample_from_probs(p, torch.ones(2)).tolist() == [2, 2]  # the last token with non-zero weight
    with pytest.raises(ValueError, match="outside"):
        sk.sample_from_probs(p, torch.tensor([1.0 + 2.0**-23, 0.5]))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_uniform_edges_on_cspd_verify(backend):
    """u_accept = 1 accepts only when rho > 1; u_ar = 1 never takes a try (fallback); u_prop = 0 and 1 give finite
    proposals (clamped to [2^-24, 1 - 2^-24])."""
    n, dim, tries = 4, 3, 2
    g = torch.Generator().manual_seed(6)
    mu_p = torch.randn(n, dim, generator=g)
    sigma = torch.ones(n, dim)
    mu_q = mu_p.clone()
    mu_q[2:] += 3.0  # rows 2, 3: rho far from 1
    x = mu_q.clone()
    s = torch.zeros(n, dim)
    u_accept = torch.ones(n)
    u_prop = torch.rand(n, tries, dim, generator=g)
    u_prop[:, 0, 0], u_prop[:, 1, 1] = 0.0, 1.0
    u_ar = torch.ones(n, tries)
    args = [x, mu_q, sigma, mu_p, sigma, s, s, u_accept, u_prop, u_ar]
    want = reference.cspd_verify(*args)
    assert want[3].tolist() == [0, 0, 0, 0]
    assert want[1].tolist() == [False, False, False, False]  # rho = 1 (q = p) and rho < 1: u = 1 rejects
    assert want[2].all() and torch.isfinite(want[0]).all()  # u_ar = 1 takes no try
    device = device_for(backend)
    for validate in (None, True, False):
        got = sk.cspd_verify(*[t.to(device) for t in args], backend=backend, validate=validate)
        assert torch.equal(got[1].cpu(), want[1]) and torch.equal(got[2].cpu(), want[2])
        assert torch.allclose(got[0].cpu(), want[0], rtol=1e-5, atol=1e-6)
    assert math.isfinite(float(want[0].abs().max()))
