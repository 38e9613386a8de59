"""verify_tree: named cases, parity with the reference, batch invariance and exactness of recursive rejection."""

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import reference

from _inputs import codebook, tree_case
from conftest import device_for
from stats import ALPHA, chi_square_pvalue, histogram


@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
class TestNamedCases:
    def test_first_child_accepted_then_bonus(self, backend_name):
        p = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]])
        out = sk.verify_tree(p, None, torch.tensor([[0, 1, 0]]), torch.tensor([[-1, 0, 0]]), torch.zeros(1, 3),
                             torch.tensor([0.9]), backend=backend_name)
        assert [o.tolist() for o in out] == [[[1, -1]], [1], [0]]

    def test_siblings_rejected_then_second_accepted(self, backend_name):
        # root p = (0.5, 0.5, 0); child 1 (token 2) has p = 0: rejected; r unchanged; child 2 (token 0) passes.
        p = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
        out = sk.verify_tree(p, None, torch.tensor([[1, 2, 0]]), torch.tensor([[-1, 0, 0]]),
                             torch.tensor([[0.0, 0.0, 0.4]]), torch.tensor([0.3]), backend=backend_name)
        assert [o.tolist() for o in out] == [[[2, -1]], [1], [1]]

    def test_all_rejected_recovers_from_residual(self, backend_name):
        p = torch.tensor([[[0.6, 0.3, 0.1], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
        # token 0 fails (u = 0.9 >= 0.6) -> r = (0, .75, .25); token 1 fails (0.9 >= 0.75) -> r = (0, 0, 1)
        out = sk.verify_tree(p, None, torch.tensor([[2, 0, 1]]), torch.tensor([[-1, 0, 0]]),
                             torch.tensor([[0.0, 0.9, 0.9]]), torch.tensor([0.0]), backend=backend_name)
        assert [o.tolist() for o in out] == [[[-1, -1]], [0], [2]]

    def test_duplicate_sibling_is_skipped(self, backend_name):
        p = torch.tensor([[[0.6, 0.4], [1.0, 0.0], [1.0, 0.0]]])
        # node 1 (token 0) fails with u = 0.99; node 2 repeats token 0 and must not be tested even with u = 0
        out = sk.verify_tree(p, None, torch.tensor([[1, 0, 0]]), torch.tensor([[-1, 0, 0]]),
                             torch.tensor([[0.0, 0.99, 0.0]]), torch.tensor([0.0]), backend=backend_name)
        assert [o.tolist() for o in out] == [[[-1, -1]], [0], [1]]

    def test_root_only_tree_is_plain_sampling(self, backend_name):
        p = torch.tensor([[[0.2, 0.8], [1.0, 0.0]]])
        out = sk.verify_tree(p, None, torch.tensor([[0, 0]]), torch.tensor([[-1, 0]]), torch.zeros(1, 2),
                             torch.tensor([0.5]), num_nodes=torch.tensor([1]), backend=backend_name)
        assert [o.tolist() for o in out] == [[[-1]], [0], [1]]


@pytest.mark.parametrize("method", ["exact", "lantern_delta", "lantern_lam"])
@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_parity_random(backend, method, with_q, dtype, seed):
    device = device_for(backend)
    case = tree_case(batch=4, nodes=11, vocab=29, with_q=with_q, seed=seed, device=device, dtype=dtype)
    kw = {}
    if method.startswith("lantern"):
        kw = {"neighbors": reference.neighbor_table(codebook(29, seed=seed), 5).to(device)}
        kw["delta" if method.endswith("delta") else "lam"] = 0.3 if method.endswith("delta") else 4.0
    got = sk.verify_tree(**case, method=method.split("_")[0], backend=backend, **kw)
    want = sk.verify_tree(**case, method=method.split("_")[0], backend="reference", **kw)
    for g, w in zip(got, want):
        assert torch.equal(g.cpu(), w.cpu())


def test_batch_invariance(backend):
    device = device_for(backend)
    case = tree_case(batch=5, nodes=10, vocab=17, seed=8, device=device)
    batched = sk.verify_tree(**case, backend=backend)
    for b in range(5):
        alone = sk.verify_tree(**{k: (None if v is None else v[b : b + 1]) for k, v in case.items()}, backend=backend)
        for a, full in zip(alone, batched):
            assert torch.equal(a[0], full[b])


def test_accepted_nodes_form_a_path(backend):
    device = device_for(backend)
    case = tree_case(batch=6, nodes=12, vocab=9, seed=2, device=device, with_q=False)
    case["u_accept"] *= 0.2
    nodes, length, _ = sk.verify_tree(**case, backend=backend)
    for b in range(6):
        path = nodes[b, : length[b]].tolist()
        assert all(n == -1 for n in nodes[b, length[b]:].tolist())
        parent = 0
        for n in path:
            assert case["parents"][b, n].item() == parent
            parent = n


def test_lantern_delta_zero_equals_exact(backend):
    device = device_for(backend)
    case = tree_case(batch=6, nodes=10, vocab=23, seed=4, device=device, with_q=False)
    table = reference.neighbor_table(codebook(23), 6).to(device)
    exact = sk.verify_tree(**case, backend=backend)
    relaxed = sk.verify_tree(**case, method="lantern", neighbors=table, delta=0.0, backend=backend)
    for e, r in zip(exact, relaxed):
        assert torch.equal(e, r)


# ------------------------------------------------------------------ exactness (recursive rejection)

VOCAB = 8
# root -> 3 children; child 1 -> 2 children; child 2 -> 1 child
PARENTS = [-1, 0, 0, 0, 1, 1, 2]


def _target_rows(gen):
    rows = torch.softmax(torch.randn(len(PARENTS), VOCAB, generator=gen) * 1.5, -1)
    rows[0, 5] = 0.0  # a zero the drafts may still propose
    return rows / rows.sum(-1, keepdim=True)


def _emitted(nodes, length, next_token, tokens):
    """First emitted token, and for rows that accepted node 1, the token emitted after it."""
    first = torch.where(length > 0, tokens.gather(1, nodes[:, :1].clamp_min(0)).squeeze(1), next_token)
    via_1 = (length >= 1) & (nodes[:, 0] == 1)
    second = torch.where(length[via_1] >= 2, tokens[via_1].gather(1, nodes[via_1, 1:2].clamp_min(0)).squeeze(1),
                         next_token[via_1])
    return first, second


@pytest.mark.parametrize("with_q", [False, True])
def test_exact_tree_preserves_target_distribution(backend, with_q):
    """The first emitted token follows p[root]; conditional on accepting node 1, the next follows p[1].
    q None: fixed deterministic sibling tokens. q given: siblings drawn without replacement from q[parent]."""
    device = device_for(backend)
    n = 200_000
    gen = torch.Generator().manual_seed(99)
    m = len(PARENTS)
    p_rows = _target_rows(gen)
    parents = torch.tensor(PARENTS).expand(n, m).contiguous()
    if with_q:
        q_rows = torch.softmax(torch.randn(m, VOCAB, generator=gen), -1)
        q_rows[0, 2] = 0.0
        q_rows = q_rows / q_rows.sum(-1, keepdim=True)
        # Gumbel top-k = sampling without replacement, per row and parent.
        tokens = torch.zeros(n, m, dtype=torch.int64)
        for parent, kids in ((0, [1, 2, 3]), (1, [4, 5]), (2, [6])):
            gumbel = -torch.log(-torch.log(torch.rand(n, VOCAB, generator=gen).clamp_min(1e-20)))
            keys = torch.log(q_rows[parent]).expand(n, VOCAB) + gumbel
            tokens[:, kids] = keys.topk(len(kids), dim=1).indices
        q = q_rows.expand(n, m, VOCAB).contiguous()
    else:
        tokens = torch.tensor([0, 3, 5, 1, 2, 3, 7]).expand(n, m).contiguous()
        q = None
    p = p_rows.expand(n, m, VOCAB).contiguous()
    ua, us = torch.rand(n, m, generator=gen), torch.rand(n, generator=gen)
    out = sk.verify_tree(p.to(device), None if q is None else q.to(device), tokens.to(device), parents.to(device),
                         ua.to(device), us.to(device), backend=backend)
    nodes, length, nxt = (o.cpu() for o in out)
    first, second = _emitted(nodes, length, nxt, tokens)
    assert chi_square_pvalue(histogram(first, VOCAB), p_rows[0]) > ALPHA
    assert second.numel() > 5000
    assert chi_square_pvalue(histogram(second, VOCAB), p_rows[1]) > ALPHA
