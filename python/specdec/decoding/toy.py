"""Tiny random-weight models that implement the testbed protocol, for fast CPU tests of the loop.

``ToyARModel`` is a one-or-two-layer float64 transformer with learned absolute positions, a class-token prefix
(null class ``num_classes`` for CFG) and a slot-addressed KV cache; ``ToyDraftHead`` is an EAGLE-1-style head
(token embedding + target feature -> one layer -> the target's output head). Float64 keeps batched and
per-row forwards equal to well below any sampling decision.
"""

import math
from dataclasses import dataclass
from typing import List

import torch
from torch import nn


@dataclass
class ToyCache:
    keys: List[torch.Tensor]  # per layer (rows, num_slots, heads, head_dim)
    values: List[torch.Tensor]


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class _Layer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, slots, mask, k_cache, v_cache):
        rows, length, dim = x.shape
        hd = dim // self.heads
        q, k, v = self.qkv(_rms(x)).view(rows, length, 3, self.heads, hd).unbind(2)
        ridx = torch.arange(rows, device=x.device)[:, None]
        k_cache[ridx, slots] = k  # write first: a query sees itself through its own slot
        v_cache[ridx, slots] = v
        scores = torch.einsum("rthd,rshd->rhts", q, k_cache) / math.sqrt(hd)
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        attn = torch.einsum("rhts,rshd->rthd", scores.softmax(-1), v_cache).reshape(rows, length, dim)
        x = x + self.out(attn)
        return x + self.mlp(_rms(x))


def _init(module: nn.Module, generator: torch.Generator, scale: float) -> None:
    for name, param in module.named_parameters():
        fan_in = param.shape[-1] if param.dim() > 1 else 1
        std = scale / math.sqrt(fan_in) if param.dim() > 1 else 0.1
        param.data = torch.randn(param.shape, generator=generator, dtype=torch.float64) * std


class ToyARModel(nn.Module):
    """Class-conditional AR model over ``num_tokens`` image tokens (positions 1..num_tokens; class at 0)."""

    def __init__(self, vocab_size=8, num_classes=3, num_tokens=6, dim=16, heads=2, layers=1, codebook_dim=4,
                 seed=0, logit_scale=1.5):
        super().__init__()
        self.vocab_size, self.num_classes, self.num_tokens, self.hidden_size = vocab_size, num_classes, num_tokens, dim
        self.heads = heads
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.cls_emb = nn.Embedding(num_classes + 1, dim)
        self.pos_emb = nn.Embedding(num_tokens + 1, dim)
        self.layers = nn.ModuleList(_Layer(dim, heads) for _ in range(layers))
        self.head = nn.Linear(dim, vocab_size, bias=False)
        gen = torch.Generator().manual_seed(seed)
        _init(self, gen, 1.0)
        self.tok_emb.weight.data *= math.sqrt(dim)
        self.cls_emb.weight.data *= math.sqrt(dim)
        self.pos_emb.weight.data *= math.sqrt(dim)
        self.head.weight.data *= logit_scale
        self.codebook = torch.randn(vocab_size, codebook_dim, generator=gen, dtype=torch.float64).float()
        self.requires_grad_(False)

    def new_cache(self, batch_size: int, max_slots: int) -> ToyCache:
        shape = (batch_size, max_slots, self.heads, self.hidden_size // self.heads)
        return ToyCache([torch.zeros(shape, dtype=torch.float64) for _ in self.layers],
                        [torch.zeros(shape, dtype=torch.float64) for _ in self.layers])

    def _run(self, x, positions, slots, attn_mask, cache):
        x = x + self.pos_emb(positions.clamp(0, self.num_tokens))
        for layer, kc, vc in zip(self.layers, cache.keys, cache.values):
            x = layer(x, slots, attn_mask, kc, vc)
        hidden = _rms(x)
        return self.head(hidden), hidden

    def prefill(self, cls: torch.Tensor, cache: ToyCache):
        rows = cls.shape[0]
        zeros = torch.zeros(rows, 1, dtype=torch.int64)
        mask = torch.zeros(rows, 1, cache.keys[0].shape[1], dtype=torch.bool)
        mask[:, :, 0] = True
        logits, hidden = self._run(self.cls_emb(cls)[:, None], zeros, zeros, mask, cache)
        return logits[:, 0], hidden[:, 0]

    def forward_tokens(self, tokens, positions, slots, attn_mask, cache):
        return self._run(self.tok_emb(tokens), positions, slots, attn_mask, cache)

    def compact_cache(self, cache: ToyCache, src_slots: torch.Tensor, dst_slots: torch.Tensor) -> None:
        ridx = torch.arange(src_slots.shape[0])[:, None]
        for kc, vc in zip(cache.keys, cache.values):
            k, v = kc[ridx, src_slots].clone(), vc[ridx, src_slots].clone()  # gather, then scatter
            kc[ridx, dst_slots] = k
            vc[ridx, dst_slots] = v


class ToyDraftHead(nn.Module):
    """EAGLE-1-style head: entry (token at position j, target feature at j-1) -> predicted feature at j, whose
    logits (through the target's head) draft the token at j + 1."""

    def __init__(self, target: ToyARModel, heads=2, seed=1):
        super().__init__()
        dim = target.hidden_size
        self._target = (target,)  # not a submodule: the head must not own (or re-initialise) target weights
        self.vocab_size, self.num_tokens = target.vocab_size, target.num_tokens
        self.hidden_size, self.heads = dim, heads
        self.fc = nn.Linear(2 * dim, dim, bias=False)
        self.layer = _Layer(dim, heads)
        self.pos_emb = nn.Embedding(target.num_tokens + 2, dim)
        _init(self, torch.Generator().manual_seed(seed), 1.0)
        self.requires_grad_(False)

    def new_cache(self, batch_size: int, max_slots: int) -> ToyCache:
        shape = (batch_size, max_slots, self.heads, self.hidden_size // self.heads)
        return ToyCache([torch.zeros(shape, dtype=torch.float64)], [torch.zeros(shape, dtype=torch.float64)])

    def forward_tokens(self, tokens, hidden, positions, slots, attn_mask, cache):
        x = self.fc(torch.cat([self._target[0].tok_emb(tokens), hidden], dim=-1))
        x = x + self.pos_emb(positions.clamp(0, self.num_tokens + 1))
        feature = _rms(self.layer(x, slots, attn_mask, cache.keys[0], cache.values[0]))
        return self._target[0].head(feature), feature


@torch.no_grad()
def exact_sequence_distribution(model: ToyARModel, cls: int, sampling) -> torch.Tensor:
    """Joint distribution of all ``num_tokens`` image tokens under plain AR sampling with ``sampling``
    (``(vocab_size,) * num_tokens`` float64), by teacher forcing every prefix: the oracle for exactness tests.
    Only for toy sizes (``vocab_size ** (num_tokens - 1)`` rows)."""

    vocab, n = model.vocab_size, model.num_tokens
    prefixes = torch.cartesian_prod(*[torch.arange(vocab)] * (n - 1)) if n > 2 else torch.arange(vocab)[:, None]
    rows = prefixes.shape[0]
    copies = 2 if sampling.uses_cfg else 1
    classes = torch.full((rows,), cls)
    if copies == 2:
        classes = torch.cat([classes, torch.full((rows,), model.num_classes)])
    cache = model.new_cache(copies * rows, n + 1)
    first, _ = model.prefill(classes, cache)
    tokens = prefixes.repeat(copies, 1)
    positions = torch.arange(1, n).expand(copies * rows, -1)
    mask = torch.zeros(copies * rows, n - 1, n + 1, dtype=torch.bool)
    mask[:, :, :n] = torch.ones(n - 1, n, dtype=torch.bool).tril(1)[:, :n]
    logits, _ = model.forward_tokens(tokens, positions, positions, mask, cache)
    probs = torch.cat([sampling.process(first)[:, None], sampling.process(logits)], dim=1).double()
    # log P(x_0..x_{n-1}) = sum_i log p_i(x_i | x_<i), with x_{n-1} free: (rows, vocab)
    prefix_lp = torch.zeros(rows, dtype=torch.float64)
    for i in range(n - 1):
        prefix_lp = prefix_lp + probs[:, i].gather(1, prefixes[:, i : i + 1])[:, 0].log()
    joint = prefix_lp.exp()[:, None] * probs[:, n - 1]
    return joint.reshape((vocab,) * n)


@torch.no_grad()
def teacher_forced(model: ToyARModel, class_rows: torch.Tensor, tokens: torch.Tensor, num_slots: int):
    """Sequentially decode ``tokens`` (``(rows, T)``, the same for every CFG copy in ``class_rows``) into a fresh
    cache: returns (cache, per-position logits ``(rows, T+1, V)``, hidden ``(rows, T+1, d)``), position 0 = class."""
    copies = class_rows.shape[0] // tokens.shape[0]
    tokens = tokens.repeat(copies, 1)
    rows, length = tokens.shape
    cache = model.new_cache(rows, num_slots)
    first, h0 = model.prefill(class_rows, cache)
    positions = torch.arange(1, length + 1).expand(rows, -1)
    mask = torch.zeros(rows, length, num_slots, dtype=torch.bool)
    mask[:, :, : length + 1] = torch.ones(length, length + 1, dtype=torch.bool).tril(1)
    logits, hidden = model.forward_tokens(tokens, positions, positions, mask, cache)
    return cache, torch.cat([first[:, None], logits], 1), torch.cat([h0[:, None], hidden], 1)
