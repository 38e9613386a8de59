"""sample_from_probs (reference only so far): named cases, the same token as verify_chain with zero drafts,
distribution, row status codes and argument errors."""

import pytest
import torch

import specdec_kernels as sk

from _inputs import probs
from stats import ALPHA, chi_square_pvalue, histogram


def test_named_cases():
    p = torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.0, 0.5, 0.0, 0.5], [3.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    # u * W on a boundary goes strictly above it; u = 0 never returns a zero-weight token; unnormalised weights
    assert sk.sample_from_probs(p, torch.tensor([0.5, 0.0, 0.8, 0.99])).tolist() == [3, 1, 1, 3]
    assert sk.sample_from_probs(torch.tensor([[1.0]]), torch.tensor([0.7])).tolist() == [0]  # V = 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_equals_verify_chain_with_zero_drafts(dtype):
    gen = torch.Generator().manual_seed(0)
    p = probs(64, 1, 37, zeros=0.3, gen=gen, dtype=dtype)
    u = torch.rand(64, generator=gen)
    _, want = sk.verify_chain(p, None, torch.zeros(64, 0, dtype=torch.int64), torch.zeros(64, 0), u)
    assert torch.equal(sk.sample_from_probs(p[:, 0], u), want)
    assert torch.equal(sk.sample_from_probs(p, u[:, None])[:, 0], want)  # any leading shape


def test_follows_the_weights():
    n, weights = 200_000, torch.tensor([0.1, 0.0, 0.3, 0.2, 0.0, 0.4])
    tokens = sk.sample_from_probs(weights.expand(n, 6), torch.rand(n, generator=torch.Generator().manual_seed(1)))
    assert chi_square_pvalue(histogram(tokens, 6), weights) > ALPHA


def test_bad_rows_are_reported():
    p = torch.tensor([[0.5, 0.5], [0.0, 0.0], [float("nan"), 1.0], [-0.1, 1.0], [0.5, 0.5], [0.0, 0.0]])
    u = torch.tensor([0.3, 0.3, 0.3, 0.3, 1.0 + 2.0**-23, float("nan")])  # 1.0 itself is valid (§3.1)
    assert sk.sample_from_probs(p, u, validate=False).tolist() == [0, -6, -6, -6, -5, -5]  # code 5 checked first
    with pytest.raises(ValueError, match="row 1: p holds"):
        sk.sample_from_probs(p, u)
    with pytest.raises(ValueError, match="row 0: u is outside"):
        sk.sample_from_probs(p[:1], torch.tensor([-0.1]), validate=True)


def test_argument_errors():
    with pytest.raises(ValueError, match="u must be float32 of shape"):
        sk.sample_from_probs(torch.rand(3, 4), torch.rand(4))
    with pytest.raises(ValueError, match="p must be a float tensor"):
        sk.sample_from_probs(torch.ones(3, 4, dtype=torch.int64), torch.rand(3))
    with pytest.raises(ValueError, match="only the reference backend"):
        sk.sample_from_probs(torch.rand(3, 4), torch.rand(3), backend="cpu")
