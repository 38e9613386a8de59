"""Reference: logits processing (CFG, temperature, top-k, top-p, softmax) and the fused logits -> verification
ops defined as that processing followed by :func:`verify_chain` / :func:`verify_tree` (docs/TESTBED.md §1.4,
docs/ALGORITHMS.md §3).

Numerics [clarification]: every step except top-k runs in float64 and the probabilities are rounded to float32
once at the end, so that a backend reproduces them bit for bit (the float64 ``exp`` of two libraries can differ in
the last bit; that changes a float32 probability only when it sits on a float32 rounding boundary, about one
element in 2^29). Processed logits ``z`` are float32 (top-k compares them); everything after them is float64.
"""

from typing import Optional, Tuple

import torch

from .verify_chain import verify_chain
from .verify_tree import verify_tree

#: Temperatures below this are clamped to it (the greedy limit), as LlamaGen does.
MIN_TEMPERATURE = 1e-5


def processed_logits(logits: torch.Tensor, cfg_scale: Optional[float], temperature: float) -> torch.Tensor:
    """CFG and temperature: ``z = float32((l_u + s * (l_c - l_u)) / max(T, 1e-5))`` computed in float64.

    ``logits`` is ``(2B, S, V)`` with cond rows first when ``cfg_scale`` is given, else ``(B, S, V)``.
    Returns ``(B, S, V)`` float32.
    """
    z = logits.to(torch.float64)
    if cfg_scale is not None:
        half = z.shape[0] // 2
        cond, uncond = z[:half], z[half:]
        z = uncond + float(cfg_scale) * (cond - uncond)
    return (z / max(float(temperature), MIN_TEMPERATURE)).to(torch.float32)


def filtered_softmax(z: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k, then top-p, then softmax of processed logits ``z`` (..., V) float32; returns float32 probabilities.

    - top-k (0 or >= V: off): keep ``z >= `` the k-th largest value (ties at it are kept, as thresholding with
      ``torch.topk`` does).
    - top-p (>= 1: off) [clarification of HF's rule, tie-symmetric]: with ``p1`` the float32 softmax after top-k,
      keep token j iff the float64 mass of the tokens strictly more probable than j (summed sequentially from the
      most probable) is ``< top_p``. This is the smallest prefix of the sorted probabilities reaching ``top_p``,
      extended to the whole tie group at its end; the most probable token is always kept.
    - softmax: ``float32(exp(z - max) / sum)`` over the kept tokens with ``exp`` and the sum in float64.
    """
    vocab = z.shape[-1]
    keep = torch.ones_like(z, dtype=torch.bool)
    if 0 < top_k < vocab:
        threshold = torch.topk(z, top_k, dim=-1).values[..., -1:]
        keep = z >= threshold
    z64 = z.to(torch.float64)
    e = torch.where(keep, torch.exp(z64 - z64.amax(dim=-1, keepdim=True)), 0.0)
    if top_p < 1.0:
        p1 = (e / e.sum(-1, keepdim=True)).to(torch.float32)
        ordered = torch.sort(p1, dim=-1, descending=True).values
        # Exclusive float64 prefix sums, accumulated sequentially from the most probable token.
        before = torch.cumsum(ordered.to(torch.float64), dim=-1).roll(1, dims=-1)
        before[..., 0] = 0.0
        # Mass above a tie group = the cumulative mass before the group's first member.
        group_start = torch.ones_like(ordered, dtype=torch.bool)
        group_start[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
        above = torch.cummax(torch.where(group_start, before, -1.0), dim=-1).values
        kept = above < top_p
        cut = torch.where(kept, ordered, torch.inf).amin(dim=-1, keepdim=True)  # the last kept group's value
        e = torch.where(p1 >= cut, e, 0.0)
    return (e / e.sum(-1, keepdim=True)).to(torch.float32)


def process_logits(logits: torch.Tensor, *, cfg_scale: Optional[float] = None, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The reference processing; see :func:`specdec_kernels.process_logits` for the contract."""
    return filtered_softmax(processed_logits(logits, cfg_scale, temperature), top_k, top_p)


def draft_distribution(draft_probs: Optional[torch.Tensor], draft_logits: Optional[torch.Tensor], batch: int,
                       cfg_scale: Optional[float], temperature: float, top_k: int,
                       top_p: float) -> Optional[torch.Tensor]:
    """q for the verification: ``draft_probs`` as float32, or ``draft_logits`` through the same processing (CFG
    only when they hold a doubled batch), or None (one-hot drafts)."""
    if draft_probs is not None:
        return draft_probs.to(torch.float32)
    if draft_logits is not None:
        doubled = cfg_scale is not None and draft_logits.shape[0] == 2 * batch
        return process_logits(draft_logits, cfg_scale=cfg_scale if doubled else None, temperature=temperature,
                              top_k=top_k, top_p=top_p)
    return None


def verify_chain_logits(logits: torch.Tensor, draft: torch.Tensor, u_accept: torch.Tensor, u_sample: torch.Tensor,
                        *, num_drafts: Optional[torch.Tensor] = None, draft_probs: Optional[torch.Tensor] = None,
                        draft_logits: Optional[torch.Tensor] = None, cfg_scale: Optional[float] = None,
                        temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                        **method_kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
    """``verify_chain(process_logits(logits, ...), q, ...)``; see :func:`specdec_kernels.verify_chain_logits`."""
    p = process_logits(logits, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)
    q = draft_distribution(draft_probs, draft_logits, p.shape[0], cfg_scale, temperature, top_k, top_p)
    return verify_chain(p, q, draft, u_accept, u_sample, num_drafts=num_drafts, **method_kwargs)


def verify_tree_logits(logits: torch.Tensor, tree_tokens: torch.Tensor, parents: torch.Tensor,
                       u_accept: torch.Tensor, u_sample: torch.Tensor, *, num_nodes: Optional[torch.Tensor] = None,
                       draft_probs: Optional[torch.Tensor] = None, cfg_scale: Optional[float] = None,
                       temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                       **method_kwargs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``verify_tree(process_logits(logits, ...), draft_probs, ...)``; see
    :func:`specdec_kernels.verify_tree_logits`."""
    p = process_logits(logits, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)
    q = None if draft_probs is None else draft_probs.to(torch.float32)
    return verify_tree(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes=num_nodes, **method_kwargs)
