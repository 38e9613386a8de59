"""Ragged feeds into a model that follows the testbed protocol (KV by cache slot, docs/TESTBED.md §1.5-1.7).

Protocol (``python/specdec/testbed/model.py``): ``forward_tokens(tokens [R,T], positions [R,T], slots [R,T],
attn_mask [R,T,S] bool, cache) -> (logits [R,T,V], hidden [R,T,d])``; a query sees cache slot s iff
``attn_mask[r, t, s]``, and the fed tokens' K/V are written at ``slots`` before attending (so a query sees itself
through its own slot). A draft head takes the target features as an extra ``hidden`` argument.

Padding: entries that are not valid (finished rows, rows with fewer drafts) write to the cache's last slot,
the *trash slot*, which no valid query ever sees, and attend only to it; their outputs are ignored.
"""

from typing import Optional

import torch


def attention_mask(
    slots: torch.Tensor,
    valid: torch.Tensor,
    prefix_len: torch.Tensor,
    num_slots: int,
    intra: Optional[torch.Tensor] = None,
    extra: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Bool ``(batch, T, num_slots)`` mask: the committed prefix ``slots < prefix_len[b]``, plus the fed entries
    each query may see (``intra[b, t, t']``, default causal), plus ``extra`` (e.g. ancestors fed earlier).
    Invalid queries see only their own (trash) slot."""
    batch, length = slots.shape
    device = slots.device
    if intra is None:
        intra = torch.ones(length, length, dtype=torch.bool, device=device).tril().expand(batch, length, length)
    visible_intra = intra & valid[:, None, :]
    hits = torch.zeros(batch, length, num_slots, device=device)
    hits.scatter_add_(2, slots[:, None, :].expand(batch, length, length), visible_intra.to(hits.dtype))
    mask = torch.arange(num_slots, device=device)[None, None, :] < prefix_len[:, None, None]
    mask = mask | (hits > 0)
    if extra is not None:
        mask = mask | extra
    mask = mask & valid[:, :, None]
    trash = torch.zeros_like(mask)
    trash[:, :, num_slots - 1] = True
    return torch.where(valid[:, :, None], mask, trash)


def _double(t: torch.Tensor, times: int) -> torch.Tensor:
    return t if times == 1 else torch.cat([t] * times, dim=0)


def run_model(
    model,
    cache,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    valid: torch.Tensor,
    mask: torch.Tensor,
    *,
    cfg_copies: int,
    hidden: Optional[torch.Tensor] = None,
):
    """Feed ``(batch, T)`` entries (duplicated ``cfg_copies`` times along the batch for CFG); padding entries
    go to the trash slot at position 0. ``hidden`` (already ``(cfg_copies * batch, T, d)``) selects the draft
    head form of the protocol."""
    num_slots = mask.shape[-1]
    tokens = torch.where(valid, tokens, 0)
    positions = torch.where(valid, positions, 0)
    slots = torch.where(valid, slots, num_slots - 1)
    args = [_double(t, cfg_copies) for t in (tokens, positions, slots, mask)]
    if hidden is None:
        return model.forward_tokens(*args, cache)
    return model.forward_tokens(args[0], hidden, *args[1:], cache)
