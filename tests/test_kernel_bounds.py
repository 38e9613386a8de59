"""Bounds safety of the C++ CPU kernels: every bad input of the hardening list (ids outside the vocabulary,
bad counts, malformed trees, bad neighbour rows, bad uniforms, NaN / zero rows, lam = inf with p(x) = 0),
called with ``backend="cpu", validate=False`` (and a few direct ``torch.ops`` calls), comes back as the
documented row status (``next_token = -code``, see csrc/methods.h and docs/ALGORITHMS.md 3.8) without a crash,
a hang, or a wrong answer on the good rows of the same batch.

The cases run in a child process (this file, run as a script) so that a crash fails one case instead of
killing the test run; one child runs every case and is restarted after the case that killed it.
"""

import json
import os
import subprocess
import sys
import traceback

import pytest
import torch

import specdec_kernels as sk
from _inputs import method_kwargs
from specdec_kernels import _methods, reference

V = 16  # vocabulary of every case
L = 3  # chain drafts
M = 5  # tree nodes
BAD_COUNT, BAD_ID, BAD_PARENT, BAD_NEIGHBOR, BAD_UNIFORM, BAD_PROBABILITY = 1, 2, 3, 4, 5, 6
TIME_LIMIT_S = 240  # the whole child run; a case still running then is reported as a hang


# ---------------------------------------------------------------------------------------------------------
# Inputs: a good batch of 3 rows; each case breaks row 1 only, rows 0 and 2 must equal the reference.


def _rows(batch, slots, gen):
    return torch.softmax(torch.randn(batch, slots, V, generator=gen) * 2.0, -1)


def _table(k=4):
    codes = torch.randn(V, 4, generator=torch.Generator().manual_seed(1))
    return reference.neighbor_table(codes, k)


def _chain(with_q=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = _rows(3, L + 1, gen)
    q = _rows(3, L, gen) if with_q else None
    draft = p[:, :L].argmax(-1)  # plausible drafts: acceptance runs a few positions deep
    return dict(p=p, q=q, draft=draft, u_accept=torch.rand(3, L, generator=gen), u_sample=torch.rand(3, generator=gen),
                num_drafts=torch.full((3,), L, dtype=torch.int64))


def _tree(with_q=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    parents = torch.tensor([-1, 0, 0, 1, 1]).expand(3, M).contiguous()
    p = _rows(3, M, gen)
    q = _rows(3, M, gen) if with_q else None
    tokens = p.argmax(-1).gather(1, parents.clamp_min(0))
    return dict(p=p, q=q, tree_tokens=tokens, parents=parents, u_accept=torch.rand(3, M, generator=gen),
                u_sample=torch.rand(3, generator=gen), num_nodes=torch.full((3,), M, dtype=torch.int64))


#: Settings that make a rule's test decide often at V = 16 (every other rule runs with its table example).
METHOD_KW = {"gsd": dict(rank_window=(2, 2), p_thr=0.5)}


def _method_kw(method):
    kw = method_kwargs(method, V, k=4)
    kw.update(METHOD_KW.get(method, {}))
    return kw


def _good_rows_match(case, got, ref_fn, bad_rows):
    """Rows other than ``bad_rows`` equal the reference run on the good rows alone (batch invariance)."""
    good = [b for b in range(case["p"].shape[0]) if b not in bad_rows]
    sub = {k: (v[good] if isinstance(v, torch.Tensor) and k not in ("neighbors", "embeddings") else v)
           for k, v in case.items()}
    want = ref_fn(sub)
    for g, w in zip(got, want):
        assert torch.equal(g[good], w), f"good rows differ from the reference: {g[good]} vs {w}"


def _check_chain(case, method, bad_row, code):
    kw = _method_kw(method)
    acc, tok = sk.verify_chain(**case, method=method, backend="cpu", validate=False, **kw)
    assert int(tok[bad_row]) == -code and int(acc[bad_row]) == 0, (acc.tolist(), tok.tolist())
    _good_rows_match(case, (acc, tok), lambda c: reference.verify_chain(**c, method=method, **kw), {bad_row})


def _check_tree(case, method, bad_row, code):
    kw = _method_kw(method)
    nodes, acc, tok = sk.verify_tree(**case, method=method, backend="cpu", validate=False, **kw)
    assert int(tok[bad_row]) == -code and int(acc[bad_row]) == 0, (acc.tolist(), tok.tolist())
    assert (nodes[bad_row] == -1).all(), nodes.tolist()
    _good_rows_match(case, (nodes, acc, tok), lambda c: reference.verify_tree(**c, method=method, **kw), {bad_row})


# ---------------------------------------------------------------------------------------------------------
# The cases: name -> function raising AssertionError on a wrong answer (a crash or hang kills the child).

CASES = {}


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn

    return register


for _method in _methods.CHAIN_METHODS:
    for _with_q in (True, False):
        _tag = f"{_method}-{'q' if _with_q else 'noq'}"
        for _bad_id in (V, -1, 2**40, -(2**62)):

            @case(f"chain-{_tag}-draft-id-{_bad_id}")
            def _(method=_method, with_q=_with_q, bad_id=_bad_id):
                c = _chain(with_q)
                c["draft"][1, 1] = bad_id
                _check_chain(c, method, 1, BAD_ID)

        for _n in (-1, L + 1, 2**40):

            @case(f"chain-{_tag}-num-drafts-{_n}")
            def _(method=_method, with_q=_with_q, n=_n):
                c = _chain(with_q)
                c["num_drafts"][1] = n
                _check_chain(c, method, 1, BAD_COUNT)

        for _u in (1.0, -0.5, float("nan")):

            @case(f"chain-{_tag}-uniform-{_u}")
            def _(method=_method, with_q=_with_q, u=_u):
                c = _chain(with_q)
                c["u_accept"][1, 2] = u
                _check_chain(c, method, 1, BAD_UNIFORM)
                c = _chain(with_q)
                c["u_sample"][1] = u
                _check_chain(c, method, 1, BAD_UNIFORM)

        for _fill in (0.0, float("nan"), float("inf"), -1.0):

            @case(f"chain-{_tag}-sampled-row-{_fill}")
            def _(method=_method, with_q=_with_q, fill=_fill):
                c = _chain(with_q)
                c["num_drafts"][1] = 0  # a plain sample from p[1, 0]
                c["p"][1, 0] = fill
                _check_chain(c, method, 1, BAD_PROBABILITY)
                c = _chain(with_q)
                c["u_accept"][1] = 0.0  # every draft with p(x) > 0 passes: the bonus row is sampled
                c["p"][1, L] = fill
                _check_chain(c, method, 1, BAD_PROBABILITY)

        @case(f"chain-{_tag}-unused-ids-ignored")
        def _(method=_method, with_q=_with_q):
            c = _chain(with_q)
            c["num_drafts"][1] = 1
            c["draft"][1, 1:] = torch.tensor([V, -5])  # past num_drafts: never read
            c["u_accept"][1, 1:] = float("nan")
            kw = _method_kw(method)
            got = sk.verify_chain(**c, method=method, backend="cpu", validate=False, **kw)
            c["draft"][1, 1:] = 0
            c["u_accept"][1, 1:] = 0.5
            want = reference.verify_chain(**c, method=method, **kw)
            assert all(torch.equal(g, w) for g, w in zip(got, want)), (got, want)

for _with_q in (True, False):
    _tag = "q" if _with_q else "noq"
    for _bad in (V, V + 100, -1, 2**31):

        @case(f"chain-lantern-{_tag}-neighbor-id-{_bad}")
        def _(with_q=_with_q, bad=_bad):
            c = _chain(with_q)
            table = _table()
            table[int(c["draft"][1, 0]), 2] = bad if -(2**31) <= bad < 2**31 else -7
            acc, tok = sk.verify_chain(**c, method="lantern", neighbors=table, delta=0.3, backend="cpu",
                                       validate=False)
            assert int(tok[1]) == -BAD_NEIGHBOR and int(acc[1]) == 0, (acc, tok)

    @case(f"chain-lantern-{_tag}-neighbor-self")
    def _(with_q=_with_q):
        c = _chain(with_q)
        table = _table()
        x = int(c["draft"][1, 0])
        table[x, 0] = x
        acc, tok = sk.verify_chain(**c, method="lantern", neighbors=table, delta=0.3, backend="cpu", validate=False)
        assert int(tok[1]) == -BAD_NEIGHBOR, (acc, tok)

    @case(f"chain-lantern-{_tag}-lam-inf-zero-prob")
    def _(with_q=_with_q):
        c = _chain(with_q)
        c["p"][:, 0, 5] = 0.0  # draft 0 has p(x) = 0: never accepted, whatever lam (reference: p~ = 0)
        c["draft"][:, 0] = 5
        c["u_accept"][:, 0] = 0.0
        kw = dict(method="lantern", neighbors=_table(), lam=float("inf"))
        got = sk.verify_chain(**c, backend="cpu", validate=False, **kw)
        assert (got[0] == 0).all(), got
        want = reference.verify_chain(**c, **kw)
        assert all(torch.equal(g, w) for g, w in zip(got, want)), (got, want)


@case("chain-gsd-huge-window")
def _():
    c = _chain(True)
    got = sk.verify_chain(**c, method="gsd", rank_window=(10**9, 10**9), backend="cpu", validate=False)
    want = reference.verify_chain(**c, method="gsd", rank_window=(V - 1, V - 1))
    assert all(torch.equal(g, w) for g, w in zip(got, want)), (got, want)


for _method in _methods.TREE_METHODS:
    for _with_q in (True, False):
        _tag = f"{_method}-{'q' if _with_q else 'noq'}"
        for _bad_id in (-1, V, 2**40):

            @case(f"tree-{_tag}-token-{_bad_id}")
            def _(method=_method, with_q=_with_q, bad_id=_bad_id):
                for node in (0, 3):
                    c = _tree(with_q)
                    c["tree_tokens"][1, node] = bad_id
                    _check_tree(c, method, 1, BAD_ID)

        for _n in (0, -3, M + 1, 2**40):

            @case(f"tree-{_tag}-num-nodes-{_n}")
            def _(method=_method, with_q=_with_q, n=_n):
                c = _tree(with_q)
                c["num_nodes"][1] = n
                _check_tree(c, method, 1, BAD_COUNT)

        for _name, _node, _parent in (("root", 0, 0), ("cycle", 2, 3), ("self", 3, 3), ("huge", 4, 2**40),
                                      ("negative", 4, -2)):

            @case(f"tree-{_tag}-parents-{_name}")
            def _(method=_method, with_q=_with_q, node=_node, parent=_parent):
                c = _tree(with_q)
                c["parents"][1, node] = parent
                _check_tree(c, method, 1, BAD_PARENT)

        for _u in (1.0, float("nan")):

            @case(f"tree-{_tag}-uniform-{_u}")
            def _(method=_method, with_q=_with_q, u=_u):
                c = _tree(with_q)
                c["u_accept"][1, 2] = u
                _check_tree(c, method, 1, BAD_UNIFORM)
                c = _tree(with_q)
                c["u_sample"][1] = u
                _check_tree(c, method, 1, BAD_UNIFORM)

        for _fill in (0.0, float("nan"), -1.0):

            @case(f"tree-{_tag}-root-row-{_fill}")
            def _(method=_method, with_q=_with_q, fill=_fill):
                c = _tree(with_q)
                c["p"][1, 0] = fill
                _check_tree(c, method, 1, BAD_PROBABILITY)

for _with_q in (True, False):

    @case(f"tree-lantern-{'q' if _with_q else 'noq'}-neighbor-id")
    def _(with_q=_with_q):
        c = _tree(with_q)
        table = _table()
        table[int(c["tree_tokens"][1, 2]), 1] = V
        _, acc, tok = sk.verify_tree(**c, method="lantern", neighbors=table, delta=0.3, backend="cpu",
                                     validate=False)
        assert int(tok[1]) == -BAD_NEIGHBOR and int(acc[1]) == 0, (acc, tok)


@case("tree-q-none-token-minus-one-heap")
def _():
    c = _tree(False)
    c["tree_tokens"][:] = -1  # every row, every node: the old heap corruption
    _, acc, tok = sk.verify_tree(**c, backend="cpu", validate=False)
    assert (tok == -BAD_ID).all() and (acc == 0).all(), tok


for _name, _node, _parent, _n, _code in (("num-nodes-0", 1, 0, 0, BAD_COUNT), ("num-nodes-big", 1, 0, M + 1, BAD_COUNT),
                                         ("root", 0, 3, M, BAD_PARENT), ("cycle", 1, 4, M, BAD_PARENT),
                                         ("huge", 2, 2**40, M, BAD_PARENT)):

    @case(f"build-tree-{_name}")
    def _(node=_node, parent=_parent, n=_n, code=_code):
        parents = torch.tensor([-1, 0, 0, 1, 1]).expand(3, M).contiguous()
        num_nodes = torch.full((3,), M, dtype=torch.int64)
        parents[1, node] = parent
        num_nodes[1] = n
        mask, depth, paths = sk.build_tree(parents, num_nodes, backend="cpu", validate=False)
        assert (depth[1] == -code).all(), depth
        assert not mask[1].any() and (paths[1] == -1).all(), (mask[1], paths[1])
        good = torch.tensor([0, 2])
        want = reference.build_tree(parents[good], num_nodes[good])
        assert torch.equal(mask[good], want[0]) and torch.equal(depth[good], want[1])
        assert torch.equal(paths[good], want[2]), (paths, want[2])


for _x in (V, -1, 2**40):

    @case(f"relaxed-mass-x-{_x}")
    def _(x=_x):
        p = torch.softmax(torch.randn(3, V), -1)
        xs = torch.tensor([1, x, 2])
        p_tilde, merged = sk.lantern_relaxed_mass(p, xs, _table(), delta=0.2, backend="cpu", validate=False)
        assert torch.isnan(p_tilde[1]) and int(merged[1]) == -BAD_ID, (p_tilde, merged)
        want = reference.lantern_relaxed_mass(p[[0, 2]], xs[[0, 2]], _table(), delta=0.2)
        assert torch.equal(p_tilde[[0, 2]], want[0]) and torch.equal(merged[[0, 2]], want[1])

    @case(f"group-mass-x-{_x}")
    def _(x=_x):
        p = torch.softmax(torch.randn(3, V), -1)
        xs = torch.tensor([1, x, 2])
        gp, gq = sk.gsd_group_mass(p, None, xs, backend="cpu", validate=False)
        assert torch.isnan(gp[1]) and torch.isnan(gq[1]), (gp, gq)


@case("relaxed-mass-neighbor-id")
def _():
    p = torch.softmax(torch.randn(2, V), -1)
    table = _table()
    table[3, 0] = V + 5
    p_tilde, merged = sk.lantern_relaxed_mass(p, torch.tensor([3, 4]), table, delta=0.2, backend="cpu",
                                              validate=False)
    assert torch.isnan(p_tilde[0]) and int(merged[0]) == -BAD_NEIGHBOR and int(merged[1]) >= 0


@case("relaxed-mass-lam-inf-zero-prob")
def _():
    p = torch.softmax(torch.randn(1, V), -1)
    p[0, 3] = 0.0
    got = sk.lantern_relaxed_mass(p, torch.tensor([3]), _table(), lam=float("inf"), backend="cpu", validate=False)
    want = reference.lantern_relaxed_mass(p, torch.tensor([3]), _table(), lam=float("inf"))
    assert float(got[0][0]) == 0.0 and int(got[1][0]) == 0, got
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@case("neighbor-table-nan-codebook")
def _():
    codes = torch.randn(40, 3)
    codes[::3] = float("nan")
    table = sk.neighbor_table(codes, 39, normalize=False, backend="cpu", validate=False)
    assert ((table >= 0) & (table < 40)).all() and (table != torch.arange(40)[:, None]).all()


@case("ops-wrong-params-length")
def _():
    c = _chain(True)
    op = torch.ops.specdec_kernels.verify_chain.default
    args = (c["p"], c["q"], c["draft"], c["u_accept"], c["u_sample"], c["num_drafts"])
    for method, params in ((0, [1.0]), (1, [7.0, 6.0]), (2, [0.0]), (2, [0.5, 0.1]), (1, [-1.0, 6.0, 0.1, 0.5]),
                           (1, [float("nan"), 6.0, 0.1, 0.5])):
        try:
            op(*args, method, _table(), None, params)
        except RuntimeError as exc:
            assert "params" in str(exc), exc
        else:
            raise AssertionError(f"method {method} with params {params} was accepted")


@case("ops-direct-bad-ids")
def _():
    c = _chain(False)
    c["draft"][:] = 10**6
    op = torch.ops.specdec_kernels.verify_chain.default
    acc, tok = op(c["p"], None, c["draft"], c["u_accept"], c["u_sample"], c["num_drafts"], 2, _table(), None,
                  [1.0, 2.0])
    assert (tok == -BAD_ID).all() and (acc == 0).all(), tok


@case("empty-and-tiny")
def _():
    c = _chain(True)
    empty = {k: (v[:0] if isinstance(v, torch.Tensor) else v) for k, v in c.items()}
    acc, tok = sk.verify_chain(**empty, backend="cpu", validate=False)
    assert acc.shape == (0,) and tok.shape == (0,)
    one = dict(p=torch.ones(2, 2, 1), q=None, draft=torch.zeros(2, 1, dtype=torch.int64),
               u_accept=torch.tensor([[0.9], [0.2]]), u_sample=torch.tensor([0.5, 0.7]),
               num_drafts=torch.tensor([1, 0]))
    acc, tok = sk.verify_chain(**one, backend="cpu", validate=False)
    assert acc.tolist() == [1, 0] and tok.tolist() == [0, 0], (acc, tok)


# ---------------------------------------------------------------------------------------------------------
# Child process: run the named cases in order, one verdict line each.


def _worker(names):
    torch.set_num_threads(1)
    for name in names:
        print(json.dumps({"start": name}), flush=True)
        try:
            CASES[name]()
            verdict = "ok"
        except Exception:  # noqa: BLE001 - the verdict carries the failure
            verdict = traceback.format_exc(limit=3)[-1500:]
        print(json.dumps({"case": name, "verdict": verdict}), flush=True)


def _run_all():
    """Verdict per case; a case that kills the child is a crash, one still running at the limit a hang."""
    verdicts, pending = {}, list(CASES)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    while pending:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", *pending],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            out, err = proc.communicate(timeout=TIME_LIMIT_S)
            hung = False
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            hung = True
        started = None
        for line in out.splitlines():
            if not line.startswith("{"):
                continue
            msg = json.loads(line)
            if "start" in msg:
                started = msg["start"]
            else:
                verdicts[msg["case"]] = msg["verdict"]
                started = None
        pending = [n for n in pending if n not in verdicts]
        if not pending:
            break
        culprit = started or pending[0]
        why = "hang (time limit)" if hung else f"crash (exit status {proc.returncode})"
        verdicts[culprit] = f"{why}; stderr tail: {err[-800:]}"
        pending.remove(culprit)
    return verdicts


@pytest.fixture(scope="module")
def verdicts():
    if "cpu" not in sk.available_backends():
        pytest.skip("C++ extension not built")
    return _run_all()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_reported_not_dereferenced(verdicts, name):
    assert verdicts[name] == "ok", verdicts[name]


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    _worker(sys.argv[2:])
