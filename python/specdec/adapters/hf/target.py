"""A Hugging Face image generator behind the decoding loop's model protocol, on the model's own ``DynamicCache``.

The loop (``python/specdec/testbed/model.py`` protocol) addresses K/V by *slot* with a boolean mask over slots:
slot 0 is the condition (here: the whole prompt), slot ``1 + i`` image token ``i``; the last slot is a trash
slot for padding entries. This module maps that onto an append-only ``DynamicCache``:

* every cache entry has an *owner* slot per row (-1: dead); a fed entry of image token i owns slot ``1 + i``, and
  an EOL token inserted after the last token of a grid row (Emu3, Lumina-mGPT) shares its token's slot;
* a forward appends entries for all rows (CFG rows included); the loop's slot mask becomes an additive float 4-D
  mask over cache entries (0 / finfo.min: boolean 4-D masks are silently wrong under eager attention,
  docs/TESTBED.md §3.2) and positions are explicit, per row;
* re-writing a slot (a rejected draft's slot in the next step) kills the old entry; dead entries at the end of
  the cache are dropped with ``cache.crop(-n)`` (batch 1: exactly the rejected drafts), and when ragged rows leave
  more than half of the cache dead it is compacted per row (gather of each layer's keys / values);
* tree methods put node n of a step rooted at position r at slot r + n (RoPE position r + depth); the accepted
  path's move onto slots r, r + 1, ... (``compact_cache``) relabels its entries' owners and kills the other
  nodes' entries, without touching K/V: the positions already are those of the destination slots.
"""

from typing import Optional

import torch

from .families import ImageFamily


class SlotCache:
    """A ``DynamicCache`` plus, per row and entry, the owning slot and whether the entry is an EOL.

    ``compact_below``: compact when the fullest row's live entries fill less than this fraction of the cache.
    """

    compact_below = 0.5

    def __init__(self, cache, rows: int, device):
        self.cache = cache
        self.owner = torch.empty(rows, 0, dtype=torch.int64, device=device)
        self.is_eol = torch.empty(rows, 0, dtype=torch.bool, device=device)

    @property
    def length(self) -> int:
        return int(self.owner.shape[1])

    def kill(self, written: torch.Tensor) -> None:
        """Mark dead the entries of slots that are about to be re-written (``written``: ``(R, S)`` bool)."""
        live = self.owner >= 0
        stale = written.gather(1, self.owner.clamp_min(0)) & live
        self.owner = torch.where(stale, -1, self.owner)

    def trim(self) -> None:
        """Crop dead entries at the end (all rows), then compact if more than half of the cache is dead."""
        live = self.owner >= 0
        used = live.any(0).nonzero()
        keep = int(used[-1]) + 1 if used.numel() else 0
        if keep < self.length:
            self.cache.crop(-(self.length - keep))
            self.owner, self.is_eol = self.owner[:, :keep], self.is_eol[:, :keep]
            live = live[:, :keep]
        most = int(live.sum(1).max()) if keep else 0
        if keep and most < self.compact_below * keep:
            self._compact(live, most)

    def _compact(self, live: torch.Tensor, most: int) -> None:
        # Live entries first, in order, per row: a stable sort of "dead" keeps their relative order.
        order = torch.sort((~live).to(torch.int8), dim=1, stable=True).indices[:, :most]
        for layer in self.cache.layers:
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layer.keys = layer.keys.gather(2, index)
            layer.values = layer.values.gather(2, index)
        self.owner = torch.where(live.gather(1, order), self.owner.gather(1, order), -1)
        self.is_eol = self.is_eol.gather(1, order)


class HFImageTarget:
    """The protocol's target over one batch of prompts of a HF image generator.

    prompts : ``(R, P)`` int64 token ids of the (doubled, cond rows first) batch, left-padded, with ``prompt_mask``
        ``(R, P)`` (1 = real token). ``grid`` ``(rows, columns)``; ``num_tokens`` image tokens are generated.
    """

    def __init__(self, family: ImageFamily, prompts: torch.Tensor, prompt_mask: torch.Tensor, grid, num_tokens: int):
        self.family = family
        self.prompts, self.prompt_mask = prompts, prompt_mask.to(torch.bool)
        self.grid_rows, self.grid_cols = grid
        self.num_tokens = int(num_tokens)
        self.vocab_size = family.vocab_size
        self.num_classes = prompts.shape[0]  # the loop's "null class" id; rows are identified by order instead
        self.has_eol = family.eol_token_id is not None
        self.prompt_len = self.prompt_mask.sum(1)  # positions taken by each row's prompt

    # -- protocol ------------------------------------------------------------------------------------------
    def new_cache(self, rows: int, num_slots: int) -> SlotCache:
        from transformers import DynamicCache

        self.num_slots = num_slots
        return SlotCache(DynamicCache(config=self.family.language_model.config), rows, self.prompts.device)

    def _run(self, cache: SlotCache, embeds, positions, visible):
        """One decoder forward: ``visible`` ``(R, T, length + T)`` bool -> (last hidden states ``(R, T, d)``)."""
        dtype = embeds.dtype
        mask = torch.zeros(visible.shape, dtype=dtype, device=embeds.device)
        mask = mask.masked_fill(~visible, torch.finfo(dtype).min)[:, None]
        out = self.family.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                         past_key_values=cache.cache, use_cache=True)
        return out.last_hidden_state

    def prefill(self, class_rows: torch.Tensor, cache: SlotCache):
        """Feed the prompts (``class_rows`` only gives the row count: the rows are the prompts, in order)."""
        if class_rows.shape[0] != self.prompts.shape[0]:
            raise ValueError(f"prefill: {class_rows.shape[0]} rows for {self.prompts.shape[0]} prompts")
        ids, real = self.prompts, self.prompt_mask
        length = ids.shape[1]
        positions = (real.long().cumsum(1) - 1).clamp_min(0)
        causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=ids.device)
        visible = (causal[None] & real[:, None, :]) | eye[None]  # padding queries see only themselves
        hidden = self._run(cache, self.family.embed_prompt(ids), positions, visible)
        cache.owner = torch.where(real, 0, -1)
        cache.is_eol = torch.zeros_like(real)
        last = hidden[:, -1]
        return self.family.image_logits(last).float(), last

    def forward_tokens(self, tokens, positions, slots, attn_mask, cache: SlotCache):
        """Feed ``(R, T)`` image tokens at protocol positions (image token i at ``1 + i``) into ``slots``;
        ``attn_mask[r, t, s]``: entry t sees slot s. Returns logits over image codes ``(R, T, V)`` (for an entry
        ending a grid row, those of its EOL) and hidden states ``(R, T, d)``."""
        rows, width = tokens.shape
        device = tokens.device
        trash = self.num_slots - 1
        valid = slots != trash
        index = (positions - 1).clamp_min(0)  # image index
        eol = valid & (index % self.grid_cols == self.grid_cols - 1) if self.has_eol else torch.zeros_like(valid)
        # Expanded layout: entry t at start[t], its EOL (if any) right after; padding fills the rest.
        count = 1 + eol.long()
        start = count.cumsum(1) - count
        # Every entry keeps its place (padding included): valid entries need not be a prefix (SD's catch-up feeds
        # them right-aligned), so the width is the longest row's expanded count, padding and all.
        fed = int(count.sum(1).max())
        entry = torch.full((rows, fed), -1, dtype=torch.int64, device=device)
        ar = torch.arange(width, device=device).expand(rows, width)
        entry.scatter_(1, start, ar)
        part_eol = torch.zeros(rows, fed, dtype=torch.bool, device=device)
        entry.scatter_(1, torch.where(eol, start + 1, start), ar)  # EOL slots point at their token's entry
        part_eol.scatter_(1, torch.where(eol, start + 1, start), eol)
        real = entry >= 0
        e = entry.clamp_min(0)
        e_valid = valid.gather(1, e) & real
        # Inputs and positions of the expanded entries.
        token_embeds = self.family.embed_image(tokens.gather(1, e))
        if self.has_eol:
            token_embeds = torch.where(part_eol[..., None], self.family.embed_eol((rows, fed)), token_embeds)
        img = index.gather(1, e)
        pos = self.prompt_len[:, None] + img + (img // self.grid_cols if self.has_eol else 0) + part_eol.long()
        pos = torch.where(e_valid, pos, 0)
        # Slots written by this call kill their old entries; then drop dead entries at the end.
        written = torch.zeros(rows, self.num_slots, dtype=torch.bool, device=device)
        written.scatter_(1, torch.where(valid, slots, trash), valid)
        cache.kill(written)
        cache.trim()
        new_owner = torch.where(e_valid, slots.gather(1, e), -1)
        owner = torch.cat([cache.owner, new_owner], dim=1)
        is_eol = torch.cat([cache.is_eol, part_eol], dim=1)
        # Visibility: key c is seen by query j iff its owner slot is visible to j's entry, except that a token's
        # own EOL is not visible to the token itself; padding queries see only themselves.
        q_mask = attn_mask.gather(1, e[:, :, None].expand(-1, -1, attn_mask.shape[-1]))  # (R, fed, S)
        seen = q_mask.gather(2, owner.clamp_min(0)[:, None, :].expand(-1, fed, -1)) & (owner >= 0)[:, None, :]
        own_slot = torch.where(e_valid, slots.gather(1, e), -2)
        later_eol = (owner[:, None, :] == own_slot[:, :, None]) & is_eol[:, None, :] & ~part_eol[:, :, None]
        seen = seen & ~later_eol
        self_key = torch.zeros_like(seen)
        diag = cache.length + torch.arange(fed, device=device)
        self_key[:, torch.arange(fed, device=device), diag] = True
        seen = torch.where(e_valid[:, :, None], seen, self_key)
        hidden = self._run(cache, token_embeds, pos, seen)
        cache.owner, cache.is_eol = owner, is_eol
        # Outputs per protocol entry: the last expanded entry of t (its EOL when it has one).
        out_index = (start + eol.long()).clamp_max(fed - 1)
        h = hidden.gather(1, out_index[:, :, None].expand(-1, -1, hidden.shape[-1]))
        return self.family.image_logits(h).float(), h

    def compact_cache(self, cache: SlotCache, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Move the K/V of slots ``src`` to slots ``dst`` (both ``(R, A)``), as a tree method's accepted path is
        compacted onto consecutive slots (``TreeMethod._compact``; padding pairs map the root onto itself).

        No K/V is copied: the entries owned by ``src[r, j]`` (a token and its EOL) are relabelled as owned by
        ``dst[r, j]``; their RoPE positions already are those of ``dst`` (a node at depth j sits at position
        root + j). From the row's first ``dst`` slot on (the step's tree), every entry that is not moved dies: the
        rejected nodes and whatever ``dst`` slots held before. Slots below stay as they are. A slot of ``src``
        that is not also in ``dst`` therefore loses its entries (a move, not a copy: nothing reads a rejected
        node's slot before it is written again). Dead entries at the end of the cache are cropped (:meth:`SlotCache.trim`).
        """
        if src.shape != dst.shape or src.dim() != 2 or src.shape[0] != cache.owner.shape[0]:
            raise ValueError(f"compact_cache: src and dst must both be ({cache.owner.shape[0]}, A), got "
                             f"{tuple(src.shape)} and {tuple(dst.shape)}")
        if src.numel() == 0:
            return
        slots = self.num_slots
        src, dst = src.to(cache.owner.device).long(), dst.to(cache.owner.device).long()
        if int(torch.minimum(src, dst).min()) < 0 or int(torch.maximum(src, dst).max()) >= slots:
            raise ValueError(f"compact_cache: slots must be in [0, {slots})")
        # relabel[r, s]: the new owner of slot s's entries (-1: they die).
        ar = torch.arange(slots, device=src.device)
        first = dst.min(1).values
        relabel = torch.where(ar[None, :] < first[:, None], ar[None, :], -1)
        relabel.scatter_(1, src, dst)  # padding pairs (root -> root) write the same value: order does not matter
        live = cache.owner >= 0
        cache.owner = torch.where(live, relabel.gather(1, cache.owner.clamp_min(0)), -1)
        cache.trim()
