"""LlamaGen-style class-conditional AR transformer with a slot-addressed KV cache (docs/TESTBED.md §1.1-1.7).

Used for the target and for the small AR draft (different :class:`ARConfig`). Pre-RMSNorm decoder, fused QKV
without bias, SwiGLU FFN, 2D RoPE on adjacent pairs whose condition-token rows are all zeros (1.3), a class
embedding with ``num_classes + 1`` rows (the last is the null class used for CFG; label dropout in training), and an
untied, zero-initialised output head with fp32 logits.

Sequence layout: position 0 is the class token, image token ``i`` (``0 <= i < grid**2``) sits at position
``1 + i`` with grid coordinates ``((pos - 1) // grid, (pos - 1) % grid)``; positions past the grid keep that formula
(tree nodes may run past the end).

Decoding protocol (what :mod:`specdec.decoding` relies on):

* ``new_cache(batch_size, max_slots)`` -> :class:`KVCache`, per layer K/V ``(B, H, S, head_dim)`` of zeros.
* ``prefill(cls, cache)`` writes the class (or null) token at slot 0 / position 0 and returns the logits of the
  first image token ``(B, V)`` and its hidden state ``(B, d)``.
* ``forward_tokens(tokens, positions, slots, attn_mask, cache)``: ``tokens``, ``positions`` (absolute, for RoPE)
  and ``slots`` (cache slots written by this call, may differ from positions in trees) are ``(B, T)`` int64 and may
  be ragged per row; ``attn_mask`` ``(B, T, S)`` bool says which cache slots each query sees *after* this call's
  writes (so a query sees itself through its own slot). Returns fp32 logits ``(B, T, V)`` and hidden ``(B, T, d)``.
* Rollback is free: re-write the slots later (stale slots stay masked). ``compact_cache(cache, src, dst)`` copies
  K/V from slots ``src`` to ``dst`` (``(B, A)``) after a tree step.
* ``forward_train(cls, tokens)``: teacher forcing without a cache, logits ``(B, T, V)`` (causal fast path).

``hidden`` is the last layer's residual stream *before* the final norm (the EAGLE feature); logits are
``output(norm(hidden))``.
"""

import math
from dataclasses import asdict, dataclass
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ARConfig:
    vocab_size: int = 1024
    num_classes: int = 10
    grid_size: int = 8
    dim: int = 192
    n_layer: int = 4
    n_head: int = 6
    ffn_multiple: int = 64  # SwiGLU width: 2 * 4 * dim / 3 rounded up to a multiple of this
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    dropout: float = 0.0
    class_dropout: float = 0.1  # label -> null class during training (CFG)

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_dim(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        return self.ffn_multiple * math.ceil(hidden / self.ffn_multiple)

    def to_dict(self):
        return asdict(self)


@dataclass
class KVCache:
    """Per-layer key/value buffers ``(B, H, S, head_dim)``, addressed by slot."""

    k: List[torch.Tensor]
    v: List[torch.Tensor]

    @property
    def num_slots(self) -> int:
        return self.k[0].shape[2]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype) * self.weight


def rope_2d(positions: torch.Tensor, head_dim: int, grid_size: int, base: float = 10000.0,
            num_cond: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``(*positions.shape, head_dim // 2)`` of LlamaGen's 2D RoPE for absolute ``positions``.

    Pair ``m < head_dim / 4`` rotates by the row, the rest by the column, with frequencies
    ``base ** (-4 j / head_dim)``; the ``num_cond`` condition positions get cos = sin = 0 (not the identity).
    """
    quarter = head_dim // 4
    freqs = base ** (-torch.arange(quarter, device=positions.device, dtype=torch.float32) * 4 / head_dim)
    i = (positions - num_cond).clamp_min(0)
    row, col = torch.div(i, grid_size, rounding_mode="floor"), i % grid_size
    angles = torch.cat([row[..., None] * freqs, col[..., None] * freqs], dim=-1)
    keep = (positions >= num_cond)[..., None].float()
    return torch.cos(angles) * keep, torch.sin(angles) * keep


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs ``(2m, 2m+1)`` of ``x`` ``(B, H, T, hd)`` by ``cos/sin`` ``(B, T, hd/2)``."""
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[:, None], sin[:, None]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, c: ARConfig):
        super().__init__()
        self.n_head, self.head_dim = c.n_head, c.head_dim
        self.qkv = nn.Linear(c.dim, 3 * c.dim, bias=False)
        self.proj = nn.Linear(c.dim, c.dim, bias=False)
        self.dropout = c.dropout

    def forward(self, x, rope, cache_kv=None, slots=None, attn_mask=None):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache_kv is None:  # training: causal over this sequence
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                 dropout_p=self.dropout if self.training else 0.0)
        else:
            kc, vc = cache_kv
            index = slots[:, None, :, None].expand(B, self.n_head, T, self.head_dim)
            kc.scatter_(2, index, k.to(kc.dtype))  # write first: a query sees itself through its own slot
            vc.scatter_(2, index, v.to(vc.dtype))
            out = F.scaled_dot_product_attention(q, kc.to(q.dtype), vc.to(q.dtype), attn_mask=attn_mask[:, None])
        return self.proj(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    def __init__(self, c: ARConfig):
        super().__init__()
        self.w1 = nn.Linear(c.dim, c.ffn_dim, bias=False)
        self.w3 = nn.Linear(c.dim, c.ffn_dim, bias=False)
        self.w2 = nn.Linear(c.ffn_dim, c.dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, c: ARConfig):
        super().__init__()
        self.attention_norm = RMSNorm(c.dim, c.norm_eps)
        self.attention = Attention(c)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)
        self.feed_forward = FeedForward(c)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, rope, cache_kv=None, slots=None, attn_mask=None):
        x = x + self.drop(self.attention(self.attention_norm(x), rope, cache_kv, slots, attn_mask))
        return x + self.drop(self.feed_forward(self.ffn_norm(x)))


def causal_mask(batch_size: int, start: int, length: int, num_slots: int, device=None) -> torch.Tensor:
    """``(B, length, num_slots)`` bool mask for a contiguous window at slots ``start .. start+length-1``: query t
    sees slots ``0 .. start + t``."""
    q = torch.arange(length, device=device)[:, None] + start
    return (torch.arange(num_slots, device=device)[None, :] <= q).expand(batch_size, length, num_slots)


class ARTransformer(nn.Module):
    """Class-conditional AR image model; see the module docstring for the decoding protocol."""

    def __init__(self, config: ARConfig):
        super().__init__()
        self.config = config
        self.vocab_size, self.num_classes = config.vocab_size, config.num_classes
        self.num_tokens, self.hidden_size = config.num_tokens, config.dim
        self.cls_embedding = nn.Embedding(config.num_classes + 1, config.dim)  # last row: null class
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.tok_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.apply(self._init)
        nn.init.zeros_(self.output.weight)  # LlamaGen: zero-initialised head

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    # -- helpers -----------------------------------------------------------------------------------------------
    def rope(self, positions: torch.Tensor):
        c = self.config
        return rope_2d(positions, c.head_dim, c.grid_size, c.rope_base)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits ``output(norm(hidden))``."""
        return self.output(self.norm(hidden)).float()

    def _trunk(self, x, positions, cache=None, slots=None, attn_mask=None):
        rope = self.rope(positions)
        for i, layer in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x = layer(x, rope, kv, slots, attn_mask)
        return self.head(x), x

    # -- decoding protocol -------------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_slots: int, device=None, dtype=None) -> KVCache:
        """Zeroed K/V ``(batch_size, n_head, max_slots, head_dim)`` per layer (device/dtype of the weights by
        default)."""
        w = self.output.weight
        shape = (batch_size, self.config.n_head, max_slots, self.config.head_dim)
        make = lambda: torch.zeros(shape, device=device or w.device, dtype=dtype or w.dtype)  # noqa: E731
        return KVCache([make() for _ in self.layers], [make() for _ in self.layers])

    def prefill(self, cls: torch.Tensor, cache: KVCache) -> Tuple[torch.Tensor, torch.Tensor]:
        """Write class ids ``cls`` ``(B,)`` (``num_classes`` = null) at slot 0; return the first image token's
        logits ``(B, V)`` and the hidden state at position 0 ``(B, d)``."""
        B = cls.shape[0]
        zeros = torch.zeros(B, 1, dtype=torch.long, device=cls.device)
        mask = causal_mask(B, 0, 1, cache.num_slots, cls.device)
        logits, hidden = self._trunk(self.cls_embedding(cls)[:, None], zeros, cache, zeros, mask)
        return logits[:, 0], hidden[:, 0]

    def forward_tokens(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                       attn_mask: torch.Tensor, cache: KVCache) -> Tuple[torch.Tensor, torch.Tensor]:
        """Feed image ``tokens`` ``(B, T)`` at RoPE ``positions``, writing K/V at ``slots``; query t attends cache
        slot s iff ``attn_mask[b, t, s]``. Returns fp32 logits ``(B, T, V)`` (distribution of the token at
        position + 1) and hidden ``(B, T, d)``."""
        return self._trunk(self.tok_embeddings(tokens), positions, cache, slots, attn_mask)

    @torch.no_grad()
    def compact_cache(self, cache: KVCache, src_slots: torch.Tensor, dst_slots: torch.Tensor) -> None:
        """Copy K/V of slots ``src_slots`` to ``dst_slots`` (both ``(B, A)``; gather then scatter, so overlapping
        ranges are safe)."""
        B, A = src_slots.shape
        for buf in cache.k + cache.v:
            H, hd = buf.shape[1], buf.shape[3]
            moved = buf.gather(2, src_slots[:, None, :, None].expand(B, H, A, hd))
            buf.scatter_(2, dst_slots[:, None, :, None].expand(B, H, A, hd), moved)

    # -- training ----------------------------------------------------------------------------------------------
    def forward_train(self, cls: torch.Tensor, tokens: torch.Tensor, return_hidden: bool = False):
        """Teacher forcing: input ``[cls, tokens[:, :-1]]``; logits ``(B, T, V)`` where ``logits[:, i]`` predicts
        ``tokens[:, i]`` (and hidden ``(B, T, d)`` with ``return_hidden``). Label dropout applies in train mode."""
        B, T = tokens.shape
        if self.training and self.config.class_dropout > 0:
            drop = torch.rand(B, device=cls.device) < self.config.class_dropout
            cls = torch.where(drop, torch.full_like(cls, self.num_classes), cls)
        x = torch.cat([self.cls_embedding(cls)[:, None], self.tok_embeddings(tokens[:, :-1])], dim=1)
        positions = torch.arange(T, device=tokens.device).expand(B, T)
        logits, hidden = self._trunk(self.tok_dropout(x), positions)
        return (logits, hidden) if return_hidden else logits

    def nll(self, cls: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) under teacher forcing."""
        logits = self.forward_train(cls, tokens)
        return F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
