"""(d) Tree path and cache bookkeeping: a tree forward equals sequential decoding of every root-to-node path,
KV compaction leaves exactly the sequential cache, and after whole generations the target, draft-model and
draft-head caches equal teacher-forced ones (so continuing from them equals sequential decoding)."""

import pytest
import torch

from specdec.decoding import SamplingConfig, generate, methods
from specdec.decoding.loop import Context
from specdec.decoding.metrics import MetricsRecorder
from specdec.decoding.methods.tree import TreeMethod, tree_forward
from specdec.decoding.rng import RowStreams
from specdec.decoding.state import DecodeState
from specdec.decoding.toy import ToyARModel, ToyDraftHead, teacher_forced

TARGET = ToyARModel(vocab_size=8, num_tokens=9, layers=2, seed=3)
DRAFT = ToyARModel(vocab_size=8, num_tokens=9, seed=4)
HEAD = ToyDraftHead(TARGET)
SAMPLING = SamplingConfig(cfg_scale=3.0, temperature=1.0, top_k=0)
ATOL = 1e-10


def _class_rows(classes):
    return torch.cat([classes, torch.full_like(classes, TARGET.num_classes)])


def _context(classes, num_slots):
    state = DecodeState(classes, TARGET.num_tokens)
    cache = TARGET.new_cache(2 * classes.shape[0], num_slots)
    return Context(TARGET, cache, num_slots, SAMPLING, RowStreams(classes), state, MetricsRecorder(2, 9))


def test_tree_forward_equals_sequential_paths_and_compaction_equals_sequential_cache():
    gen = torch.Generator().manual_seed(0)
    classes = torch.tensor([0, 2])
    prefix = torch.randint(0, 8, (2, 4), generator=gen)
    n0 = torch.tensor([2, 4])  # ragged: row 0 committed 2 tokens, row 1 four; the last has no K/V yet
    num_slots = 9 + 6 + 1
    ctx = _context(classes, num_slots)
    seeded, _, _ = teacher_forced(TARGET, _class_rows(classes), prefix[:, :3], num_slots)
    ctx.cache.keys = [k.clone() for k in seeded.keys]
    ctx.cache.values = [v.clone() for v in seeded.values]
    parents = torch.tensor([[-1, 0, 0, 1, 1, 3], [-1, 0, 1, 0, 2, 2]])
    depth = [[0, 1, 1, 2, 2, 3], [0, 1, 2, 1, 3, 3]]
    tokens = torch.randint(0, 8, (2, 6), generator=gen)
    tokens[:, 0] = prefix.gather(1, (n0 - 1)[:, None])[:, 0]
    num_nodes = torch.tensor([6, 5])
    logits, _ = tree_forward(ctx, tokens, parents, num_nodes, n0, torch.tensor([True, True]))
    for b in range(2):
        for node in range(int(num_nodes[b])):
            path, j = [], node
            while j > 0:
                path.append(j)
                j = int(parents[b, j])
            seq = torch.cat([prefix[b, : int(n0[b])], tokens[b, list(reversed(path))]])[None]
            _, ref, _ = teacher_forced(TARGET, _class_rows(classes[b : b + 1]), seq, num_slots)
            pos = int(n0[b]) + depth[b][node]
            torch.testing.assert_close(logits[b, node], ref[0, pos], atol=ATOL, rtol=0)  # cond half
            torch.testing.assert_close(logits[2 + b, node], ref[1, pos], atol=ATOL, rtol=0)  # uncond half
    # Accept path 0 -> 1 -> 3 -> 5 in row 0 and 0 -> 2 in row 1, compact, compare with sequential K/V.
    path = torch.tensor([[0, 1, 3, 5], [0, 2, 0, 0]])
    on_path = torch.tensor([[True] * 4, [True, True, False, False]])
    TreeMethod._compact(None, ctx, n0, path, on_path)
    for b, accepted in ((0, [1, 3, 5]), (1, [2])):
        seq = torch.cat([prefix[b, : int(n0[b])], tokens[b, accepted]])[None]
        ref_cache, _, _ = teacher_forced(TARGET, _class_rows(classes[b : b + 1]), seq, num_slots)
        upto = int(n0[b]) + len(accepted)  # committed K/V: class + all but the next root
        for got, ref in zip(ctx.cache.keys + ctx.cache.values, ref_cache.keys + ref_cache.values):
            torch.testing.assert_close(got[[b, 2 + b], :upto], ref[:, :upto], atol=ATOL, rtol=0)


TREE_METHODS = {
    "eagle2": lambda: methods.Eagle2(HEAD, total_tokens=10, depth=3, top_k=3),
    "lantern": lambda: methods.Lantern(HEAD, TARGET.codebook, delta=0.4, k=3, total_tokens=10, depth=3, top_k=3),
    "static": lambda: methods.StaticTreeMethod(HEAD),
    "lantern++": lambda: methods.LanternPP(HEAD, TARGET.codebook, lam=4.0, k=3),
}


def _teacher_forced_head(tokens, class_rows, num_slots):
    """Head K/V for tokens at positions 1..T paired with the target features at positions 0..T-1."""
    _, _, hidden = teacher_forced(TARGET, class_rows, tokens, TARGET.num_tokens + 1)
    rows, length = class_rows.shape[0], tokens.shape[1]
    cache = HEAD.new_cache(rows, num_slots)
    positions = torch.arange(1, length + 1).expand(rows, -1)
    mask = torch.zeros(rows, length, num_slots, dtype=torch.bool)
    mask[:, :, :length] = torch.ones(length, length, dtype=torch.bool).tril()
    HEAD.forward_tokens(tokens.repeat(2, 1), hidden[:, :length], positions, positions - 1, mask, cache)
    return cache


@pytest.mark.parametrize("name", sorted(TREE_METHODS))
def test_caches_after_tree_generation_equal_sequential(name):
    classes = torch.tensor([0, 1, 2, 1, 0])
    method = TREE_METHODS[name]()
    res = generate(TARGET, classes, method, sampling=SAMPLING, seed=11, keep_context=True)
    ctx, n = res.context, TARGET.num_tokens
    assert res.metrics.mean_accept_len > 0
    ref, _, _ = teacher_forced(TARGET, _class_rows(classes), res.tokens[:, : n - 1], ctx.num_slots)
    for got, want in zip(ctx.cache.keys + ctx.cache.values, ref.keys + ref.values):
        torch.testing.assert_close(got[:, :n], want[:, :n], atol=ATOL, rtol=0)
    # The head's committed entries (slots below the pending catch-up) match a sequential head pass.
    head_ref = _teacher_forced_head(res.tokens[:, : n - 1], _class_rows(classes), method.head_slots)
    upto = int((method.pend_start - 1).min())
    assert upto >= 2
    for got, want in zip(method.head_cache.keys + method.head_cache.values, head_ref.keys + head_ref.values):
        torch.testing.assert_close(got[:, :upto], want[:, :upto], atol=ATOL, rtol=0)


def test_draft_model_cache_after_sd_equals_sequential():
    classes = torch.tensor([0, 1, 2, 2])
    method = methods.SD(DRAFT, gamma=3)
    res = generate(TARGET, classes, method, sampling=SAMPLING, seed=5, keep_context=True)
    ref, _, _ = teacher_forced(DRAFT, _class_rows(classes), res.tokens[:, :-1], res.context.num_slots)
    upto = int(method.draft_len.min())
    assert upto >= TARGET.num_tokens - 1
    for got, want in zip(method.cache.keys + method.cache.values, ref.keys + ref.values):
        torch.testing.assert_close(got[:, :upto], want[:, :upto], atol=ATOL, rtol=0)


def test_sd_with_the_target_as_draft_accepts_everything():
    """q == p when the draft model is the target itself, so every draft must pass: any error in the draft
    cache's catch-up, masks or positions would show up as a rejection."""
    classes = torch.tensor([0, 1, 2, 2, 1])
    res = generate(TARGET, classes, methods.SD(TARGET, gamma=3), sampling=SAMPLING, seed=9)
    accept = res.metrics.accept_lens
    n = TARGET.num_tokens - 1  # tokens after the prefill's first
    full = [min(3, n - 1 - 4 * s) for s in range(accept.shape[1])]  # 3 drafts + bonus per step, then the tail
    assert accept.tolist() == [full] * classes.shape[0]


class _RecordingSD(methods.SD):
    def propose(self, ctx):
        drafts, q = super().propose(ctx)
        self.log.append((ctx.state.n_gen.clone(), ctx.state.active.clone(), q.clone()))
        return drafts, q

    def after_verify(self, ctx, p, accept_len, next_token, num_drafts, ran):
        super().after_verify(ctx, p, accept_len, next_token, num_drafts, ran)
        self.log[-1] += (accept_len.clone(), num_drafts.clone())


def test_sd_draft_distributions_equal_sequential_draft_model():
    """Every q row whose conditioning prefix was committed equals the draft model's sequential distribution,
    including after rejections (the draft cache must drop the rejected drafts' K/V)."""

    classes = torch.tensor([0, 1, 2, 2])
    method = _RecordingSD(DRAFT, gamma=3)
    method.log = []
    res = generate(TARGET, classes, method, sampling=SAMPLING, seed=5)
    _, logits, _ = teacher_forced(DRAFT, _class_rows(classes), res.tokens[:, :-1], TARGET.num_tokens + 1)
    ref_q = SAMPLING.process(logits)  # (batch, num_tokens, V): q for image token i at index i
    checked = 0
    for n_gen, active, q, accept_len, num_drafts in method.log:
        for b in range(classes.shape[0]):
            if not active[b]:
                continue
            for i in range(int(min(accept_len[b], num_drafts[b] - 1)) + 1):
                torch.testing.assert_close(q[b, i], ref_q[b, int(n_gen[b]) + i], atol=1e-6, rtol=0)
                checked += 1
    assert checked >= 20 and any(bool((a < n).any()) for _, _, _, a, n in method.log)
