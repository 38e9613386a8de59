"""Flatness of the target's next-token distribution and latent-neighbour structure (docs/TESTBED.md §6.4-6.5).

Teacher-forced on held-out tokens: mean top-1 probability, shares of positions with top-1 < 0.05 / < 0.2, entropy,
probability mass in the argmax's k nearest codes (cosine on the normalised codebook, argmax excluded) against k
random codes, and how often the true token is the argmax or one of its k neighbours.
"""

from typing import Dict, Sequence

import torch

import specdec_kernels as sk


@torch.no_grad()
def flatness_diagnostics(logits: torch.Tensor, tokens: torch.Tensor, codebook_normalized: torch.Tensor,
                         ks: Sequence[int] = (4, 16), seed: int = 0) -> Dict[str, float]:
    """``logits`` ``(N, T, V)`` (fp32, T 1, no CFG) and the true ``tokens`` ``(N, T)``."""
    p = logits.float().softmax(-1).flatten(0, 1)
    true = tokens.flatten()
    top1, arg = p.max(-1)
    out = {"mean_top1_prob": top1.mean().item(),
           "share_top1_below_0.05": (top1 < 0.05).double().mean().item(),
           "share_top1_below_0.2": (top1 < 0.2).double().mean().item(),
           "entropy_nats": -(p * p.clamp_min(1e-30).log()).sum(-1).mean().item(),
           "true_is_argmax": (arg == true).double().mean().item()}
    gen = torch.Generator().manual_seed(seed)
    V = p.shape[-1]
    for k in ks:
        nbrs = sk.neighbor_table(codebook_normalized, k).long()[arg]  # (N*T, k), LANTERN's neighbours
        rand = torch.randint(0, V, nbrs.shape, generator=gen)
        out[f"neighbor_mass_k{k}"] = p.gather(1, nbrs).sum(-1).mean().item()
        out[f"random_mass_k{k}"] = p.gather(1, rand).sum(-1).mean().item()
        hit = (arg == true) | (nbrs == true[:, None]).any(-1)
        out[f"true_in_argmax_or_k{k}_neighbors"] = hit.double().mean().item()
    return {key: round(v, 4) for key, v in out.items()}
