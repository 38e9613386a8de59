"""jacobi_step: verification and the Jacobi refresh in one pass from raw logits.

- every kernel backend equals the reference token for token (rules from the method table, ragged rows, CFG on / off,
  top-k / top-p, independent and coupled refresh, random and caller-filled inits, rows not updated);
- the reference equals the composition it replaces (process_logits, verify_chain, then the eager refresh);
- the decoding loop gives the same tokens with the fused step as with the eager one (SJD, GSD, MC-SJD, both inits);
- the coupled refresh keeps each new draft's marginal at q_new (chi-square), and keeps old drafts more often than
  an independent draw would.
"""

import pytest
import torch
from _backends import KERNEL_BACKENDS, TRITON_INTERPRETED
from stats import ALPHA, chi_square_pvalue, histogram

import specdec_kernels as sk
from specdec_kernels import _methods
from specdec_kernels.reference import inverse_cdf

from specdec.decoding import SamplingConfig, generate, methods
from specdec.decoding.toy import ToyARModel

VOCAB = 24


def _rule_kwargs(name: str, vocab: int):
    """Keyword arguments that exercise rule ``name`` (tables built from a random codebook)."""
    codebook = torch.randn(vocab, 4, generator=torch.Generator().manual_seed(1))
    if name == "lantern":
        return {"neighbors": sk.neighbor_table(codebook, 3), "delta": 0.2}
    if name == "gsd":
        return {"rank_window": (3, 2), "embeddings": torch.nn.functional.normalize(codebook, dim=-1)}
    return {}


def _case(seed, batch=5, width=4, vocab=VOCAB, cfg=False):
    g = torch.Generator().manual_seed(seed)
    rows = 2 * batch if cfg else batch
    return dict(
        logits=torch.randn(rows, width + 1, vocab, generator=g) * 2.5,
        window=torch.randint(0, vocab, (batch, width), generator=g),
        q=torch.softmax(torch.randn(batch, width, vocab, generator=g) * 2, -1),
        u_accept=torch.rand(batch, width, generator=g), u_sample=torch.rand(batch, generator=g),
        u_draft=torch.rand(batch, width, generator=g), u_keep=torch.rand(batch, width, generator=g),
        u_init=torch.rand(batch, width, generator=g),
        num_drafts=torch.randint(0, width + 1, (batch,), generator=g),
        update=torch.rand(batch, generator=g) < 0.8,
    )


CASES = [  # (rule, cfg, top_k, top_p, coupled, random init, one-hot q)
    (rule, cfg, top_k, top_p, coupled, init, onehot)
    for rule in _methods.CHAIN_METHODS
    for (cfg, top_k, top_p, coupled, init, onehot) in [
        (False, 0, 1.0, False, True, False), (True, 10, 1.0, True, True, False), (True, 0, 0.8, True, False, True),
        (False, 6, 0.9, False, False, True)]
]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("rule,cfg,top_k,top_p,coupled,init,onehot", CASES)
def test_backend_matches_reference(backend, rule, cfg, top_k, top_p, coupled, init, onehot):
    if backend == "triton" and "jacobi_step" not in _triton_ops():
        pytest.skip("no Triton jacobi_step kernel in this build")
    if TRITON_INTERPRETED and backend == "triton" and (top_p < 1.0 or rule == "gsd"):
        pytest.skip("covered for the Triton interpreter by sibling cases")
    c = _case(hash((rule, cfg, top_k, coupled)) % 1000, cfg=cfg)
    kwargs = dict(u_keep=c["u_keep"] if coupled else None, u_init=c["u_init"] if init else None,
                  num_drafts=c["num_drafts"], update=c["update"], cfg_scale=2.0 if cfg else None, top_k=top_k,
                  top_p=top_p, method=rule, **_rule_kwargs(rule, VOCAB))
    q = None if onehot else c["q"]
    args = (c["logits"], c["window"], q, c["u_accept"], c["u_sample"], c["u_draft"])
    want = sk.jacobi_step(*args, backend="reference", **kwargs)
    got = sk.jacobi_step(*(t.to(_device(backend)) if t is not None else None for t in args), backend=backend,
                         **{k: (v.to(_device(backend)) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()})
    for name, a, b in zip(want._fields, want, got):
        assert torch.equal(a, b.cpu()), (name, a, b)
    assert (want.accept_len <= c["num_drafts"]).all()


def _device(backend):
    from _backends import device_for

    return device_for(backend)


def _triton_ops():
    from specdec_kernels.triton._registry import OPS

    return OPS


def _eager_refresh(p, window, q, accept_len, num_drafts, u_draft, u_init):
    """The refresh as the decoding loop computed it before the fused step: gather the target rows a+1.., sample,
    then fresh random inits with one-hot q."""
    batch, width = window.shape
    vocab = p.shape[-1]
    j = torch.arange(width)
    src = (accept_len[:, None] + 1 + j).clamp_max(width)
    refreshed = j < (num_drafts - accept_len)[:, None]
    rows = p.gather(1, src[:, :, None].expand(-1, -1, vocab))
    drawn = sk.sample_from_probs(rows, u_draft)
    init = (u_init * vocab).long().clamp_max(vocab - 1)
    new_window = torch.where(refreshed, drawn, init)
    new_q = torch.where(refreshed[:, :, None], rows, torch.nn.functional.one_hot(init, vocab).float())
    return new_window, new_q


@pytest.mark.parametrize("cfg,top_k,top_p", [(False, 0, 1.0), (True, 8, 1.0), (True, 0, 0.7)])
@pytest.mark.parametrize("rule", _methods.CHAIN_METHODS)
def test_reference_equals_process_verify_refresh(rule, cfg, top_k, top_p):
    c = _case(7, cfg=cfg)
    kwargs = _rule_kwargs(rule, VOCAB)
    cfg_scale = 3.0 if cfg else None
    out = sk.jacobi_step(c["logits"], c["window"], c["q"], c["u_accept"], c["u_sample"], c["u_draft"],
                         u_init=c["u_init"], num_drafts=c["num_drafts"], cfg_scale=cfg_scale, top_k=top_k,
                         top_p=top_p, method=rule, backend="reference", **kwargs)
    p = sk.process_logits(c["logits"], cfg_scale=cfg_scale, top_k=top_k, top_p=top_p)
    accept_len, next_token = sk.verify_chain(p, c["q"], c["window"], c["u_accept"], c["u_sample"],
                                             num_drafts=c["num_drafts"], method=rule, backend="reference", **kwargs)
    window, q = _eager_refresh(p, c["window"], c["q"], accept_len, c["num_drafts"], c["u_draft"], c["u_init"])
    assert torch.equal(out.accept_len, accept_len) and torch.equal(out.next_token, next_token)
    assert torch.equal(out.window, window)
    assert torch.equal(out.q, q)
    assert torch.equal(out.first_init, c["num_drafts"] - accept_len)


TARGET = ToyARModel(vocab_size=10, num_tokens=9, seed=3)


@pytest.mark.parametrize("factory", [
    lambda fused: methods.SJD(window=5, fused=fused),
    lambda fused: methods.SJD(window=4, init="repeat_left", fused=fused),
    lambda fused: methods.MCSJD(window=5, fused=fused),
    lambda fused: methods.GSD(torch.randn(10, 3, generator=torch.Generator().manual_seed(0)), rank_window=(2, 2),
                              window=5, fused=fused),
], ids=["sjd", "sjd_repeat_left", "mc_sjd", "gsd"])
@pytest.mark.parametrize("sampling", [SamplingConfig(cfg_scale=2.0, temperature=0.9, top_k=6),
                                      SamplingConfig(temperature=1.0, top_p=0.8)], ids=["cfg_topk", "topp"])
def test_fused_loop_equals_eager_loop(factory, sampling):
    classes = torch.arange(12) % 3
    fused = generate(TARGET, classes, factory(True), sampling=sampling, seed=11)
    eager = generate(TARGET, classes, factory(False), sampling=sampling, seed=11)
    assert torch.equal(fused.tokens, eager.tokens)
    assert fused.metrics.target_forwards == eager.metrics.target_forwards


def test_coupled_refresh_keeps_the_target_marginal():
    """A draft rejected at 0 (p(x) = 0) makes entry 0 the refresh of old position 1, whose old draft x ~ q_old:
    the new draft must follow the processed target row 1, whatever q_old is, and keep x more often than chance."""
    n, width, vocab = 60_000, 2, 6
    g = torch.Generator().manual_seed(3)
    row1 = torch.tensor([0.5, -1.0, 1.5, 0.2, -0.3, 0.9])
    logits = torch.stack([torch.full((vocab,), 0.0), row1, torch.zeros(vocab)])[None].repeat(n, 1, 1)
    logits[:, 0, 0] = -torch.inf  # draft 0 (token 0) has p = 0: always rejected
    q_old = torch.softmax(torch.tensor([2.0, 0.0, -1.0, 1.0, 0.5, -2.0]), -1)
    x_old = inverse_cdf(q_old.expand(n, vocab), torch.rand(n, generator=g))
    window = torch.stack([torch.zeros(n, dtype=torch.int64), x_old], 1)
    q = torch.stack([torch.full((vocab,), 1.0 / vocab), q_old])[None].repeat(n, 1, 1)
    out = sk.jacobi_step(logits, window, q, torch.rand(n, width, generator=g), torch.rand(n, generator=g),
                         torch.rand(n, width, generator=g), u_keep=torch.rand(n, width, generator=g),
                         u_init=torch.rand(n, width, generator=g))
    assert (out.accept_len == 0).all()
    target = torch.softmax(row1.double(), -1)
    assert chi_square_pvalue(histogram(out.window[:, 0], vocab), target) > ALPHA
    kept = (out.window[:, 0] == x_old).double().mean().item()
    independent = float((q_old.double() * target).sum())
    maximal = float(torch.minimum(q_old.double(), target).sum())  # the coupling's agreement: 1 - TV
    assert abs(kept - maximal) < 0.01 and kept > independent + 0.1


def test_method_table_matches_the_kernels():
    """The C++ traits table (methods.h, through the method_info op) and the Python one agree, code by code,
    including what an unknown code reports."""
    if not hasattr(torch.ops.specdec_kernels, "method_info"):
        pytest.skip("C++ extension not built")
    for code in range(-1, _methods.TYPICAL_CODE + 3):
        name, traits = torch.ops.specdec_kernels.method_info(code)
        method = _methods.BY_CODE.get(code)
        assert name == (method.name if method else "unknown")
        assert list(traits) == _methods.traits_vector(method)


@pytest.mark.parametrize("backend", ["cpu"])
def test_unknown_method_code_is_a_row_error(backend):
    """A kernel reached with a code it does not know (past the wrappers' checks) reports, never guesses a rule."""
    if backend not in sk.available_backends():
        pytest.skip(f"no {backend} backend")
    c = _case(1)
    with pytest.raises(RuntimeError, match="not a chain verification rule"):
        torch.ops.specdec_kernels.verify_chain(sk.process_logits(c["logits"]), None, c["window"], c["u_accept"],
                                               c["u_sample"], c["num_drafts"], 9, None, None, [])
