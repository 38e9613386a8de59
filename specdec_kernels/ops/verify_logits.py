"""Public ops: logits processing and the fused logits -> verification entry points (chain and tree).

The decoding step of an image AR model turns raw logits into probabilities (classifier-free guidance on a doubled
batch, temperature, top-k, top-p, softmax) and then verifies the drafts. ``verify_chain_logits`` /
``verify_tree_logits`` do both in one pass per row: each logits row the verification reads is processed where it
is read, rows past the first rejection are never touched, and no ``[B, L, V]`` probability tensor is written.
They equal :func:`verify_chain` / :func:`verify_tree` applied to :func:`process_logits`, token for token.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from .. import _validation as v
from .._backend import resolve_backend, torch_op
from .. import _methods
from ..reference import verify_logits as ref
from ._dispatch import run

_LOGITS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _float32_if_double(t):
    """float64 inputs (e.g. a float64 model's logits) are rounded to float32 once, here: the kernels read
    float32 / float16 / bfloat16 and do their own arithmetic in float64 where it decides a token."""
    return t.float() if isinstance(t, torch.Tensor) and t.dtype == torch.float64 else t

def _processing_args(cfg_scale, temperature, top_k, top_p):
    if cfg_scale is not None and (not isinstance(cfg_scale, (int, float)) or isinstance(cfg_scale, bool)
                                  or not math.isfinite(cfg_scale)):
        raise ValueError(f"cfg_scale must be None or a finite number, got {cfg_scale!r}")
    v._scalar(temperature, "temperature", 0.0)
    if not math.isfinite(temperature):  # the compiled kernels take a finite temperature only: same answer everywhere
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
    if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be a number in (0, 1] (1 = off), got {top_p!r}")
    return None if cfg_scale is None else float(cfg_scale), float(temperature), int(top_k), float(top_p)


def _logits_shape(logits, cfg_scale, name="logits") -> Tuple[int, int, int]:
    v._tensor(logits, name, 3, _LOGITS_DTYPES)
    rows, slots, vocab = logits.shape
    if slots < 1 or vocab < 1:
        raise ValueError(f"{name} must be (batch, slots >= 1, vocab >= 1), got {tuple(logits.shape)}")
    if cfg_scale is not None and rows % 2:
        raise ValueError(f"with cfg_scale, {name} must hold a doubled batch (cond rows, then uncond rows); "
                         f"got {rows} rows")
    return (rows // 2 if cfg_scale is not None else rows), slots, vocab


def _guidance(logits, cfg_scale, batch: int) -> Optional[float]:
    """The guidance the verification ops apply, from the logits' row count against the drafts' batch B: 2B rows
    need ``cfg_scale``; B rows take no guidance, and ``cfg_scale = 1`` on them (which equals no guidance:
    ``l_u + 1 * (l_c - l_u) = l_c``) is accepted as such, so a caller that keeps CFG off by a scale of 1 is never
    misread as a doubled batch."""
    rows = logits.shape[0]
    if cfg_scale is not None and rows == 2 * batch:
        return cfg_scale
    if rows == batch and (cfg_scale is None or cfg_scale == 1.0):
        return None
    if cfg_scale is None:
        raise ValueError(f"logits has {rows} rows for a batch of {batch}: pass cfg_scale for a doubled batch "
                         f"(cond rows, then uncond rows), or {batch} rows without it")
    raise ValueError(f"with cfg_scale={cfg_scale}, logits must hold a doubled batch of {2 * batch} rows (cond rows, "
                     f"then uncond rows), got {rows}")


def _method(method, op, vocab, device, neighbors=None, embeddings=None, **given):
    """Validate the method arguments against the method table; return the op's method code, the reference's
    keyword arguments and the packed ``params`` list of the op schema (``specdec_kernels._methods``)."""
    code, params = v.method_params(method, op, vocab, neighbors=neighbors, embeddings=embeddings, **given)
    if neighbors is not None:
        v.neighbor_shapes(neighbors, vocab, device)
    if embeddings is not None:
        v.embedding_shapes(embeddings, vocab, device)
    chosen = _methods.METHODS[method]
    kwargs = {"method": method, **_methods.unpack_params(chosen, params)}
    if "neighbors" in chosen.needs:
        kwargs["neighbors"] = neighbors
    if "embeddings" in chosen.optional:
        kwargs["embeddings"] = embeddings
    return code, kwargs, params


def _finite_logits(checks, logits: torch.Tensor, name: str):
    """Logits may hold -inf (masked tokens) but not NaN or +inf."""
    checks.add(~torch.isnan(logits) & (logits < math.inf), f"{name} contains NaN or +inf")


def process_logits(logits: torch.Tensor, *, cfg_scale: Optional[float] = None, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The reference logits processing of the decoding loop (docs/TESTBED.md §1.4), public.

    Steps, per row of the last dimension:

    1. CFG (when ``cfg_scale`` is given): the batch is doubled, cond rows first, then uncond rows;
       ``l = l_u + s * (l_c - l_u)`` on the raw logits.
    2. Temperature: ``z = l / max(T, 1e-5)`` (steps 1-2 in float64, rounded once to float32).
    3. top-k (0 or >= V: off): keep ``z >=`` the k-th largest value; ties at it are kept.
    4. top-p (1: off): keep token j iff the mass of the tokens strictly more probable than j (float64, summed
       from the most probable) is ``< top_p``: HF's smallest prefix of the sorted probabilities reaching
       ``top_p``, with the tie group at its end kept whole; at least the most probable token survives.
    5. softmax over the kept tokens, ``exp`` and sum in float64, rounded once to float32.

    Parameters
    ----------
    logits : ``(2B or B, S, V)`` float32/float16/bfloat16 (float64 is rounded to float32 first)
        Raw logits (``2B`` rows with ``cfg_scale``). ``-inf`` entries are masked tokens.
    cfg_scale : float, optional
        Guidance scale ``s``; None disables CFG.
    temperature : finite float >= 0
    top_k : int >= 0
    top_p : float in (0, 1]

    Returns
    -------
    probs : ``(B, S, V)`` float32
        NaN rows where a row holds NaN or +inf logits or only -inf.
    """
    cfg_scale, temperature, top_k, top_p = _processing_args(cfg_scale, temperature, top_k, top_p)
    logits = _float32_if_double(logits)
    _logits_shape(logits, cfg_scale)
    return ref.process_logits(logits, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p)


@dataclass
class ChainLogitsCall:
    """The checked inputs of a chain op from logits (``verify_chain_logits``, ``jacobi_step``)."""

    logits: torch.Tensor
    draft_logits: Optional[torch.Tensor]
    draft_probs: Optional[torch.Tensor]
    u_accept: torch.Tensor
    u_sample: torch.Tensor
    num_drafts: torch.Tensor
    cfg_scale: Optional[float]
    temperature: float
    top_k: int
    top_p: float
    code: int
    kwargs: dict
    params: List[float]
    batch: int
    drafts: int
    vocab: int


def prepare_chain_logits(logits, draft, u_accept, u_sample, num_drafts, draft_probs, draft_logits, cfg_scale,
                         temperature, top_k, top_p, method, backend, validate, method_args,
                         extra_checks=None) -> ChainLogitsCall:
    """Every check of a chain op from logits, written once: processing arguments, shapes, the method's parameters
    (``method_args``: its keyword values, None = not given) and, with ``validate=True`` (or on the reference, which
    does not report bad rows itself), the value checks (plus ``extra_checks(checks)``, an op's own)."""
    cfg_scale, temperature, top_k, top_p = _processing_args(cfg_scale, temperature, top_k, top_p)
    logits, draft_logits, draft_probs = (_float32_if_double(t) for t in (logits, draft_logits, draft_probs))
    v._tensor(logits, "logits", 3, _LOGITS_DTYPES)
    v._tensor(draft, "draft", 2, (torch.int64,), logits.device)
    cfg_scale = _guidance(logits, cfg_scale, draft.shape[0])
    batch, slots, vocab = _logits_shape(logits, cfg_scale)
    drafts = slots - 1
    device = logits.device
    if num_drafts is None:
        num_drafts = torch.full((batch,), drafts, dtype=torch.int64, device=device)
    for name, t, shape, dtype in (("draft", draft, (batch, drafts), torch.int64),
                                  ("u_accept", u_accept, (batch, drafts), torch.float32),
                                  ("u_sample", u_sample, (batch,), torch.float32),
                                  ("num_drafts", num_drafts, (batch,), torch.int64)):
        v._tensor(t, name, len(shape), (dtype,), device)
        v._shape(t, name, shape)
    if draft_probs is not None and draft_logits is not None:
        raise ValueError("pass at most one of draft_probs and draft_logits")
    if draft_probs is not None:
        v._tensor(draft_probs, "draft_probs", 3, _LOGITS_DTYPES, device)
        v._shape(draft_probs, "draft_probs", (batch, drafts, vocab))
    if draft_logits is not None:
        v._tensor(draft_logits, "draft_logits", 3, (logits.dtype,), device)
        rows_ok = draft_logits.shape[0] == batch or (cfg_scale is not None and draft_logits.shape[0] == 2 * batch)
        if not rows_ok or tuple(draft_logits.shape[1:]) != (drafts, vocab):
            raise ValueError(f"draft_logits must be ({batch}{' or ' + str(2 * batch) if cfg_scale is not None else ''}"
                             f", {drafts}, {vocab}), got {tuple(draft_logits.shape)}")
    code, method_kwargs, params = _method(method, "verify_chain", vocab, device, **method_args)
    neighbors, embeddings = method_args.get("neighbors"), method_args.get("embeddings")
    chosen = resolve_backend(backend, device)
    if validate or (validate is None and chosen == "reference"):  # the reference does not report bad rows itself
        checks = v.new_checks()
        checks.add((num_drafts >= 0) & (num_drafts <= drafts), f"num_drafts must lie in [0, {drafts}]")
        used = torch.arange(drafts, device=device) < num_drafts[:, None]
        checks.ids(draft, "draft", vocab, valid=used)
        checks.uniforms(u_accept, "u_accept")
        checks.uniforms(u_sample, "u_sample")
        _finite_logits(checks, logits, "logits")
        if draft_logits is not None:
            _finite_logits(checks, draft_logits, "draft_logits")
        if draft_probs is not None:
            checks.probabilities(draft_probs, "draft_probs")
        if neighbors is not None:
            v.check_neighbor_values(checks, neighbors, vocab)
        if embeddings is not None:
            checks.add(torch.isfinite(embeddings), "embeddings contains NaN or inf")
        if extra_checks is not None:
            extra_checks(checks)
        checks.run()
    return ChainLogitsCall(logits, draft_logits, draft_probs, u_accept, u_sample, num_drafts, cfg_scale, temperature,
                           top_k, top_p, code, method_kwargs, params, batch, drafts, vocab)


def verify_chain_logits(
    logits: torch.Tensor,
    draft: torch.Tensor,
    u_accept: torch.Tensor,
    u_sample: torch.Tensor,
    *,
    num_drafts: Optional[torch.Tensor] = None,
    draft_probs: Optional[torch.Tensor] = None,
    draft_logits: Optional[torch.Tensor] = None,
    cfg_scale: Optional[float] = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    method: str = "exact",
    neighbors: Optional[torch.Tensor] = None,
    delta: Optional[float] = None,
    lam: Optional[float] = None,
    embeddings: Optional[torch.Tensor] = None,
    rank_window: Optional[Tuple[int, int]] = None,
    p_thr: Optional[float] = None,
    d_thr: Optional[float] = None,
    epsilon: Optional[float] = None,
    alpha: Optional[float] = None,
    backend: str = "auto",
    validate: Optional[bool] = None,
    **method_params,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Chain verification straight from the target's raw logits: processing and verification fused per row.

    Equal, token for token on the same uniforms, to ``verify_chain(process_logits(logits, ...), q, draft, ...)``
    where ``q`` is ``draft_probs``, or ``process_logits(draft_logits, ...)`` with the same temperature / top-k /
    top-p (and CFG when ``draft_logits`` holds a doubled batch), or None (one-hot drafts). See
    :func:`verify_chain` for the acceptance rules and :func:`process_logits` for the processing.

    Parameters
    ----------
    logits : ``(2B or B, L + 1, V)`` float32/float16/bfloat16
        Raw target logits; with ``cfg_scale`` cond rows ``[:B]`` then uncond rows ``[B:]`` (B rows with
        ``cfg_scale`` None or 1: no guidance). Row ``i`` judges ``draft[:, i]``; row ``L`` is the bonus row.
    draft, u_accept, u_sample, num_drafts, method, neighbors, delta, lam, embeddings, rank_window, p_thr, d_thr
        As in :func:`verify_chain` (``draft`` ``(B, L)`` int64, ``u_accept`` ``(B, L)`` and ``u_sample`` ``(B,)``
        float32 in [0, 1], ``num_drafts`` ``(B,)`` int64 in [0, L]).
    draft_probs : ``(B, L, V)`` float, optional
        The draft's (already processed) distributions.
    draft_logits : ``(B or 2B, L, V)`` same dtype as logits, optional
        The draft's raw logits (exclusive with ``draft_probs``).
    cfg_scale, temperature, top_k, top_p
        Processing, as in :func:`process_logits`.
    backend : {"auto", "reference", "cpu", "triton", "cuda"}
    validate : None, True or False
        None (default): shape checks, plus a ``ValueError`` naming the row when the kernel reports a bad row
        (codes below; on CUDA through ``torch._assert_async``, no host synchronisation). True: also the full
        value checks before the kernel (one host synchronisation). False: no raise; bad rows come back as
        ``next_token = -code``, ``accept_len = 0``.

    Returns
    -------
    accept_len : ``(B,)`` int64
    next_token : ``(B,)`` int64; ``-code`` for a row that was not verified: 1 ``num_drafts`` outside [0, L];
        2 a used draft id outside [0, V); 4 (lantern) a bad neighbour id of a used draft; 5 a used uniform outside
        [0, 1]; 6 a processed row that is not a distribution (NaN / +inf logits, or all -inf) or a read
        ``draft_probs`` entry NaN, inf or negative.

    Raises
    ------
    ValueError
        Wrong shapes, dtypes or devices; bad processing or method arguments; both ``draft_probs`` and
        ``draft_logits``; bad rows (see ``validate``).

    Examples
    --------
    >>> logits = torch.tensor([[[0.0, 5.0], [5.0, 0.0]]])   # B = 1, one draft, V = 2
    >>> verify_chain_logits(logits, torch.tensor([[1]]), torch.tensor([[0.5]]), torch.tensor([0.3]))
    (tensor([1]), tensor([0]))
    """
    call = prepare_chain_logits(logits, draft, u_accept, u_sample, num_drafts, draft_probs, draft_logits, cfg_scale,
                                temperature, top_k, top_p, method, backend, validate,
                                dict(neighbors=neighbors, delta=delta, lam=lam, embeddings=embeddings,
                                     rank_window=rank_window, p_thr=p_thr, d_thr=d_thr, epsilon=epsilon,
                                     alpha=alpha, **method_params))
    args = (call.logits, call.draft_logits, call.draft_probs, draft, call.u_accept, call.u_sample, call.num_drafts,
            call.cfg_scale, call.temperature, call.top_k, call.top_p, call.code, call.kwargs.get("neighbors"),
            call.kwargs.get("embeddings"), call.params)

    def reference():
        return ref.verify_chain_logits(
            call.logits, draft, call.u_accept, call.u_sample, num_drafts=call.num_drafts, draft_probs=call.draft_probs,
            draft_logits=call.draft_logits, cfg_scale=call.cfg_scale, temperature=call.temperature, top_k=call.top_k,
            top_p=call.top_p, **call.kwargs)

    accept_len, next_token = run("verify_chain_logits", backend, call.logits.device, reference, args)
    if validate is not False:
        v.raise_on_bad_rows("verify_chain_logits", next_token, validate)
    return accept_len, next_token


def verify_tree_logits(
    logits: torch.Tensor,
    tree_tokens: torch.Tensor,
    parents: torch.Tensor,
    u_accept: torch.Tensor,
    u_sample: torch.Tensor,
    *,
    num_nodes: Optional[torch.Tensor] = None,
    draft_probs: Optional[torch.Tensor] = None,
    cfg_scale: Optional[float] = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    method: str = "exact",
    neighbors: Optional[torch.Tensor] = None,
    delta: Optional[float] = None,
    lam: Optional[float] = None,
    backend: str = "auto",
    validate: Optional[bool] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tree verification straight from the target's raw logits at every node: processing and verification
    fused (only the nodes the walk stands on are processed).

    Equal, token for token on the same uniforms, to
    ``verify_tree(process_logits(logits, ...), draft_probs, tree_tokens, parents, ...)``; see :func:`verify_tree`
    for the walk and :func:`process_logits` for the processing.

    Parameters
    ----------
    logits : ``(2B or B, M, V)`` float32/float16/bfloat16
        Raw target logits per tree node (with ``cfg_scale``: cond rows then uncond rows).
    tree_tokens, parents, u_accept, u_sample, num_nodes, method, neighbors, delta, lam
        As in :func:`verify_tree` (``(B, M)`` int64 / float32, ``u_sample`` ``(B,)``, ``num_nodes`` in [1, M]).
    draft_probs : ``(B, M, V)`` float, optional
        ``draft_probs[b, n]`` is the distribution node n's children were drawn from; None: one-hot drafts.
    cfg_scale, temperature, top_k, top_p
        Processing, as in :func:`process_logits`.
    backend, validate
        As in :func:`verify_chain_logits`.

    Returns
    -------
    accepted_nodes : ``(B, M - 1)`` int64, -1 padded
    accept_len : ``(B,)`` int64
    next_token : ``(B,)`` int64; ``-code`` for a row not verified (codes as :func:`verify_chain_logits`, plus 3:
        malformed parents; ids, neighbours and uniforms are checked for the valid nodes ``n < num_nodes[b]``).
    """
    cfg_scale, temperature, top_k, top_p = _processing_args(cfg_scale, temperature, top_k, top_p)
    logits, draft_probs = _float32_if_double(logits), _float32_if_double(draft_probs)
    v._tensor(logits, "logits", 3, _LOGITS_DTYPES)
    v._tensor(tree_tokens, "tree_tokens", 2, (torch.int64,), logits.device)
    cfg_scale = _guidance(logits, cfg_scale, tree_tokens.shape[0])
    batch, nodes, vocab = _logits_shape(logits, cfg_scale)
    device = logits.device
    if num_nodes is None:
        num_nodes = torch.full((batch,), nodes, dtype=torch.int64, device=device)
    for name, t, shape, dtype in (("tree_tokens", tree_tokens, (batch, nodes), torch.int64),
                                  ("parents", parents, (batch, nodes), torch.int64),
                                  ("u_accept", u_accept, (batch, nodes), torch.float32),
                                  ("u_sample", u_sample, (batch,), torch.float32),
                                  ("num_nodes", num_nodes, (batch,), torch.int64)):
        v._tensor(t, name, len(shape), (dtype,), device)
        v._shape(t, name, shape)
    if draft_probs is not None:
        v._tensor(draft_probs, "draft_probs", 3, _LOGITS_DTYPES, device)
        v._shape(draft_probs, "draft_probs", (batch, nodes, vocab))
    code, method_kwargs, params = _method(method, "verify_tree", vocab, device, neighbors=neighbors, delta=delta,
                                          lam=lam)
    chosen = resolve_backend(backend, device)
    if validate or (validate is None and chosen == "reference"):  # the reference does not report bad rows itself
        checks = v.new_checks()
        checks.add((num_nodes >= 1) & (num_nodes <= nodes), f"num_nodes must lie in [1, {nodes}]")
        valid = torch.arange(nodes, device=device) < num_nodes[:, None]
        checks.ids(tree_tokens, "tree_tokens", vocab, valid=valid)
        v.check_parent_values(checks, parents, valid)
        checks.uniforms(u_accept, "u_accept")
        checks.uniforms(u_sample, "u_sample")
        _finite_logits(checks, logits, "logits")
        if draft_probs is not None:
            checks.probabilities(draft_probs, "draft_probs")
        if neighbors is not None:
            v.check_neighbor_values(checks, neighbors, vocab)
        checks.run()
    args = (logits, draft_probs, tree_tokens, parents, u_accept, u_sample, num_nodes, cfg_scale, temperature,
            top_k, top_p, code, method_kwargs.get("neighbors"), params)

    def reference():
        return ref.verify_tree_logits(
            logits, tree_tokens, parents, u_accept, u_sample, num_nodes=num_nodes, draft_probs=draft_probs,
            cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p, **method_kwargs)

    out = run("verify_tree_logits", backend, device, reference, args)
    if validate is not False:
        v.raise_on_bad_rows("verify_tree_logits", out[2], validate)
    return out
