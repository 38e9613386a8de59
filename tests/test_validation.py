"""Bad input raises a clear ValueError naming the argument: before any kernel with ``validate=True``, from the
kernels' row status codes with the default ``validate=None``; ``validate=False`` reports bad rows in the outputs."""

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import reference

from _backends import device_for, raises_bad_row, to_device
from _inputs import chain_case, codebook, tree_case

#: Every backend this run has (each on its own device): each reports row status codes.
ROW_CODE_BACKENDS = [b for b in ("reference", "cpu", "triton", "cuda") if b in sk.available_backends()]


def _chain(**overrides):
    case = chain_case(batch=3, drafts=4, vocab=10)
    case.update(overrides)
    return case


CHAIN_ERRORS = [
    ("p has wrong rank", lambda c: dict(p=c["p"][0]), "p must have 3 dimensions"),
    ("p dtype", lambda c: dict(p=c["p"].double(), q=c["q"].double()), "p must have dtype"),
    ("q shape", lambda c: dict(q=c["q"][:, :2]), "q must have shape"),
    ("q dtype", lambda c: dict(q=c["q"].half()), "q must have dtype"),
    ("draft dtype", lambda c: dict(draft=c["draft"].int()), "draft must have dtype"),
    ("draft shape", lambda c: dict(draft=c["draft"][:, :2]), "draft must have shape"),
    ("draft out of range", lambda c: dict(draft=torch.full_like(c["draft"], 10), num_drafts=torch.full((3,), 4)),
     "draft holds ids outside"),
    ("negative draft", lambda c: dict(draft=torch.full_like(c["draft"], -1), num_drafts=torch.full((3,), 4)),
     "draft holds ids outside"),
    ("NaN in p", lambda c: dict(p=c["p"].index_fill(2, torch.tensor([3]), float("nan"))), "p contains NaN"),
    ("inf in q", lambda c: dict(q=c["q"].index_fill(2, torch.tensor([3]), float("inf"))), "q contains NaN or inf"),
    ("negative p", lambda c: dict(p=c["p"] - 0.5), "negative probabilities"),
    ("u_accept >= 1", lambda c: dict(u_accept=c["u_accept"] + 1), "u_accept must hold uniforms"),
    ("u_sample dtype", lambda c: dict(u_sample=c["u_sample"].double()), "u_sample must have dtype"),
    ("num_drafts > L", lambda c: dict(num_drafts=torch.tensor([0, 5, 1])), "num_drafts must lie in"),
    ("num_drafts < 0", lambda c: dict(num_drafts=torch.tensor([0, -1, 1])), "num_drafts must lie in"),
    ("zero p row", lambda c: dict(p=c["p"].index_fill(1, torch.tensor([0]), 0.0)), "all-zero row"),
    ("device mismatch", lambda c: dict(draft=c["draft"].to("meta")), "draft must be on"),
]


@pytest.mark.parametrize("name,change,match", CHAIN_ERRORS, ids=[e[0] for e in CHAIN_ERRORS])
def test_verify_chain_errors(name, change, match):
    case = chain_case(batch=3, drafts=4, vocab=10)
    case.update(change(case))
    with pytest.raises(ValueError, match=match):
        sk.verify_chain(**case, validate=True)


#: (name, change, argument named by the default level's message, row code) for row-level problems.
ROW_ERRORS = [
    ("num_drafts > L", lambda c: dict(num_drafts=torch.tensor([0, 5, 1])), "row 1: num_drafts", 1),
    ("num_drafts < 0", lambda c: dict(num_drafts=torch.tensor([0, 1, -1])), "row 2: num_drafts", 1),
    ("draft = V", lambda c: dict(draft=torch.full_like(c["draft"], 10), num_drafts=torch.tensor([0, 4, 4])),
     "row 1: draft", 2),
    ("draft far below 0", lambda c: dict(draft=torch.full_like(c["draft"], -2**40), num_drafts=torch.full((3,), 4)),
     "row 0: draft", 2),
    ("u_accept >= 1", lambda c: dict(u_accept=c["u_accept"] + 1, num_drafts=torch.tensor([0, 2, 0])),
     "row 1: u_accept", 5),
    ("NaN u_sample", lambda c: dict(u_sample=torch.tensor([0.5, 0.5, float("nan")])), "row 2: u_accept / u_sample",
     5),
    ("zero sampled row", lambda c: dict(p=torch.zeros_like(c["p"]), num_drafts=torch.zeros(3, dtype=torch.int64)),
     "row 0: p / q", 6),
    ("NaN bonus row", lambda c: dict(p=c["p"].index_fill(1, torch.tensor([0]), float("nan")),
                                     num_drafts=torch.zeros(3, dtype=torch.int64)), "row 0: p / q", 6),
]


@pytest.mark.parametrize("backend", ROW_CODE_BACKENDS)
@pytest.mark.parametrize("name,change,match,code", ROW_ERRORS, ids=[e[0] for e in ROW_ERRORS])
def test_verify_chain_row_codes(name, change, match, code, backend):
    """Default level: a ValueError naming the argument and row; validate=False: next_token = -code, accept_len 0."""
    case = chain_case(batch=3, drafts=4, vocab=10)
    case.update(change(case))
    case = to_device(case, device_for(backend))
    with raises_bad_row(match=match):
        sk.verify_chain(**case, backend=backend)
    accept_len, next_token = to_device(sk.verify_chain(**case, backend=backend, validate=False), "cpu")
    row = int(match.split(":")[0].split()[1])
    assert int(next_token[row]) == -code and int(accept_len[row]) == 0


def test_method_parameter_errors():
    case = chain_case(batch=3, drafts=4, vocab=10)
    table = reference.neighbor_table(codebook(10), 3)
    with pytest.raises(ValueError, match="method must be one of"):
        sk.verify_chain(**case, method="top-1")
    with pytest.raises(ValueError, match="needs neighbors"):
        sk.verify_chain(**case, method="lantern", delta=0.1)
    with pytest.raises(ValueError, match="exactly one of delta"):
        sk.verify_chain(**case, method="lantern", neighbors=table)
    with pytest.raises(ValueError, match="exactly one of delta"):
        sk.verify_chain(**case, method="lantern", neighbors=table, delta=0.1, lam=2.0)
    with pytest.raises(ValueError, match="delta must be"):
        sk.verify_chain(**case, method="lantern", neighbors=table, delta=1.5)
    with pytest.raises(ValueError, match="lam must be"):
        sk.verify_chain(**case, method="lantern", neighbors=table, lam=0.5)
    with pytest.raises(ValueError, match="only apply to method 'lantern'"):
        sk.verify_chain(**case, delta=0.1)
    with pytest.raises(ValueError, match="only apply to method 'gsd'"):
        sk.verify_chain(**case, p_thr=0.1)
    with pytest.raises(ValueError, match="rank_window"):
        sk.verify_chain(**case, method="gsd", rank_window=(-1, 2))
    with pytest.raises(ValueError, match="neighbors has 11 rows"):
        sk.verify_chain(**case, method="lantern", neighbors=reference.neighbor_table(codebook(11), 3), delta=0.1)
    with pytest.raises(ValueError, match="embeddings has 9 rows"):
        sk.verify_chain(**case, method="gsd", embeddings=torch.randn(9, 4))
    bad = table.clone()
    bad[2, 0] = 2
    with pytest.raises(ValueError, match="its own neighbour"):
        sk.verify_chain(**case, method="lantern", neighbors=bad, delta=0.1, validate=True)
    with pytest.raises(ValueError, match="neighbors must have dtype int32"):
        sk.verify_chain(**case, method="lantern", neighbors=table.long(), delta=0.1)
    with pytest.raises(ValueError, match="backend must be one of"):
        sk.verify_chain(**case, backend="gpu")
    with pytest.raises(ValueError, match="validate must be None, True or False"):
        sk.verify_chain(**case, validate="yes")


def test_tree_errors():
    case = tree_case(batch=2, nodes=5, vocab=10)
    bad_root = case["parents"].clone()
    bad_root[0, 0] = 0
    forward = case["parents"].clone()
    forward[:, 1] = 3  # parent after child
    for validate, messages in ((True, ("parents", "malformed", "malformed", "num_nodes must lie in",
                                       "tree_tokens holds ids outside")),
                               (None, ("row 0: parents", "row 0: parents", "row 0: parents", "row 0: num_nodes",
                                       "row 0: tree_tokens"))):
        with raises_bad_row(match=messages[0]):
            sk.verify_tree(**{**case, "parents": bad_root}, validate=validate, backend="reference")
        with raises_bad_row(match=messages[1]):
            sk.verify_tree(**{**case, "parents": forward, "num_nodes": torch.tensor([5, 5])}, validate=validate,
                           backend="reference")
        with raises_bad_row(match=messages[2]):
            sk.build_tree(forward, validate=validate, backend="reference")
        with raises_bad_row(match=messages[3]):
            sk.verify_tree(**{**case, "num_nodes": torch.tensor([0, 5])}, validate=validate, backend="reference")
        with raises_bad_row(match=messages[4]):
            sk.verify_tree(**{**case, "tree_tokens": case["tree_tokens"] + 10, "num_nodes": torch.tensor([5, 5])},
                           validate=validate, backend="reference")
    with raises_bad_row(match="method must be one of"):
        sk.verify_tree(**case, method="gsd")
    with raises_bad_row(match="parents must have 2 dimensions"):
        sk.verify_tree(**{**case, "parents": case["parents"][0]})
    with raises_bad_row(match="parents must have 2 dimensions"):
        sk.build_tree(case["parents"][0])


def test_other_op_errors():
    p = torch.softmax(torch.randn(4, 10), -1)
    x = torch.randint(0, 10, (4,))
    table = reference.neighbor_table(codebook(10), 3)
    with raises_bad_row(match="x holds ids outside"):
        sk.lantern_relaxed_mass(p, x + 10, table, delta=0.1, validate=True)
    with raises_bad_row(match="row 0: x holds an id"):
        sk.lantern_relaxed_mass(p, x + 10, table, delta=0.1, backend="reference")
    with raises_bad_row(match="row 0: x holds an id"):
        sk.gsd_group_mass(p, None, x + 10)
    with raises_bad_row(match="x must have shape"):
        sk.gsd_group_mass(p, None, x[:2])
    with raises_bad_row(match="codebook contains NaN"):
        sk.neighbor_table(torch.full((5, 2), float("nan")), 2, validate=True)
    z = torch.zeros(3, 2)
    with raises_bad_row(match="sigma_p must be finite and > 0"):
        sk.cspd_verify(z, z, z + 1, z, z, z, z, torch.rand(3), torch.rand(3, 2, 2), torch.rand(3, 2), validate=True)
    with raises_bad_row(match="inner_temperature"):
        sk.cspd_verify(z, z, z + 1, z, z + 1, z, z, torch.rand(3), torch.rand(3, 2, 2), torch.rand(3, 2),
                       inner_temperature=True)
    with raises_bad_row(match="u_prop must be"):
        sk.cspd_verify(z, z, z + 1, z, z + 1, z, z, torch.rand(3), torch.rand(3, 2, 3), torch.rand(3, 2))


def test_available_backends_and_unavailable_request():
    found = sk.available_backends()
    assert "reference" in found and "cpu" in found
    if "cuda" not in found:
        with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
            sk.verify_chain(**chain_case(batch=1, drafts=1, vocab=3), backend="cuda")
