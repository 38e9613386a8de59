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


def _process(logits: torch.Tensor, *, cfg_scale: Optional[float] = None, temperature: float = 1.0,
             top_k: Optional[int] = 0, top_p: float = 1.0) -> torch.Tensor:
    """:func:`specdec_kernels.process_logits` on any layout ``(rows, ..., V)``; ``cfg_scale`` 1 is no guidance (the
    rows are not doubled)."""
    if cfg_scale is not None and float(cfg_scale) == 1.0:
        cfg_scale = None
    rows, vocab = logits.shape[0], logits.shape[-1]
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
    cfg_scale: Optional[float] = None
    temperature: float = 1.0
    top_k: Optional[int] = 0
    top_p: float = 1.0


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
    cfg_scale, temperature, top_k, top_p : logits processing (``specdec_kernels.process_logits``); ``cfg_scale`` None or 1
        means the logits are not doubled.
    backend, validate : passed to the kernels (``validate=None`` is the kernels' default checking level).
    """

    def __init__(self, method: str = "exact", *, codebook: Optional[torch.Tensor] = None,
                 neighbors: Optional[torch.Tensor] = None, embeddings: Optional[torch.Tensor] = None,
                 k: Optional[int] = None, delta: Optional[float] = None, lam: Optional[float] = None,
                 rank_window: Optional[Tuple[int, int]] = None, p_thr: Optional[float] = None,
                 d_thr: Optional[float] = None, cfg_scale: Optional[float] = None, temperature: float = 1.0,
                 top_k: Optional[int] = 0, top_p: float = 1.0, backend: str = "auto",
                 validate: Optional[bool] = None):
        if method not in ACCEPTANCE_RULES:
            raise ValueError(f"method: unknown {method!r}; choose from {sorted(ACCEPTANCE_RULES)}")
        self.method = method
        self.rule = ACCEPTANCE_RULES[method]
        self.backend = backend
        self.validate = validate
        if not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k is not None and int(top_k) < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        self.sampling = _Sampling(cfg_scale, float(temperature), top_k, float(top_p))
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

    def with_sampling(self, *, cfg_scale=None, temperature: float = 1.0, top_k: Optional[int] = 0,
                      top_p: float = 1.0, validate="unchanged") -> "SpeculativeVerifier":
        """A copy with other logits processing (and optionally another ``validate``) that shares the built
        tables (no rebuild)."""
        if not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        other = object.__new__(SpeculativeVerifier)
        other.__dict__.update(self.__dict__)
        other.sampling = replace(self.sampling, cfg_scale=cfg_scale, temperature=float(temperature), top_k=top_k,
                                 top_p=float(top_p))
        if validate != "unchanged":
            other.validate = validate
        return other

    @property
    def uses_cfg(self) -> bool:
        return self.sampling.cfg_scale is not None and float(self.sampling.cfg_scale) != 1.0

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """This verifier's logits processing: ``(rows, ..., V)`` raw logits -> ``(B, ..., V)`` float32 probs."""
        s = self.sampling
        return _process(logits, cfg_scale=s.cfg_scale, temperature=s.temperature, top_k=s.top_k,
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
            return _process(draft_logits, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
        return draft_probs

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
            ``specdec_kernels.verify_chain_logits`` (the same tokens, no ``(B, L + 1, V)`` probability tensor);
            otherwise the rows are processed, then verified.
        """
        self._check_vocab(logits, probs)
        batch, width = drafts.shape
        if probs is None and not return_probs:
            self._check_rows(logits, batch, width + 1, "drafts", tuple(drafts.shape))
            u_accept, u_sample = self._uniforms(batch, width, logits.device, u_accept, u_sample, generator)
            s = self.sampling
            accept_len, next_token = sk.verify_chain_logits(
                logits, drafts, u_accept, u_sample, num_drafts=num_drafts, draft_probs=draft_probs,
                draft_logits=draft_logits, cfg_scale=s.cfg_scale, temperature=s.temperature, top_k=int(s.top_k or 0),
                top_p=s.top_p, backend=self.backend, validate=self.validate, **self._kwargs,
            )
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
        ``specdec_kernels.verify_tree_logits`` (as in :meth:`step`).
        """
        if self.rule == "gsd":
            raise ValueError("method 'gsd' verifies chains only; use step()")
        self._check_vocab(logits, probs)
        batch, m = tree_tokens.shape
        kwargs = {key: value for key, value in self._kwargs.items() if key in ("method", "neighbors", "delta", "lam")}
        if probs is None and not return_probs:
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
