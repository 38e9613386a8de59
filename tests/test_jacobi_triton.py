"""The Triton jacobi_step kernel (verification and the Jacobi refresh in one program per row, logits processed where
read) equals specdec_kernels.reference.jacobi_step token for token and bit for bit on the same uniforms: every
chain rule, q given or one-hot, independent or coupled (MC-SJD) refresh, random or caller inits, CFG / temperature /
top-k / top-p, ragged rows, rows left un-updated; bad rows keep their window; unknown rule codes are row error 7 in
the chain and tree walks; the registered op passes opcheck and matches the C++ op.

The Triton cases run on the CPU interpreter here (small shapes) and compiled on a GPU run.
"""

import math

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import _methods, reference
from specdec_kernels._backend import torch_op
from specdec_kernels.reference.verify_logits import process_logits as ref_process

from _backends import TRITON_INTERPRETED, device_for, to_device
from _inputs import codebook
from _triton_compile import check_triton_compiles_for_sm90

pytestmark = pytest.mark.skipif("triton" not in sk.available_backends(), reason="Triton not usable here")

DEVICE = device_for("triton")


def jacobi_case(batch=4, width=4, vocab=19, *, cfg=False, with_q=True, seed=0, processing=None):
    """Raw target logits over [last, window]; q close to the processed target rows (so coupled entries are often
    kept and drafts often accepted); the window drawn from q (or mostly the target's argmax without q); ragged
    num_drafts with 0 and L; one row not updated; uniforms for every draw."""
    gen = torch.Generator().manual_seed(seed)
    processing = dict(processing or {})
    if cfg:
        processing.setdefault("cfg_scale", 2.5)
    rows = 2 * batch if cfg else batch
    logits = torch.randn(rows, width + 1, vocab, generator=gen) * 2.0
    logits = logits.masked_fill(torch.rand(rows, width + 1, vocab, generator=gen) < 0.1, -math.inf)
    logits[..., 0] = logits[..., 0].clamp_min(0.0)  # never a row of -inf only
    if cfg:
        logits[batch:] = logits[batch:].clamp_min(-30.0)  # -inf in both halves would make a NaN logit
    p = ref_process(logits, **processing)
    case = {"logits": logits}
    if with_q:
        noisy = p[:, :width].log().nan_to_num(neginf=-30.0) + torch.randn(batch, width, vocab, generator=gen) * 0.3
        q = torch.softmax(noisy, -1)
        case["q"] = q
        window = torch.multinomial(q.reshape(-1, vocab), 1, generator=gen).view(batch, width) if width else \
            torch.zeros(batch, 0, dtype=torch.int64)
    else:
        case["q"] = None
        window = torch.where(torch.rand(batch, width, generator=gen) < 0.7, p[:, :width].argmax(-1),
                             torch.randint(0, vocab, (batch, width), generator=gen))
    num_drafts = torch.randint(0, width + 1, (batch,), generator=gen)
    num_drafts[0], num_drafts[-1] = width, 0
    update = torch.ones(batch, dtype=torch.bool)
    update[1] = False
    case.update(window=window, u_accept=torch.rand(batch, width, generator=gen),
                u_sample=torch.rand(batch, generator=gen), u_draft=torch.rand(batch, width, generator=gen),
                u_keep=torch.rand(batch, width, generator=gen), u_init=torch.rand(batch, width, generator=gen),
                num_drafts=num_drafts, update=update)
    return case, processing


def _assert_same(got, want):
    for name, g, w in zip(("accept_len", "next_token", "window", "q", "first_init"), got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, g.shape, w.dtype, w.shape)
        g = g.cpu()
        same = torch.equal(g.nan_to_num(123.0), w.nan_to_num(123.0)) if g.is_floating_point() else torch.equal(g, w)
        assert same, f"{name}: got {g.tolist()}\nwant {w.tolist()}"


def _run(case, processing, keys=("u_keep", "u_init"), validate=None, **method_kw):
    args = {k: v for k, v in case.items() if k not in ("u_keep", "u_init") or k in keys}
    got = sk.jacobi_step(**to_device(args, DEVICE), **processing, **to_device(method_kw, DEVICE), backend="triton",
                         validate=validate)
    want = sk.jacobi_step(**args, **processing, **method_kw, backend="reference", validate=validate)
    _assert_same(got, want)
    return want


RULES = {
    "exact": lambda cb: {},
    "gsd": lambda cb: {"method": "gsd", "embeddings": torch.nn.functional.normalize(cb, dim=-1),
                       "rank_window": (3, 2), "p_thr": 0.3},
    "lantern": lambda cb: {"method": "lantern", "neighbors": reference.neighbor_table(cb, 4), "delta": 0.3},
    "typical": lambda cb: {"method": "typical", "epsilon": 0.2, "alpha": 0.5},
}

# (rule, q given, uniforms passed, processing): every rule, both q forms, both refreshes and inits, the processing
# steps; a representative subset of the product (the interpreter runs every tl operation in Python).
CASES = [
    ("exact", True, ("u_keep", "u_init"), {"cfg": True}),
    ("exact", False, ("u_keep",), {"cfg": True, "processing": {"temperature": 0.7}}),
    ("exact", True, (), {"processing": {"top_k": 5, "top_p": 0.9}}),
    ("gsd", True, ("u_keep", "u_init"), {}),
    ("gsd", False, ("u_init",), {"cfg": True}),
    ("lantern", True, ("u_keep",), {"cfg": True, "processing": {"top_k": 6}}),
    ("lantern", False, ("u_keep", "u_init"), {}),
    ("typical", True, ("u_keep", "u_init"), {"processing": {"top_p": 0.85}}),
    ("typical", False, (), {"cfg": True}),
]


CASE_IDS = [f"{rule}-{'q' if with_q else 'onehot'}-{'+'.join(keys) or 'plain'}" for rule, with_q, keys, _ in CASES]


@pytest.mark.parametrize("rule, with_q, keys, shape", CASES, ids=CASE_IDS)
def test_parity_with_reference(rule, with_q, keys, shape):
    seed = sum(map(ord, rule)) + 7 * with_q + len(keys)
    case, processing = jacobi_case(with_q=with_q, seed=seed, **shape)
    want = _run(case, processing, keys, **RULES[rule](codebook(19, seed=seed)))
    assert (want.first_init[1] == case["window"].shape[1]).item()  # the row left un-updated kept its window


def test_refresh_cases_are_exercised():
    """The coupled cases above keep old drafts and redraw others, and accept drafts (the inputs are not vacuous)."""
    case, processing = jacobi_case(seed=sum(map(ord, "exact")) + 7 + 2, cfg=True)
    out = sk.jacobi_step(**case, **processing, backend="reference")
    refreshed = torch.arange(4) < out.first_init[:, None]
    src = (out.accept_len[:, None] + 1 + torch.arange(4)).clamp_max(3)
    kept_old = refreshed & (out.window == case["window"].gather(1, src))
    assert (out.accept_len > 0).any() and kept_old.any() and (refreshed & ~kept_old).any()


def test_bad_rows_keep_their_window():
    """validate=False: a NaN in q where the coupled refresh reads it (code 6) and a used draft id out of range
    (code 2) leave those rows' window and q as they were; the other rows equal the reference."""
    case, processing = jacobi_case(batch=4, seed=3, cfg=True)
    case["num_drafts"][:] = 4
    case["update"][:] = True
    case["window"][2, 1] = 19  # code 2
    # Row 0: the first draft is rejected (u_accept close to 1, a tiny p), so the refresh couples position 1+j with
    # its old draft and, when not kept, reads the row q[0, j + 1] whole.
    case["u_accept"][0, 0] = 0.999
    case["q"][0, 0] = 0.0
    case["q"][0, 0, case["window"][0, 0]] = 1.0
    case["u_keep"][0] = 0.999
    case["q"][0, 2, (case["window"][0, 2] + 1) % 19] = math.nan
    want = _run(case, processing, validate=False)
    assert want.next_token[:3].tolist()[::2] == [-_methods.ROW_BAD_PROB, -_methods.ROW_BAD_ID]
    for row in (0, 2):
        assert torch.equal(want.window[row], case["window"][row]) and want.first_init[row].item() == 4
    assert (want.next_token[[1, 3]] >= 0).all()


def test_zero_width_and_empty_batch():
    case, processing = jacobi_case(batch=2, width=0, seed=1)
    _run(case, processing)
    case, processing = jacobi_case(batch=2, seed=1)
    empty = {k: (v[:0] if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    _run(empty, processing)


# ------------------------------------------------------------------ unknown rule codes


def test_unknown_rule_code_is_row_error_7():
    """The walks report a code the table lacks as row error 7 (the launchers refuse it before any launch, as the
    C++ ops and the fakes do; the kernels do not rely on that)."""
    from specdec_kernels.triton import _rows
    from specdec_kernels.triton.verify_chain import launch_chain
    from specdec_kernels.triton.verify_tree import launch_tree

    unknown = max(_methods.BY_CODE) + 1
    case, _ = jacobi_case(batch=3, width=2, vocab=7, seed=2)
    p = torch.softmax(torch.randn(3, 3, 7), -1).to(DEVICE)
    args = to_device((case["window"], case["u_accept"], case["u_sample"], case["num_drafts"]), DEVICE)
    accept_len, next_token = launch_chain(_rows.Source(p), None, *args, unknown, None, None, [])
    assert next_token.tolist() == [-_methods.ROW_BAD_METHOD] * 3 and accept_len.tolist() == [0] * 3
    parents = torch.tensor([[-1, 0, 0]] * 3, device=DEVICE)
    accepted, accept_len, next_token = launch_tree(
        _rows.Source(p), None, args[0].new_zeros(3, 3), parents, torch.rand(3, 3, device=DEVICE), args[2],
        torch.full((3,), 3, device=DEVICE), _methods.GSD_CODE, None, [7.0, 6.0, 0.15, 0.5])  # not a tree rule
    assert next_token.tolist() == [-_methods.ROW_BAD_METHOD] * 3 and (accepted == -1).all()
    with pytest.raises(ValueError, match="unknown method code"):
        torch.ops.specdec_kernels_triton.jacobi_step(
            case["logits"].to(DEVICE), *to_device((case["window"], None, case["u_accept"], case["u_sample"],
                                                   case["u_draft"], None, None, case["num_drafts"], case["update"]),
                                                  DEVICE), None, 1.0, 0, 1.0, unknown, None, None, [])


# ------------------------------------------------------------------ registration


def _op_args(device):
    case, _ = jacobi_case(batch=2, width=2, vocab=8, cfg=True, seed=5)
    table = reference.neighbor_table(codebook(8), 3)
    return to_device((case["logits"], case["window"], case["q"], case["u_accept"], case["u_sample"], case["u_draft"],
                      case["u_keep"], case["u_init"], case["num_drafts"], case["update"], 2.0, 0.9, 5, 0.95,
                      _methods.LANTERN_CODE, table, None, [0.0, 0.2]), device)


def test_opcheck_and_cpp_parity():
    """The registered Triton op: its schema and fake pass opcheck, and its outputs equal the C++ op's."""
    args = _op_args(DEVICE)
    op = torch.ops.specdec_kernels_triton.jacobi_step
    torch.library.opcheck(op, args)
    if "cpu" in sk.available_backends():
        _assert_same(op(*args), torch_op("jacobi_step")(*_op_args("cpu")))


@pytest.mark.skipif(not TRITON_INTERPRETED, reason="a GPU run compiles every kernel for real")
def test_triton_compiles_for_sm90():
    check_triton_compiles_for_sm90("jacobi_step")
