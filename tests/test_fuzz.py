"""Fuzz every op x every CPU-testable backend x validate None / True / False with random and adversarial inputs.

Hypothesis draws batches of cases: shapes (empty batches, no drafts, vocab 1), dtypes, strides, ids far outside the
vocabulary and at its edges, NaN / inf / negative / zero rows, cyclic and out-of-range parents, huge windows and
parameters. Each batch runs in a forked child with a time limit (``_isolate``), so a crash or a hang is a test
failure; a failed batch is re-run case by case to name the culprit. Properties, per call:

- never a signal or a hang;
- ``validate=False``: the reference's result (row codes included; docs/ALGORITHMS.md §3.8). Where the inputs of
  ``verify_chain`` / ``verify_tree`` hold NaN / inf / negative probabilities, a backend may also report such a row as
  code 6, since which entries a kernel reads (and so checks) differs between backends: only the tested entries and
  the sampled row are pinned. The auxiliary ops (``neighbor_table``, ``lantern_relaxed_mass``, ``gsd_group_mass``,
  ``cspd_verify``) define exactly which values they read, so every backend must report the reference's bad rows;
- value classes per op: NaN / inf / negative probabilities (p, q rows), NaN / inf / -NaN codebook rows, NaN / inf
  embeddings, NaN / inf / zero / negative sigmas and NaN / inf means, log-sigma sums and tokens (CSpD), and
  uniforms at and past the edges (0, 1.0, the largest float32 below 1, -0.1, NaN, inf: 1.0 is valid, §3.1);
- ``validate=None`` / ``True``: a ValueError naming an argument, or the reference's result; any row the reference
  reports bad must raise;
- a structural error of the oracle (``backend="reference", validate=False``) is a ValueError on every backend;
- the fused logits ops (``verify_chain_logits`` / ``verify_tree_logits``, with NaN / inf / all -inf logits, zero /
  huge / negative / inf temperatures, top_k at and beyond V, top_p outside (0, 1], guidance scales with the wrong
  row count): the oracle also equals their definition, ``process_logits`` then the reference ``verify_chain`` /
  ``verify_tree``; only NaN / inf logits or bad ``draft_probs`` make a row lenient.

Budget: ``SPECDEC_FUZZ_EXAMPLES`` hypothesis examples per op (default 3: about two minutes on 2 cores) of
``SPECDEC_FUZZ_BATCH`` cases each (default 4), fixed seed unless ``SPECDEC_FUZZ_SEED`` is set; ``make fuzz`` runs a
longer budget and prints how many calls it tried. The logits ops run ``SPECDEC_FUZZ_LOGITS_BATCH`` cases per
example (default half of ``SPECDEC_FUZZ_BATCH``: they run the Triton interpreter over every processed row). ``SPECDEC_FUZZ_BACKENDS`` (comma-separated) narrows the
backends.
"""

import math
import os
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import specdec_kernels as sk
from specdec_kernels import _methods, reference

from _isolate import run_batch, run_isolated

BACKENDS = [b for b in os.environ.get("SPECDEC_FUZZ_BACKENDS", "reference,cpu,triton").split(",")
            if b in sk.available_backends()]
LEVELS = (None, True, False)
EXAMPLES = int(os.environ.get("SPECDEC_FUZZ_EXAMPLES", "3"))
BATCH = int(os.environ.get("SPECDEC_FUZZ_BATCH", "4"))
#: The fused logits ops run the Triton interpreter over every processed row: a smaller batch keeps the CI budget.
LOGITS_BATCH = int(os.environ.get("SPECDEC_FUZZ_LOGITS_BATCH", str(max(1, BATCH // 2))))
SEED = int(os.environ.get("SPECDEC_FUZZ_SEED", "20261201"))
#: Seconds per batch of cases (every backend and level of each): a hang is anything far beyond the normal cost.
BATCH_TIMEOUT = float(os.environ.get("SPECDEC_FUZZ_TIMEOUT", "240"))

#: Calls tried per op (printed at the end of the module).
TRIED = Counter()

#: Arguments each op's messages may name.
ARGUMENTS = {
    "verify_chain": ("p", "q", "draft", "u_accept", "u_sample", "num_drafts", "neighbors", "embeddings", "delta", "lam",
                     "rank_window", "p_thr", "d_thr", "method"),
    "verify_tree": ("p", "q", "tree_tokens", "parents", "u_accept", "u_sample", "num_nodes", "neighbors", "delta",
                    "lam", "method"),
    "build_tree": ("parents", "num_nodes"),
    "lantern_relaxed_mass": ("p", "x", "neighbors", "delta", "lam"),
    "gsd_group_mass": ("p", "q", "x", "embeddings", "rank_window", "p_thr", "d_thr"),
    "neighbor_table": ("codebook", "k"),
    "cspd_verify": ("x", "mu_q", "sigma_q", "mu_p", "sigma_p", "s_q", "s_p", "u_accept", "u_prop", "u_ar",
                    "inner_temperature"),
}
_PROCESSING = ("logits", "cfg_scale", "temperature", "top_k", "top_p", "draft_probs", "draft_logits")
ARGUMENTS["verify_chain_logits"] = ARGUMENTS["verify_chain"][2:] + _PROCESSING
ARGUMENTS["verify_tree_logits"] = ARGUMENTS["verify_tree"][2:] + _PROCESSING

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ================================================================== strategies


def _gen(data):
    return torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="torch seed"))


def _strided(t: torch.Tensor, data) -> torch.Tensor:
    """The same values, sometimes as a non-contiguous view (every other element of a wider buffer)."""
    if t.dim() == 0 or t.numel() == 0 or not data.draw(st.booleans(), label="strided"):
        return t
    wide = torch.zeros(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


def _probs(shape, data, gen, dtype=torch.float32):
    """Probability rows with adversarial rows mixed in (zero, NaN, inf, negative, one-hot, unnormalised)."""
    p = torch.softmax(torch.randn(*shape, generator=gen) * data.draw(st.sampled_from([0.5, 2.0, 8.0])), -1)
    zeros = torch.rand(*shape, generator=gen) < data.draw(st.sampled_from([0.0, 0.3, 0.9]))
    p = p.masked_fill(zeros, 0.0)
    if p.numel() and data.draw(st.booleans(), label="adversarial rows"):
        flat = p.view(-1, shape[-1])
        for _ in range(data.draw(st.integers(1, 3))):
            row = data.draw(st.integers(0, flat.shape[0] - 1))
            col = data.draw(st.integers(0, shape[-1] - 1))
            kind = data.draw(st.sampled_from(["zero", "nan", "inf", "negative", "onehot", "scaled"]))
            if kind == "zero":
                flat[row] = 0.0
            elif kind == "nan":
                flat[row, col] = math.nan
            elif kind == "inf":
                flat[row, col] = math.inf
            elif kind == "negative":
                flat[row, col] = -0.25
            elif kind == "onehot":
                flat[row] = 0.0
                flat[row, col] = 1.0
            else:
                flat[row] = flat[row] * 1e3
    return p.to(dtype)


def _ids(shape, vocab, data, gen):
    ids = torch.randint(0, max(vocab, 1), shape, generator=gen)
    if ids.numel() and data.draw(st.booleans(), label="bad ids"):
        flat = ids.view(-1)
        pos = data.draw(st.integers(0, flat.numel() - 1))
        flat[pos] = data.draw(st.sampled_from([vocab, vocab - 1, -1, 0, 2**40, -(2**62), 2**31]))
    return ids


def _uniforms(shape, data, gen):
    """Uniforms with an edge value mixed in: 1.0, 0.0 and the largest float32 below 1 are valid; -0.1, NaN, inf
    are not (docs/ALGORITHMS.md §3.1)."""
    u = torch.rand(*shape, generator=gen)
    if u.numel() and data.draw(st.booleans(), label="bad uniforms"):
        u.view(-1)[data.draw(st.integers(0, u.numel() - 1))] = data.draw(
            st.sampled_from([1.0, 0.0, -0.1, math.nan, math.inf, 0.99999994]))
    return u


def _table(vocab, k, data, gen):
    if vocab < 2:
        return torch.zeros(vocab, max(k, 1), dtype=torch.int32)
    k = min(k, vocab - 1)
    table = reference.neighbor_table(torch.randn(vocab, 3, generator=gen), k)
    if data.draw(st.booleans(), label="bad table"):
        row = data.draw(st.integers(0, vocab - 1))
        col = data.draw(st.integers(0, k - 1))
        table[row, col] = data.draw(st.sampled_from([vocab, -1, row, 2**31 - 1]))
    return table


def _budget(data):
    if data.draw(st.booleans(), label="delta or lam"):
        return {"delta": data.draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))}
    return {"lam": data.draw(st.sampled_from([1.0, 1.5, 4.0, math.inf]))}


@st.composite
def chain_cases(draw):
    data = draw(st.data())
    gen = _gen(data)
    batch = draw(st.sampled_from([0, 1, 2, 3]))
    drafts = draw(st.integers(0, 4))
    vocab = draw(st.sampled_from([1, 2, 5, 16, 24]))
    dtype = draw(st.sampled_from(DTYPES))
    with_q = draw(st.booleans())
    p = _probs((batch, drafts + 1, vocab), data, gen, dtype)
    q = _probs((batch, drafts, vocab), data, gen, dtype) if with_q else None
    num_drafts = torch.randint(0, drafts + 1, (batch,), generator=gen)
    if batch and draw(st.booleans()):
        num_drafts[draw(st.integers(0, batch - 1))] = draw(st.sampled_from([drafts + 1, -1, 2**40, drafts]))
    kwargs = dict(num_drafts=num_drafts)
    method = draw(st.sampled_from(_methods.CHAIN_METHODS))
    kwargs["method"] = method
    if "neighbors" in _methods.METHODS[method].needs:
        kwargs["neighbors"] = _table(vocab, draw(st.integers(1, 4)), data, gen)
        kwargs.update(_budget(data))
    elif method == "gsd":
        kwargs["rank_window"] = draw(st.sampled_from([(0, 0), (7, 6), (1, 3), (6000, 6000), (2**40, 0)]))
        kwargs["p_thr"] = draw(st.sampled_from([0.0, 0.15, 1.0, 1e39, math.inf]))
        if draw(st.booleans()):
            kwargs["embeddings"] = torch.nn.functional.normalize(torch.randn(vocab, 3, generator=gen), dim=-1)
            kwargs["d_thr"] = draw(st.sampled_from([0.0, 0.5, 4.0, 1e300]))
    else:  # any other rule of the table runs with its example parameters
        kwargs.update(_methods.METHODS[method].example)
    args = (_strided(p, data), None if q is None else _strided(q, data), _ids((batch, drafts), vocab, data, gen),
            _uniforms((batch, drafts), data, gen), _uniforms((batch,), data, gen))
    return "verify_chain", args, kwargs


def _parents(batch, nodes, data, gen):
    parents = torch.full((batch, nodes), -1, dtype=torch.int64)
    for n in range(1, nodes):
        parents[:, n] = (torch.rand(batch, generator=gen) * n).long()
    if batch and nodes and draw_bool(data, "bad parents"):
        b = data.draw(st.integers(0, batch - 1))
        n = data.draw(st.integers(0, nodes - 1))
        parents[b, n] = data.draw(st.sampled_from([n, n + 1, -1, -7, nodes + 3, 2**40, 0]))
        if nodes >= 3 and data.draw(st.booleans(), label="cycle"):
            parents[b, 1], parents[b, 2] = 2, 1
    return parents


def draw_bool(data, label):
    return data.draw(st.booleans(), label=label)


@st.composite
def tree_cases(draw):
    data = draw(st.data())
    gen = _gen(data)
    batch = draw(st.sampled_from([0, 1, 2, 3]))
    nodes = draw(st.integers(1, 6))
    vocab = draw(st.sampled_from([1, 2, 5, 16]))
    dtype = draw(st.sampled_from(DTYPES))
    with_q = draw(st.booleans())
    p = _probs((batch, nodes, vocab), data, gen, dtype)
    q = _probs((batch, nodes, vocab), data, gen, dtype) if with_q else None
    num_nodes = torch.randint(1, nodes + 1, (batch,), generator=gen)
    if batch and draw(st.booleans()):
        num_nodes[draw(st.integers(0, batch - 1))] = draw(st.sampled_from([0, nodes + 1, -3, 2**40]))
    kwargs = dict(num_nodes=num_nodes)
    method = draw(st.sampled_from(_methods.TREE_METHODS))
    kwargs["method"] = method
    if "neighbors" in _methods.METHODS[method].needs:
        kwargs["neighbors"] = _table(vocab, draw(st.integers(1, 3)), data, gen)
        kwargs.update(_budget(data))
    else:
        kwargs.update(_methods.METHODS[method].example)
    tokens = _ids((batch, nodes), vocab, data, gen)
    if batch and nodes > 2 and draw(st.booleans()):
        tokens[:, 2] = tokens[:, 1]  # duplicate siblings
    args = (_strided(p, data), None if q is None else _strided(q, data), tokens, _parents(batch, nodes, data, gen),
            _uniforms((batch, nodes), data, gen), _uniforms((batch,), data, gen))
    return "verify_tree", args, kwargs


@st.composite
def build_tree_cases(draw):
    data = draw(st.data())
    gen = _gen(data)
    batch = draw(st.sampled_from([0, 1, 2, 4]))
    nodes = draw(st.integers(1, 8))
    num_nodes = torch.randint(1, nodes + 1, (batch,), generator=gen)
    if batch and draw(st.booleans()):
        num_nodes[draw(st.integers(0, batch - 1))] = draw(st.sampled_from([0, nodes + 1, -1]))
    parents = _parents(batch, nodes, data, gen)
    if draw(st.booleans()):
        return "build_tree", (parents,), {}
    return "build_tree", (parents, num_nodes), {}


@st.composite
def relaxed_mass_cases(draw):
    data = draw(st.data())
    gen = _gen(data)
    rows = draw(st.sampled_from([0, 1, 3]))
    vocab = draw(st.sampled_from([2, 5, 16]))
    p = _probs((rows, vocab), data, gen, draw(st.sampled_from(DTYPES)))
    return ("lantern_relaxed_mass", (_strided(p, data), _ids((rows,), vocab, data, gen),
                                     _table(vocab, draw(st.integers(1, 4)), data, gen)), _budget(data))


@st.composite
def group_mass_cases(draw):
    data = draw(st.data())
    gen = _gen(data)
    rows = draw(st.sampled_from([0, 1, 3]))
    vocab = draw(st.sampled_from([1, 2, 5, 16]))
    dtype = draw(st.sampled_from(DTYPES))
    p = _probs((rows, vocab), data, gen, dtype)
    q = _probs((rows, vocab), data, gen, dtype) if draw(st.booleans()) else None
    kwargs = dict(rank_window=draw(st.sampled_from([(0, 0), (7, 6), (2, 1), (6000, 6000)])),
                  p_thr=draw(st.sampled_from([0.0, 0.15, 1e39])), d_thr=draw(st.sampled_from([0.0, 0.5, 1e300])))
    if draw(st.booleans()):
        kwargs["embeddings"] = torch.randn(vocab, 2, generator=gen)
        if draw(st.booleans(), label="non-finite embeddings"):
            kwargs["embeddings"][draw(st.integers(0, vocab - 1)), draw(st.integers(0, 1))] = draw(
                st.sampled_from([math.nan, math.inf, -math.inf]))
    return "gsd_group_mass", (_strided(p, data), q, _ids((rows,), vocab, data, gen)), kwargs


@st.composite
def neighbor_table_cases(draw):
    data = draw(st.data())
    gen = _gen(data)
    n = draw(st.sampled_from([1, 2, 3, 9, 17]))
    dim = draw(st.sampled_from([1, 3]))
    scale = draw(st.sampled_from([1.0, 1e19, 3e38]))
    book = torch.randn(n, dim, generator=gen) * scale
    if n > 1 and draw(st.booleans()):
        book[1] = book[0]  # an exact tie
    if draw(st.booleans(), label="non-finite codebook"):  # rows holding NaN / inf / -NaN (sign bit set)
        for _ in range(draw(st.integers(1, 2))):
            row, col = draw(st.integers(0, n - 1)), draw(st.integers(0, dim - 1))
            book[row, col] = draw(st.sampled_from([math.nan, math.inf, -math.inf, -torch.tensor(math.nan).item()]))
    k = draw(st.sampled_from([1, 2, n - 1, n, 0, -1]))
    return "neighbor_table", (_strided(book, data), k), dict(normalize=draw(st.booleans()))


@st.composite
def cspd_cases(draw):
    data = draw(st.data())
    gen = _gen(data)
    n = draw(st.sampled_from([0, 1, 4]))
    dim = draw(st.sampled_from([0, 1, 3]))
    tries = draw(st.sampled_from([1, 3]))
    mu_p = torch.randn(n, dim, generator=gen)
    mu_q = mu_p + torch.randn(n, dim, generator=gen)
    sigma_p = torch.rand(n, dim, generator=gen) + 0.2
    sigma_q = torch.rand(n, dim, generator=gen) + 0.2
    x = mu_q + sigma_q * torch.randn(n, dim, generator=gen)
    s_q = torch.randn(n, dim, generator=gen) * 0.1
    s_p = torch.zeros(n, dim)
    if n and dim and draw(st.booleans()):
        inputs = {"x": x, "mu_q": mu_q, "sigma_q": sigma_q, "mu_p": mu_p, "sigma_p": sigma_p, "s_q": s_q, "s_p": s_p}
        target = draw(st.sampled_from(sorted(inputs)))
        value = draw(st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e30]))
        inputs[target][draw(st.integers(0, n - 1)), draw(st.integers(0, dim - 1))] = value
    args = (x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, _uniforms((n,), data, gen),
            _uniforms((n, tries, dim), data, gen), _uniforms((n, tries), data, gen))
    return "cspd_verify", args, dict(inner_temperature=draw(st.sampled_from([1.0, 42.0, 1e-3])))


def _logits(shape, data, gen, dtype):
    """Raw logits with adversarial entries mixed in (NaN, +inf, -inf entries, all -inf rows, huge values)."""
    logits = torch.randn(*shape, generator=gen) * data.draw(st.sampled_from([0.5, 3.0, 30.0]))
    if logits.numel() and data.draw(st.booleans(), label="adversarial logits"):
        flat = logits.view(-1, shape[-1])
        for _ in range(data.draw(st.integers(1, 2))):
            row = data.draw(st.integers(0, flat.shape[0] - 1))
            col = data.draw(st.integers(0, shape[-1] - 1))
            kind = data.draw(st.sampled_from(["nan", "inf", "-inf", "all -inf", "huge"]))
            if kind == "all -inf":
                flat[row] = -math.inf
            else:
                flat[row, col] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": 3e38}[kind]
    return logits.to(dtype)


def _processing(vocab, data):
    """cfg_scale / temperature / top_k / top_p at valid edges (zero and huge temperature, top_k at and beyond V,
    tiny top_p); about one case in four gets one invalid value (NaN scale, negative / inf temperature, ...)."""
    processing = dict(cfg_scale=data.draw(st.sampled_from([None, None, 1.0, 3.0])),
                      temperature=data.draw(st.sampled_from([1.0, 0.7, 0.0, 1e30])),
                      top_k=data.draw(st.sampled_from([0, 2, vocab, vocab + 5])),
                      top_p=data.draw(st.sampled_from([1.0, 0.8, 1e-9])))
    if data.draw(st.integers(0, 3), label="bad processing") == 0:
        name, value = data.draw(st.sampled_from([("cfg_scale", math.nan), ("cfg_scale", math.inf),
                                                 ("temperature", -1.0), ("temperature", math.inf),
                                                 ("temperature", math.nan), ("top_k", -1), ("top_k", 2.0),
                                                 ("top_p", 0.0), ("top_p", 1.5), ("top_p", math.nan)]))
        processing[name] = value
    return processing


def _logit_rows(batch, processing, data):
    """Rows of the logits for ``batch``: 2B with a guidance scale, B without; sometimes a wrong count."""
    rows = 2 * batch if processing["cfg_scale"] not in (None, 1.0) else batch
    if data.draw(st.integers(0, 7), label="wrong row count") == 0:
        rows = data.draw(st.sampled_from([batch + 1, 3 * batch, 2 * batch, batch]))
    return rows


@st.composite
def chain_logits_cases(draw):
    data = draw(st.data())
    gen = _gen(data)
    batch = draw(st.sampled_from([0, 1, 2]))
    drafts = draw(st.integers(0, 3))
    vocab = draw(st.sampled_from([1, 2, 5, 16]))
    dtype = draw(st.sampled_from(DTYPES))
    kwargs = _processing(vocab, data)
    logits = _logits((_logit_rows(batch, kwargs, data), drafts + 1, vocab), data, gen, dtype)
    num_drafts = torch.randint(0, drafts + 1, (batch,), generator=gen)
    if batch and draw(st.booleans()):
        num_drafts[draw(st.integers(0, batch - 1))] = draw(st.sampled_from([drafts + 1, -1, 2**40, drafts]))
    kwargs["num_drafts"] = num_drafts
    q_kind = draw(st.sampled_from(["none", "probs", "logits"]))
    if q_kind == "probs":
        kwargs["draft_probs"] = _strided(_probs((batch, drafts, vocab), data, gen, dtype), data)
    elif q_kind == "logits":
        kwargs["draft_logits"] = _logits((_logit_rows(batch, kwargs, data), drafts, vocab), data, gen, dtype)
    method = draw(st.sampled_from(_methods.CHAIN_METHODS))
    kwargs["method"] = method
    if "neighbors" in _methods.METHODS[method].needs:
        kwargs["neighbors"] = _table(vocab, draw(st.integers(1, 3)), data, gen)
        kwargs.update(_budget(data))
    elif method == "gsd":
        kwargs["rank_window"] = draw(st.sampled_from([(0, 0), (2, 1), (6000, 6000)]))
        kwargs["p_thr"] = draw(st.sampled_from([0.0, 0.15, 1e39]))
    else:
        kwargs.update(_methods.METHODS[method].example)
    args = (_strided(logits, data), _ids((batch, drafts), vocab, data, gen), _uniforms((batch, drafts), data, gen),
            _uniforms((batch,), data, gen))
    return "verify_chain_logits", args, kwargs


@st.composite
def tree_logits_cases(draw):
    data = draw(st.data())
    gen = _gen(data)
    batch = draw(st.sampled_from([0, 1, 2]))
    nodes = draw(st.integers(1, 5))
    vocab = draw(st.sampled_from([1, 2, 5, 16]))
    dtype = draw(st.sampled_from(DTYPES))
    kwargs = _processing(vocab, data)
    logits = _logits((_logit_rows(batch, kwargs, data), nodes, vocab), data, gen, dtype)
    num_nodes = torch.randint(1, nodes + 1, (batch,), generator=gen)
    if batch and draw(st.booleans()):
        num_nodes[draw(st.integers(0, batch - 1))] = draw(st.sampled_from([0, nodes + 1, -3, 2**40]))
    kwargs["num_nodes"] = num_nodes
    if draw(st.booleans()):
        kwargs["draft_probs"] = _strided(_probs((batch, nodes, vocab), data, gen, dtype), data)
    method = draw(st.sampled_from(_methods.TREE_METHODS))
    kwargs["method"] = method
    if "neighbors" in _methods.METHODS[method].needs:
        kwargs["neighbors"] = _table(vocab, draw(st.integers(1, 3)), data, gen)
        kwargs.update(_budget(data))
    args = (_strided(logits, data), _ids((batch, nodes), vocab, data, gen), _parents(batch, nodes, data, gen),
            _uniforms((batch, nodes), data, gen), _uniforms((batch,), data, gen))
    return "verify_tree_logits", args, kwargs


# ================================================================== running and judging


def _call(op, args, kwargs, backend, validate):
    return getattr(sk, op)(*args, **kwargs, backend=backend, validate=validate)


_PROCESSING_KWARGS = ("cfg_scale", "temperature", "top_k", "top_p")


def _composed(op, args, kwargs):
    """The logits ops' definition: ``process_logits`` then the reference ``verify_chain`` / ``verify_tree``."""
    kwargs = dict(kwargs)
    processing = {k: kwargs.pop(k) for k in _PROCESSING_KWARGS}
    cfg_scale = processing.pop("cfg_scale")
    logits, batch = args[0], args[1].shape[0]

    def process(rows):
        return sk.process_logits(rows, cfg_scale=cfg_scale if rows.shape[0] != batch else None, **processing)

    q = kwargs.pop("draft_probs", None)
    if q is not None:  # verify_chain / verify_tree take q in p's dtype (float32 here); the upcast is exact
        q = q.float()
    if "draft_logits" in kwargs:
        q = process(kwargs.pop("draft_logits"))
    plain = "verify_chain" if op == "verify_chain_logits" else "verify_tree"
    return getattr(sk, plain)(process(logits), q, *args[1:], **kwargs, backend="reference", validate=False)


def _run_case(case):
    """In the child: the oracle (reference, validate=False), then every backend x level; for the logits ops also
    their composed definition (``("composed", False)``)."""
    op, args, kwargs = case
    outcomes = {}
    if op.endswith("_logits"):
        try:
            outcomes[("composed", False)] = ("ok", _composed(op, args, kwargs))
        except ValueError as exc:
            outcomes[("composed", False)] = ("ValueError", str(exc))
        except Exception as exc:
            outcomes[("composed", False)] = (type(exc).__name__, str(exc)[:500])
    for backend in BACKENDS:
        for validate in LEVELS:
            try:
                outcomes[(backend, validate)] = ("ok", _call(op, args, kwargs, backend, validate))
            except ValueError as exc:
                outcomes[(backend, validate)] = ("ValueError", str(exc))
            except Exception as exc:  # judged in the parent: only ValueErrors are allowed
                outcomes[(backend, validate)] = (type(exc).__name__, str(exc)[:500])
    return outcomes


def _bad_values(*tensors) -> bool:
    return any(isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()
               and not bool(((t >= 0) & (t < math.inf)).all()) for t in tensors)


def _tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _same_rows(op, got, want, lenient_rows: bool) -> str:
    """'' if ``got`` matches ``want`` (the oracle) for ``op``, else a description of the difference."""
    got, want = _tuple(got), _tuple(want)
    if len(got) != len(want):
        return f"{len(got)} outputs, want {len(want)}"
    for g, w in zip(got, want):
        if g.dtype != w.dtype or g.shape != w.shape:
            return f"output {tuple(g.shape)} {g.dtype}, want {tuple(w.shape)} {w.dtype}"
    if op in ("verify_chain", "verify_tree", "verify_chain_logits", "verify_tree_logits"):
        next_g, next_w = got[-1], want[-1]
        rows_equal = torch.ones_like(next_g, dtype=torch.bool)
        for g, w in zip(got, want):
            same = g == w
            rows_equal &= same.all(-1) if same.dim() == 2 else same
        if lenient_rows:  # a backend may report a row with bad values as code 6
            rows_equal |= (next_g == -6) & (got[-2] == 0)
        if not bool(rows_equal.all()):
            return f"rows differ: got {[t.tolist() for t in got]}, want {[t.tolist() for t in want]}"
        return ""
    if op == "build_tree":
        return "" if all(torch.equal(g, w) for g, w in zip(got, want)) else \
            f"got {[t.tolist() for t in got]}, want {[t.tolist() for t in want]}"
    if op == "lantern_relaxed_mass":
        if lenient_rows:
            return ""
        ok = torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0], rtol=1e-6, atol=1e-7, equal_nan=True)
        return "" if ok else f"got {got}, want {want}"
    if op == "gsd_group_mass":
        if lenient_rows:
            return ""
        ok = all(torch.allclose(g, w, rtol=1e-5, atol=1e-6, equal_nan=True) for g, w in zip(got, want))
        return "" if ok else f"got {got}, want {want}"
    if op == "neighbor_table":
        return ""  # judged separately (ties by distance)
    if op == "cspd_verify":
        if lenient_rows:
            return ""
        ok = torch.equal(got[1], want[1]) and torch.equal(got[2], want[2]) and torch.allclose(
            got[0], want[0], rtol=1e-4, atol=1e-5, equal_nan=True)
        return "" if ok else f"got {got}, want {want}"
    return "unknown op"


def _neighbor_tables_match(case, got, want) -> bool:
    """The same reported rows (all -6: a non-finite codebook row) and, elsewhere, the same distances (ties may
    list other codes; distances to a bad code are NaN and rank last)."""
    if torch.equal(got, want):
        return True
    reported = (want == -6).all(-1)
    if not torch.equal((got == -6).all(-1), reported):
        return False
    got, want = got[~reported], want[~reported]
    (book, k), kwargs = case[1], case[2]
    emb = book.to(torch.float64)
    if kwargs.get("normalize", True):
        emb = torch.nn.functional.normalize(book.float(), dim=-1).to(torch.float64)
    rows = torch.arange(book.shape[0])[~reported][:, None]
    own = got.long() == rows
    if bool(own.any()) or bool((got < 0).any()) or bool((got >= book.shape[0]).any()):
        return False
    dist = lambda t: ((emb[rows.squeeze(1)][:, None, :] - emb[t.long()]) ** 2).sum(-1).to(torch.float32)  # noqa: E731
    return torch.allclose(dist(got), dist(want), rtol=1e-5, atol=0.0, equal_nan=True)


def _bad_rows(op, out, args) -> bool:
    """Does the oracle's output report a bad row (so that None / True must raise)."""
    if op in ("verify_chain", "verify_tree", "verify_chain_logits", "verify_tree_logits"):
        return bool((out[-1] < 0).any())
    if op == "build_tree":
        return bool((out[1][:, :1] < 0).any())
    if op == "lantern_relaxed_mass":
        return bool((out[1] < 0).any())
    if op == "gsd_group_mass":
        return bool((out[0] < 0).any())
    if op == "neighbor_table":
        return bool((out < 0).any())
    if op == "cspd_verify":  # the public op returns no status: ask the reference for it
        return bool((reference.cspd_verify(*args)[3] < 0).any())
    return False


#: Ops whose bad rows every backend reports exactly as the reference (they define which values they read).
STRICT_OPS = ("neighbor_table", "lantern_relaxed_mass", "gsd_group_mass", "cspd_verify")


def judge(case, outcomes) -> list:
    """Every property violation of one case, as strings."""
    op, args, kwargs = case
    problems = []
    oracle_kind, oracle = outcomes[("reference", False)]
    if oracle_kind not in ("ok", "ValueError"):
        return [f"reference/False raised {oracle_kind}: {oracle}"]
    if op.endswith("_logits"):  # logits are signed: only NaN / inf logits or bad draft_probs make a row bad
        lenient = any(not bool(torch.isfinite(t).all()) for t in (args[0], kwargs.get("draft_logits")) if
                      t is not None and t.numel()) or _bad_values(kwargs.get("draft_probs"))
    elif op in STRICT_OPS:
        lenient = False
    else:
        lenient = _bad_values(*args, *[v for v in kwargs.values() if isinstance(v, torch.Tensor)])
    for (backend, validate), (kind, value) in outcomes.items():
        where = f"{backend}/validate={validate}"
        if backend == "composed":  # the definition: same result as the oracle wherever the oracle has one
            if oracle_kind == "ok":
                diff = f"raised {kind}: {value}" if kind != "ok" else _same_rows(op, value, oracle, False)
                if diff:
                    problems.append(f"process_logits + reference {op[:-7]}: {diff}")
            continue
        if kind not in ("ok", "ValueError"):
            problems.append(f"{where}: raised {kind}: {value}")
            continue
        if oracle_kind == "ValueError":  # a structural error: every backend and level rejects it
            if kind != "ValueError":
                problems.append(f"{where}: returned, but the oracle raised ValueError: {oracle}")
            continue
        if kind == "ValueError":
            if validate is False:
                problems.append(f"{where}: raised ValueError with validate=False: {value}")
            elif not any(f" {a} " in f" {value} ".replace(":", " ").replace(",", " ") or value.startswith(a)
                         for a in ARGUMENTS[op]):
                problems.append(f"{where}: ValueError names no argument: {value}")
            continue
        if validate is not False and _bad_rows(op, oracle, args):
            problems.append(f"{where}: returned although the reference reports a bad row: {oracle}")
            continue
        if op == "neighbor_table":
            if not _neighbor_tables_match(case, value, oracle):
                problems.append(f"{where}: table {value.tolist()}, want {oracle.tolist()}")
            continue
        diff = _same_rows(op, value, oracle, lenient)
        if diff:
            problems.append(f"{where}: {diff}")
    return problems


def _describe(case) -> str:
    op, args, kwargs = case
    show = lambda v: (f"tensor{tuple(v.shape)} {v.dtype} {v.tolist()}" if isinstance(v, torch.Tensor)  # noqa: E731
                      else repr(v))
    return f"{op}(" + ", ".join([show(a) for a in args] + [f"{k}={show(v)}" for k, v in kwargs.items()]) + ")"


def check_batch(cases):
    """Run ``cases`` in one child; on a crash or hang re-run each alone to find it. Fails with every problem."""
    calls = len(BACKENDS) * len(LEVELS)
    for case in cases:
        TRIED[case[0]] += calls
    results = run_batch(_run_case, [(c,) for c in cases], timeout=BATCH_TIMEOUT)
    problems = []
    if results is None:
        for case in cases:
            outcome = run_isolated(_run_case, case, timeout=BATCH_TIMEOUT)
            if outcome.kind in ("crashed", "hung"):
                problems.append(f"{outcome}: {_describe(case)}")
            elif outcome.kind == "raised":
                problems.append(f"harness error {outcome}: {_describe(case)}")
            else:
                problems += [f"{p}\n  case: {_describe(case)}" for p in judge(case, outcome.value)]
        if not problems:
            problems.append("the batch crashed or hung, but no case alone did")
    else:
        for case, outcome in zip(cases, results):
            if outcome.kind != "ok":
                problems.append(f"harness error {outcome}: {_describe(case)}")
            else:
                problems += [f"{p}\n  case: {_describe(case)}" for p in judge(case, outcome.value)]
    assert not problems, "\n".join(problems[:10])


def _fuzz(strategy, batch=BATCH):
    @seed(SEED)
    # No shrinking: every example forks children and runs the interpreter; the failure report names the case.
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(st.lists(strategy, min_size=batch, max_size=batch))
    def test(cases):
        check_batch(cases)

    return test


test_fuzz_verify_chain = _fuzz(chain_cases())
test_fuzz_verify_tree = _fuzz(tree_cases())
test_fuzz_build_tree = _fuzz(build_tree_cases())
test_fuzz_lantern_relaxed_mass = _fuzz(relaxed_mass_cases())
test_fuzz_gsd_group_mass = _fuzz(group_mass_cases())
test_fuzz_neighbor_table = _fuzz(neighbor_table_cases())
test_fuzz_cspd_verify = _fuzz(cspd_cases())
test_fuzz_verify_chain_logits = _fuzz(chain_logits_cases(), LOGITS_BATCH)
test_fuzz_verify_tree_logits = _fuzz(tree_logits_cases(), LOGITS_BATCH)


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    total = sum(TRIED.values())
    print(f"\nfuzz: {total} calls tried over backends {BACKENDS} x validate {list(LEVELS)} "
          f"(seed {SEED}, {EXAMPLES} examples x {BATCH} cases per op, {LOGITS_BATCH} for the logits ops): " +
          ", ".join(f"{op} {n}" for op, n in sorted(TRIED.items())))
