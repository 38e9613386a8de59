"""Unit tests of the decoding loop's building blocks: uniform streams, logits processing, ragged state,
attention masks, tree construction, draft sampling."""

import math

import pytest
import torch

from specdec.decoding import SamplingConfig
from specdec.decoding.feed import attention_mask
from specdec.decoding.rng import LANE_ACCEPT, LANE_SAMPLE, RowStreams
from specdec.decoding.sampling import sample, sample_without_replacement
from specdec.decoding.state import DecodeState
from specdec.decoding.trees import StaticTree, rank_sum_choices, select_dynamic_tree


def test_streams_depend_only_on_key_step_lane():
    keys = torch.tensor([11, 22, 33])
    s = RowStreams(keys)
    u = s.uniform(torch.tensor([1, 2, 3]), LANE_ACCEPT, 5)
    alone = RowStreams(keys[1:2]).uniform(torch.tensor([2]), LANE_ACCEPT, 5)
    assert torch.equal(u[1], alone[0])
    assert u.dtype == torch.float32 and bool(((u >= 0) & (u < 1)).all())
    assert not torch.equal(s.uniform(torch.tensor([1, 2, 3]), LANE_SAMPLE, 5), u)


def test_streams_numpy_path_equals_torch_path():
    # The CPU draws in NumPy uint32 arithmetic, CUDA in torch int64 with explicit masks: the same bits.
    keys = torch.randint(0, 2**31 - 1, (9,), generator=torch.Generator().manual_seed(3))
    fast, slow = RowStreams(keys), RowStreams(keys)
    slow._numpy = False
    assert fast._numpy
    for trial in range(5):
        step = torch.randint(0, 2**40, (9,), generator=torch.Generator().manual_seed(trial))  # > 32 bits too
        for lane_base, count in ((LANE_ACCEPT, 7), (LANE_SAMPLE, 1)):
            assert torch.equal(fast.uniform(step, lane_base, count), slow.uniform(step, lane_base, count))


def test_streams_look_uniform():
    s = RowStreams.from_seed(4096, seed=7)
    u = s.uniform(torch.full((4096,), 3), LANE_ACCEPT, 64).reshape(-1)
    counts = torch.histc(u, bins=16, min=0, max=1)
    expected = u.numel() / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 60  # df 15: far above the 1e-6 quantile (56.5) only if something is broken
    assert abs(float(u.mean()) - 0.5) < 0.005


def test_process_logits_order_cfg_temperature_topk():
    cond = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    uncond = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    cfg = SamplingConfig(cfg_scale=3.0, temperature=0.5, top_k=2)
    p = cfg.process(torch.cat([cond, uncond]))
    guided = (uncond + 3.0 * (cond - uncond)) / 0.5
    ref = torch.softmax(guided.masked_fill(guided < guided.topk(2).values[..., -1:], -math.inf), -1)
    torch.testing.assert_close(p, ref)
    assert p[0, 2] == 0 and p[0, 3] == 0
    no_cfg = SamplingConfig(cfg_scale=None).process(cond)
    torch.testing.assert_close(no_cfg, torch.softmax(cond, -1))


def test_state_commit_ragged():
    st = DecodeState(torch.tensor([0, 1, 2]), num_tokens=4)
    st.commit(torch.tensor([[5], [6], [7]]), torch.tensor([1, 1, 1]))
    st.commit(torch.tensor([[1, 2, 3], [4, 4, 4], [9, 9, 9]]), torch.tensor([3, 0, 2]))
    assert st.tokens.tolist() == [[5, 1, 2, 3], [6, -1, -1, -1], [7, 9, 9, -1]]
    assert st.n_gen.tolist() == [4, 1, 3] and st.active.tolist() == [False, True, True]
    assert st.last.tolist() == [3, 6, 9]


def test_attention_mask_prefix_causal_and_padding():
    slots = torch.tensor([[3, 4, 5]])
    valid = torch.tensor([[True, True, False]])
    mask = attention_mask(slots, valid, torch.tensor([3]), num_slots=8)
    assert mask[0, 0].nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert mask[0, 1].nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    assert mask[0, 2].nonzero().flatten().tolist() == [7]  # padding sees only the trash slot


def test_select_dynamic_tree_keeps_parents_and_breaks_ties_by_generation():
    # root children a(0), b(1); a's children c(2), d(3); scores with ties between b, c and d.
    tok = torch.tensor([[10, 11, 12, 13]])
    score = torch.tensor([[-0.5, -1.0, -1.0, -1.0]])
    parent = torch.tensor([[-1, -1, 0, 0]])
    depth = torch.tensor([[1, 1, 2, 2]])
    tokens, parents, d = select_dynamic_tree(tok, score, parent, depth, total_nodes=4)
    assert tokens.tolist() == [[10, 11, 12]] and parents.tolist() == [[0, 0, 1]] and d.tolist() == [[1, 1, 2]]


def test_static_tree_from_choices():
    tree = StaticTree([(0,), (1,), (0, 0), (0, 1), (1, 0)])
    assert tree.parents.tolist() == [-1, 0, 0, 1, 1, 2]
    assert tree.depth.tolist() == [0, 1, 1, 2, 2, 2]
    par, kids = tree.levels[1]
    assert par.tolist() == [1, 2] and kids.tolist() == [[3, 4], [5, -1]]
    assert len(rank_sum_choices(5, 2)) == 55
    with pytest.raises(ValueError):
        StaticTree([(1,)])


def test_sampling_inverse_cdf_and_without_replacement():
    w = torch.tensor([[0.0, 1.0, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert sample(w, torch.tensor([0.2, 0.99])).tolist() == [1, 3]
    draws = sample_without_replacement(w, torch.tensor([[0.9, 0.9, 0.1], [0.0, 0.0, 0.0]]))
    assert draws.tolist() == [[2, 1, 2], [0, 1, 2]]  # row 0: support exhausted -> repeat the first draw


@pytest.mark.parametrize("vocab", [1024, 16384])
@pytest.mark.parametrize("scores", ["distinct", "ties", "zeros"])
@pytest.mark.parametrize("k", [1, 10, 64])
def test_eagle2_top_k_is_a_stable_descending_sort(vocab, scores, k):
    """EAGLE-2's candidate selection: the first k of a stable descending sort (ties to the lower id, -inf last), on
    both of its paths (full sort below SELECT_FROM_VOCAB, select-then-sort from it on)."""
    from specdec.decoding.methods.eagle2 import _top_k

    g = torch.Generator().manual_seed(vocab + k)
    s = torch.randn(2, 3, vocab, generator=g).log_softmax(-1)
    if scores == "ties":
        s = (s * 2).round() / 2  # a few distinct values, each shared by many ids
    elif scores == "zeros":
        s[..., ::3] = -math.inf  # log q of zero-probability codes
    want_values, want_ids = torch.sort(s, dim=-1, descending=True, stable=True)
    values, ids = _top_k(s, k)
    assert torch.equal(ids, want_ids[..., :k]) and torch.equal(values, want_values[..., :k])
