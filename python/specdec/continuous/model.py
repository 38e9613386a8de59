"""Class-conditional AR transformer over continuous tokens with a per-token diffusion head.

The trunk is the discrete testbed's LlamaGen-style decoder (``specdec.testbed.model``: pre-RMSNorm blocks, SwiGLU,
2D RoPE, class token at position 0 with a null class for CFG, slot-addressed KV cache); tokens enter through a
linear projection instead of an embedding table, and the final-normed hidden state ``z`` conditions the
:class:`~.diffusion.DiffusionHead`, which models the next token's distribution.

Tokens are the shipped VQ encoder's pre-quantisation latents (64 per image, 8 dims, unit norm), standardised per
dimension with the training set's mean / std (buffers ``latent_mean`` / ``latent_std``); :meth:`to_latents`
undoes it. Layout and cache protocol: slot / position 0 holds the class token, token ``i`` sits at slot
``1 + i``; the output at slot ``s`` is the condition for token ``s``.
"""

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..testbed.model import ARConfig, Block, KVCache, RMSNorm, rope_2d
from .diffusion import DiffusionHead, HeadConfig


@dataclass(frozen=True)
class ContinuousConfig:
    token_dim: int = 8
    num_classes: int = 10
    grid_size: int = 8
    dim: int = 128
    n_layer: int = 4
    n_head: int = 4
    head_width: int = 128
    head_depth: int = 3
    num_steps: int = 25
    variance: str = "small"  # reverse-step variance of the head (diffusion.py)
    final_std: Optional[float] = None  # std of the head's last reverse step (diffusion.py)
    class_dropout: float = 0.1

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    def trunk_config(self) -> ARConfig:
        return ARConfig(vocab_size=1, num_classes=self.num_classes, grid_size=self.grid_size, dim=self.dim,
                        n_layer=self.n_layer, n_head=self.n_head, class_dropout=self.class_dropout)

    def head_config(self) -> HeadConfig:
        return HeadConfig(token_dim=self.token_dim, cond_dim=self.dim, width=self.head_width,
                          depth=self.head_depth, num_steps=self.num_steps, variance=self.variance,
                          final_std=self.final_std)

    def to_dict(self) -> Dict:
        return asdict(self)


def run_trunk(layers, norm, config, h, positions, cache=None, slots=None, attn_mask=None) -> torch.Tensor:
    """The decoder trunk of the target and of the feature draft: ``layers`` with 2D RoPE at ``positions``
    (``config``: dim, n_head, grid_size), each over its own K/V of the slot ``cache``, then ``norm``, in float32."""
    rope = rope_2d(positions, config.dim // config.n_head, config.grid_size)
    for i, layer in enumerate(layers):
        kv = None if cache is None else (cache.k[i], cache.v[i])
        h = layer(h, rope, kv, slots, attn_mask)
    return norm(h).float()


def new_trunk_cache(layers, config, weight: torch.Tensor, batch_size: int, max_slots: int, device=None) -> KVCache:
    """Empty K/V buffers of ``layers`` by slot, ``(batch, heads, max_slots, head_dim)``, on ``device`` (default
    ``weight``'s) in ``weight``'s dtype."""
    shape = (batch_size, config.n_head, max_slots, config.dim // config.n_head)
    make = lambda: torch.zeros(shape, device=device or weight.device, dtype=weight.dtype)  # noqa: E731
    return KVCache([make() for _ in layers], [make() for _ in layers])


class ContinuousAR(nn.Module):
    """AR trunk + diffusion head. ``z`` conditions are ``(…, dim)`` float32; tokens are standardised latents."""

    def __init__(self, config: ContinuousConfig):
        super().__init__()
        self.config = config
        trunk = config.trunk_config()
        self.num_classes, self.num_tokens, self.token_dim = config.num_classes, config.num_tokens, config.token_dim
        self.cls_embedding = nn.Embedding(config.num_classes + 1, config.dim)  # last row: null class
        self.tok_proj = nn.Linear(config.token_dim, config.dim)
        self.layers = nn.ModuleList(Block(trunk) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, trunk.norm_eps)
        self.head = DiffusionHead(config.head_config())
        self.register_buffer("latent_mean", torch.zeros(config.token_dim))
        self.register_buffer("latent_std", torch.ones(config.token_dim))
        for m in [self.cls_embedding, self.tok_proj, *self.layers.modules()]:
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    # -- token scaling -----------------------------------------------------------------------------------------
    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """VQ encoder latents ``(…, D)`` -> standardised tokens."""
        return (latents - self.latent_mean) / self.latent_std

    def to_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        """Standardised tokens ``(…, D)`` -> latents for the VQ decoder."""
        return tokens * self.latent_std + self.latent_mean

    # -- trunk -------------------------------------------------------------------------------------------------
    def _trunk(self, h, positions, cache=None, slots=None, attn_mask=None) -> torch.Tensor:
        return run_trunk(self.layers, self.norm, self.config, h, positions, cache, slots, attn_mask)

    def new_cache(self, batch_size: int, max_slots: int, device=None) -> KVCache:
        return new_trunk_cache(self.layers, self.config, self.tok_proj.weight, batch_size, max_slots, device)

    def embed_slots(self, tokens: torch.Tensor, rows_cls: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``(R, W, dim)`` for cache ``slots`` ``(R, W)``: slot 0 is the class token
        ``rows_cls[r]`` (the null class on CFG rows), slot ``s >= 1`` is ``tokens[r, s - 1]`` (``tokens``
        ``(R, L, D)``)."""
        idx = (slots - 1).clamp_min(0)
        tok = self.tok_proj(tokens.gather(1, idx[..., None].expand(*idx.shape, tokens.shape[-1])))
        cls = self.cls_embedding(rows_cls)[:, None].expand_as(tok)
        return torch.where((slots == 0)[..., None], cls, tok)

    def forward_slots(self, tokens: torch.Tensor, rows_cls: torch.Tensor, slots: torch.Tensor,
                      cache: KVCache) -> torch.Tensor:
        """Feed the entries at cache ``slots`` ``(R, W)`` (positions = slots; see :meth:`embed_slots`), writing
        their K/V; query at slot s sees slots ``<= s``. Returns conditions ``z`` ``(R, W, dim)``: ``z[r, w]`` is
        the condition of token ``slots[r, w]``."""
        mask = torch.arange(cache.num_slots, device=slots.device)[None, None, :] <= slots[..., None]
        return self._trunk(self.embed_slots(tokens, rows_cls, slots), slots, cache, slots, mask)

    def forward_train(self, cls: torch.Tensor, tokens: torch.Tensor, drop_labels=None) -> torch.Tensor:
        """Teacher forcing: ``z`` ``(B, T, dim)`` where ``z[:, i]`` conditions ``tokens[:, i]`` (``(B, T, D)``).
        Label dropout to the null class applies when ``drop_labels`` (default: in train mode)."""
        B, T, _ = tokens.shape
        drop_labels = self.training if drop_labels is None else drop_labels
        if drop_labels and self.config.class_dropout > 0:
            drop = torch.rand(B, device=cls.device) < self.config.class_dropout
            cls = torch.where(drop, torch.full_like(cls, self.num_classes), cls)
        h = torch.cat([self.cls_embedding(cls)[:, None], self.tok_proj(tokens[:, :-1])], dim=1)
        return self._trunk(h, torch.arange(T, device=tokens.device).expand(B, T))

    def loss(self, cls: torch.Tensor, tokens: torch.Tensor, repeats: int = 4) -> Tuple[torch.Tensor, Dict]:
        """Diffusion loss of teacher-forced standardised ``tokens`` ``(B, T, D)``."""
        z = self.forward_train(cls, tokens)
        loss = self.head.loss(tokens.flatten(0, 1), z.flatten(0, 1), repeats)
        return loss, {"loss": loss.item()}
