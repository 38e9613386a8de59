"""build_tree: hand-built trees, parity with the reference, structural properties, padding."""

import pytest
import torch

import specdec_kernels as sk

from _inputs import random_parents
from conftest import device_for


@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
def test_hand_built_tree(backend_name):
    #        0
    #      / | \
    #     1  2  3
    #    / \     \
    #   4   5     6
    parents = torch.tensor([[-1, 0, 0, 0, 1, 1, 3]])
    mask, pos, paths = sk.build_tree(parents, backend=backend_name)
    assert pos.tolist() == [[0, 1, 1, 1, 2, 2, 2]]
    assert paths.tolist() == [
        [[0, 2, -1], [0, 1, 4], [0, 1, 5], [0, 3, 6]]
    ]
    expected_rows = {0: [0], 1: [0, 1], 2: [0, 2], 3: [0, 3], 4: [0, 1, 4], 5: [0, 1, 5], 6: [0, 3, 6]}
    for i, visible in expected_rows.items():
        assert mask[0, i].nonzero().flatten().tolist() == visible


@pytest.mark.parametrize("seed", range(6))
def test_parity_random(backend, seed):
    device = device_for(backend)
    parents, num_nodes = random_parents(batch=4, nodes=13, seed=seed, device=device)
    for got, want in zip(sk.build_tree(parents, num_nodes, backend=backend),
                         sk.build_tree(parents, num_nodes, backend="reference")):
        assert torch.equal(got.cpu(), want.cpu())


def test_properties(backend):
    device = device_for(backend)
    parents, num_nodes = random_parents(batch=5, nodes=16, seed=11, device=device)
    mask, pos, paths = sk.build_tree(parents, num_nodes, backend=backend)
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
    device = device_for(backend)
    parents, num_nodes = random_parents(batch=4, nodes=10, seed=3, device=device)
    mask, pos, paths = sk.build_tree(parents, num_nodes, backend=backend)
    for b in range(4):
        m1, p1, r1 = sk.build_tree(parents[b : b + 1], num_nodes[b : b + 1], backend=backend)
        assert torch.equal(m1[0], mask[b]) and torch.equal(p1[0], pos[b])
        assert torch.equal(r1[0], paths[b, : r1.shape[1], : r1.shape[2]])
