"""vLLM v1's rejection-sampler layout in and out, with this library's acceptance rules (docs/SERVING.md).

vLLM v1 (``vllm/v1/sample/rejection_sampler.py``, ``vllm/v1/spec_decode/metadata.py``) verifies the drafts of a
batch of requests in a *flattened* layout:

* ``draft_token_ids`` ``[num_tokens]``: every request's drafts, concatenated; ``num_draft_tokens`` (a host list)
  and ``cu_num_draft_tokens`` ``[B]`` (their inclusive cumulative count, int32), so request b owns
  ``[cu[b-1], cu[b])`` (a request may have 0); ``max_spec_len`` the most drafts per request;
* the combined logits ``[num_tokens + B, V]`` with ``target_logits_indices`` ``[num_tokens]`` and
  ``bonus_logits_indices`` ``[B]`` selecting the draft rows and each request's bonus row (older versions passed
  ``[num_tokens, V]`` target logits and a ``bonus_token_ids`` ``[B, 1]`` sampled outside); ``draft_probs``
  ``[num_tokens, V]`` or None (n-gram drafts, q = 1);
* per-request sampling settings in ``SamplingMetadata``: ``temperature`` ``[B]`` (None when ``all_greedy``;
  greedy requests hold 0, -1 in older versions), ``top_k`` / ``top_p`` ``[B]`` or None, ``generators``
  ``{request index: torch.Generator}`` for seeded requests;
* output ``[B, max_spec_len + 1]`` int32: accepted drafts, then the recovered or bonus token, then
  ``PLACEHOLDER_TOKEN_ID`` (-1), inside a ``SamplerOutput(sampled_token_ids, logprobs_tensors)``.

:class:`SpeculativeRejectionSampler` is shaped like vLLM's ``RejectionSampler``: ``forward(metadata, draft_probs,
logits, sampling_metadata)`` on those fields (duck-typed: any objects with those attributes), per-request settings,
greedy requests by argmax, the bonus token sampled here. :func:`rejection_sample` is the free function on the
older flattened layout with one sampling configuration for the batch. Both verify with
:class:`specdec.SpeculativeVerifier` (exact, GSD or LANTERN) in one padded ``verify_chain`` call.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from ..verifier import SpeculativeVerifier

PLACEHOLDER_TOKEN_ID = -1


def _padded_positions(starts: torch.Tensor, num_drafts: torch.Tensor, width: int, num_tokens: int):
    """Where each entry of the padded ``[B, width + 1]`` layout comes from in the flattened one: ``flat[b, j]`` =
    ``starts[b] + j`` (clamped into range) is the flat row of draft j of request b when ``is_draft[b, j]``
    (``j < num_drafts[b]``); position ``num_drafts[b]`` and later hold the bonus row (verify_chain's layout)."""
    j = torch.arange(width + 1, device=starts.device)
    flat = (starts[:, None] + j[None, :]).clamp(0, max(num_tokens - 1, 0))
    return flat, j[None, :] < num_drafts[:, None]


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

    One temperature / top-k / top-p for the batch (the verifier's); for vLLM's per-request settings, greedy
    requests and the combined ``[num_tokens + B, V]`` logits use :class:`SpeculativeRejectionSampler`.
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
    flat, is_draft = _padded_positions(starts, num_drafts, width, num_tokens)
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


@dataclass
class SpecDecodeSamplerOutput:
    """What :meth:`SpeculativeRejectionSampler.forward` returns, with the fields of vLLM's ``SamplerOutput``.

    sampled_token_ids : ``[B, max_spec_len + 1]`` int32, accepted drafts, then the recovered or bonus token, then
        ``PLACEHOLDER_TOKEN_ID``. logprobs_tensors : always None (logprobs are not computed).
    """

    sampled_token_ids: torch.Tensor
    logprobs_tensors: None = None


class SpeculativeRejectionSampler(torch.nn.Module):
    """A drop-in for vLLM v1's ``RejectionSampler`` with exact, GSD or LANTERN acceptance (docs/SERVING.md).

    Build it once per engine, with a :class:`SpeculativeVerifier` (``verifier=``) or from ``method`` ("exact",
    "gsd", "lantern"), the VQ ``codebook`` (GSD / LANTERN) and the method's parameters (delta, k, lam,
    rank_window, p_thr, d_thr); the neighbour table or embeddings are built then, once. Checking is the
    verifier's ``validate`` (default None: on CUDA the kernels report a bad row by an asynchronous device
    assertion, and per-request settings on the GPU are not value-checked, both without a host sync; vLLM
    validates requests when they arrive). ``validate=True`` checks every value, at the price of host syncs.

    Per call the host touches only what vLLM already holds on the host: ``num_draft_tokens`` (list),
    ``max_spec_len``, the tensors' shapes and the keys of ``generators``. The combined logits are read once into
    the padded ``[B, max_spec_len + 1, V]`` layout the kernels take (one gather; the per-request processing then
    makes the probability rows); ``draft_probs`` is gathered likewise.
    """

    def __init__(self, verifier: Optional[SpeculativeVerifier] = None, *, method: str = "exact",
                 codebook: Optional[torch.Tensor] = None, **method_params):
        super().__init__()
        if verifier is None:
            verifier = SpeculativeVerifier(method, codebook=codebook, **method_params)
        elif codebook is not None or method_params or method != "exact":
            raise ValueError("pass a built verifier, or method / codebook / method parameters, not both")
        if verifier.uses_cfg:
            raise ValueError("verifier: vLLM's sampler sees one row per request (no CFG pairs); build it with "
                             "cfg_scale=None and mix CFG logits in the model wrapper (docs/SERVING.md)")
        self.verifier = verifier

    @staticmethod
    def _sampling(sampling_metadata, batch: int, device):
        """vLLM's per-request settings as (temperature, top_k, top_p): ``(B,)`` tensors or scalars. Greedy
        requests (temperature 0, or -1 in older vLLM; every request when ``all_greedy``) get temperature 0."""
        temperature = getattr(sampling_metadata, "temperature", None)
        if getattr(sampling_metadata, "all_greedy", False) or temperature is None:
            temperature = 0.0
        else:
            temperature = temperature.to(device=device, dtype=torch.float32)
            if tuple(temperature.shape) != (batch,):
                raise ValueError(f"sampling_metadata.temperature must be [B = {batch}], got "
                                 f"{tuple(temperature.shape)}")
            temperature = temperature.clamp_min(0.0)  # vLLM's greedy marker (0 or -1) -> 0
        top_k = getattr(sampling_metadata, "top_k", None)
        top_p = getattr(sampling_metadata, "top_p", None)
        # vLLM writes V (older versions: -1) for "no top-k"; both keep every token here
        top_k = 0 if top_k is None else top_k.to(device=device, dtype=torch.int64).clamp_min(0)
        top_p = 1.0 if top_p is None else top_p.to(device=device, dtype=torch.float32)
        return temperature, top_k, top_p

    @staticmethod
    def _uniforms(num_draft_tokens: List[int], width: int, generators, device):
        """``u_accept [B, width]`` and ``u_sample [B]``: from the default generator, except the rows of seeded
        requests, drawn from their own generator (a ``torch.Generator`` or an int seed), drafts' uniforms first,
        so a seeded request gets the same tokens in any batch."""
        batch = len(num_draft_tokens)
        u_accept = torch.rand(batch, width, device=device)
        u_sample = torch.rand(batch, device=device)
        for req, gen in (generators or {}).items():
            if not 0 <= int(req) < batch:
                raise ValueError(f"sampling_metadata.generators: request index {req} outside the batch of {batch}")
            if not isinstance(gen, torch.Generator):
                gen = torch.Generator(device=device).manual_seed(int(gen))
            n = num_draft_tokens[req]
            u_accept[req, :n] = torch.rand(n, generator=gen, device=gen.device).to(device)
            u_sample[req] = torch.rand(1, generator=gen, device=gen.device).to(device)[0]
        return u_accept, u_sample

    def forward(self, metadata, draft_probs: Optional[torch.Tensor], logits: torch.Tensor, sampling_metadata, *,
                uniform_probs: Optional[torch.Tensor] = None,
                uniform_bonus: Optional[torch.Tensor] = None) -> SpecDecodeSamplerOutput:
        """Verify one step of a vLLM batch.

        metadata : vLLM's ``SpecDecodeMetadata`` or any object with ``draft_token_ids`` ``[num_tokens]``,
            ``num_draft_tokens`` (host list), ``cu_num_draft_tokens`` ``[B]``, ``target_logits_indices``
            ``[num_tokens]``, ``bonus_logits_indices`` ``[B]`` and optionally ``max_spec_len`` (output width - 1;
            default the most drafts of a request).
        draft_probs : ``[num_tokens, V]`` q of each draft, or None (n-gram / Jacobi drafts: one-hot).
        logits : ``[num_tokens + B, V]`` the target's raw logits (draft rows and bonus rows, as vLLM passes them).
        sampling_metadata : vLLM's ``SamplingMetadata`` or any object with ``temperature`` ``[B]`` (or None),
            ``all_greedy``, ``top_k`` / ``top_p`` ``[B]`` or None and ``generators`` ``{request: Generator}``.
        uniform_probs ``[num_tokens]`` (vLLM's layout) and uniform_bonus ``[B]`` : the uniforms, when the caller
            draws them (tests, replays); by default drawn as described in :meth:`_uniforms`.

        Returns ``SpecDecodeSamplerOutput(sampled_token_ids [B, max_spec_len + 1] int32, logprobs_tensors=None)``.
        Greedy requests take the argmax rule (accept while the draft is the argmax; then the argmax); the
        others the verifier's rule on their processed distributions; the bonus token (every draft accepted) is
        sampled here from the bonus row with the request's settings.
        """
        num_draft_tokens = [int(n) for n in metadata.num_draft_tokens]
        batch, num_tokens = len(num_draft_tokens), sum(num_draft_tokens)
        draft_ids = metadata.draft_token_ids
        target_index, bonus_index = metadata.target_logits_indices, metadata.bonus_logits_indices
        cu = metadata.cu_num_draft_tokens
        if draft_ids.dim() != 1 or draft_ids.shape[0] != num_tokens or min(num_draft_tokens, default=0) < 0:
            raise ValueError(f"metadata: draft_token_ids must be [sum(num_draft_tokens) = {num_tokens}], got "
                             f"{tuple(draft_ids.shape)}")
        if tuple(cu.shape) != (batch,) or tuple(bonus_index.shape) != (batch,):
            raise ValueError(f"metadata: cu_num_draft_tokens and bonus_logits_indices must be [B = {batch}], got "
                             f"{tuple(cu.shape)} and {tuple(bonus_index.shape)}")
        if tuple(target_index.shape) != (num_tokens,):
            raise ValueError(f"metadata: target_logits_indices must be [num_tokens = {num_tokens}], got "
                             f"{tuple(target_index.shape)}")
        if logits.dim() != 2 or logits.shape[0] != num_tokens + batch:
            raise ValueError(f"logits must be [num_tokens + B = {num_tokens + batch}, V], got {tuple(logits.shape)}")
        most = max(num_draft_tokens, default=0)
        width = getattr(metadata, "max_spec_len", None)
        width = most if width is None else int(width)
        if width < most:
            raise ValueError(f"metadata: max_spec_len = {width} is below the most drafts of a request ({most})")
        device, vocab = logits.device, logits.shape[1]
        num_drafts = torch.tensor(num_draft_tokens, dtype=torch.int64).to(device, non_blocking=True)
        starts = cu.to(device=device, dtype=torch.int64) - num_drafts
        flat, is_draft = _padded_positions(starts, num_drafts, width, num_tokens)
        target_index, bonus_index = target_index.to(device).long(), bonus_index.to(device).long()
        rows = bonus_index[:, None].expand(batch, width + 1)
        if num_tokens:
            rows = torch.where(is_draft, target_index[flat], rows)
        padded_logits = logits[rows]  # [B, width + 1, V]: the only copy of the logits made here
        draft_pos = is_draft[:, :width]
        drafts = (torch.where(draft_pos, draft_ids.to(device).long()[flat[:, :width]], 0) if num_tokens
                  else torch.zeros(batch, width, dtype=torch.int64, device=device))
        q = None
        if draft_probs is not None:
            if tuple(draft_probs.shape) != (num_tokens, vocab):
                raise ValueError(f"draft_probs must be [num_tokens, V] = [{num_tokens}, {vocab}], "
                                 f"got {tuple(draft_probs.shape)}")
            if num_tokens:  # one gather; the padding positions are zeroed in place
                q = draft_probs[flat[:, :width]].float().masked_fill_(~draft_pos[:, :, None], 0.0)
            else:
                q = torch.zeros(batch, width, vocab, device=device)
        if (uniform_probs is None) != (uniform_bonus is None):
            raise ValueError("pass both uniform_probs and uniform_bonus, or neither")
        if uniform_probs is not None:
            if tuple(uniform_probs.shape) != (num_tokens,) or tuple(uniform_bonus.shape) != (batch,):
                raise ValueError("uniform_probs must be [num_tokens], uniform_bonus [B]")
            u_accept = (torch.where(draft_pos, uniform_probs.to(device)[flat[:, :width]], 0.0) if num_tokens
                        else torch.zeros(batch, width, device=device))
            u_sample = uniform_bonus.to(device)
        else:
            u_accept, u_sample = self._uniforms(num_draft_tokens, width, getattr(sampling_metadata, "generators",
                                                                                  None), device)
        temperature, top_k, top_p = self._sampling(sampling_metadata, batch, device)
        verifier = self.verifier.with_sampling(temperature=temperature, top_k=top_k, top_p=top_p)
        out = verifier.step(padded_logits, drafts, num_drafts=num_drafts, draft_probs=q, u_accept=u_accept,
                            u_sample=u_sample, return_probs=False)
        tokens = torch.where(out.tokens >= 0, out.tokens, PLACEHOLDER_TOKEN_ID).to(torch.int32)
        return SpecDecodeSamplerOutput(tokens)

    @staticmethod
    def parse_output(output_token_ids: torch.Tensor, vocab_size: int,
                     discard_req_indices: Sequence[int] = ()) -> List[List[int]]:
        """Each request's committed tokens as a host list (vLLM's ``parse_output``: placeholders and ids outside
        the vocabulary dropped; discarded requests get none)."""
        rows = output_token_ids.cpu()
        valid = (rows != PLACEHOLDER_TOKEN_ID) & (rows < vocab_size)
        if len(discard_req_indices):
            valid[list(discard_req_indices)] = False
        return [row[keep].tolist() for row, keep in zip(rows, valid)]
