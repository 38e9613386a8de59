"""verify_tree on every backend: named cases, parity with the reference (random, half-precision, edge and
hypothesis-generated trees), batch invariance, padding, exactness of recursive rejection, opcheck, and Triton's
chunk loops."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import specdec_kernels as sk
from specdec_kernels import reference

from _backends import TRITON_INTERPRETED, assert_same, check_parity, device_for, gpu_only, not_triton, to_device
from _inputs import codebook, probs, tree_case
from _opcheck import opcheck_public_call
from _triton_compile import check_triton_compiles_for_sm90
from stats import ALPHA, chi_square_pvalue, histogram

CUDA_TILE = 1024 * 4


def _tree(backend, p, tokens, parents, u_accept, u_sample, **kw):
    args = to_device((torch.tensor(p), None, torch.tensor(tokens), torch.tensor(parents), torch.tensor(u_accept),
                      torch.tensor(u_sample)), device_for(backend))
    return [o.tolist() for o in sk.verify_tree(*args, backend=backend, **to_device(kw, device_for(backend)))]


class TestNamedCases:
    def test_first_child_accepted_then_bonus(self, backend):
        out = _tree(backend, [[[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]], [[0, 1, 0]], [[-1, 0, 0]], [[0.0] * 3], [0.9])
        assert out == [[[1, -1]], [1], [0]]

    def test_siblings_rejected_then_second_accepted(self, backend):
        # root p = (0.5, 0.5, 0); child 1 (token 2) has p = 0: rejected; r unchanged; child 2 (token 0) passes.
        p = [[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]]
        assert _tree(backend, p, [[1, 2, 0]], [[-1, 0, 0]], [[0.0, 0.0, 0.4]], [0.3]) == [[[2, -1]], [1], [1]]

    def test_all_rejected_recovers_from_residual(self, backend):
        # token 0 fails (u = 0.9 >= 0.6) -> r = (0, .75, .25); token 1 fails (0.9 >= 0.75) -> r = (0, 0, 1)
        p = [[[0.6, 0.3, 0.1], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]]
        assert _tree(backend, p, [[2, 0, 1]], [[-1, 0, 0]], [[0.0, 0.9, 0.9]], [0.0]) == [[[-1, -1]], [0], [2]]

    def test_duplicate_sibling_is_skipped(self, backend):
        # node 1 (token 0) fails with u = 0.99; node 2 repeats token 0 and must not be tested even with u = 0
        p = [[[0.6, 0.4], [1.0, 0.0], [1.0, 0.0]]]
        assert _tree(backend, p, [[1, 0, 0]], [[-1, 0, 0]], [[0.0, 0.99, 0.0]], [0.0]) == [[[-1, -1]], [0], [1]]

    def test_root_only_tree_is_plain_sampling(self, backend):
        p = [[[0.2, 0.8], [1.0, 0.0]]]
        num = torch.tensor([1], device=device_for(backend))
        assert _tree(backend, p, [[0, 0]], [[-1, 0]], [[0.0, 0.0]], [0.5], num_nodes=num) == [[[-1]], [0], [1]]

    def test_single_node_tree(self, backend):
        """M = 1: an empty accepted_nodes and a bonus token from p[0]."""
        out = _tree(backend, [[[0.25, 0.75]]], [[0]], [[-1]], [[0.0]], [0.5])
        assert out == [[[]], [0], [1]]


# ------------------------------------------------------------------ parity with the reference


def _method_kwargs(method: str, vocab: int, seed: int, k: int = 5) -> dict:
    if not method.startswith("lantern"):
        return {}
    kw = {"neighbors": reference.neighbor_table(codebook(vocab, seed=seed), k)}
    kw["delta" if method.endswith("delta") else "lam"] = 0.3 if method.endswith("delta") else 4.0
    return kw


def _interpreted_subset(method, with_q, dtype, seed):
    """On the Triton interpreter: float32 with two seeds, half precision once per method (without lam)."""
    if dtype == torch.float32:
        return seed < 2
    return seed == 0 and with_q and method != "lantern_lam"


@pytest.mark.interpreter(keep=_interpreted_subset)
@pytest.mark.parametrize("method", ["exact", "lantern_delta", "lantern_lam"])
@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_parity_random(kernel_backend, method, with_q, dtype, seed):
    case = tree_case(batch=4, nodes=11, vocab=29, with_q=with_q, seed=seed, dtype=dtype)
    check_parity(sk.verify_tree, kernel_backend, **case, method=method.split("_")[0],
                 **_method_kwargs(method, 29, seed))


@pytest.mark.select(gpu_only)
@pytest.mark.parametrize("method", ["exact", "lantern_delta", "lantern_lam"])
@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_parity_large(kernel_backend, method, with_q, dtype):
    """30-node trees over 1500 codes, 40 neighbours per code."""
    case = tree_case(batch=6, nodes=30, vocab=1500, with_q=with_q, seed=7, dtype=dtype)
    kw = _method_kwargs(method, 1500, 7, k=40)
    if "delta" in kw:
        kw["delta"] = 0.1
    check_parity(sk.verify_tree, kernel_backend, **case, method=method.split("_")[0], **kw)


@pytest.mark.interpreter(keep=False)
@pytest.mark.parametrize("with_q", [True, False])
def test_edge_shapes(kernel_backend, with_q):
    """A star of siblings with repeated tokens, a deep chain and a root-only tree in one ragged batch, over a
    vocabulary one past the CUDA tile."""
    gen = torch.Generator().manual_seed(11)
    batch, nodes, vocab = 5, 12, CUDA_TILE + 1
    parents = torch.zeros(batch, nodes, dtype=torch.long)
    parents[1] = torch.arange(-1, nodes - 1)
    parents[:, 0] = -1
    tokens = torch.randint(0, 3, (batch, nodes), generator=gen)
    q = probs(batch, nodes, vocab, gen=gen) if with_q else None
    case = dict(p=probs(batch, nodes, vocab, gen=gen, zeros=0.9), q=q, tree_tokens=tokens, parents=parents,
                u_accept=torch.rand(batch, nodes, generator=gen), u_sample=torch.rand(batch, generator=gen),
                num_nodes=torch.tensor([nodes, nodes, 1, 7, nodes]))
    check_parity(sk.verify_tree, kernel_backend, **case)


@pytest.mark.select(gpu_only)
@pytest.mark.parametrize("vocab", [CUDA_TILE + 1, 8192, 16384])
@pytest.mark.parametrize("with_q", [True, False])
def test_parity_codebook_sizes(kernel_backend, vocab, with_q):
    """Image-codebook vocabularies, several vocabulary chunks / tiles per row; exact and LANTERN++."""
    offsets = torch.randperm(vocab - 1, generator=torch.Generator().manual_seed(vocab))[:16] + 1
    nb = ((torch.arange(vocab)[:, None] + offsets[None, :]) % vocab).to(torch.int32)  # distinct, never self
    case = tree_case(batch=4, nodes=16, vocab=vocab, with_q=with_q, seed=vocab)
    check_parity(sk.verify_tree, kernel_backend, **case)
    check_parity(sk.verify_tree, kernel_backend, **case, method="lantern", neighbors=nb, lam=3.0)


def test_small_edge_trees(kernel_backend):
    """A single-node tree, and a root whose children repeat a token right after an acceptance."""
    t = lambda x, dtype=torch.float32: torch.tensor(x, dtype=dtype)  # noqa: E731
    check_parity(sk.verify_tree, kernel_backend, t([[[0.25, 0.75]]]), None, t([[0]], torch.int64),
                 t([[-1]], torch.int64), torch.zeros(1, 1), t([0.5]))
    check_parity(sk.verify_tree, kernel_backend, t([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]]), None,
                 t([[0, 1, 1]], torch.int64), t([[-1, 0, 0]], torch.int64), t([[0.0, 0.9999, 0.0]]), t([0.3]))


def test_many_rejections_and_duplicate_siblings(kernel_backend):
    """A wide root with repeated sibling tokens and u close to 1: most siblings are tried and rejected, so the
    residual is rewritten repeatedly (and with q, renormalised without the tried tokens)."""
    gen = torch.Generator().manual_seed(5)
    batch, nodes, vocab = 4, 10, 16
    parents = torch.tensor([-1, 0, 0, 0, 0, 0, 0, 1, 1, 2]).expand(batch, nodes).contiguous()
    tokens = torch.randint(0, 4, (batch, nodes), generator=gen)  # few distinct tokens: many duplicates
    for q in (None, probs(batch, nodes, vocab, gen=gen)):
        case = dict(p=probs(batch, nodes, vocab, sharpness=0.5, gen=gen), q=q, tree_tokens=tokens, parents=parents,
                    u_accept=0.7 + 0.3 * torch.rand(batch, nodes, generator=gen),
                    u_sample=torch.rand(batch, generator=gen))
        check_parity(sk.verify_tree, kernel_backend, **case)
        check_parity(sk.verify_tree, kernel_backend, **case, method="lantern",
                     neighbors=reference.neighbor_table(codebook(vocab, 3), 3), delta=0.2)


def test_padding_is_never_read(kernel_backend):
    """Tokens, parents and p rows of padding nodes (n >= num_nodes[b]) may hold anything (build_tree: its own
    test of the same name)."""
    case = tree_case(batch=4, nodes=9, vocab=20, seed=4)
    pad = torch.arange(9) >= case["num_nodes"][:, None]
    garbage = {**case, "tree_tokens": case["tree_tokens"].masked_fill(pad, -1),
               "parents": case["parents"].masked_fill(pad, 99), "p": case["p"].masked_fill(pad[..., None], 0.0)}
    assert_same(sk.verify_tree(**to_device(garbage, device_for(kernel_backend)), backend=kernel_backend),
                sk.verify_tree(**case, backend="reference"))


@pytest.mark.select(not_triton)
@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 4), nodes=st.integers(1, 12), vocab=st.integers(2, 30), seed=st.integers(0, 10**6),
       with_q=st.booleans(), lam=st.one_of(st.none(), st.floats(1.0, 20.0)))
def test_parity_hypothesis(kernel_backend, batch, nodes, vocab, seed, with_q, lam):
    case = tree_case(batch=batch, nodes=nodes, vocab=vocab, with_q=with_q, seed=seed, duplicate_siblings=nodes >= 3)
    kw = {} if lam is None else {"method": "lantern", "lam": lam,
                                 "neighbors": reference.neighbor_table(codebook(vocab, seed=seed),
                                                                       3 if vocab > 3 else 1)}
    check_parity(sk.verify_tree, kernel_backend, **case, **kw)


# ------------------------------------------------------------------ structure and properties


def test_batch_invariance(kernel_backend):
    case = to_device(tree_case(batch=5, nodes=10, vocab=17, seed=8), device_for(kernel_backend))
    batched = sk.verify_tree(**case, backend=kernel_backend)
    for b in range(5):
        alone = sk.verify_tree(**{k: (None if v is None else v[b : b + 1]) for k, v in case.items()},
                               backend=kernel_backend)
        for a, full in zip(alone, batched):
            assert torch.equal(a[0], full[b])


def test_accepted_nodes_form_a_path(backend):
    case = to_device(tree_case(batch=6, nodes=12, vocab=9, seed=2, with_q=False), device_for(backend))
    case["u_accept"] *= 0.2
    nodes, length, _ = sk.verify_tree(**case, backend=backend)
    assert (length > 0).any()
    for b in range(6):
        path = nodes[b, : length[b]].tolist()
        assert all(n == -1 for n in nodes[b, length[b]:].tolist())
        parent = 0
        for n in path:
            assert case["parents"][b, n].item() == parent
            parent = n


def test_lantern_delta_zero_equals_exact(kernel_backend):
    device = device_for(kernel_backend)
    case = to_device(tree_case(batch=6, nodes=10, vocab=23, seed=4, with_q=False), device)
    table = reference.neighbor_table(codebook(23), 6).to(device)
    exact = sk.verify_tree(**case, backend=kernel_backend)
    assert_same(sk.verify_tree(**case, method="lantern", neighbors=table, delta=0.0, backend=kernel_backend), exact)


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


@pytest.mark.select(not_triton)
@pytest.mark.parametrize("with_q", [False, True])
def test_exact_tree_preserves_target_distribution(kernel_backend, with_q):
    """The first emitted token follows p[root]; conditional on accepting node 1, the next follows p[1].
    q None: fixed deterministic sibling tokens. q given: siblings drawn without replacement from q[parent]."""
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
    out = sk.verify_tree(*to_device((p, q, tokens, parents, ua, us), device_for(kernel_backend)),
                         backend=kernel_backend)
    nodes, length, nxt = (o.cpu() for o in out)
    first, second = _emitted(nodes, length, nxt, tokens)
    assert chi_square_pvalue(histogram(first, VOCAB), p_rows[0]) > ALPHA
    assert second.numel() > 5000
    assert chi_square_pvalue(histogram(second, VOCAB), p_rows[1]) > ALPHA


# ------------------------------------------------------------------ opcheck and Triton's chunk loops


@pytest.mark.interpreter(keep=lambda method, with_q: with_q == (method == "lantern"))
@pytest.mark.parametrize("method", ["exact", "lantern"])
@pytest.mark.parametrize("with_q", [True, False])
def test_opcheck(kernel_backend, method, with_q):
    kw = {"neighbors": reference.neighbor_table(codebook(23), 4), "lam": 2.0} if method == "lantern" else {}
    opcheck_public_call(sk.verify_tree, kernel_backend, **tree_case(batch=3, nodes=6, vocab=23, with_q=with_q),
                        method=method, **kw)


@pytest.mark.backends("triton")
@pytest.mark.parametrize("method", ["exact", "lantern_delta", "lantern_lam"])
def test_triton_chunked(kernel_backend, small_blocks, method):
    """Vocabulary 30 in chunks of 8 and neighbour rows in chunks of 2."""
    for with_q in (True, False):
        case = tree_case(batch=3, nodes=8, vocab=30, with_q=with_q, seed=7 + with_q)
        kw = {} if method == "exact" else {"neighbors": reference.neighbor_table(codebook(30, 4, seed=30), 5),
                                           "delta" if method.endswith("delta") else "lam":
                                           0.3 if method.endswith("delta") else 4.0}
        check_parity(sk.verify_tree, kernel_backend, **case, method=method.split("_")[0], **kw)


@pytest.mark.backends("triton")
@pytest.mark.skipif(not TRITON_INTERPRETED, reason="a GPU run compiles every kernel for real")
def test_triton_compiles_for_sm90(kernel_backend):
    check_triton_compiles_for_sm90("verify_tree")
