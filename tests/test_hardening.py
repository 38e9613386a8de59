"""Regression tests, one per hardening finding: no input crashes, hangs or silently diverges from the reference.

Every call that once crashed or hung runs in a forked child (``_isolate.run_isolated``), so a segfault or a hang
fails its test instead of ending the run (in a GPU run, once CUDA has started, in a thread instead: see
``_isolate``). Backends: every one this run has (reference, the C++ CPU kernels, Triton under the interpreter on a
CPU or compiled on a GPU, the CUDA kernels); each backend's inputs live on its device (``_backends.device_for``).
Bad rows come back as ``next_token = -code`` (docs/ALGORITHMS.md §3.8).
"""

import math

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import reference

import _isolate
from _backends import device_for, raises_bad_row, to_device
from _inputs import chain_case, codebook, probs, tree_case
from _isolate import run_isolated

BACKENDS = [b for b in ("reference", "cpu", "triton", "cuda") if b in sk.available_backends()]


def _ok(outcome):
    """The call's result, on the CPU (where the expectations are computed)."""
    assert outcome.kind == "ok", str(outcome)
    return to_device(outcome.value, "cpu")


def _on(backend, value):
    """``value``'s tensors on ``backend``'s device, moved here, before any fork (a CUDA run must start CUDA in this
    process, so that ``_isolate`` knows not to fork)."""
    return to_device(value, device_for(backend))


def _chain_call(case, **kw):
    case, kw = _on(kw["backend"], case), _on(kw["backend"], kw)
    return lambda: sk.verify_chain(**case, **kw)


def _table(vocab, k=3):
    return reference.neighbor_table(codebook(vocab), k)


# ------------------------------------------------------------------ crashes with validate=False


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad_id", [10, 2**40, -1, -(2**62)])
def test_out_of_range_draft_ids_are_reported_not_read(backend, bad_id):
    case = chain_case(batch=3, drafts=4, vocab=10, seed=1)
    case["draft"][1, 2] = bad_id
    case["num_drafts"] = torch.tensor([4, 4, 4])
    accept_len, next_token = _ok(run_isolated(_chain_call(case, backend=backend, validate=False)))
    assert int(next_token[1]) == -2 and int(accept_len[1]) == 0
    want = reference.verify_chain(**{**case, "draft": case["draft"].clamp(0, 9)})
    for row in (0, 2):  # the other rows are untouched
        assert int(next_token[row]) == int(want[1][row]) and int(accept_len[row]) == int(want[0][row])


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_tree_tokens_are_reported_not_read(backend):
    case = tree_case(batch=2, nodes=6, vocab=12, seed=2)
    case["num_nodes"] = torch.tensor([6, 6])
    case["tree_tokens"][0, 3] = 12
    case = _on(backend, case)
    out = _ok(run_isolated(lambda: sk.verify_tree(**case, backend=backend, validate=False)))
    assert int(out[2][0]) == -2 and int(out[1][0]) == 0 and bool((out[0][0] == -1).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_tree_with_one_hot_q_and_token_minus_one(backend):
    """q=None and a token of -1 once corrupted the heap (free(): invalid pointer)."""
    case = tree_case(batch=2, nodes=5, vocab=9, with_q=False, seed=3)
    case["num_nodes"] = torch.tensor([5, 5])
    case["tree_tokens"][1, 1] = -1
    case = _on(backend, case)
    out = _ok(run_isolated(lambda: sk.verify_tree(**case, backend=backend, validate=False)))
    assert int(out[2][1]) == -2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad_neighbor", [10, -5, "self"])
def test_bad_neighbour_ids_are_reported_not_read(backend, bad_neighbor):
    case = chain_case(batch=2, drafts=3, vocab=10, seed=4)
    case["num_drafts"] = torch.tensor([3, 3])
    table = _table(10)
    x = int(case["draft"][0, 0])
    table[x, 1] = x if bad_neighbor == "self" else bad_neighbor
    out = _ok(run_isolated(_chain_call(case, method="lantern", neighbors=table, delta=0.2, backend=backend,
                                       validate=False)))
    assert int(out[1][0]) == -4
    tree = tree_case(batch=1, nodes=4, vocab=10, seed=5)
    tree["num_nodes"] = torch.tensor([4])
    tree["tree_tokens"][0, 2] = x
    tree, table = _on(backend, (tree, table))
    out = _ok(run_isolated(lambda: sk.verify_tree(**tree, method="lantern", neighbors=table, lam=2.0, backend=backend,
                                                  validate=False)))
    assert int(out[2][0]) == -4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_drafts", [4, 5, 1000, -1])
def test_num_drafts_outside_range(backend, num_drafts):
    """num_drafts > L once gave accept_len 4 for L = 3 (or a crash): now code 1."""
    case = chain_case(batch=2, drafts=3, vocab=8, seed=6)
    case["p"][:, :, :] = 0.0
    case["p"][:, :, 5] = 1.0  # every draft of token 5 would pass
    case["draft"][:] = 5
    case["num_drafts"] = torch.tensor([num_drafts, 3])
    accept_len, next_token = _ok(run_isolated(_chain_call(case, backend=backend, validate=False)))
    assert int(next_token[0]) == -1 and int(accept_len[0]) == 0
    assert int(accept_len[1]) == 3 and int(next_token[1]) == 5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x", [10, -1, 2**35])
def test_relaxed_mass_x_out_of_range(backend, x):
    p = probs(3, 10)
    xs = torch.tensor([1, x, 2])
    args = _on(backend, (p, xs, _table(10)))
    p_tilde, merged = _ok(run_isolated(lambda: sk.lantern_relaxed_mass(*args, delta=0.3, backend=backend,
                                                                       validate=False)))
    assert math.isnan(float(p_tilde[1])) and int(merged[1]) == -2
    want = reference.lantern_relaxed_mass(p, torch.tensor([1, 0, 2]), _table(10), delta=0.3)
    assert torch.equal(merged[[0, 2]], want[1][[0, 2]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_tree_num_nodes_and_parents_out_of_range(backend):
    case = tree_case(batch=4, nodes=5, vocab=9, seed=7)
    case["num_nodes"] = torch.tensor([6, 0, 5, 5])
    case["parents"][2] = torch.tensor([-1, 0, 7, 1, 2])  # parent beyond the tree
    case["parents"][3] = torch.tensor([-1, 2, 1, 0, 0])  # a cycle 1 <-> 2
    case = _on(backend, case)
    out = _ok(run_isolated(lambda: sk.verify_tree(**case, backend=backend, validate=False)))
    assert out[2].tolist() == [-1, -1, -3, -3]
    mask, depth, paths = _ok(run_isolated(lambda: sk.build_tree(case["parents"], case["num_nodes"], backend=backend,
                                                                validate=False)))
    assert depth[:, 0].tolist() == [-1, -1, -3, -3] and not mask.any() and paths.numel() == 0


# ------------------------------------------------------------------ validation under torch.compile


def _compiled_chain(backend, validate):
    @torch.compile(fullgraph=True)
    def step(p, q, draft, u_accept, u_sample, num_drafts):
        return sk.verify_chain(p, q, draft, u_accept, u_sample, num_drafts=num_drafts, backend=backend,
                               validate=validate)

    return step


def _compiled_chain_outputs(backend, validate, case):
    """The compiled chain call on ``case`` (CPU tensors, moved here), its outputs copied back (which synchronises)."""
    case = _on(backend, case)
    out = _compiled_chain(backend, validate)(*(case[k] for k in ("p", "q", "draft", "u_accept", "u_sample",
                                                                   "num_drafts")))
    return tuple(t.cpu() for t in out)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize("validate", [True, None])
def test_compiled_validation_is_not_skipped(backend, validate):
    """Validation once returned early under torch.compile, so the compiled call read out of bounds. Compiled, both
    levels check on the device (``torch._assert_async``): on CUDA a device-side assertion, which the call must
    meet in a process of its own (it leaves the CUDA context unusable)."""
    case = chain_case(batch=2, drafts=3, vocab=10, seed=8)
    case["num_drafts"] = torch.tensor([3, 3])
    case["draft"][1, 0] = 10**6
    if device_for(backend) == "cuda":
        outcome = _isolate.run_in_fresh_process(_compiled_chain_outputs, backend, validate, case, timeout=600)
    else:
        outcome = run_isolated(_compiled_chain_outputs, backend, validate, case, timeout=600)
    assert outcome.kind == "raised" and outcome.error in ("RuntimeError", "ValueError", "AcceleratorError"), \
        str(outcome)
    assert any(text in outcome.message for text in ("draft", "row was reported bad", "device-side assert")), \
        str(outcome)


@pytest.mark.skipif("triton" not in sk.available_backends(), reason="Triton not usable here")
def test_triton_backend_compiles_without_graph_break():
    """The dispatcher once imported the Triton module by a string, which broke the graph."""
    case = chain_case(batch=2, drafts=3, vocab=10, seed=9)
    want = reference.verify_chain(**case)
    case = _on("triton", case)
    got = _ok(run_isolated(lambda: _compiled_chain("triton", False)(
        *(case[k] for k in ("p", "q", "draft", "u_accept", "u_sample", "num_drafts"))), timeout=600))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ------------------------------------------------------------------ silent divergence


@pytest.mark.parametrize("backend", BACKENDS)
def test_lam_inf_with_zero_probability_merges_nothing(backend):
    """(lam - 1) * p(x) is NaN for lam = inf, p(x) = 0: p~ = 0 and the draft is never accepted (once p~ = 1)."""
    p = torch.tensor([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]])
    table = torch.tensor([[1, 2], [0, 2], [1, 0]], dtype=torch.int32)
    p, table = _on(backend, (p, table))
    p_tilde, merged = to_device(sk.lantern_relaxed_mass(p, _on(backend, torch.tensor([0, 0])), table, lam=math.inf,
                                                        backend=backend), "cpu")
    assert p_tilde.tolist()[0] == 0.0 and int(merged[0]) == 0
    assert float(p_tilde[1]) == pytest.approx(1.0) and int(merged[1]) == 2
    chain = dict(p=torch.tensor([[[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]]]), q=None, draft=torch.tensor([[0]]),
                 u_accept=torch.tensor([[0.0]]), u_sample=torch.tensor([0.1]))
    accept_len, _ = sk.verify_chain(**_on(backend, chain), method="lantern", neighbors=table, lam=math.inf,
                                    backend=backend)
    assert int(accept_len[0]) == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("row", ["zeros", "nan", "inf", "negative"])
def test_bad_sampled_row_is_code_6_everywhere(backend, row):
    """An all-zero or NaN p row once gave next token -1 on cpu and 0 elsewhere."""
    case = chain_case(batch=2, drafts=2, vocab=6, seed=10)
    case["num_drafts"] = torch.tensor([0, 0])
    if row == "inf":
        case["p"][0, 0, 1] = math.inf
    else:
        case["p"][0, 0] = {"zeros": 0.0, "nan": math.nan, "negative": -0.5}[row]
    accept_len, next_token = _ok(run_isolated(_chain_call(case, backend=backend, validate=False)))
    assert int(next_token[0]) == -6 and int(accept_len[0]) == 0
    assert int(next_token[1]) == int(reference.verify_chain(**case)[1][1]) >= 0
    with raises_bad_row(match="row 0: p / q"):
        sk.verify_chain(**_on(backend, case), backend=backend)


def test_reference_neighbor_table_never_lists_self_when_distances_overflow():
    book = torch.tensor([[3e38, 0.0], [-3e38, 0.0], [0.0, 3e38], [1.0, 1.0]])
    table = reference.neighbor_table(book, 3, normalize=False)
    assert all(c not in table[c].tolist() for c in range(4)), table.tolist()
    for backend in BACKENDS:
        on_device = _on(backend, book)
        got = _ok(run_isolated(lambda: sk.neighbor_table(on_device, 3, normalize=False, backend=backend)))
        assert torch.equal(got, table), (backend, got.tolist(), table.tolist())


# ------------------------------------------------------------------ hangs


def test_reference_build_tree_terminates_on_cyclic_parents():
    parents = torch.tensor([[-1, 2, 1, 0]])
    outcome = run_isolated(lambda: sk.build_tree(parents, backend="reference", validate=False), timeout=60)
    mask, depth, paths = _ok(outcome)
    assert depth.tolist() == [[-3] * 4] and not mask.any() and paths.numel() == 0


@pytest.mark.skipif("triton" not in sk.available_backends(), reason="Triton not usable here")
def test_triton_gsd_window_is_capped_at_the_vocabulary():
    """A window of 6000 on V = 16 once made O(window * V) work per draft (20 s under the interpreter); capped at
    V - 1 it is the same work as the widest window that changes anything, and the same answer."""
    case = chain_case(batch=2, drafts=3, vocab=16, seed=11)
    case["num_drafts"] = torch.tensor([3, 3])
    case["u_accept"] = torch.zeros_like(case["u_accept"])  # every draft is tested (and accepted)
    wide = dict(method="gsd", rank_window=(6000, 6000), p_thr=1.0)
    _ok(run_isolated(_chain_call(case, backend="triton", method="gsd", rank_window=(15, 15), p_thr=1.0)))  # warm-up
    # About 3 s capped (loaded 2-core machine); uncapped it took many minutes. The limit only catches the hang.
    got = _ok(run_isolated(_chain_call(case, backend="triton", **wide), timeout=60))
    want = reference.verify_chain(**case, **wide)  # (_chain_call moved copies: case is still on the CPU)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ------------------------------------------------------------------ error types and unchecked parameters


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_dimensional_parents_is_a_value_error(backend):
    case = _on(backend, tree_case(batch=1, nodes=4, vocab=9))
    with pytest.raises(ValueError, match="parents must have 2 dimensions"):
        sk.verify_tree(**{**case, "parents": case["parents"][0]}, backend=backend)
    with pytest.raises(ValueError, match="parents must have 2 dimensions"):
        sk.build_tree(case["parents"][0], backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_gsd_threshold_matches_the_reference(backend):
    """p_thr = 1e39 overflowed float32 in the Triton launcher."""
    case = chain_case(batch=3, drafts=3, vocab=12, seed=12)
    got = _ok(run_isolated(_chain_call(case, backend=backend, method="gsd", p_thr=1e39, d_thr=1e300)))
    want = reference.verify_chain(**case, method="gsd", p_thr=1e39, d_thr=1e300)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_inner_temperature_bool_is_rejected():
    z = torch.zeros(2, 2)
    args = (z, z, z + 1, z, z + 1, z, z, torch.rand(2), torch.rand(2, 3, 2), torch.rand(2, 3))
    with pytest.raises(ValueError, match="inner_temperature"):
        sk.cspd_verify(*args, inner_temperature=True)
    with pytest.raises(ValueError, match="inner_temperature"):
        sk.cspd_verify(*args, inner_temperature=math.inf)


# ------------------------------------------------------------------ the isolation itself


def test_isolation_without_fork_reports_results_errors_and_hangs(monkeypatch):
    """Where fork is unsafe (CUDA started: a GPU run) the calls run in a thread: a result, an exception and a hang
    are reported as they are from a child (the forked children once inherited CUDA and failed in a GPU run)."""
    monkeypatch.setattr(_isolate, "fork_is_safe", lambda: False)
    assert _ok(run_isolated(lambda a, b: a + b, 2, 3)) == 5
    raised = run_isolated(lambda: int("x"))
    assert raised.kind == "raised" and raised.error == "ValueError" and "invalid literal" in raised.message
    release = __import__("threading").Event()
    try:
        hung = run_isolated(release.wait, 30.0, timeout=0.5)
        assert hung.kind == "hung", str(hung)
    finally:
        release.set()
    assert [o.value for o in _isolate.run_batch(lambda x: x * 2, [(1,), (4,)], timeout=10)] == [2, 8]
