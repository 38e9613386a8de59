"""The testbed AR transformer and EAGLE head honour the decoding protocol (python/specdec/testbed/model.py).

Tiny random-init configs on CPU: sequential decoding == window forward == teacher forcing, KV rollback by
re-writing slots, tree masks with explicit positions/slots, ragged per-row batches, cache compaction, and the
EAGLE head's cached path vs its training path.
"""

import pytest
import torch

from specdec.testbed.eagle import EagleConfig, EagleHead
from specdec.testbed.model import ARConfig, ARTransformer, causal_mask

ATOL = 1e-5
TINY = ARConfig(vocab_size=37, num_classes=3, grid_size=3, dim=32, n_layer=2, n_head=2, ffn_multiple=16)
SLOTS = 16  # > 1 + 9 tokens, room for tree scratch slots


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if p.dim() == 1 else 0.0)
    return model.eval()


@pytest.fixture
def model():
    return _randomize(ARTransformer(TINY))


def _data(batch=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, TINY.num_classes + 1, (batch,), generator=gen)
    tokens = torch.randint(0, TINY.vocab_size, (batch, TINY.num_tokens), generator=gen)
    return cls, tokens


def _sequential(model, cls, tokens, cache=None):
    """Decode one token per call; returns logits (B, 1 + T, V): entry i predicts image token i."""
    B, T = tokens.shape
    cache = cache or model.new_cache(B, SLOTS)
    out = [model.prefill(cls, cache)[0]]
    for t in range(T):
        pos = torch.full((B, 1), 1 + t)
        logits, _ = model.forward_tokens(tokens[:, t : t + 1], pos, pos, causal_mask(B, 1 + t, 1, SLOTS), cache)
        out.append(logits[:, 0])
    return torch.stack(out, 1), cache


@torch.no_grad()
def test_sequential_window_and_teacher_forcing_agree(model):
    cls, tokens = _data()
    B, T = tokens.shape
    seq, _ = _sequential(model, cls, tokens[:, :-1])
    cache = model.new_cache(B, SLOTS)
    first, _ = model.prefill(cls, cache)
    pos = torch.arange(1, T).expand(B, -1)
    window, _ = model.forward_tokens(tokens[:, :-1], pos, pos, causal_mask(B, 1, T - 1, SLOTS), cache)
    train = model.forward_train(cls, tokens)
    assert train.shape == (B, T, TINY.vocab_size) and train.dtype == torch.float32
    torch.testing.assert_close(seq, train, atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.cat([first[:, None], window], 1), train, atol=ATOL, rtol=0)


@torch.no_grad()
def test_class_token_rope_rows_are_zero(model):
    from specdec.testbed.model import rope_2d

    cos, sin = rope_2d(torch.tensor([0, 1, 4, 12]), TINY.head_dim, TINY.grid_size)
    assert cos[0].abs().sum() == 0 and sin[0].abs().sum() == 0
    assert torch.allclose(cos[1], torch.ones_like(cos[1]))  # image token 0 at (row 0, col 0): identity
    assert cos[3].isfinite().all()  # position past the grid (tree nodes may run past the end)


@torch.no_grad()
def test_kv_rollback_by_rewriting_slots(model):
    cls, tokens = _data()
    B = tokens.shape[0]
    _, cache = _sequential(model, cls, tokens[:, :6])
    other = (tokens[:, 3:6] + 5) % TINY.vocab_size  # roll back to 3 committed tokens, decode different ones
    pos = torch.arange(4, 7).expand(B, -1)
    logits, _ = model.forward_tokens(other, pos, pos, causal_mask(B, 4, 3, SLOTS), cache)
    fresh, _ = _sequential(model, cls, torch.cat([tokens[:, :3], other], 1))
    torch.testing.assert_close(logits, fresh[:, 4:7], atol=ATOL, rtol=0)


@torch.no_grad()
def test_tree_mask_matches_sequential_paths(model):
    cls, tokens = _data(batch=1)
    prefix = tokens[:, :4]  # committed: class + 4 tokens at slots 0..4; root = token at position 4
    _, cache = _sequential(model, cls, prefix[:, :-1])
    # tree: node 0 = root (prefix[-1]), 1 and 2 children of 0, 3 child of 1, 4 child of 3
    parents = [-1, 0, 0, 1, 3]
    node_tokens = torch.tensor([[int(prefix[0, -1]), 7, 11, 19, 23]])
    depth = [0, 1, 1, 2, 3]
    n = len(parents)
    root_pos = 4
    slots = torch.arange(root_pos, root_pos + n)[None]
    positions = torch.tensor([[root_pos + d for d in depth]])
    mask = torch.zeros(1, n, SLOTS, dtype=torch.bool)
    mask[:, :, :root_pos] = True
    for i in range(n):
        j = i
        while j >= 0:
            mask[0, i, root_pos + j] = True
            j = parents[j]
    logits, _ = model.forward_tokens(node_tokens, positions, slots, mask, cache)
    for leaf in (2, 4):
        path, j = [], leaf
        while j >= 0:
            path.append(j)
            j = parents[j]
        path = path[::-1]
        seq, _ = _sequential(model, cls, torch.cat([prefix[:, :-1], node_tokens[:, path]], 1))
        for k, node in enumerate(path):
            torch.testing.assert_close(logits[:, node], seq[:, root_pos + k], atol=ATOL, rtol=0)


@torch.no_grad()
def test_ragged_rows_match_per_row_runs(model):
    cls, tokens = _data(batch=3)
    lengths = [2, 5, 3]  # committed tokens per row before the window
    B, W = 3, 3
    cache = model.new_cache(B, SLOTS)
    model.prefill(cls, cache)
    pos = torch.arange(1, 6).expand(B, -1)
    model.forward_tokens(tokens[:, :5], pos, pos, causal_mask(B, 1, 5, SLOTS), cache)  # rows use a prefix of it
    positions = torch.stack([torch.arange(1 + n, 1 + n + W) for n in lengths])
    window = torch.stack([tokens[b, lengths[b] : lengths[b] + W] for b in range(B)])
    mask = torch.arange(SLOTS)[None, None, :] <= positions[:, :, None]
    logits, _ = model.forward_tokens(window, positions, positions, mask, cache)
    for b in range(B):
        seq, _ = _sequential(model, cls[b : b + 1], tokens[b : b + 1, : lengths[b] + W])
        torch.testing.assert_close(logits[b], seq[0, 1 + lengths[b] : 1 + lengths[b] + W], atol=ATOL, rtol=0)


@torch.no_grad()
def test_compaction_then_continue(model):
    cls, tokens = _data(batch=2)
    B = 2
    _, cache = _sequential(model, cls, tokens[:, :3])  # slots 0..3 committed
    # a chain of 4 drafts written at scattered scratch slots 8..11, accepted path = drafts 0 and 2 (row 0), 1 (row 1)
    drafts = tokens[:, 3:7]
    slots = torch.arange(8, 12).expand(B, -1)
    positions = torch.tensor([[4, 5, 5, 6], [4, 4, 5, 6]])
    mask = torch.zeros(B, 4, SLOTS, dtype=torch.bool)
    mask[:, :, :4] = True
    mask[:, torch.arange(4), 8 + torch.arange(4)] = True
    mask[0, 2, 8] = True  # row 0: draft 2 is a child of draft 0
    model.forward_tokens(drafts, positions, slots, mask, cache)
    src = torch.tensor([[8, 10], [9, 9]])
    dst = torch.tensor([[4, 5], [4, 4]])  # row 1 accepts one token (padding copies onto itself)
    model.compact_cache(cache, src, dst)
    nxt = torch.tensor([[5], [3]])
    pos = torch.tensor([[6], [5]])
    mask = torch.arange(SLOTS)[None, None, :] <= pos[:, :, None]
    logits, _ = model.forward_tokens(nxt, pos, pos, mask, cache)
    paths = [[drafts[0, 0], drafts[0, 2], 5], [drafts[1, 1], 3]]
    for b in range(B):
        seq, _ = _sequential(model, cls[b : b + 1], torch.cat([tokens[b, :3], torch.tensor(paths[b])])[None])
        torch.testing.assert_close(logits[b, 0], seq[0, -1], atol=ATOL, rtol=0)


@torch.no_grad()
def test_small_draft_config_and_cache_shapes():
    draft = _randomize(ARTransformer(ARConfig(vocab_size=37, num_classes=3, grid_size=3, dim=16, n_layer=1,
                                              n_head=2, ffn_multiple=16)), seed=3)
    cache = draft.new_cache(4, SLOTS)
    assert len(cache.k) == 1 and cache.k[0].shape == (4, 2, SLOTS, 8)
    logits, hidden = draft.prefill(torch.tensor([0, 1, 2, 3]), cache)
    assert logits.shape == (4, 37) and hidden.shape == (4, 16)
    assert (draft.vocab_size, draft.num_classes, draft.num_tokens, draft.hidden_size) == (37, 3, 9, 16)


@torch.no_grad()
def test_eagle_head_cached_path_matches_training_path(model):
    head = _randomize(EagleHead(model, EagleConfig(n_head=2)), seed=5)
    assert not any(n.startswith("_target") for n, _ in head.named_parameters())
    cls, tokens = _data(batch=2)
    B, T = tokens.shape
    train_logits, hidden = model.forward_train(cls, tokens, return_hidden=True)
    ref_logits, ref_feat = head.forward_train(tokens[:, :-1], hidden[:, :-1])
    assert ref_logits.shape == (B, T - 1, TINY.vocab_size) and ref_feat.shape == (B, T - 1, TINY.dim)
    cache = head.new_cache(B, SLOTS)
    # entries at positions 1..T-1 in head slots 0..T-2, fed in two chunks
    feats = []
    for lo, hi in ((0, 3), (3, T - 1)):
        pos = torch.arange(1 + lo, 1 + hi).expand(B, -1)
        logits, feat = head.forward_tokens(tokens[:, lo:hi], hidden[:, lo:hi], pos, pos - 1,
                                           causal_mask(B, lo, hi - lo, SLOTS), cache)
        torch.testing.assert_close(logits, ref_logits[:, lo:hi], atol=ATOL, rtol=0)
        feats.append(feat)
    torch.testing.assert_close(torch.cat(feats, 1), ref_feat, atol=ATOL, rtol=1e-5)  # features ~ 30
    loss, logs = head.distill_loss(tokens, hidden, train_logits)
    assert loss.isfinite() and set(logs) == {"reg", "ce", "top1_agree"}


@torch.no_grad()
def test_plain_ar_sampling_is_seeded_and_shaped(model):
    from specdec.testbed.sample import _sampling_probs as process_logits, generate

    classes = torch.tensor([0, 2])
    a = generate(model, classes, cfg=3.0, top_k=5, generator=torch.Generator().manual_seed(0))
    b = generate(model, classes, cfg=3.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert a["tokens"].shape == (2, TINY.num_tokens) and torch.equal(a["tokens"], b["tokens"])
    assert (a["top1"] > 0).all() and (a["top1"] <= 1).all()
    probs = process_logits(torch.randn(4, TINY.vocab_size), cfg=2.0, temperature=1.0, top_k=5)
    assert probs.shape == (2, TINY.vocab_size) and ((probs > 0).sum(-1) == 5).all()
