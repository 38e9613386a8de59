"""process_logits, verify_chain_logits and verify_tree_logits: the processing's semantics on named cases, every
backend token-identical to process_logits + verify_chain / verify_tree on the same uniforms (random inputs and
edge cases), row codes, validation errors, opcheck, and distribution preservation of "exact" from logits.

Exact equality, no tolerance: the processing runs in float64 after the float32 processed logits and rounds each
probability to float32 once (specdec_kernels/reference/verify_logits.py), so a backend can differ from the
reference only when a 1-ulp float64 difference (another exp implementation, another summation order) crosses a
float32 rounding boundary of a probability or a float64 boundary of an inverse-CDF prefix sum; both have
probability of order 1e-9 per value, far below anything these fixed-seed tests can hit.
"""

import math
import zlib

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import _methods, reference
from specdec_kernels.reference.verify_logits import process_logits as ref_process

from _backends import TRITON_INTERPRETED, raises_bad_row
from _inputs import codebook, method_kwargs, random_parents
from _triton_compile import check_triton_compiles_for_sm90
from conftest import COMPILED_BACKENDS, device_for
from stats import ALPHA, chi_square_pvalue, histogram

def _seed(*parts) -> int:
    """A seed per parametrisation, stable across processes (str hashes are salted)."""
    return zlib.crc32(repr(parts).encode()) % 1000


LOGITS_BACKENDS = COMPILED_BACKENDS + (["triton"] if "triton" in sk.available_backends() else [])


@pytest.fixture(params=LOGITS_BACKENDS)
def logits_backend(request):
    return request.param


# ------------------------------------------------------------------ process_logits semantics


def _eager_pipeline(logits, cfg_scale=None, temperature=1.0, top_k=0):
    """The textbook float32 pipeline (TESTBED §1.4) without top-p, for the semantics check."""
    x = logits.float()
    if cfg_scale is not None:
        half = x.shape[0] // 2
        x = x[half:] + cfg_scale * (x[:half] - x[half:])
    x = x / max(temperature, 1e-5)
    if 0 < top_k < x.shape[-1]:
        x = x.masked_fill(x < torch.topk(x, top_k, -1).values[..., -1:], -math.inf)
    return torch.softmax(x, -1)


@pytest.mark.parametrize("kw", [{}, {"cfg_scale": 4.0}, {"temperature": 0.6, "top_k": 7},
                                {"cfg_scale": 1.5, "temperature": 1.3, "top_k": 100}])
def test_process_logits_matches_the_float32_pipeline(kw):
    logits = torch.randn(4 if "cfg_scale" in kw else 2, 3, 50) * 3
    got = sk.process_logits(logits, **kw)
    want = _eager_pipeline(logits, **kw)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert ((got > 0) == (want > 0)).all()


def test_cfg_uses_cond_rows_first():
    cond = torch.tensor([[[0.0, 2.0]]])
    uncond = torch.tensor([[[1.0, 1.0]]])
    got = sk.process_logits(torch.cat([cond, uncond]), cfg_scale=2.0)  # l = l_u + 2 (l_c - l_u) = (-1, 3)
    torch.testing.assert_close(got, torch.softmax(torch.tensor([[[-1.0, 3.0]]]), -1))


def test_top_k_keeps_ties_and_top_k_off():
    z = torch.tensor([[[1.0, 3.0, 2.0, 2.0, 0.0]]])
    assert (sk.process_logits(z, top_k=2) > 0).tolist() == [[[False, True, True, True, False]]]
    for off in (0, 5, 9):
        torch.testing.assert_close(sk.process_logits(z, top_k=off), torch.softmax(z, -1))
    assert (sk.process_logits(z, top_k=1) > 0).sum() == 1


def test_top_p_smallest_prefix_with_whole_tie_groups():
    z = torch.log(torch.tensor([[[0.5, 0.125, 0.25, 0.125]]]))
    keep = lambda top_p: (sk.process_logits(z, top_p=top_p) > 0).tolist()[0][0]  # noqa: E731
    assert keep(0.4) == [True, False, False, False]  # the most probable token alone reaches 0.4
    assert keep(0.7) == [True, False, True, False]   # 0.5 + 0.25 >= 0.7
    assert keep(0.8) == [True, True, True, True]     # the 0.125 tie group is kept whole
    assert keep(1.0) == [True, True, True, True]
    torch.testing.assert_close(sk.process_logits(z, top_p=0.7)[0, 0], torch.tensor([2 / 3, 0.0, 1 / 3, 0.0]))


def test_temperature_zero_is_greedy_and_bad_rows_are_nan():
    z = torch.tensor([[[0.1, 0.3, 0.2]], [[float("nan"), 0.0, 0.0]], [[-math.inf] * 3]])
    out = sk.process_logits(z, temperature=0.0)
    assert out[0, 0].tolist() == [0.0, 1.0, 0.0]
    assert torch.isnan(out[1]).all() and torch.isnan(out[2]).all()


@pytest.mark.parametrize("kw, match", [
    ({"top_k": -1}, "top_k"), ({"top_k": 2.5}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"temperature": -0.1}, "temperature"), ({"cfg_scale": math.nan}, "cfg_scale"),
])
def test_process_logits_rejects_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        sk.process_logits(torch.randn(2, 1, 5), **kw)


def test_process_logits_rejects_bad_shapes():
    with pytest.raises(ValueError, match="doubled batch"):
        sk.process_logits(torch.randn(3, 1, 5), cfg_scale=2.0)
    with pytest.raises(ValueError, match="logits"):
        sk.process_logits(torch.randn(3, 5))
    with pytest.raises(ValueError, match="dtype"):
        sk.process_logits(torch.randn(1, 1, 5).to(torch.int32))


# ------------------------------------------------------------------ random cases

PROCESSING = {
    "plain": {},
    "cfg_temperature": {"cfg_scale": 3.0, "temperature": 0.7},
    "top_k_1": {"top_k": 1},
    "top_k_5_cfg": {"top_k": 5, "cfg_scale": 1.5},
    "top_k_vocab": {"top_k": 10_000},
    "top_p": {"top_p": 0.8},
    "top_k_top_p": {"top_k": 8, "top_p": 0.9, "temperature": 1.3, "cfg_scale": 2.0},
    "temperature_small": {"temperature": 1e-3},
    "temperature_zero": {"temperature": 0.0, "cfg_scale": 4.0},
}


def _raw_logits(rows, slots, vocab, gen, ties, cfg=False):
    """Random logits, 10 % masked to -inf (with CFG only in the cond half: -inf in both halves gives NaN)."""
    if ties:  # few distinct values: ties at the top-k threshold and in top-p's sorted order
        logits = torch.randint(0, 4, (rows, slots, vocab), generator=gen).float()
    else:
        logits = torch.randn(rows, slots, vocab, generator=gen) * 2.5
    masked = torch.rand(rows, slots, vocab, generator=gen) < 0.1
    masked[..., 0] = False
    if cfg:
        masked[rows // 2:] = False
    return logits.masked_fill(masked, -math.inf)


def chain_logits_case(batch=7, drafts=5, vocab=33, *, processing, source="logits", ties=False, seed=0,
                      dtype=torch.float32):
    """Raw target logits (doubled with CFG), draft logits / probs correlated with them, drafts drawn from q
    (source "none": mostly the target's argmax), ragged num_drafts."""
    gen = torch.Generator().manual_seed(seed)
    cfg = processing.get("cfg_scale") is not None
    rows = 2 * batch if cfg else batch
    logits = _raw_logits(rows, drafts + 1, vocab, gen, ties, cfg)
    kw = {k: v for k, v in processing.items()}
    case = {"logits": logits.to(dtype)}
    noise = torch.randn(rows, drafts, vocab, generator=gen) * 0.8
    if source in ("logits", "logits_cfg"):
        draft_logits = logits[:, :drafts] + noise
        if source == "logits" and cfg:
            draft_logits = draft_logits[:batch]  # an unguided draft: B rows, no CFG
        case["draft_logits"] = draft_logits.to(dtype)
        q = reference.verify_logits.draft_distribution(None, case["draft_logits"], batch, **kw_proc(kw))
    elif source == "probs":
        q = torch.softmax(torch.randn(batch, drafts, vocab, generator=gen) * 2, -1)
        q = q.masked_fill(torch.rand(batch, drafts, vocab, generator=gen) < 0.2, 0.0)
        q[..., 0] += 1e-3
        q = q / q.sum(-1, keepdim=True)
        case["draft_probs"] = q.to(dtype)
    else:
        q = None
    if q is not None:
        draft = torch.multinomial(q.float().reshape(-1, vocab), 1, generator=gen).view(batch, drafts)
    else:
        p = ref_process(case["logits"], **kw)
        draft = torch.where(torch.rand(batch, drafts, generator=gen) < 0.7, p[:, :drafts].argmax(-1),
                            torch.randint(0, vocab, (batch, drafts), generator=gen))
    case.update(draft=draft, u_accept=torch.rand(batch, drafts, generator=gen),
                u_sample=torch.rand(batch, generator=gen),
                num_drafts=torch.randint(0, drafts + 1, (batch,), generator=gen))
    return case, kw


def kw_proc(kw):
    return {"cfg_scale": kw.get("cfg_scale"), "temperature": kw.get("temperature", 1.0), "top_k": kw.get("top_k", 0),
            "top_p": kw.get("top_p", 1.0)}


def _to(case, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in case.items()}


def _interpreter_subset(backend, keep: bool):
    """The Triton interpreter runs every tl operation in Python (a top-k or top-p row is 32 counting passes): it
    gets a representative subset of the matrix, at small shapes."""
    if backend == "triton" and not keep:
        pytest.skip("covered for the Triton interpreter by a sibling case")


def _shape_for(backend):
    return {"batch": 3, "drafts": 3} if backend == "triton" else {}


def _check_chain(backend, case, kw, **method_kw):
    device = device_for(backend)
    got = sk.verify_chain_logits(**_to(case, device), **kw, **_to(method_kw, device), backend=backend)
    p = ref_process(case["logits"], **kw)
    q = reference.verify_logits.draft_distribution(case.get("draft_probs"), case.get("draft_logits"), p.shape[0],
                                                   **kw_proc(kw))
    want = sk.verify_chain(p, q, case["draft"], case["u_accept"], case["u_sample"], num_drafts=case["num_drafts"],
                           backend="reference", **method_kw)
    assert torch.equal(got[0].cpu(), want[0]), (got, want)
    assert torch.equal(got[1].cpu(), want[1]), (got, want)
    return want


SOURCES = ["logits", "logits_cfg", "probs", "none"]
PROCESSING_SOURCES = [(proc, source) for proc in PROCESSING for source in SOURCES
                      if source != "logits_cfg" or "cfg_scale" in PROCESSING[proc]]  # a doubled draft batch needs CFG


@pytest.mark.parametrize("processing, source", PROCESSING_SOURCES)
@pytest.mark.parametrize("ties", [False, True])
def test_chain_parity_processing(logits_backend, processing, source, ties):
    index = list(PROCESSING).index(processing)
    # One source per processing (rotating); "probs" stands in where the rotation picks logits_cfg without CFG.
    rotated = SOURCES[index % 4] if "cfg_scale" in PROCESSING[processing] or index % 4 != 1 else "probs"
    _interpreter_subset(logits_backend, source == rotated)
    seed = _seed(processing, source, ties)
    case, kw = chain_logits_case(processing=PROCESSING[processing], source=source, ties=ties, seed=seed,
                                 **_shape_for(logits_backend))
    _check_chain(logits_backend, case, kw)


CHAIN_METHODS = {  # every rule of the method table, plus settings that stress a rule harder
    **{name: (lambda cb, name=name: {"method": name, **method_kwargs(name, cb.shape[0], k=5)})
       for name in _methods.CHAIN_METHODS},
    "gsd_emb": lambda cb: {"method": "gsd", "embeddings": torch.nn.functional.normalize(cb, dim=-1),
                           "rank_window": (4, 3), "p_thr": 0.3},
    "lantern_delta": lambda cb: {"method": "lantern", "neighbors": reference.neighbor_table(cb, 5), "delta": 0.2},
    "lantern_lam": lambda cb: {"method": "lantern", "neighbors": reference.neighbor_table(cb, 5), "lam": 3.0},
    "typical_entropy": lambda cb: {"method": "typical", "epsilon": 0.5, "alpha": 0.9},
}


@pytest.mark.parametrize("method", list(CHAIN_METHODS))
@pytest.mark.parametrize("processing", ["plain", "top_k_5_cfg", "top_k_top_p"])
@pytest.mark.parametrize("source", ["logits", "probs", "none"])
def test_chain_parity_methods(logits_backend, method, processing, source):
    _interpreter_subset(logits_backend, processing != "top_k_top_p" and source == "probs")
    seed = _seed(method, processing, source)
    case, kw = chain_logits_case(processing=PROCESSING[processing], source=source, seed=seed,
                                 **_shape_for(logits_backend))
    _check_chain(logits_backend, case, kw, **CHAIN_METHODS[method](codebook(33, seed=seed)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_chain_parity_half_logits(logits_backend, dtype):
    case, kw = chain_logits_case(processing=PROCESSING["top_k_5_cfg"], source="logits", seed=5, dtype=dtype,
                                 **_shape_for(logits_backend))
    _check_chain(logits_backend, case, kw)


@pytest.mark.parametrize("vocab", [1, 2, 1000])
def test_chain_parity_vocab_sizes(logits_backend, vocab):
    for processing in ("plain",) if logits_backend == "triton" else ("plain", "top_k_5_cfg", "top_p"):
        case, kw = chain_logits_case(batch=3, drafts=3, vocab=vocab, processing=PROCESSING[processing], seed=vocab)
        _check_chain(logits_backend, case, kw)


def test_chain_all_accepted_and_zero_drafts(logits_backend):
    """Drafts equal to the target (q = p): every draft passes and the bonus row is sampled; num_drafts 0 is a
    plain sample from row 0."""
    case, kw = chain_logits_case(processing=PROCESSING["top_k_5_cfg"], source="logits_cfg", seed=11)
    case["draft_logits"] = case["logits"][:, :-1].clone()
    case["num_drafts"][:2] = 0
    case["num_drafts"][2:] = case["draft"].shape[1]
    want = _check_chain(logits_backend, case, kw)
    assert (want[0][:2] == 0).all() and (want[0][2:] > 0).any()


def test_guidance_scale_one(backend):
    """cfg_scale = 1 is no guidance: on B rows it is accepted as such, on 2B rows it uses the cond rows."""
    case, kw = chain_logits_case(processing={"cfg_scale": 3.0}, source="none", seed=8)
    case = _to(case, device_for(backend))
    batch = case["draft"].shape[0]
    args = {k: v for k, v in case.items() if k != "logits"}
    plain = sk.verify_chain_logits(case["logits"][:batch], **args, backend=backend)
    for logits, scale in ((case["logits"][:batch], 1.0), (case["logits"], 1.0)):
        got = sk.verify_chain_logits(logits, **args, cfg_scale=scale, backend=backend)
        assert torch.equal(got[0], plain[0]) and torch.equal(got[1], plain[1])
    with pytest.raises(ValueError, match="doubled batch"):
        sk.verify_chain_logits(case["logits"][:batch], **args, cfg_scale=3.0, backend=backend)
    with pytest.raises(ValueError, match="pass cfg_scale"):
        sk.verify_chain_logits(case["logits"], **args, backend=backend)


def test_chain_batch_invariance(logits_backend):
    case, kw = chain_logits_case(processing=PROCESSING["cfg_temperature"], source="logits", seed=4)
    device = device_for(logits_backend)
    full = sk.verify_chain_logits(**_to(case, device), **kw, backend=logits_backend)
    batch = case["draft"].shape[0]
    for b in (0, 3):
        row = {k: v[b:b + 1] for k, v in case.items() if k not in ("logits",)}
        row["logits"] = case["logits"][[b, b + batch]]
        alone = sk.verify_chain_logits(**_to(row, device), **kw, backend=logits_backend)
        assert alone[0].item() == full[0][b].item() and alone[1].item() == full[1][b].item()


# ------------------------------------------------------------------ trees


def tree_logits_case(batch=4, nodes=9, vocab=29, *, processing, with_q=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cfg = processing.get("cfg_scale") is not None
    parents, num_nodes = random_parents(batch, nodes, seed)
    logits = _raw_logits(2 * batch if cfg else batch, nodes, vocab, gen, ties=False, cfg=cfg)
    p = ref_process(logits, **processing)
    tokens = torch.where(torch.rand(batch, nodes, generator=gen) < 0.6, p.argmax(-1).gather(1, parents.clamp_min(0)),
                         torch.randint(0, vocab, (batch, nodes), generator=gen))
    tokens[:, 2] = tokens[:, 1]  # a duplicate sibling when both hang off the root
    case = {"logits": logits, "tree_tokens": tokens, "parents": parents,
            "u_accept": torch.rand(batch, nodes, generator=gen), "u_sample": torch.rand(batch, generator=gen),
            "num_nodes": num_nodes}
    if with_q:
        case["draft_probs"] = torch.softmax(torch.randn(batch, nodes, vocab, generator=gen) * 2, -1)
    return case


TREE_METHODS = {
    "exact": lambda cb: {},
    "lantern_delta": lambda cb: {"method": "lantern", "neighbors": reference.neighbor_table(cb, 4), "delta": 0.15},
    "lantern_lam": lambda cb: {"method": "lantern", "neighbors": reference.neighbor_table(cb, 4), "lam": 2.0},
}


@pytest.mark.parametrize("method", list(TREE_METHODS))
@pytest.mark.parametrize("processing", ["plain", "cfg_temperature", "top_k_5_cfg", "top_k_top_p", "top_k_1"])
@pytest.mark.parametrize("with_q", [True, False])
def test_tree_parity(logits_backend, method, processing, with_q):
    _interpreter_subset(logits_backend, processing in ("plain", "top_k_5_cfg"))
    seed = _seed(method, processing, with_q)
    kw = PROCESSING[processing]
    case = tree_logits_case(processing=kw, with_q=with_q, seed=seed,
                            **({"batch": 3, "nodes": 6} if logits_backend == "triton" else {}))
    method_kw = TREE_METHODS[method](codebook(29, seed=seed))
    device = device_for(logits_backend)
    got = sk.verify_tree_logits(**_to(case, device), **kw, **_to(method_kw, device), backend=logits_backend)
    p = ref_process(case["logits"], **kw)
    want = sk.verify_tree(p, case.get("draft_probs"), case["tree_tokens"], case["parents"], case["u_accept"],
                          case["u_sample"], num_nodes=case["num_nodes"], backend="reference", **method_kw)
    for g, w in zip(got, want):
        assert torch.equal(g.cpu(), w), (got, want)


# ------------------------------------------------------------------ row codes and validation


def _bad_chain(code, backend):
    case, kw = chain_logits_case(batch=4, drafts=3, vocab=12, processing={"top_k": 4}, source="probs", seed=3)
    case["num_drafts"][:] = 3
    extra = {}
    if code == 1:
        case["num_drafts"][1] = 4
    elif code == 2:
        case["draft"][1, 2] = 12
    elif code == 4:  # a token no other row uses, whose (shared) neighbour row is corrupted
        table = reference.neighbor_table(codebook(12), 3)
        token = next(t for t in range(1, 12) if t not in case["draft"][[0, 2, 3]])
        case["draft"][1, 0] = token
        table[token, 1] = -5
        extra = {"method": "lantern", "neighbors": table, "delta": 0.1}
    elif code == 5:
        case["u_accept"][1, 1] = 1.0 + 2.0**-23  # the float32 just above 1 (1.0 itself is valid, §3.1)
    elif code == 6:
        case["logits"][1, 0, 3] = math.nan
    return case, kw, extra


@pytest.mark.parametrize("code", [1, 2, 4, 5, 6])
def test_chain_bad_rows_are_reported(logits_backend, code):
    """validate=False: the bad row comes back as next_token = -code (nothing read out of bounds), the other rows
    are verified as usual; by default a ValueError names the row."""
    backend = logits_backend
    case, kw, extra = _bad_chain(code, backend)
    device = device_for(backend)
    accept_len, next_token = sk.verify_chain_logits(**_to(case, device), **kw, **_to(extra, device),
                                                    backend=backend, validate=False)
    assert next_token[1].item() == -code and accept_len[1].item() == 0
    good = [0, 2, 3]
    p = ref_process(case["logits"][good], **kw)
    want = reference.verify_chain(p, case["draft_probs"][good], case["draft"][good], case["u_accept"][good],
                                  case["u_sample"][good], num_drafts=case["num_drafts"][good], **extra)
    assert torch.equal(next_token.cpu()[good], want[1]) and torch.equal(accept_len.cpu()[good], want[0])
    with raises_bad_row(match="row 1"):
        sk.verify_chain_logits(**_to(case, device), **kw, **_to(extra, device), backend=backend)
    with raises_bad_row():
        sk.verify_chain_logits(**_to(case, device), **kw, **_to(extra, device), backend=backend, validate=True)


def test_chain_bad_draft_probs_row(logits_backend):
    backend = logits_backend
    case, kw, _ = _bad_chain(0, backend)
    case["draft_probs"][2, 0, 5] = -0.5
    case["draft"][2, 0] = 5
    _, next_token = sk.verify_chain_logits(**_to(case, device_for(backend)), **kw, backend=backend, validate=False)
    assert next_token[2].item() == -6


@pytest.mark.parametrize("code", [1, 2, 3, 5, 6])
def test_tree_bad_rows_are_reported(logits_backend, code):
    backend = logits_backend
    case = tree_logits_case(batch=3, processing={}, seed=2)
    case["num_nodes"][:] = 9
    if code == 1:
        case["num_nodes"][1] = 0
    elif code == 2:
        case["tree_tokens"][1, 4] = -1
    elif code == 3:
        case["parents"][1, 5] = 5
    elif code == 5:
        case["u_sample"][1] = math.nan
    elif code == 6:
        case["logits"][1, 0] = -math.inf
    device = device_for(backend)
    accepted, accept_len, next_token = sk.verify_tree_logits(**_to(case, device), backend=backend, validate=False)
    assert next_token[1].item() == -code and accept_len[1].item() == 0 and (accepted[1] == -1).all()
    with raises_bad_row(match="row 1"):
        sk.verify_tree_logits(**_to(case, device), backend=backend)


@pytest.mark.parametrize("change, match", [
    (lambda c: c.update(draft_probs=torch.rand(7, 5, 33)), "at most one"),
    (lambda c: c.update(draft=c["draft"][:, :3]), "draft"),
    (lambda c: c.update(u_accept=c["u_accept"].double()), "u_accept"),
    (lambda c: c.update(logits=c["logits"][:-1]), "doubled batch"),
    (lambda c: c.update(draft_logits=c["draft_logits"][:3]), "draft_logits"),
    (lambda c: c.update(method="nope"), "method"),
    (lambda c: c.update(method="lantern", delta=0.1), "neighbors"),
    (lambda c: c.update(top_k=-2), "top_k"),
    (lambda c: c.update(top_p=0.0), "top_p"),
])
def test_chain_rejects_bad_arguments(change, match):
    case, kw = chain_logits_case(processing={"cfg_scale": 2.0}, source="logits", seed=0)
    case.update(kw)
    change(case)
    with pytest.raises(ValueError, match=match):
        sk.verify_chain_logits(**case)


def test_tree_rejects_bad_arguments():
    case = tree_logits_case(processing={}, seed=0)
    with pytest.raises(ValueError, match="parents"):
        sk.verify_tree_logits(**{**case, "parents": case["parents"][:, :4]})
    with pytest.raises(ValueError, match="method"):
        sk.verify_tree_logits(**case, method="gsd")
    with pytest.raises(ValueError, match="draft_probs"):
        sk.verify_tree_logits(**{**case, "draft_probs": case["draft_probs"][:, :, :5]})


def test_op_rejects_wrong_params_length():
    case, kw = chain_logits_case(processing={}, source="none", seed=0)
    args = (case["logits"], None, None, case["draft"], case["u_accept"], case["u_sample"], case["num_drafts"], None,
            1.0, 0, 1.0, 2, reference.neighbor_table(codebook(33), 3), None, [0.1])
    with pytest.raises(RuntimeError, match="params"):
        torch.ops.specdec_kernels.verify_chain_logits(*args)


# ------------------------------------------------------------------ registration


def _op_samples():
    case, kw = chain_logits_case(batch=3, drafts=2, vocab=10, processing={"cfg_scale": 2.0, "top_k": 4},
                                 source="logits_cfg", seed=1)
    chain = (case["logits"], case["draft_logits"], None, case["draft"], case["u_accept"], case["u_sample"],
             case["num_drafts"], 2.0, 0.8, 4, 0.9, 0, None, None, [])
    tree = tree_logits_case(batch=2, nodes=5, vocab=10, processing={}, seed=1)
    tree_args = (tree["logits"], tree["draft_probs"], tree["tree_tokens"], tree["parents"], tree["u_accept"],
                 tree["u_sample"], tree["num_nodes"], None, 1.0, 0, 1.0, 0, None, [])
    return [("verify_chain_logits", chain), ("verify_tree_logits", tree_args)]


@pytest.mark.skipif("cpu" not in sk.available_backends(), reason="C++ extension not built")
@pytest.mark.parametrize("name, args", _op_samples(), ids=["chain", "tree"])
def test_opcheck(name, args):
    torch.library.opcheck(getattr(torch.ops.specdec_kernels, name).default, args)


@pytest.mark.skipif("triton" not in sk.available_backends(), reason="Triton not usable here")
@pytest.mark.parametrize("name, args", _op_samples(), ids=["chain", "tree"])
def test_opcheck_triton(name, args):
    """The Triton logits ops are registered ops of the same schemas (routed by ops/_dispatch.py): opcheck, and the
    same outputs as the C++ ops where those are built."""
    from specdec_kernels.triton._registry import OPS

    device = device_for("triton")
    on_device = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(OPS[name], on_device)
    if "cpu" in sk.available_backends():
        for got, want in zip(OPS[name](*on_device), getattr(torch.ops.specdec_kernels, name)(*args)):
            assert torch.equal(got.cpu(), want)


@pytest.mark.skipif("triton" not in sk.available_backends() or not TRITON_INTERPRETED,
                    reason="Triton not usable here, or a GPU run that compiles every kernel for real")
@pytest.mark.parametrize("op", ["verify_chain_logits", "verify_tree_logits"])
def test_triton_compiles_for_sm90(op):
    check_triton_compiles_for_sm90(op)


@pytest.mark.skipif("cpu" not in sk.available_backends(), reason="C++ extension not built")
def test_torch_compile_fullgraph():
    case, kw = chain_logits_case(batch=3, drafts=2, vocab=10, processing={"cfg_scale": 2.0, "top_k": 4},
                                 source="logits", seed=2)

    def step(logits, draft_logits, draft, u_accept, u_sample, num_drafts):
        return sk.verify_chain_logits(logits, draft, u_accept, u_sample, num_drafts=num_drafts,
                                      draft_logits=draft_logits, **kw, backend="cpu", validate=False)

    args = (case["logits"], case["draft_logits"], case["draft"], case["u_accept"], case["u_sample"],
            case["num_drafts"])
    compiled = torch.compile(step, fullgraph=True, backend="eager")
    got, want = compiled(*args), step(*args)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ------------------------------------------------------------------ distribution preservation


@pytest.mark.backends("cpu", "cuda")  # statistical tests run on the compiled backends (2e5 rows)
@pytest.mark.parametrize("source", ["logits", "none"])
def test_exact_from_logits_preserves_the_processed_target(backend, source):
    """Chi-square: the first emitted token follows process_logits(target row 0) (CFG, top-k and top-p on), with
    drafts from the processed draft logits or fixed point-mass drafts. N = 2e5 trials, one per batch row."""
    n, vocab = 200_000, 8
    gen = torch.Generator().manual_seed(99)
    kw = {"cfg_scale": 2.0, "temperature": 0.9, "top_k": 6, "top_p": 0.95}
    rows = torch.randn(2, 2, vocab, generator=gen) * 1.5
    logits = rows[:, None].expand(2, n, 2, vocab).reshape(2 * n, 2, vocab).contiguous()
    target = ref_process(rows, **kw)[0, 0]
    draft_rows = torch.randn(1, 1, vocab, generator=gen) * 1.5
    case = {"logits": logits, "u_accept": torch.rand(n, 1, generator=gen), "u_sample": torch.rand(n, generator=gen)}
    if source == "logits":
        q = ref_process(draft_rows, **{**kw, "cfg_scale": None})[0, 0]
        case["draft_logits"] = draft_rows.expand(n, 1, vocab).contiguous()
        case["draft"] = torch.multinomial(q, n, replacement=True, generator=gen)[:, None]
    else:
        case["draft"] = torch.full((n, 1), int(target.argmax()), dtype=torch.int64)
    device = device_for(backend)
    a, t = sk.verify_chain_logits(**_to(case, device), **kw, backend=backend)
    first = torch.where(a.cpu() > 0, case["draft"][:, 0], t.cpu())
    assert chi_square_pvalue(histogram(first, vocab), target) > ALPHA
