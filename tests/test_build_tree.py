"""build_tree on every backend: hand-built trees, parity with the reference, structural properties, padding,
opcheck, and malformed trees reported by the CUDA kernel."""

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels._backend import torch_op

from _backends import TRITON_INTERPRETED, assert_same, check_parity, device_for, to_device
from _inputs import random_parents
from _opcheck import opcheck_public_call
from _triton_compile import check_triton_compiles_for_sm90


def _build(backend, parents, num_nodes=None):
    device = device_for(backend)
    return sk.build_tree(*to_device((parents, num_nodes), device), backend=backend)


def test_hand_built_tree(backend):
    #        0
    #      / | \
    #     1  2  3
    #    / \     \
    #   4   5     6
    mask, pos, paths = _build(backend, torch.tensor([[-1, 0, 0, 0, 1, 1, 3]]))
    assert pos.tolist() == [[0, 1, 1, 1, 2, 2, 2]]
    assert paths.tolist() == [[[0, 2, -1], [0, 1, 4], [0, 1, 5], [0, 3, 6]]]
    expected_rows = {0: [0], 1: [0, 1], 2: [0, 2], 3: [0, 3], 4: [0, 1, 4], 5: [0, 1, 5], 6: [0, 3, 6]}
    for i, visible in expected_rows.items():
        assert mask[0, i].nonzero().flatten().tolist() == visible


def test_shapes(backend):
    """A path of depth 5 next to five leaves of depth 1; a root-only tree next to the star; a single node; and
    the paths of a small tree (leaves in ascending id)."""
    chain = torch.tensor([[-1, 0, 1, 2, 3, 4]])
    star = torch.tensor([[-1, 0, 0, 0, 0, 0]])
    _, pos, paths = _build(backend, torch.cat([chain, star]))
    assert pos.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 1, 1, 1, 1]] and paths.shape == (2, 5, 6)
    _, pos, paths = _build(backend, torch.cat([chain, star]), torch.tensor([1, 6]))
    assert pos[0].tolist() == [0] * 6 and paths[0].tolist()[0][:2] == [0, -1]
    mask, pos, paths = _build(backend, torch.tensor([[-1]]))
    assert mask.tolist() == [[[True]]] and pos.tolist() == [[0]] and paths.tolist() == [[[0]]]
    _, pos, paths = _build(backend, torch.tensor([[-1, 0, 0, 1]]))
    assert pos.tolist() == [[0, 1, 1, 2]] and paths.tolist() == [[[0, 2, -1], [0, 1, 3]]]


@pytest.mark.interpreter(keep=lambda nodes, seed: nodes <= 13 and seed < 3)
@pytest.mark.parametrize("nodes", [1, 2, 13, 64, 300])
@pytest.mark.parametrize("seed", range(6))
def test_parity_random(kernel_backend, nodes, seed):
    parents, num_nodes = random_parents(batch=5, nodes=nodes, seed=seed)
    check_parity(sk.build_tree, kernel_backend, parents, num_nodes)
    check_parity(sk.build_tree, kernel_backend, parents, torch.full((5,), nodes, dtype=torch.int64))


@pytest.mark.interpreter(keep=False)
def test_deep_chain_and_empty_batch(kernel_backend):
    check_parity(sk.build_tree, kernel_backend, torch.arange(-1, 299).view(1, 300))
    mask, pos, paths = _build(kernel_backend, torch.empty(0, 4, dtype=torch.long),
                              torch.empty(0, dtype=torch.long))
    assert mask.shape == (0, 4, 4) and pos.shape == (0, 4) and paths.shape[0] == 0


def test_properties(backend):
    parents, num_nodes = random_parents(batch=5, nodes=16, seed=11)
    mask, pos, paths = (o.cpu() for o in _build(backend, parents, num_nodes))
    for b in range(5):
        n_b = int(num_nodes[b])
        for n in range(16):
            if n >= n_b:  # padding: sees only itself, position 0
                assert mask[b, n].nonzero().flatten().tolist() == [n] and pos[b, n] == 0
                continue
            ancestors, node = {n}, n
            while node != 0:
                node = int(parents[b, node])
                ancestors.add(node)
            assert set(mask[b, n].nonzero().flatten().tolist()) == ancestors
            assert pos[b, n] == len(ancestors) - 1
        leaves = [n for n in range(n_b) if n not in parents[b, 1:n_b].tolist()]
        rows = [r for r in paths[b].tolist() if r[0] != -1]
        assert [[x for x in r if x != -1][-1] for r in rows] == leaves
        for r in rows:
            r = [x for x in r if x != -1]
            assert r[0] == 0 and all(int(parents[b, c]) == a for a, c in zip(r, r[1:]))


def test_batched_equals_per_tree(backend):
    parents, num_nodes = random_parents(batch=4, nodes=10, seed=3)
    mask, pos, paths = _build(backend, parents, num_nodes)
    for b in range(4):
        m1, p1, r1 = _build(backend, parents[b : b + 1], num_nodes[b : b + 1])
        assert torch.equal(m1[0], mask[b]) and torch.equal(p1[0], pos[b])
        assert torch.equal(r1[0], paths[b, : r1.shape[1], : r1.shape[2]])


def test_opcheck(kernel_backend):
    opcheck_public_call(sk.build_tree, kernel_backend, *random_parents(batch=3, nodes=6))


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("parents,num_nodes,code", [
    ([[0, 0, 1]], [3], 3),  # the root has a parent
    ([[-1, 0, 2]], [3], 3),  # a node is its own parent
    ([[-1, 0, 5]], [3], 3),  # a parent after the node
    ([[-1, 0, 1]], [4], 1),  # num_nodes past M
])
def test_cuda_kernel_reports_malformed_trees(kernel_backend, parents, num_nodes, code):
    """A direct op call (no Python validation) reports a malformed tree in its outputs (docs/ALGORITHMS.md §3.8):
    position_ids -code, an all-False mask and -1 paths; it does not raise, crash or print."""
    mask, pos, paths = torch_op("build_tree")(torch.tensor(parents, device="cuda"),
                                             torch.tensor(num_nodes, device="cuda"))
    assert (pos == -code).all() and not mask.any() and (paths == -1).all()


def test_padding_is_never_read(kernel_backend):
    """Parents of padding nodes (n >= num_nodes[b]) may hold anything."""
    parents, num_nodes = random_parents(batch=4, nodes=9, seed=4)
    garbage = parents.masked_fill(torch.arange(9) >= num_nodes[:, None], 99)
    device = device_for(kernel_backend)
    assert_same(sk.build_tree(*to_device((garbage, num_nodes), device), backend=kernel_backend),
                sk.build_tree(parents, num_nodes, backend="reference"))


@pytest.mark.backends("triton")
@pytest.mark.skipif(not TRITON_INTERPRETED, reason="a GPU run compiles every kernel for real")
def test_triton_compiles_for_sm90(kernel_backend):
    check_triton_compiles_for_sm90("build_tree")
