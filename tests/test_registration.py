"""Every registered op (the C++ ops and the Triton backend's ops) passes torch.library.opcheck and runs inside
torch.compile(fullgraph=True), on every device this run has: the C++ ops on the CPU and, where the CUDA kernels are
built, on the GPU; the Triton ops where Triton runs (CPU tensors under the interpreter, CUDA tensors compiled)."""

import functools

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels._backend import torch_op
from specdec_kernels._methods import METHOD_CODES
from specdec_kernels.triton._registry import OPS as TRITON_OPS
from specdec_kernels import reference

from _backends import device_for, to_device
from _inputs import chain_case, codebook, tree_case

pytestmark = pytest.mark.skipif("cpu" not in sk.available_backends(), reason="C++ extension not built")


def _samples(device="cpu"):
    """(op name, schema-order args) samples covering every op, method and optional input."""
    cb = codebook(23).to(device)
    table = reference.neighbor_table(cb.cpu(), 4).to(device)
    emb = torch.nn.functional.normalize(cb, dim=-1)
    out = [("neighbor_table", (cb, 4, True)), ("neighbor_table", (cb, 22, False))]
    p = torch.softmax(torch.randn(5, 23), -1).to(device)
    x = torch.randint(0, 23, (5,)).to(device)
    out += [("lantern_relaxed_mass", (p, x, table, 0.1, None)), ("lantern_relaxed_mass", (p, x, table, None, 3.0))]
    out += [("gsd_group_mass", (p, None, x, None, 7, 6, 0.15, 0.5)), ("gsd_group_mass", (p, p, x, emb, 2, 3, 0.1, 0.4))]
    for with_q in (True, False):
        c = chain_case(batch=4, drafts=3, vocab=23, with_q=with_q, device=device)
        base = (c["p"], c["q"], c["draft"], c["u_accept"], c["u_sample"], c["num_drafts"])
        out.append(("verify_chain", base + (METHOD_CODES["exact"], None, None, [])))
        out.append(("verify_chain", base + (METHOD_CODES["gsd"], None, emb, [7.0, 6.0, 0.15, 0.5])))
        out.append(("verify_chain", base + (METHOD_CODES["lantern"], table, None, [0.0, 0.2])))
        t = tree_case(batch=3, nodes=6, vocab=23, with_q=with_q, device=device)
        tb = (t["p"], t["q"], t["tree_tokens"], t["parents"], t["u_accept"], t["u_sample"], t["num_nodes"])
        out.append(("verify_tree", tb + (METHOD_CODES["exact"], None, [])))
        out.append(("verify_tree", tb + (METHOD_CODES["lantern"], table, [1.0, 2.0])))
        out.append(("build_tree", (t["parents"], t["num_nodes"])))
    n, d, k = 6, 3, 4
    g = [torch.randn(n, d), torch.randn(n, d), torch.rand(n, d) + 0.5, torch.randn(n, d), torch.rand(n, d) + 0.5,
         torch.zeros(n, d), torch.zeros(n, d), torch.rand(n), torch.rand(n, k, d), torch.rand(n, k)]
    out.append(("cspd_verify", tuple(t.to(device) for t in g) + (1.0,)))
    return out


SAMPLES = _samples()
SAMPLE_IDS = [f"{n}-{i}" for i, (n, _) in enumerate(SAMPLES)]
#: Where the C++ ops run in this run: the CPU, and the GPU when the CUDA kernels are built and one is visible.
OP_DEVICES = ["cpu"] + (["cuda"] if "cuda" in sk.available_backends() else [])
#: Where the Triton ops take their inputs: CPU tensors under the interpreter, CUDA tensors when compiled.
TRITON_DEVICE = device_for("triton") if "triton" in sk.available_backends() else "cpu"


@functools.lru_cache(maxsize=None)
def _samples_on(device: str):
    """The same samples on ``device`` (built on first use, so that collecting the tests never starts CUDA)."""
    return SAMPLES if device == "cpu" else [(n, to_device(a, device)) for n, a in SAMPLES]


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("index", range(len(SAMPLES)), ids=SAMPLE_IDS)
def test_opcheck(index, device):
    name, args = _samples_on(device)[index]
    torch.library.opcheck(torch_op(name), args)


@pytest.mark.skipif("triton" not in sk.available_backends(), reason="Triton not usable here")
@pytest.mark.parametrize("index", range(len(SAMPLES)), ids=SAMPLE_IDS)
def test_opcheck_triton(index):
    """The Triton backend's registered ops: same schemas, same fakes, same outputs as the C++ CPU ops."""
    name, args = _samples_on(TRITON_DEVICE)[index]
    torch.library.opcheck(TRITON_OPS[name], args)
    got, want = to_device(TRITON_OPS[name](*args), "cpu"), torch_op(name)(*SAMPLES[index][1])
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert torch.allclose(g.float(), w.float(), rtol=1e-5, atol=1e-6) if g.is_floating_point() else \
            torch.equal(g, w)


def test_wrong_params_length_is_an_error():
    c = chain_case(batch=2, drafts=2, vocab=7)
    base = (c["p"], c["q"], c["draft"], c["u_accept"], c["u_sample"], c["num_drafts"])
    with pytest.raises(ValueError, match="params for method 'gsd' must have 4 entries"):
        TRITON_OPS["verify_chain"](*to_device(base, TRITON_DEVICE), METHOD_CODES["gsd"], None, None, [1.0])
    with pytest.raises(RuntimeError):
        torch_op("verify_chain")(*base, METHOD_CODES["gsd"], None, None, [1.0])


@pytest.mark.parametrize("name", ["verify_chain", "verify_tree", "lantern_relaxed_mass", "gsd_group_mass",
                                  "neighbor_table", "cspd_verify"])
def test_torch_compile_fullgraph(name):
    args = next(a for n, a in SAMPLES if n == name)
    op = torch_op(name)
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def fn(*tensor_args):
        full = list(args)
        for i, t in zip(tensors, tensor_args):
            full[i] = t
        return op(*full)

    compiled = torch.compile(fn, fullgraph=True, backend="inductor")
    eager = fn(*[args[i] for i in tensors])
    got = compiled(*[args[i] for i in tensors])
    as_tuple = lambda out: out if isinstance(out, (tuple, list)) else (out,)  # noqa: E731
    for g, e in zip(as_tuple(got), as_tuple(eager)):
        assert torch.equal(g, e)


@pytest.mark.parametrize("validate", [None, True, False])
@pytest.mark.parametrize("backend", [b for b in ("cpu", "triton", "cuda") if b in sk.available_backends()])
def test_public_wrapper_compiles_fullgraph(backend, validate):
    """The public wrapper (validation included, every level) also traces without graph breaks."""
    c = chain_case(batch=4, drafts=3, vocab=23, with_q=True)
    want = sk.verify_chain(**c, backend="reference")
    c = to_device(c, device_for(backend))

    @torch.compile(fullgraph=True)
    def step(p, q, draft, u_accept, u_sample, num_drafts):
        return sk.verify_chain(p, q, draft, u_accept, u_sample, num_drafts=num_drafts, backend=backend,
                               validate=validate)

    got = to_device(step(c["p"], c["q"], c["draft"], c["u_accept"], c["u_sample"], c["num_drafts"]), "cpu")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
