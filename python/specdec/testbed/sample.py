"""Plain AR sampling from the testbed target (reference for the speculative loop; docs/TESTBED.md §1.4).

Per step: CFG on raw logits (doubled batch, cond rows first, null class ``num_classes``) -> divide by the
temperature -> top-k -> softmax -> multinomial with a ``torch.Generator``.
"""

from typing import Dict, Optional

import torch

from .model import ARTransformer, causal_mask


def _sampling_probs(logits: torch.Tensor, cfg: float, temperature: float, top_k: Optional[int]) -> torch.Tensor:
    """Doubled raw logits ``(2B, V)`` (cond rows first) -> sampling probabilities ``(B, V)``."""
    cond, uncond = logits.chunk(2)
    logits = uncond + cfg * (cond - uncond) if cfg != 1.0 else cond
    logits = logits / max(temperature, 1e-5)
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.softmax(-1)


@torch.no_grad()
def generate(model: ARTransformer, classes: torch.Tensor, *, cfg: float = 3.0, temperature: float = 1.0,
             top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """Sample ``(B, num_tokens)`` image tokens for class ids ``classes`` ``(B,)``.

    Returns ``tokens`` and ``top1`` ``(B, num_tokens)``: the top-1 probability of the sampling distribution at
    each step (flatness of what is actually sampled). CFG always runs as a doubled batch, as the loop does.
    """
    model.eval()
    B, N = classes.shape[0], model.num_tokens
    rows = torch.cat([classes, torch.full_like(classes, model.num_classes)])
    cache = model.new_cache(2 * B, N + 1)
    logits, _ = model.prefill(rows, cache)
    tokens = torch.empty(B, N, dtype=torch.long, device=classes.device)
    top1 = torch.empty(B, N, device=classes.device)
    for i in range(N):
        probs = _sampling_probs(logits, cfg, temperature, top_k)
        top1[:, i] = probs.max(-1).values
        tok = torch.multinomial(probs, 1, generator=generator)[:, 0]
        tokens[:, i] = tok
        if i + 1 < N:
            pos = torch.full((2 * B, 1), 1 + i, device=classes.device)
            logits, _ = model.forward_tokens(tok.repeat(2)[:, None], pos, pos,
                                             causal_mask(2 * B, 1 + i, 1, N + 1, classes.device), cache)
            logits = logits[:, 0]
    return {"tokens": tokens, "top1": top1}
