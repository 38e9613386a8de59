"""vLLM v1's rejection-sampler layout in and out, with this library's acceptance rules (docs/SERVING.md).

vLLM v1 (``vllm/v1/sample/rejection_sampler.py``, ``vllm/v1/spec_decode/metadata.py``) verifies the drafts of a
batch of requests in a *flattened* layout:

* ``draft_token_ids`` ``[num_tokens]``: every request's drafts, concatenated; ``cu_num_draft_tokens`` ``[B]``
  is their inclusive cumulative count (int32), so request b owns ``[cu[b-1], cu[b])`` (a request may have 0);
* target logits ``[num_tokens, V]`` at the draft positions (newer versions pass ``[num_tokens + B, V]`` with
  ``target_logits_indices`` ``[num_tokens]`` and ``bonus_logits_indices`` ``[B]`` selecting the draft rows and
  each request's bonus row); ``draft_probs`` ``[num_tokens, V]`` or None (n-gram drafts, q = 1);
* the bonus token either sampled outside (``bonus_token_ids`` ``[B, 1]``) or from the bonus rows;
* output ``[B, max_spec_len + 1]`` int32: accepted drafts, then the recovered or bonus token, then
  ``PLACEHOLDER_TOKEN_ID`` (-1).

:func:`rejection_sample` takes these inputs and returns that output with exact, GSD or LANTERN acceptance,
through :class:`specdec.SpeculativeVerifier` (one padded ``verify_chain`` call).
"""

from typing import Optional

import torch

from ..verifier import SpeculativeVerifier

PLACEHOLDER_TOKEN_ID = -1


def rejection_sample(
    draft_token_ids: torch.Tensor,
    cu_num_draft_tokens: torch.Tensor,
    target_logits: Optional[torch.Tensor] = None,
    *,
    target_probs: Optional[torch.Tensor] = None,
    bonus_logits: Optional[torch.Tensor] = None,
    bonus_probs: Optional[torch.Tensor] = None,
    bonus_token_ids: Optional[torch.Tensor] = None,
    draft_probs: Optional[torch.Tensor] = None,
    max_spec_len: Optional[int] = None,
    verifier: Optional[SpeculativeVerifier] = None,
    method: str = "exact",
    codebook: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    uniform_probs: Optional[torch.Tensor] = None,
    uniform_bonus: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    **method_params,
) -> torch.Tensor:
    """Verify a vLLM-layout batch of drafts; return vLLM's output ids ``[B, max_spec_len + 1]`` int32.

    Parameters
    ----------
    draft_token_ids : ``[num_tokens]`` int (int32 or int64) flattened drafts.
    cu_num_draft_tokens : ``[B]`` inclusive cumulative drafts per request.
    target_logits : ``[num_tokens, V]`` raw target logits at the draft positions (processed here with
        ``temperature`` / ``top_k`` / ``top_p``), or ``target_probs`` ``[num_tokens, V]`` already processed.
    bonus_logits / bonus_probs : ``[B, V]`` each request's bonus row (processed like the target), or
        ``bonus_token_ids`` ``[B, 1]`` sampled outside (vLLM's default): emitted when every draft passes.
    draft_probs : ``[num_tokens, V]`` q of each draft, or None (one-hot drafts: n-gram, Jacobi).
    max_spec_len : output width - 1 (default: the most drafts of any request).
    verifier : a built :class:`SpeculativeVerifier` (its logits processing is used, no CFG); otherwise one is
        built from ``method`` ("exact", "gsd", "lantern"), ``codebook`` and ``method_params`` (delta, k, lam,
        rank_window, p_thr, d_thr) and the sampling arguments. Build it once and pass it in a serving loop.
    uniform_probs : ``[num_tokens]`` one uniform per draft (vLLM's ``generate_uniform_probs`` layout);
        uniform_bonus : ``[B]`` one uniform per request for the recovered / bonus sample. Or ``generator``.

    Returns
    -------
    ``[B, max_spec_len + 1]`` int32: request b's accepted drafts, then its recovered or bonus token, then -1.
    """
    if verifier is None:
        verifier = SpeculativeVerifier(method, codebook=codebook, temperature=temperature, top_k=top_k, top_p=top_p,
                                       **method_params)
    elif verifier.uses_cfg:
        raise ValueError("verifier: the vLLM layout has no CFG rows; build the verifier with cfg_scale=None")
    if draft_token_ids.dim() != 1 or cu_num_draft_tokens.dim() != 1:
        raise ValueError("draft_token_ids and cu_num_draft_tokens must be 1-D")
    if (target_logits is None) == (target_probs is None):
        raise ValueError("pass exactly one of target_logits and target_probs")
    bonus_given = [x is not None for x in (bonus_logits, bonus_probs, bonus_token_ids)]
    if sum(bonus_given) != 1:
        raise ValueError("pass exactly one of bonus_logits, bonus_probs and bonus_token_ids")
    device = draft_token_ids.device
    batch = cu_num_draft_tokens.shape[0]
    num_tokens = draft_token_ids.shape[0]
    cu = cu_num_draft_tokens.to(device=device, dtype=torch.int64)
    starts = torch.cat([cu.new_zeros(1), cu[:-1]])
    num_drafts = cu - starts
    if batch and (bool((num_drafts < 0).any()) or int(cu[-1]) != num_tokens):
        raise ValueError(f"cu_num_draft_tokens must be non-decreasing and end at num_tokens = {num_tokens}")
    most = int(num_drafts.max()) if batch else 0
    width = most if max_spec_len is None else int(max_spec_len)
    if width < most:
        raise ValueError(f"max_spec_len = {width} is below the most drafts of a request ({most})")
    p_flat = target_probs if target_probs is not None else verifier.process(target_logits)
    if p_flat.dim() != 2 or p_flat.shape[0] != num_tokens:
        raise ValueError(f"target logits / probs must be [num_tokens = {num_tokens}, V], got {tuple(p_flat.shape)}")
    vocab = p_flat.shape[1]
    if bonus_token_ids is not None:  # sampled outside: a one-hot bonus row emits exactly that token
        bonus = torch.zeros(batch, vocab, device=p_flat.device)
        bonus.scatter_(1, bonus_token_ids.reshape(batch, 1).to(device=p_flat.device, dtype=torch.int64), 1.0)
    else:
        bonus = bonus_probs if bonus_probs is not None else verifier.process(bonus_logits)
    if bonus.shape != (batch, vocab):
        raise ValueError(f"bonus rows must be [B = {batch}, V = {vocab}], got {tuple(bonus.shape)}")
    # Padded layout: row b, position j < num_drafts[b] is flat token starts[b] + j; the bonus row sits at
    # position num_drafts[b] (verify_chain's bonus row); later rows repeat the bonus row and are never read.
    j = torch.arange(width + 1, device=device)
    flat = (starts[:, None] + j[None, :]).clamp_max(max(num_tokens - 1, 0))
    is_draft = j[None, :] < num_drafts[:, None]
    p = bonus[:, None, :].expand(batch, width + 1, vocab).clone()
    if num_tokens:
        p = torch.where(is_draft[:, :, None], p_flat[flat], p)
    drafts = torch.where(is_draft[:, :width], draft_token_ids.to(torch.int64)[flat[:, :width]], 0) if num_tokens \
        else torch.zeros(batch, width, dtype=torch.int64, device=device)
    q = None
    if draft_probs is not None:
        if draft_probs.shape != (num_tokens, vocab):
            raise ValueError(f"draft_probs must be [num_tokens, V] = [{num_tokens}, {vocab}], "
                             f"got {tuple(draft_probs.shape)}")
        q = torch.where(is_draft[:, :width, None], draft_probs[flat[:, :width]], 0.0).to(p.dtype)
    u_accept = u_sample = None
    if uniform_probs is not None or uniform_bonus is not None:
        if uniform_probs is None or uniform_bonus is None:
            raise ValueError("pass both uniform_probs and uniform_bonus, or neither")
        if uniform_probs.shape != (num_tokens,) or uniform_bonus.shape != (batch,):
            raise ValueError("uniform_probs must be [num_tokens], uniform_bonus [B]")
        u_accept = torch.where(is_draft[:, :width], uniform_probs[flat[:, :width]], 0.0) if num_tokens \
            else torch.zeros(batch, width, device=device)
        u_sample = uniform_bonus
    out = verifier.step(None, drafts, probs=p, num_drafts=num_drafts, draft_probs=q, u_accept=u_accept,
                        u_sample=u_sample, generator=generator)
    return torch.where(out.tokens >= 0, out.tokens, PLACEHOLDER_TOKEN_ID).to(torch.int32)
