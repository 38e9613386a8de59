"""One verification API from raw logits: :class:`SpeculativeVerifier`.

Build it once per model and method; call :meth:`SpeculativeVerifier.step` (chains) or
:meth:`SpeculativeVerifier.step_tree` (trees) after each target forward. It owns the whole path from the target's
raw logits to the tokens to commit:

    raw logits (CFG doubled batch, cond rows first) -> CFG mix -> temperature -> top-k -> top-p -> softmax
    -> verify_chain / verify_tree (exact, GSD or LANTERN acceptance) -> accept_len, next_token, new lengths

Relaxed methods take the model's VQ codebook; the verifier builds the LANTERN neighbour table or GSD's
L2-normalised embedding table once, on the codebook's device, and reuses it on every step.

Randomness enters only through uniforms (``u_accept``, ``u_sample``), passed in or drawn from a
``torch.Generator``: the same uniforms give the same tokens on every backend (docs/ALGORITHMS.md §3.1).

Example::

    verifier = SpeculativeVerifier("lantern", codebook=codebook, delta=0.1, cfg_scale=5.0, top_k=2000)
    out = verifier.step(logits, drafts, num_drafts=n, generator=gen)   # logits: (2B, L + 1, V)
    # commit drafts[b, :out.accept_len[b]] then out.next_token[b]; keep out.num_kept[b] of the L + 1 fed entries
"""

from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

import specdec_kernels as sk
from specdec_kernels import _methods

# Method names the verifier accepts, mapped to the kernels' acceptance rule. Decoding-method names are accepted
# as aliases of the rule they verify with: AR, SD and SJD all use the exact test.
ACCEPTANCE_RULES = {"exact": "exact", "ar": "exact", "sd": "exact", "sjd": "exact", "gsd": "gsd",
                    "lantern": "lantern"}


def _is_per_row(value) -> bool:
    """A sampling parameter given per row: a tensor with a batch dimension (0-d tensors are scalars)."""
    return isinstance(value, torch.Tensor) and value.dim() > 0


def _as_scalar(value):
    return value.item() if isinstance(value, torch.Tensor) else value


def _per_row_column(value, batch: int, dtype, device, view, name: str) -> torch.Tensor:
    """A scalar or ``(batch,)`` parameter as a ``(batch, 1, ..., 1)`` tensor broadcasting over the logits."""
    if _is_per_row(value):
        if tuple(value.shape) != (batch,):
            raise ValueError(f"{name} per row must be ({batch},) (one value per sequence, after CFG), "
                             f"got {tuple(value.shape)}")
        column = value.to(device=device, dtype=dtype)
    else:
        column = torch.full((batch,), float(_as_scalar(value) or 0), dtype=dtype, device=device)
    return column.reshape(view)


def check_sampling(temperature, top_k, top_p, *, validate: Optional[bool] = None) -> None:
    """Clear errors for bad sampling parameters, scalars or ``(B,)`` tensors: shapes and dtypes always, values of
    scalars always. Values of tensors (each check a device -> host sync off the CPU) with ``validate=True``, or
    with ``validate=None`` (the kernels' default) when the tensor is on the CPU; with ``validate=False``, or on an
    accelerator with ``None``, they are trusted (a serving engine validates each request once, on arrival)."""
    for name, value in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)):
        if isinstance(value, torch.Tensor) and value.dim() > 1:
            raise ValueError(f"{name} must be a scalar or a (B,) tensor, got shape {tuple(value.shape)}")
    if isinstance(top_k, torch.Tensor) and top_k.is_floating_point():
        raise ValueError(f"top_k per row must be an integer tensor, got {top_k.dtype}")

    def values(value, dtype=None):
        """The values to check, or None when a tensor's values are trusted."""
        if _is_per_row(value):
            if validate is False or (validate is None and value.device.type != "cpu"):
                return None
            return value.to(dtype) if dtype is not None else value
        return torch.as_tensor(_as_scalar(value), dtype=dtype)

    t = values(temperature, torch.float64)
    if t is not None and (not bool(torch.isfinite(t).all()) or bool((t < 0).any())):
        raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature}")
    k = None if top_k is None else values(top_k)
    if k is not None and bool((k < 0).any()):
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    p = values(top_p, torch.float64)
    if p is not None and not bool(((p > 0) & (p <= 1)).all()):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def _per_row_processing(work: torch.Tensor, temperature, top_k, top_p) -> torch.Tensor:
    """Temperature, top-k, top-p and softmax with each parameter a scalar or one value per row of ``work``
    ``(B, ..., V)`` (already CFG-mixed). The same rules as the scalar path, row by row; rows with temperature 0
    are greedy: one-hot on the first argmax of the mixed logits (vLLM's greedy rows). No data-dependent branch,
    so no device -> host sync."""
    batch, vocab = work.shape[0], work.shape[-1]
    view = (batch,) + (1,) * (work.dim() - 1)
    t = _per_row_column(temperature, batch, work.dtype, work.device, view, "temperature")
    greedy = t == 0
    scaled = work / t.clamp_min(1e-5)
    if _is_per_row(top_k) or int(_as_scalar(top_k) or 0) > 0:
        k = _per_row_column(top_k, batch, torch.int64, work.device, view, "top_k")
        kth = torch.sort(scaled, dim=-1, descending=True).values.gather(
            -1, (k - 1).clamp(0, vocab - 1).expand(scaled.shape[:-1] + (1,)))
        cut = (k > 0) & (k < vocab) & (scaled < kth)
        scaled = scaled.masked_fill(cut, float("-inf"))
    if _is_per_row(top_p) or float(_as_scalar(top_p)) < 1.0:
        p = _per_row_column(top_p, batch, work.dtype, work.device, view, "top_p")
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        drop_sorted = (mass_before >= p) & (p < 1.0)
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    probs = torch.softmax(scaled, dim=-1).to(torch.float32)
    one_hot = F.one_hot(work.argmax(-1), vocab).to(torch.float32)
    return torch.where(greedy, one_hot, probs)


def _eager_process(logits: torch.Tensor, *, cfg_scale: Optional[float] = None, temperature=1.0,
                              top_k=0, top_p=1.0) -> torch.Tensor:
    """The processing in eager PyTorch ops, for per-row parameters (which ``specdec_kernels.process_logits`` does not
    take): the same rules (docs/TESTBED.md §1.4).

    logits ``(rows, ..., V)``; with ``cfg_scale`` (not None, not 1) rows are ``2 * batch``, cond rows first, and
    ``l = l_u + s * (l_c - l_u)`` mixes the raw logits. Then ``/ max(T, 1e-5)``, top-k (ties with the k-th value
    kept), top-p (the smallest prefix of the sorted probabilities whose mass reaches ``top_p``, at least one token),
    softmax. float64 input is processed in float64; the result is float32 ``(batch, ..., V)``.

    ``temperature``, ``top_k``, ``top_p`` may each be a ``(batch,)`` tensor (one value per sequence, after CFG):
    then temperature 0 is exactly greedy (one-hot on the first argmax), top-k 0 (or >= V) and top-p 1 disable
    the filter for that row.
    """
    work = logits if logits.dtype == torch.float64 else logits.float()
    if cfg_scale is not None and float(cfg_scale) != 1.0:
        cond, uncond = work.chunk(2, dim=0)
        work = uncond + float(cfg_scale) * (cond - uncond)
    if any(_is_per_row(x) for x in (temperature, top_k, top_p)):
        return _per_row_processing(work, temperature, top_k, top_p)
    temperature, top_k, top_p = _as_scalar(temperature), _as_scalar(top_k), _as_scalar(top_p)
    work = work / max(float(temperature), 1e-5)
    k = int(top_k or 0)
    if 0 < k < work.shape[-1]:
        kth = torch.topk(work, k, dim=-1).values[..., -1:]
        work = work.masked_fill(work < kth, float("-inf"))
    if float(top_p) < 1.0:
        sorted_logits, order = torch.sort(work, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        drop_sorted = mass_before >= float(top_p)
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        work = work.masked_fill(drop, float("-inf"))
    return torch.softmax(work, dim=-1).to(torch.float32)


def sampling_probs(logits: torch.Tensor, *, cfg_scale: Optional[float] = None, temperature=1.0,
                   top_k=0, top_p=1.0) -> torch.Tensor:
    """The verifier's processing of raw logits ``(rows, ..., V)`` into float32 probabilities (CFG, temperature, top-k,
    top-p, softmax): ``specdec_kernels.process_logits`` for scalar settings, on any layout.

    ``temperature``, ``top_k`` and ``top_p`` are scalars or ``(batch,)`` tensors (one value per sequence; a
    temperature of 0 is greedy). The library's op takes scalars only, so per-row parameters run the eager
    PyTorch path (:func:`_eager_process`), on the logits' device."""
    if cfg_scale is not None and float(cfg_scale) == 1.0:  # scale 1 is no guidance: the rows are not doubled
        cfg_scale = None
    if any(_is_per_row(x) for x in (temperature, top_k, top_p)):
        return _eager_process(logits, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)
    temperature, top_k, top_p = _as_scalar(temperature), _as_scalar(top_k), _as_scalar(top_p)
    rows, vocab = logits.shape[0], logits.shape[-1]  # the library's op takes (rows, S, V): fold the layout
    probs = sk.process_logits(logits.reshape(rows, -1, vocab), cfg_scale=cfg_scale, temperature=temperature,
                              top_k=int(top_k or 0), top_p=top_p)
    return probs.reshape((probs.shape[0],) + tuple(logits.shape[1:]))


@dataclass
class ChainStep:
    """Outcome of one chain verification.

    accept_len : ``(B,)`` int64, accepted drafts per row (0 for rows with no drafts).
    next_token : ``(B,)`` int64, the recovered (first rejection) or bonus token.
    tokens : ``(B, L + 1)`` int64, what to commit: ``drafts[b, :accept_len[b]]``, then ``next_token[b]``, then -1.
    num_kept : ``(B,)`` int64, ``accept_len + 1``: of the ``[last, d_0 .. d_{L-1}]`` entries the target was fed,
        the ones whose K/V stay valid (the rest are rolled back; ``next_token`` has no K/V yet).
    new_length : ``(B,)`` int64, ``lengths + num_kept`` when ``lengths`` (cache length before the step) was
        given, else None. Crop / roll back row b's cache to ``new_length[b]``.
    probs : ``(B, L + 1, V)`` float32 processed target distributions (Jacobi drafting reuses them); None when
        the step ran the fused logits -> verification op (``return_probs=False``).
    """

    accept_len: torch.Tensor
    next_token: torch.Tensor
    tokens: torch.Tensor
    num_kept: torch.Tensor
    new_length: Optional[torch.Tensor]
    probs: torch.Tensor


@dataclass
class TreeStep:
    """Outcome of one tree verification.

    accepted_nodes : ``(B, M - 1)`` int64 node ids of the accepted path (root excluded), -1 after it.
    accept_len : ``(B,)`` int64; next_token : ``(B,)`` int64.
    tokens : ``(B, M)`` int64, tokens to commit (the accepted nodes' tokens, next_token, then -1).
    path : ``(B, M)`` int64 node ids whose K/V to keep, root first (``path[b, :num_kept[b]]``): copy them to
        consecutive cache slots after the prefix (docs/TESTBED.md §1.7).
    num_kept : ``(B,)`` ``accept_len + 1``; new_length : ``lengths + num_kept`` when ``lengths`` was given.
    probs : ``(B, M, V)`` processed target distributions, or None (fused op, ``return_probs=False``).
    """

    accepted_nodes: torch.Tensor
    accept_len: torch.Tensor
    next_token: torch.Tensor
    tokens: torch.Tensor
    path: torch.Tensor
    num_kept: torch.Tensor
    new_length: Optional[torch.Tensor]
    probs: torch.Tensor


@dataclass(frozen=True)
class _Sampling:
    """Logits processing; temperature, top_k and top_p are scalars or ``(B,)`` tensors (one per sequence)."""

    cfg_scale: Optional[float] = None
    temperature: object = 1.0
    top_k: object = 0
    top_p: object = 1.0

    @property
    def per_row(self) -> bool:
        return any(_is_per_row(x) for x in (self.temperature, self.top_k, self.top_p))


def _scalar_or_rows(value, cast):
    """Keep ``(B,)`` tensors as they are; make scalars (and 0-d tensors) plain Python numbers."""
    if _is_per_row(value):
        return value
    value = _as_scalar(value)
    return None if value is None else cast(value)


class SpeculativeVerifier:
    """Verification of speculative drafts from raw target logits, for every method of the library.

    Parameters
    ----------
    method : {"exact", "gsd", "lantern"} or a decoding-method alias ("ar", "sd", "sjd" verify exactly).
    codebook : ``(V, D)`` float, optional. The VQ codebook of the image tokens (row i = code i = token i of the
        logits). "lantern": the neighbour table ``neighbor_table(codebook, k)`` (L2-normalised rows) is built from
        it; "gsd": its L2-normalised rows become the distance filter's embeddings. Built once, on the codebook's
        device. Alternatively pass ``neighbors`` / ``embeddings`` directly.
    k : LANTERN neighbours per code (default ``V // 16``, docs/ALGORITHMS.md §3.4; capped to V - 1).
    delta, lam : LANTERN's TV budget (default 0.1) or LANTERN++'s ratio (pass one).
    rank_window, p_thr, d_thr : GSD's window and filters (defaults scaled to V as in
        :mod:`specdec.decoding.defaults`, 0.15, 0.5).
    cfg_scale, temperature, top_k, top_p : logits processing (:func:`sampling_probs`); ``cfg_scale`` None or 1
        means the logits are not doubled. ``temperature``, ``top_k`` and ``top_p`` may be ``(B,)`` tensors, one
        value per sequence (vLLM's per-request settings); per-row settings run the eager processing path (the
        fused logits ops take scalars). Rows with temperature 0 are greedy and verified as vLLM verifies greedy
        requests, whatever the method: drafts are accepted while they equal the argmax of the (CFG-mixed) target
        logits, and the next token is the argmax at the first mismatch (or of the bonus row).
    backend, validate : passed to the kernels (``validate=None`` is the kernels' default checking level).
    """

    def __init__(self, method: str = "exact", *, codebook: Optional[torch.Tensor] = None,
                 neighbors: Optional[torch.Tensor] = None, embeddings: Optional[torch.Tensor] = None,
                 k: Optional[int] = None, delta: Optional[float] = None, lam: Optional[float] = None,
                 rank_window: Optional[Tuple[int, int]] = None, p_thr: Optional[float] = None,
                 d_thr: Optional[float] = None, cfg_scale: Optional[float] = None, temperature=1.0,
                 top_k=0, top_p=1.0, backend: str = "auto", validate: Optional[bool] = None):
        if method not in ACCEPTANCE_RULES:
            raise ValueError(f"method: unknown {method!r}; choose from {sorted(ACCEPTANCE_RULES)}")
        self.method = method
        self.rule = ACCEPTANCE_RULES[method]
        self.backend = backend
        self.validate = validate
        check_sampling(temperature, top_k, top_p, validate=validate)
        self.sampling = _Sampling(cfg_scale, _scalar_or_rows(temperature, float), _scalar_or_rows(top_k, int),
                                  _scalar_or_rows(top_p, float))
        self._kwargs = self._relaxation(codebook, neighbors, embeddings, k, delta, lam, rank_window, p_thr, d_thr)

    def _relaxation(self, codebook, neighbors, embeddings, k, delta, lam, rank_window, p_thr, d_thr) -> dict:
        """The keyword arguments of this rule for the kernels, with tables built once from the codebook."""
        from .decoding.defaults import LANTERN_DELTA, gsd_rank_window, lantern_k

        if codebook is not None and codebook.dim() != 2:
            raise ValueError(f"codebook must be (vocab_size, dim), got shape {tuple(codebook.shape)}")
        self._codebook_size = None if codebook is None else int(codebook.shape[0])
        if self.rule == "exact":
            given = [name for name, value in (("codebook", codebook), ("neighbors", neighbors),
                     ("embeddings", embeddings), ("delta", delta), ("lam", lam), ("rank_window", rank_window),
                     ("p_thr", p_thr), ("d_thr", d_thr)) if value is not None]
            if given:
                raise ValueError(f"method {self.method!r} (exact) takes no {', '.join(given)}")
            return {"method": "exact"}
        if self.rule == "lantern":
            if neighbors is None:
                if codebook is None:
                    raise ValueError("method 'lantern' needs codebook (or a neighbors table)")
                vocab = codebook.shape[0]
                k = lantern_k(vocab) if k is None else min(int(k), vocab - 1)
                neighbors = sk.neighbor_table(codebook.float().contiguous(), k)
            if delta is not None and lam is not None:
                raise ValueError("pass delta (LANTERN) or lam (LANTERN++), not both")
            if lam is None and delta is None:
                delta = LANTERN_DELTA
            return {"method": "lantern", "neighbors": neighbors, "delta": delta, "lam": lam}
        # gsd
        if embeddings is None and codebook is not None:
            embeddings = F.normalize(codebook.float(), dim=-1).contiguous()
        vocab = embeddings.shape[0] if embeddings is not None else None
        if rank_window is None:
            if vocab is None:
                raise ValueError("method 'gsd' needs rank_window when no codebook / embeddings are given")
            rank_window = gsd_rank_window(vocab)
        return {"method": "gsd", "embeddings": embeddings, "rank_window": tuple(rank_window),
                "p_thr": _methods.default(_methods.GSD, "p_thr") if p_thr is None else float(p_thr),
                "d_thr": _methods.default(_methods.GSD, "d_thr") if d_thr is None else float(d_thr)}

    # -- configuration ---------------------------------------------------------------------------------------
    @property
    def kernel_kwargs(self) -> dict:
        """Keyword arguments this verifier passes to ``verify_chain`` (method, tables, parameters)."""
        return dict(self._kwargs)

    def with_sampling(self, *, cfg_scale=None, temperature=1.0, top_k=0, top_p=1.0,
                      validate="unchanged") -> "SpeculativeVerifier":
        """A copy with other logits processing (scalars or ``(B,)`` tensors, as in the constructor; and
        optionally another ``validate``) that shares the built tables (no rebuild)."""
        other = object.__new__(SpeculativeVerifier)
        other.__dict__.update(self.__dict__)
        if validate != "unchanged":
            other.validate = validate
        check_sampling(temperature, top_k, top_p, validate=other.validate)
        other.sampling = replace(self.sampling, cfg_scale=cfg_scale, temperature=_scalar_or_rows(temperature, float),
                                 top_k=_scalar_or_rows(top_k, int), top_p=_scalar_or_rows(top_p, float))
        return other

    @property
    def uses_cfg(self) -> bool:
        return self.sampling.cfg_scale is not None and float(self.sampling.cfg_scale) != 1.0

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """This verifier's logits processing: ``(rows, ..., V)`` raw logits -> ``(B, ..., V)`` float32 probs."""
        s = self.sampling
        return sampling_probs(logits, cfg_scale=s.cfg_scale, temperature=s.temperature, top_k=s.top_k,
                              top_p=s.top_p)

    # -- verification ----------------------------------------------------------------------------------------
    def _check_vocab(self, logits, probs):
        """The tables built from ``codebook`` index its codes: the logits must cover exactly that vocabulary
        (else the kernels would name their own ``neighbors`` / ``embeddings`` arguments, not the caller's)."""
        rows = logits if probs is None else probs
        size = self._codebook_size
        if size is not None and rows is not None and rows.shape[-1] != size:
            raise ValueError(f"codebook has {size} codes, but the logits' vocabulary has {rows.shape[-1]}: image "
                             f"token i of the logits must be code i of the codebook")

    def _uniforms(self, batch, count, device, u_accept, u_sample, generator):
        if (u_accept is None) != (u_sample is None):
            raise ValueError("pass both u_accept and u_sample, or neither (then generator draws them)")
        if u_accept is None:
            gen_device = generator.device if generator is not None else device
            u_accept = torch.rand(batch, count, generator=generator, device=gen_device).to(device)
            u_sample = torch.rand(batch, generator=generator, device=gen_device).to(device)
        return u_accept.float().contiguous(), u_sample.float().contiguous()

    def _draft_q(self, draft_probs, draft_logits):
        if draft_probs is not None and draft_logits is not None:
            raise ValueError("pass draft_probs or draft_logits, not both")
        if draft_logits is not None:  # the drafter's q goes through the same processing, without CFG
            s = self.sampling
            return sampling_probs(draft_logits, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
        return draft_probs

    def _greedy_rows(self, batch: int, device) -> Optional[torch.Tensor]:
        """``(B,)`` bool: rows with temperature 0; None when no row can be greedy (checked without a sync)."""
        t = self.sampling.temperature
        if _is_per_row(t):
            return t.to(device) == 0
        return torch.ones(batch, dtype=torch.bool, device=device) if float(t) == 0.0 else None

    def _mixed_argmax(self, logits: torch.Tensor) -> torch.Tensor:
        """Argmax of the CFG-mixed raw logits (what greedy rows follow; temperature and filters keep it)."""
        work = logits.float()
        if self.uses_cfg:
            cond, uncond = work.chunk(2, dim=0)
            work = uncond + float(self.sampling.cfg_scale) * (cond - uncond)
        return work.argmax(-1)

    @staticmethod
    def _greedy_chain(greedy, argmax, drafts, num_drafts, accept_len, next_token):
        """vLLM's greedy rule on the rows in ``greedy``: accept while ``drafts[b, i] == argmax[b, i]`` (within
        ``num_drafts[b]``); the next token is the argmax at the first mismatch, or of the bonus row."""
        width = drafts.shape[1]
        match = drafts == argmax[:, :width]
        if num_drafts is not None:
            match &= torch.arange(width, device=drafts.device)[None, :] < num_drafts.to(drafts.device)[:, None]
        greedy_len = match.long().cumprod(1).sum(1)
        greedy_next = argmax.gather(1, greedy_len[:, None])[:, 0]
        return torch.where(greedy, greedy_len, accept_len), torch.where(greedy, greedy_next, next_token)

    def step(self, logits: torch.Tensor, drafts: torch.Tensor, *, num_drafts: Optional[torch.Tensor] = None,
             draft_probs: Optional[torch.Tensor] = None, draft_logits: Optional[torch.Tensor] = None,
             u_accept: Optional[torch.Tensor] = None, u_sample: Optional[torch.Tensor] = None,
             generator: Optional[torch.Generator] = None, lengths: Optional[torch.Tensor] = None,
             probs: Optional[torch.Tensor] = None, return_probs: bool = True) -> ChainStep:
        """Verify one chain step.

        logits : ``(2B or B, L + 1, V)`` raw target logits over ``[last, d_0 .. d_{L-1}]`` (row i judges draft
            i, row L is the bonus row); doubled (cond rows first) when the verifier uses CFG.
        drafts : ``(B, L)`` int64. num_drafts : ``(B,)`` int64 drafts per row (ragged; default L).
        draft_probs : ``(B, L, V)`` q the drafts were drawn from, or None (one-hot drafts: Jacobi, greedy);
            or draft_logits ``(B, L, V)`` processed like the target (temperature, top-k, top-p; no CFG).
        u_accept ``(B, L)``, u_sample ``(B,)`` : uniforms in [0, 1); or ``generator`` to draw them.
        lengths : ``(B,)`` cache length of each row before the step (to get ``new_length``).
        probs : already processed ``(B, L + 1, V)`` target probabilities instead of ``logits`` (pass None
            as logits).
        return_probs : keep the processed rows in the result. With False the logits go straight to the fused
            ``specdec_kernels.verify_chain_logits`` (the same tokens, no
            ``(B, L + 1, V)`` probability tensor); otherwise the rows are processed, then verified. Per-row
            sampling parameters always take the second (eager) path: the fused op takes scalars.

        Greedy rows (temperature 0) are verified by argmax matching (see the class docstring); their uniforms
        are drawn all the same, so the other rows' tokens do not depend on which rows are greedy.
        """
        self._check_vocab(logits, probs)
        batch, width = drafts.shape
        greedy = self._greedy_rows(batch, drafts.device)
        if probs is None and not return_probs and not self.sampling.per_row:
            self._check_rows(logits, batch, width + 1, "drafts", tuple(drafts.shape))
            u_accept, u_sample = self._uniforms(batch, width, logits.device, u_accept, u_sample, generator)
            s = self.sampling
            accept_len, next_token = sk.verify_chain_logits(
                logits, drafts, u_accept, u_sample, num_drafts=num_drafts, draft_probs=draft_probs,
                draft_logits=draft_logits, cfg_scale=s.cfg_scale, temperature=s.temperature, top_k=int(s.top_k or 0),
                top_p=s.top_p, backend=self.backend, validate=self.validate, **self._kwargs,
            )
            if greedy is not None:
                accept_len, next_token = self._greedy_chain(greedy, self._mixed_argmax(logits), drafts, num_drafts,
                                                            accept_len, next_token)
            return self._chain_result(drafts, accept_len, next_token, lengths, None)
        p = self.process(logits) if probs is None else probs
        if p.dim() != 3 or p.shape[0] != batch or p.shape[1] != width + 1:
            raise ValueError(f"logits: expected ({'2 * ' if self.uses_cfg else ''}{batch}, {width + 1}, V) "
                             f"for drafts of shape {tuple(drafts.shape)}, got processed shape {tuple(p.shape)}")
        q = self._draft_q(draft_probs, draft_logits)
        u_accept, u_sample = self._uniforms(batch, width, p.device, u_accept, u_sample, generator)
        accept_len, next_token = sk.verify_chain(
            p, q, drafts, u_accept, u_sample, num_drafts=num_drafts, backend=self.backend,
            validate=self.validate, **self._kwargs,
        )
        if greedy is not None:
            accept_len, next_token = self._greedy_chain(greedy, p.argmax(-1), drafts, num_drafts, accept_len,
                                                        next_token)
        return self._chain_result(drafts, accept_len, next_token, lengths, p)

    def jacobi_step(self, logits: torch.Tensor, window: torch.Tensor, q: Optional[torch.Tensor], *,
                    num_drafts: Optional[torch.Tensor] = None, u_accept: torch.Tensor, u_sample: torch.Tensor,
                    u_draft: torch.Tensor, u_keep: Optional[torch.Tensor] = None,
                    u_init: Optional[torch.Tensor] = None, update: Optional[torch.Tensor] = None,
                    lengths: Optional[torch.Tensor] = None) -> Tuple[ChainStep, "sk.JacobiStep"]:
        """Verify a Jacobi window and draw the next one from the same processed rows, in one pass
        (:func:`specdec_kernels.jacobi_step`): the step SJD / GSD (and their coupled, MC-SJD variants) run.

        logits : ``(2B or B, L + 1, V)`` raw target logits over ``[last, window]``; window ``(B, L)`` and q
        ``(B, L, V)`` (or None: one-hot) the current drafts. Uniforms as :func:`specdec_kernels.jacobi_step`.
        Returns the verification outcome (``probs`` None) and the kernel's :class:`specdec_kernels.JacobiStep`
        (next window, its q, first fresh entry per row).
        """
        self._check_vocab(logits, None)
        batch, width = window.shape
        self._check_rows(logits, batch, width + 1, "window", tuple(window.shape))
        s = self.sampling
        out = sk.jacobi_step(logits, window, q, u_accept.float().contiguous(), u_sample.float().contiguous(),
                             u_draft.float().contiguous(), u_keep=u_keep, u_init=u_init, num_drafts=num_drafts,
                             update=update, cfg_scale=s.cfg_scale, temperature=s.temperature,
                             top_k=int(s.top_k or 0), top_p=s.top_p, backend=self.backend, validate=self.validate,
                             **self._kwargs)
        return self._chain_result(window, out.accept_len, out.next_token, lengths, None), out

    def _check_rows(self, logits, batch, rows, what, shape):
        expected = (2 * batch if self.uses_cfg else batch, rows)
        if logits is None or logits.dim() != 3 or tuple(logits.shape[:2]) != expected:
            got = None if logits is None else tuple(logits.shape)
            raise ValueError(f"logits: expected ({expected[0]}, {rows}, V) for {what} of shape {shape}, got {got}")

    @staticmethod
    def _chain_result(drafts, accept_len, next_token, lengths, p) -> ChainStep:
        width = drafts.shape[1]
        tokens = torch.cat([drafts, next_token[:, None]], dim=1)
        tokens.scatter_(1, accept_len[:, None], next_token[:, None])
        offs = torch.arange(width + 1, device=drafts.device)
        tokens = torch.where(offs[None, :] <= accept_len[:, None], tokens, -1)
        num_kept = accept_len + 1
        new_length = None if lengths is None else lengths + num_kept
        return ChainStep(accept_len, next_token, tokens, num_kept, new_length, p)

    def sample(self, logits: Optional[torch.Tensor], u_sample: Optional[torch.Tensor] = None, *,
               generator: Optional[torch.Generator] = None, probs: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Plain sampling (a chain of zero drafts, the same inverse-CDF rule): ``(2B or B, V)`` logits -> ``(B,)``."""
        p = (self.process(logits) if probs is None else probs)[:, None, :]
        batch = p.shape[0]
        empty = torch.zeros(batch, 0, dtype=torch.int64, device=p.device)
        u_accept = torch.zeros(batch, 0, device=p.device) if u_sample is not None else None
        return self.step(None, empty, probs=p, u_accept=u_accept, u_sample=u_sample, generator=generator,
                         num_drafts=torch.zeros(batch, dtype=torch.int64, device=p.device)).next_token

    def step_tree(self, logits: torch.Tensor, tree_tokens: torch.Tensor, parents: torch.Tensor, *,
                  num_nodes: Optional[torch.Tensor] = None, draft_probs: Optional[torch.Tensor] = None,
                  u_accept: Optional[torch.Tensor] = None, u_sample: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None, lengths: Optional[torch.Tensor] = None,
                  probs: Optional[torch.Tensor] = None, return_probs: bool = True) -> TreeStep:
        """Verify one tree step.

        logits : ``(2B or B, M, V)`` raw target logits at the M nodes (node 0 = root = last committed token).
        tree_tokens, parents : ``(B, M)`` int64 (``parents[:, 0] = -1``, parents before children).
        num_nodes : ``(B,)`` valid nodes per row (default M). draft_probs : ``(B, M, V)`` q at each node (the
            distribution its children were drawn from) or None (deterministic candidates).
        Uniforms ``u_accept (B, M)``, ``u_sample (B,)`` or ``generator``; ``lengths`` as in :meth:`step`.
        Only "exact" and "lantern" verify trees. ``return_probs=False`` uses the fused
        ``specdec_kernels.verify_tree_logits`` (as in :meth:`step`; per-row sampling
        parameters take the eager path). Greedy rows get one-hot target rows but the tree kernels' acceptance
        test (no separate argmax rule for trees).
        """
        if self.rule == "gsd":
            raise ValueError("method 'gsd' verifies chains only; use step()")
        self._check_vocab(logits, probs)
        batch, m = tree_tokens.shape
        kwargs = {key: value for key, value in self._kwargs.items() if key in ("method", "neighbors", "delta", "lam")}
        if probs is None and not return_probs and not self.sampling.per_row:
            self._check_rows(logits, batch, m, "a tree with nodes", tuple(tree_tokens.shape))
            u_accept, u_sample = self._uniforms(batch, m, logits.device, u_accept, u_sample, generator)
            s = self.sampling
            p = None
            accepted, accept_len, next_token = sk.verify_tree_logits(
                logits, tree_tokens, parents, u_accept, u_sample, num_nodes=num_nodes, draft_probs=draft_probs,
                cfg_scale=s.cfg_scale, temperature=s.temperature, top_k=int(s.top_k or 0), top_p=s.top_p,
                backend=self.backend, validate=self.validate, **kwargs,
            )
        else:
            p = self.process(logits) if probs is None else probs
            if p.dim() != 3 or p.shape[0] != batch or p.shape[1] != m:
                raise ValueError(f"logits: expected ({'2 * ' if self.uses_cfg else ''}{batch}, {m}, V) for a tree "
                                 f"of {m} nodes, got processed shape {tuple(p.shape)}")
            u_accept, u_sample = self._uniforms(batch, m, p.device, u_accept, u_sample, generator)
            accepted, accept_len, next_token = sk.verify_tree(
                p, draft_probs, tree_tokens, parents, u_accept, u_sample, num_nodes=num_nodes, backend=self.backend,
                validate=self.validate, **kwargs,
            )
        zero = torch.zeros(batch, 1, dtype=torch.int64, device=tree_tokens.device)
        path = torch.cat([zero, accepted.clamp_min(0)], dim=1)
        on_path = torch.arange(m, device=tree_tokens.device)[None, :] <= accept_len[:, None]
        path = torch.where(on_path, path, 0)
        tokens = torch.cat([tree_tokens.gather(1, path[:, 1:]), next_token[:, None]], dim=1)
        tokens.scatter_(1, accept_len[:, None], next_token[:, None])
        tokens = torch.where(on_path, tokens, -1)
        num_kept = accept_len + 1
        new_length = None if lengths is None else lengths + num_kept
        return TreeStep(accepted, accept_len, next_token, tokens, path, num_kept, new_length, p)
