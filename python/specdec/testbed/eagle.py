"""EAGLE-1-style draft head on the target's hidden states (LANTERN's drafter; docs/TESTBED.md §6.3).

Entry ``j`` is (token at position ``j``, target feature at position ``j - 1``): ``fc(concat(feature, embed(token)))``
-> one decoder layer (2D RoPE at position ``j``) -> predicted feature at ``j``, whose logits through the target's
final norm and output head draft the token at ``j + 1``. The token embedding, norm and head are the target's
(not owned, not trained). Head K/V of the entry at position ``j`` lives in head slot ``j - 1``.

Protocol: ``new_cache(batch_size, max_slots)``; ``forward_tokens(tokens, hidden, positions, slots, attn_mask,
cache) -> (logits (B, T, V) fp32, feature (B, T, d))`` with the same mask/slot rules as the target's
``forward_tokens``; ``forward_train(tokens, hidden)`` is the causal, cache-free training path.
"""

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .model import ARTransformer, Block, KVCache


@dataclass(frozen=True)
class EagleConfig:
    n_head: int = 6

    def to_dict(self):
        return asdict(self)


class EagleHead(nn.Module):
    def __init__(self, target: ARTransformer, config: EagleConfig = EagleConfig()):
        super().__init__()
        self.config = config
        self._target = (target,)  # a reference, not a submodule: the head neither owns nor saves target weights
        tc = replace(target.config, n_layer=1, n_head=config.n_head, dropout=0.0)
        self.block_config = tc
        self.vocab_size, self.num_classes = tc.vocab_size, tc.num_classes
        self.num_tokens, self.hidden_size = tc.num_tokens, tc.dim
        self.fc = nn.Linear(2 * tc.dim, tc.dim, bias=False)
        self.layer = Block(tc)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)

    @property
    def target(self) -> ARTransformer:
        return self._target[0]

    def new_cache(self, batch_size: int, max_slots: int, device=None, dtype=None) -> KVCache:
        w = self.fc.weight
        shape = (batch_size, self.block_config.n_head, max_slots, self.block_config.head_dim)
        return KVCache([torch.zeros(shape, device=device or w.device, dtype=dtype or w.dtype)],
                       [torch.zeros(shape, device=device or w.device, dtype=dtype or w.dtype)])

    def _run(self, tokens, hidden, positions, cache=None, slots=None, attn_mask=None):
        x = self.fc(torch.cat([hidden, self.target.tok_embeddings(tokens)], dim=-1))
        kv = None if cache is None else (cache.k[0], cache.v[0])
        feature = self.layer(x, self.target.rope(positions), kv, slots, attn_mask)
        return self.target.head(feature), feature

    def forward_tokens(self, tokens, hidden, positions, slots, attn_mask, cache: KVCache):
        """Entries ``(B, T)``: tokens at ``positions`` with the target features ``hidden`` ``(B, T, d)`` at
        ``positions - 1``; K/V written at ``slots``. Returns (logits drafting position + 1, predicted feature)."""
        return self._run(tokens, hidden, positions, cache, slots, attn_mask)

    def forward_train(self, tokens: torch.Tensor, hidden: torch.Tensor):
        """Causal pass over entries at positions ``1 .. T`` (``tokens`` = image tokens ``0 .. T-1``, ``hidden`` =
        target features at positions ``0 .. T-1``)."""
        B, T = tokens.shape
        positions = torch.arange(1, T + 1, device=tokens.device).expand(B, T)
        return self._run(tokens, hidden, positions)

    def distill_loss(self, tokens, target_hidden, target_logits, ce_weight: float = 0.1):
        """EAGLE-1 loss on one teacher-forced batch: ``tokens`` ``(B, N)`` image tokens, ``target_hidden`` and
        ``target_logits`` ``(B, N, .)`` from ``target.forward_train`` (index i = position i). Feature regression
        (smooth L1) on positions 1..N-1 plus ``ce_weight`` x cross-entropy against the target's distribution."""
        logits, feature = self.forward_train(tokens[:, :-1], target_hidden[:, :-1])
        reg = F.smooth_l1_loss(feature, target_hidden[:, 1:])
        p = target_logits[:, 1:].softmax(-1)
        ce = -(p * logits.log_softmax(-1)).sum(-1).mean()
        agree = (logits.argmax(-1) == target_logits[:, 1:].argmax(-1)).float().mean()
        return reg + ce_weight * ce, {"reg": reg.item(), "ce": ce.item(), "top1_agree": agree.item()}
