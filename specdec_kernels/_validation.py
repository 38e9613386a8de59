"""Input validation for every op, written once (the three levels of docs/ALGORITHMS.md §3.8).

- Structural checks (shapes, dtypes, devices; no data access, shared with the fake kernels): always.
- ``validate=None`` (default): the structural checks, then the kernel's own row status codes (every backend
  reports a bad row as ``next_token = -code``); :func:`raise_on_bad_rows` turns them into a ValueError naming the
  argument and the row (CPU: one check over the B outputs) or, on CUDA and under ``torch.compile``, a
  ``torch._assert_async`` on the device (no host synchronisation; :func:`row_checks_are_async`).
- ``validate=True``: additionally the full value checks before the kernel (NaN/inf anywhere in p / q, every id, the
  whole neighbour table; one host synchronisation), which also run under ``torch.compile`` as one
  ``torch._assert_async`` per condition; the row codes then raise an eager ValueError on every device too.

Every eager error is a ValueError naming the argument.
"""

import math
from typing import List, Optional, Sequence, Tuple

import torch

from . import _methods
from ._methods import ROW_BAD_COUNT, ROW_BAD_ID, ROW_BAD_PROB, ROW_BAD_UNIFORM, ROW_CODES

_PROB_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _fail(message: str):
    raise ValueError(message)


def _tensor(t, name: str, ndim: int, dtypes: Sequence[torch.dtype], device: Optional[torch.device] = None):
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        _fail(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        _fail(f"{name} must have dtype {names}; got {str(t.dtype).replace('torch.', '')}")
    if device is not None and t.device != device:
        _fail(f"{name} must be on {device} (like p), got {t.device}")


def _shape(t: torch.Tensor, name: str, shape: Tuple[int, ...]):
    if tuple(t.shape) != tuple(shape):
        _fail(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _scalar(value, name: str, low: float, high: float = math.inf):
    _methods.check_number(value, name, low, high)


def validate_level(validate) -> Optional[bool]:
    """``validate`` must be None (cheap default), True (full checks) or False (no raise)."""
    if validate is not None and not isinstance(validate, bool):
        _fail(f"validate must be None, True or False, got {validate!r}")
    return validate


def _compiling() -> bool:
    return torch.compiler.is_compiling()


class _ValueChecks:
    """Collects data-dependent conditions and evaluates them with a single host synchronisation."""

    def __init__(self):
        self._items: List[Tuple[torch.Tensor, str]] = []

    def add(self, ok: torch.Tensor, message: str):
        self._items.append((ok.all(), message))

    def probabilities(self, t: torch.Tensor, name: str):
        if t.numel() == 0:
            return
        low, high = torch.aminmax(t)  # one pass; NaN propagates and fails both comparisons
        self.add(high < math.inf, f"{name} contains NaN or inf")
        self.add(low >= 0, f"{name} contains NaN or negative probabilities")

    def uniforms(self, t: torch.Tensor, name: str):
        self.add((t >= 0) & (t <= 1), f"{name} must hold uniforms in [0, 1]")

    def ids(self, t: torch.Tensor, name: str, high: int, valid: Optional[torch.Tensor] = None):
        ok = (t >= 0) & (t < high)
        self.add(ok if valid is None else ok | ~valid, f"{name} holds ids outside [0, {high})")

    def run(self):
        if not self._items:
            return
        if _compiling():  # no host synchronisation inside a graph: each condition asserts on its device
            for ok, message in self._items:
                torch._assert_async(ok, message)
            return
        results = torch.stack([ok for ok, _ in self._items]).cpu().tolist()
        for passed, (_, message) in zip(results, self._items):
            if not passed:
                _fail(message)


# ---------------------------------------------------------------- structural checks (shared with fakes)


def chain_shapes(p, q, draft, u_accept, u_sample, num_drafts) -> Tuple[int, int, int]:
    _tensor(p, "p", 3, _PROB_DTYPES)
    batch, slots, vocab = p.shape
    if slots < 1 or vocab < 1:
        _fail(f"p must be (batch, num_drafts + 1, vocab) with vocab >= 1, got {tuple(p.shape)}")
    drafts = slots - 1
    if q is not None:
        _tensor(q, "q", 3, (p.dtype,), p.device)
        _shape(q, "q", (batch, drafts, vocab))
    _tensor(draft, "draft", 2, (torch.int64,), p.device)
    _shape(draft, "draft", (batch, drafts))
    _tensor(u_accept, "u_accept", 2, (torch.float32,), p.device)
    _shape(u_accept, "u_accept", (batch, drafts))
    _tensor(u_sample, "u_sample", 1, (torch.float32,), p.device)
    _shape(u_sample, "u_sample", (batch,))
    _tensor(num_drafts, "num_drafts", 1, (torch.int64,), p.device)
    _shape(num_drafts, "num_drafts", (batch,))
    return batch, drafts, vocab


def tree_shapes(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes) -> Tuple[int, int, int]:
    _tensor(p, "p", 3, _PROB_DTYPES)
    batch, nodes, vocab = p.shape
    if nodes < 1 or vocab < 1:
        _fail(f"p must be (batch, num_nodes, vocab) with at least the root, got {tuple(p.shape)}")
    if q is not None:
        _tensor(q, "q", 3, (p.dtype,), p.device)
        _shape(q, "q", tuple(p.shape))
    for name, t in (("tree_tokens", tree_tokens), ("parents", parents)):
        _tensor(t, name, 2, (torch.int64,), p.device)
        _shape(t, name, (batch, nodes))
    _tensor(u_accept, "u_accept", 2, (torch.float32,), p.device)
    _shape(u_accept, "u_accept", (batch, nodes))
    _tensor(u_sample, "u_sample", 1, (torch.float32,), p.device)
    _shape(u_sample, "u_sample", (batch,))
    _tensor(num_nodes, "num_nodes", 1, (torch.int64,), p.device)
    _shape(num_nodes, "num_nodes", (batch,))
    return batch, nodes, vocab


def neighbor_shapes(neighbors, vocab: int, device) -> int:
    _tensor(neighbors, "neighbors", 2, (torch.int32,), device)
    if neighbors.shape[0] != vocab:
        _fail(f"neighbors has {neighbors.shape[0]} rows but the vocabulary has {vocab} codes")
    if neighbors.shape[1] < 1:
        _fail("neighbors must have at least one column")
    return neighbors.shape[1]


def embedding_shapes(embeddings, vocab: int, device):
    _tensor(embeddings, "embeddings", 2, (torch.float32,), device)
    if embeddings.shape[0] != vocab:
        _fail(f"embeddings has {embeddings.shape[0]} rows but the vocabulary has {vocab} codes")


def cspd_shapes(x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, u_accept, u_prop, u_ar) -> Tuple[int, int, int]:
    _tensor(x, "x", 2, (torch.float32,))
    n, dim = x.shape
    for name, t in (("mu_q", mu_q), ("sigma_q", sigma_q), ("mu_p", mu_p), ("sigma_p", sigma_p), ("s_q", s_q),
                    ("s_p", s_p)):
        _tensor(t, name, 2, (torch.float32,), x.device)
        _shape(t, name, (n, dim))
    _tensor(u_accept, "u_accept", 1, (torch.float32,), x.device)
    _shape(u_accept, "u_accept", (n,))
    _tensor(u_prop, "u_prop", 3, (torch.float32,), x.device)
    if u_prop.shape[0] != n or u_prop.shape[2] != dim or u_prop.shape[1] < 1:
        _fail(f"u_prop must be ({n}, max_tries >= 1, {dim}), got {tuple(u_prop.shape)}")
    tries = u_prop.shape[1]
    _tensor(u_ar, "u_ar", 2, (torch.float32,), x.device)
    _shape(u_ar, "u_ar", (n, tries))
    return n, dim, tries


# ---------------------------------------------------------------- method parameters (the table: _methods.py)


def lantern_budget(delta, lam):
    """LANTERN's budget arguments of ``lantern_relaxed_mass``: exactly one of delta / lam, each in range."""
    _methods.pack_params(_methods.LANTERN, {"delta": delta, "lam": lam}, {"neighbors": True}, 1)


def method_params(method, op: str, vocab: int, *, neighbors=None, embeddings=None, **given) -> Tuple[int, List[float]]:
    """``(code, params)`` of ``method`` for ``op`` from the caller's keyword values (None = not given), with every
    check of the method table (``_methods.pack_params``)."""
    chosen = _methods.get(method, op)
    tensors = {"neighbors": neighbors}
    if op == "verify_chain":
        tensors["embeddings"] = embeddings
    return chosen.code, _methods.pack_params(chosen, given, tensors, vocab)


def gsd_params(rank_window, p_thr, d_thr, vocab: int) -> Tuple[int, int, float, float]:
    """``gsd_group_mass``'s parameters checked by the method table; the window capped at ``vocab - 1``."""
    h_lo, h_hi, p_thr, d_thr = _methods.pack_params(
        _methods.GSD, {"rank_window": rank_window, "p_thr": p_thr, "d_thr": d_thr}, {}, vocab)
    return int(h_lo), int(h_hi), p_thr, d_thr


# ---------------------------------------------------------------- row status codes (validate=None and True)

_COUNT_NAME = {"verify_chain": "num_drafts", "verify_tree": "num_nodes", "build_tree": "num_nodes",
               "verify_chain_logits": "num_drafts", "verify_tree_logits": "num_nodes", "jacobi_step": "num_drafts"}
_ID_NAME = {"verify_chain": "draft", "verify_tree": "tree_tokens", "lantern_relaxed_mass": "x",
            "gsd_group_mass": "x", "verify_chain_logits": "draft", "verify_tree_logits": "tree_tokens",
            "jacobi_step": "window"}
#: The logits ops take no ``p`` / ``q``: code 6 names the arguments the bad processed row comes from.
_PROB_NAME = {"verify_chain_logits": ("logits / draft_logits / draft_probs",
                                      "gives a row that is not a distribution (NaN or +inf logits, all -inf "
                                      "after processing) or a NaN, inf or negative draft probability the row reads"),
              "jacobi_step": ("logits / q",
                              "gives a row that is not a distribution (NaN or +inf logits, all -inf after "
                              "processing) or a NaN, inf or negative q value the row reads"),
              "verify_tree_logits": ("logits / draft_probs",
                                     "gives a row that is not a distribution (NaN or +inf logits, all -inf "
                                     "after processing) or a NaN, inf or negative draft probability the row reads"),
              # The auxiliary ops' code 6: the values each reads (docs/ALGORITHMS.md §3.8).
              "neighbor_table": ("codebook", "holds NaN or inf in this code's row"),
              "lantern_relaxed_mass": ("p", "holds a NaN, inf or negative probability at x or at a neighbour the "
                                       "scan reads"),
              "gsd_group_mass": ("p / q / embeddings", "holds a NaN, inf or negative probability in the ranked row p "
                                 "or in q at a group member, or NaN / inf in an embedding row whose distance is "
                                 "computed"),
              "cspd_verify": ("x / mu_q / sigma_q / mu_p / sigma_p / s_q / s_p", "holds NaN or inf, or a sigma that "
                              "is not > 0, in this token's row")}
#: Code 5 of the ops whose uniforms are not ``u_accept`` / ``u_sample``.
_UNIFORM_NAME = {"cspd_verify": "u_accept / u_prop / u_ar"}


def row_error_message(op: str, code: int, row: int) -> str:
    """The ValueError text for row ``row`` reported with status ``code`` by ``op``."""
    argument, problem = ROW_CODES.get(code, ("input", f"was rejected with unknown status {code}"))
    if code == ROW_BAD_COUNT:
        argument = _COUNT_NAME.get(op, argument)
    elif code == ROW_BAD_ID:
        argument = _ID_NAME.get(op, argument)
    elif code == ROW_BAD_PROB and op in _PROB_NAME:
        argument, problem = _PROB_NAME[op]
    elif code == ROW_BAD_UNIFORM:
        argument = _UNIFORM_NAME.get(op, argument)
    return f"{op}: row {row}: {argument} {problem} (status code {code})"


# torch._assert_async takes at most 254 characters: the codes' meanings are in specdec_kernels._methods.ROW_CODES.
_ASYNC_MESSAGE = ("{op}: a row was reported bad (next_token = -code; 1 count, 2 id, 3 parents, 4 neighbours, 5 uniform, "
                  "6 probability / value, 7 method: specdec_kernels._methods.ROW_CODES)")


def row_checks_are_async(device) -> bool:
    """Whether the default level reports bad rows on ``device`` by an asynchronous device assertion (CUDA, or any
    device under ``torch.compile``) instead of an eager ValueError (the CPU). ``validate=True`` is eager
    everywhere outside ``torch.compile``."""
    return _compiling() or torch.device(device).type != "cpu"


def raise_on_bad_rows(op: str, codes: torch.Tensor, validate: Optional[bool] = None):
    """``codes`` ``[B]`` int (or a float output that is ``-code`` where bad and >= 0 elsewhere, as
    ``gsd_group_mass``'s ``group_p``): negative where a row was reported bad (``-code``).

    Eager (the CPU at the default level; every device with ``validate=True``, which has synchronised once
    already): one check over the B values, then a ValueError naming the argument and the first bad row. The
    default level on CUDA and anything under ``torch.compile``: an asynchronous device assertion (no host
    synchronisation), which fails the next synchronising call and leaves the CUDA context unusable, as every
    device-side assertion does."""
    if _compiling() or (validate is not True and row_checks_are_async(codes.device)):
        if codes.numel() > 0:
            torch._assert_async((codes >= 0).all(), _ASYNC_MESSAGE.format(op=op))
        return
    # Eager: the B outputs as a Python list (about 2 µs on the CPU; a torch reduction plus .item() costs twice that).
    values = codes.tolist()
    if values and min(values) < 0:
        row = next(i for i, value in enumerate(values) if value < 0)
        _fail(row_error_message(op, int(-values[row]), row))


# ---------------------------------------------------------------- value checks


def check_neighbor_values(checks: _ValueChecks, neighbors: torch.Tensor, vocab: int):
    checks.ids(neighbors, "neighbors", vocab)
    own = torch.arange(vocab, device=neighbors.device, dtype=neighbors.dtype)[:, None]
    checks.add(neighbors != own, "neighbors lists a code as its own neighbour")


def check_chain_values(p, q, draft, u_accept, u_sample, num_drafts, neighbors, embeddings):
    batch, drafts, vocab = p.shape[0], p.shape[1] - 1, p.shape[2]
    checks = _ValueChecks()
    checks.add((num_drafts >= 0) & (num_drafts <= drafts), f"num_drafts must lie in [0, {drafts}]")
    checks.probabilities(p, "p")
    if q is not None:
        checks.probabilities(q, "q")
    used = torch.arange(drafts, device=p.device) < num_drafts[:, None]
    checks.ids(draft, "draft", vocab, valid=used)
    checks.uniforms(u_accept, "u_accept")
    checks.uniforms(u_sample, "u_sample")
    rows_used = torch.arange(drafts + 1, device=p.device) <= num_drafts[:, None]
    mass = p.float().sum(-1)
    checks.add((mass > 0) | ~rows_used, "p has an all-zero row at a position that is verified or sampled")
    if neighbors is not None:
        check_neighbor_values(checks, neighbors, vocab)
    if embeddings is not None:
        checks.add(torch.isfinite(embeddings), "embeddings contains NaN or inf")
    checks.run()


def check_tree_values(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, neighbors):
    batch, nodes, vocab = p.shape
    checks = _ValueChecks()
    checks.add((num_nodes >= 1) & (num_nodes <= nodes), f"num_nodes must lie in [1, {nodes}]")
    checks.probabilities(p, "p")
    if q is not None:
        checks.probabilities(q, "q")
    valid = torch.arange(nodes, device=p.device) < num_nodes[:, None]
    checks.ids(tree_tokens, "tree_tokens", vocab, valid=valid)
    check_parent_values(checks, parents, valid)
    checks.uniforms(u_accept, "u_accept")
    checks.uniforms(u_sample, "u_sample")
    checks.add((p.float().sum(-1) > 0) | ~valid, "p has an all-zero row at a valid node")
    if neighbors is not None:
        check_neighbor_values(checks, neighbors, vocab)
    checks.run()


def check_parent_values(checks: _ValueChecks, parents: torch.Tensor, valid: torch.Tensor):
    node = torch.arange(parents.shape[1], device=parents.device)
    checks.add(parents[:, 0] == -1, "parents[:, 0] must be -1 (node 0 is the root)")
    ok = (parents >= 0) & (parents < node) | (node == 0) | ~valid
    checks.add(ok, "parents is malformed: every valid node n > 0 needs a parent in [0, n)")


def new_checks() -> _ValueChecks:
    return _ValueChecks()


def tree_parent_shapes(parents, num_nodes):
    _tensor(parents, "parents", 2, (torch.int64,))
    if parents.shape[1] < 1:
        _fail("parents must have at least the root column")
    if num_nodes is None:
        return
    _tensor(num_nodes, "num_nodes", 1, (torch.int64,), parents.device)
    _shape(num_nodes, "num_nodes", (parents.shape[0],))
