"""vLLM v1 rejection-sampler layout: flattened drafts with cu_num_draft_tokens in, [B, max_spec_len + 1] int32
padded with -1 out; equal to padded verify_chain on the same uniforms for exact, GSD and LANTERN. The
RejectionSampler-shaped class on vLLM's fields (duck-typed metadata, combined logits, per-request settings):
equal to the free function, to padded verify_chain row by row, greedy requests by argmax, seeded requests the
same in any batch, the bonus token distributed as p."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import specdec_kernels as sk
from stats import ALPHA, chi_square_pvalue
from specdec import SpeculativeVerifier
from specdec.adapters.vllm import PLACEHOLDER_TOKEN_ID, SpeculativeRejectionSampler, rejection_sample
from specdec.verifier import sampling_probs as process_logits

V = 48
NUM_DRAFTS = [3, 0, 5, 1, 5]


def _flat(seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch, num_tokens = len(NUM_DRAFTS), sum(NUM_DRAFTS)
    cu = torch.tensor(NUM_DRAFTS).cumsum(0).to(torch.int32)
    return dict(
        draft_token_ids=torch.randint(0, V, (num_tokens,), generator=gen, dtype=torch.int32),
        cu_num_draft_tokens=cu,
        target_logits=2 * torch.randn(num_tokens, V, generator=gen),
        bonus_logits=2 * torch.randn(batch, V, generator=gen),
        draft_probs=torch.softmax(torch.randn(num_tokens, V, generator=gen), -1),
        uniform_probs=torch.rand(num_tokens, generator=gen),
        uniform_bonus=torch.rand(batch, generator=gen),
    )


def _padded(inputs, verifier, use_q):
    """The same batch in verify_chain's padded layout, built by a plain Python loop."""
    batch, width = len(NUM_DRAFTS), max(NUM_DRAFTS)
    p = torch.zeros(batch, width + 1, V)
    q = torch.zeros(batch, width, V)
    drafts = torch.zeros(batch, width, dtype=torch.int64)
    u_accept = torch.zeros(batch, width)
    start = 0
    target = verifier.process(inputs["target_logits"])
    bonus = verifier.process(inputs["bonus_logits"])
    for b, n in enumerate(NUM_DRAFTS):
        p[b, :n] = target[start:start + n]
        p[b, n:] = bonus[b]
        q[b, :n] = inputs["draft_probs"][start:start + n]
        drafts[b, :n] = inputs["draft_token_ids"][start:start + n].long()
        u_accept[b, :n] = inputs["uniform_probs"][start:start + n]
        start += n
    return p, (q if use_q else None), drafts, u_accept


def _codebook():
    return torch.randn(V, 8, generator=torch.Generator().manual_seed(11))


@pytest.mark.parametrize("method", ["exact", "gsd", "lantern"])
@pytest.mark.parametrize("use_q", [True, False])
def test_equals_padded_verify_chain(method, use_q):
    inputs = _flat()
    codebook = None if method == "exact" else _codebook()
    verifier = SpeculativeVerifier(method, codebook=codebook, temperature=0.9, top_k=30)
    kwargs = {k: v for k, v in inputs.items() if k != "draft_probs" or use_q}
    out = rejection_sample(verifier=verifier, **kwargs)
    width = max(NUM_DRAFTS)
    assert out.dtype == torch.int32 and out.shape == (len(NUM_DRAFTS), width + 1)
    p, q, drafts, u_accept = _padded(inputs, verifier, use_q)
    accept_len, next_token = sk.verify_chain(p, q, drafts, u_accept, inputs["uniform_bonus"],
                                             num_drafts=torch.tensor(NUM_DRAFTS), **verifier.kernel_kwargs)
    for b in range(len(NUM_DRAFTS)):
        a = int(accept_len[b])
        expected = drafts[b, :a].tolist() + [int(next_token[b])] + [PLACEHOLDER_TOKEN_ID] * (width - a)
        assert out[b].tolist() == expected


def test_built_from_method_name_and_codebook():
    inputs = _flat(1)
    codebook = _codebook()
    out = rejection_sample(method="lantern", codebook=codebook, delta=0.2, **inputs)
    verifier = SpeculativeVerifier("lantern", codebook=codebook, delta=0.2)
    assert torch.equal(out, rejection_sample(verifier=verifier, **inputs))
    table = sk.neighbor_table(codebook, V // 16)
    assert torch.equal(verifier.kernel_kwargs["neighbors"], table)
    gsd = rejection_sample(method="gsd", codebook=codebook, **inputs)
    ref = rejection_sample(verifier=SpeculativeVerifier("gsd", embeddings=F.normalize(codebook, dim=-1),
                                                        rank_window=(1, 1)), **inputs)
    assert torch.equal(gsd, ref)


def test_bonus_token_ids_sampled_outside_are_emitted_when_all_drafts_pass():
    inputs = _flat(2)
    inputs.pop("bonus_logits")
    # Target rows one-hot on the drafts: every draft passes, so every request ends with its bonus token.
    inputs["target_logits"] = torch.full_like(inputs["target_logits"], -30.0)
    inputs["target_logits"].scatter_(1, inputs["draft_token_ids"].long()[:, None], 30.0)
    bonus = torch.arange(len(NUM_DRAFTS), dtype=torch.int64)[:, None] + 7
    out = rejection_sample(bonus_token_ids=bonus, **inputs)
    start = 0
    for b, n in enumerate(NUM_DRAFTS):
        assert out[b, :n].tolist() == inputs["draft_token_ids"][start:start + n].tolist()
        assert int(out[b, n]) == int(bonus[b])
        assert (out[b, n + 1:] == PLACEHOLDER_TOKEN_ID).all()
        start += n


def test_target_probs_and_max_spec_len_and_generator():
    inputs = _flat(3)
    verifier = SpeculativeVerifier("exact")
    probs = dict(inputs, target_probs=verifier.process(inputs["target_logits"]),
                 bonus_probs=verifier.process(inputs["bonus_logits"]))
    del probs["target_logits"], probs["bonus_logits"]
    assert torch.equal(rejection_sample(**probs), rejection_sample(**inputs))
    wide = rejection_sample(max_spec_len=8, **inputs)
    assert wide.shape == (len(NUM_DRAFTS), 9) and (wide[:, 6:] == PLACEHOLDER_TOKEN_ID).all()
    no_u = {k: v for k, v in inputs.items() if not k.startswith("uniform")}
    a = rejection_sample(generator=torch.Generator().manual_seed(0), **no_u)
    b = rejection_sample(generator=torch.Generator().manual_seed(0), **no_u)
    assert torch.equal(a, b)


def test_bad_layout_is_a_clear_error():
    inputs = _flat()
    with pytest.raises(ValueError, match="cu_num_draft_tokens"):
        rejection_sample(**dict(inputs, cu_num_draft_tokens=torch.tensor([3, 3, 8, 9, 13], dtype=torch.int32)))
    with pytest.raises(ValueError, match="max_spec_len"):
        rejection_sample(max_spec_len=2, **inputs)
    with pytest.raises(ValueError, match="bonus"):
        rejection_sample(bonus_token_ids=torch.zeros(5, 1, dtype=torch.int64), **inputs)
    with pytest.raises(ValueError, match="draft_probs"):
        rejection_sample(**dict(inputs, draft_probs=inputs["draft_probs"][:3]))


# -- the RejectionSampler-shaped class -----------------------------------------------------------------------


def _vllm_batch(seed=0, num_drafts=NUM_DRAFTS):
    """vLLM's combined layout: request b's draft rows, then its bonus row, in one [num_tokens + B, V] tensor."""
    inputs = _flat(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    batch, num_tokens = len(num_drafts), sum(num_drafts)
    logits = 2 * torch.randn(num_tokens + batch, V, generator=gen)
    target_index, bonus_index, row = [], [], 0
    for n in num_drafts:
        target_index += list(range(row, row + n))
        bonus_index.append(row + n)
        row += n + 1
    metadata = SimpleNamespace(
        draft_token_ids=inputs["draft_token_ids"][:num_tokens], num_draft_tokens=list(num_drafts),
        cu_num_draft_tokens=torch.tensor(num_drafts).cumsum(0).to(torch.int32), max_spec_len=max(num_drafts),
        target_logits_indices=torch.tensor(target_index, dtype=torch.int32),
        bonus_logits_indices=torch.tensor(bonus_index, dtype=torch.int32))
    return metadata, logits, inputs


def _sampling_metadata(temperature=None, top_k=None, top_p=None, generators=None):
    return SimpleNamespace(temperature=temperature, all_greedy=temperature is None, top_k=top_k, top_p=top_p,
                           generators=generators or {})


@pytest.mark.parametrize("method", ["exact", "gsd", "lantern"])
@pytest.mark.parametrize("use_q", [True, False])
def test_sampler_equals_the_free_function(method, use_q):
    metadata, logits, inputs = _vllm_batch()
    codebook = None if method == "exact" else _codebook()
    batch = len(NUM_DRAFTS)
    sampler = SpeculativeRejectionSampler(method=method, codebook=codebook)
    q = inputs["draft_probs"] if use_q else None
    uniforms = dict(uniform_probs=inputs["uniform_probs"], uniform_bonus=inputs["uniform_bonus"])
    out = sampler(metadata, q, logits, _sampling_metadata(torch.full((batch,), 0.9), torch.full((batch,), 30),
                                                           torch.ones(batch)), **uniforms)
    assert out.logprobs_tensors is None
    expected = rejection_sample(
        metadata.draft_token_ids, metadata.cu_num_draft_tokens, logits[metadata.target_logits_indices.long()],
        bonus_logits=logits[metadata.bonus_logits_indices.long()], draft_probs=q, **uniforms,
        verifier=SpeculativeVerifier(method, codebook=codebook, temperature=0.9, top_k=30))
    assert out.sampled_token_ids.dtype == torch.int32
    assert torch.equal(out.sampled_token_ids, expected)


TEMPERATURES = torch.tensor([0.0, 0.8, 1.2, -1.0, 1.0])  # -1: older vLLM's greedy marker
TOP_KS = torch.tensor([V, 10, V, 5, 3])  # vLLM writes V for "no top-k"
TOP_PS = torch.tensor([1.0, 0.9, 0.7, 1.0, 1.0])


@pytest.mark.parametrize("method", ["exact", "lantern"])
def test_per_request_settings_equal_padded_verify_chain_row_by_row(method):
    metadata, logits, inputs = _vllm_batch(1)
    codebook = None if method == "exact" else _codebook()
    sampler = SpeculativeRejectionSampler(method=method, codebook=codebook, delta=0.3 if method == "lantern" else None)
    out = sampler(metadata, inputs["draft_probs"], logits, _sampling_metadata(TEMPERATURES, TOP_KS, TOP_PS),
                  uniform_probs=inputs["uniform_probs"], uniform_bonus=inputs["uniform_bonus"]).sampled_token_ids
    width, start = max(NUM_DRAFTS), 0
    for b, n in enumerate(NUM_DRAFTS):
        rows = torch.cat([metadata.target_logits_indices[start:start + n], metadata.bonus_logits_indices[b:b + 1]])
        row_logits = logits[rows.long()]
        drafts = inputs["draft_token_ids"][start:start + n].long()
        if TEMPERATURES[b] <= 0:  # vLLM's greedy rule, written out
            argmax = row_logits.argmax(-1)
            accepted = 0
            while accepted < n and drafts[accepted] == argmax[accepted]:
                accepted += 1
            expected = drafts[:accepted].tolist() + [int(argmax[accepted])]
        else:
            p = process_logits(row_logits, temperature=float(TEMPERATURES[b]), top_k=int(TOP_KS[b]),
                               top_p=float(TOP_PS[b]))[None]
            kwargs = SpeculativeVerifier(method, codebook=codebook,
                                         delta=0.3 if method == "lantern" else None).kernel_kwargs
            accept_len, next_token = sk.verify_chain(
                p, inputs["draft_probs"][start:start + n][None], drafts[None],
                inputs["uniform_probs"][start:start + n][None], inputs["uniform_bonus"][b:b + 1], **kwargs)
            expected = drafts[:int(accept_len)].tolist() + [int(next_token)]
        assert out[b].tolist() == expected + [PLACEHOLDER_TOKEN_ID] * (width + 1 - len(expected)), b
        start += n


def test_all_greedy_batch_needs_no_uniforms_and_follows_the_argmax():
    metadata, logits, _ = _vllm_batch(2)
    # Drafts that are the argmax up to a point: request b's drafts agree for its first b tokens.
    argmax = logits.argmax(-1)
    drafts, start = metadata.draft_token_ids.clone(), 0
    for b, n in enumerate(NUM_DRAFTS):
        for j in range(n):
            token = argmax[metadata.target_logits_indices[start + j]]
            drafts[start + j] = token if j < b else (token + 1) % V
        start += n
    metadata.draft_token_ids = drafts
    sampler = SpeculativeRejectionSampler()
    outs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        outs.append(sampler(metadata, None, logits, _sampling_metadata()).sampled_token_ids)
    assert torch.equal(outs[0], outs[1])
    start = 0
    for b, n in enumerate(NUM_DRAFTS):
        accepted = min(b, n)
        assert outs[0][b, :accepted].tolist() == drafts[start:start + accepted].tolist()
        next_row = (metadata.target_logits_indices[start + accepted] if accepted < n
                    else metadata.bonus_logits_indices[b])
        assert int(outs[0][b, accepted]) == int(argmax[next_row])
        start += n


def _request(metadata, logits, inputs, b):
    """Request b alone, in its own vLLM batch of one."""
    start, n = sum(NUM_DRAFTS[:b]), NUM_DRAFTS[b]
    rows = torch.cat([metadata.target_logits_indices[start:start + n], metadata.bonus_logits_indices[b:b + 1]])
    alone = SimpleNamespace(
        draft_token_ids=metadata.draft_token_ids[start:start + n], num_draft_tokens=[n],
        cu_num_draft_tokens=torch.tensor([n], dtype=torch.int32), max_spec_len=max(NUM_DRAFTS),
        target_logits_indices=torch.arange(n, dtype=torch.int32), bonus_logits_indices=torch.tensor([n]))
    return alone, logits[rows.long()], inputs["draft_probs"][start:start + n]


@pytest.mark.parametrize("method", ["exact", "gsd"])
def test_seeded_requests_of_a_mixed_batch_equal_the_requests_alone(method):
    metadata, logits, inputs = _vllm_batch(3)
    codebook = None if method == "exact" else _codebook()
    sampler = SpeculativeRejectionSampler(method=method, codebook=codebook)
    seeds = [11, 22, 33, 44, 55]
    batched = sampler(metadata, inputs["draft_probs"], logits, _sampling_metadata(
        TEMPERATURES, TOP_KS, TOP_PS, {b: torch.Generator().manual_seed(s) for b, s in enumerate(seeds)}))
    for b in range(len(NUM_DRAFTS)):
        alone, row_logits, q = _request(metadata, logits, inputs, b)
        settings = _sampling_metadata(TEMPERATURES[b:b + 1], TOP_KS[b:b + 1], TOP_PS[b:b + 1], {0: seeds[b]})
        out = sampler(alone, q, row_logits, settings).sampled_token_ids  # an int seed works as a generator
        assert out[0].tolist() == batched.sampled_token_ids[b].tolist(), b


def test_bonus_token_is_sampled_from_the_request_distribution():
    n = 6000
    gen = torch.Generator().manual_seed(0)
    row = 2 * torch.randn(1, 8, generator=gen)
    metadata = SimpleNamespace(
        draft_token_ids=torch.zeros(0, dtype=torch.int32), num_draft_tokens=[0] * n,
        cu_num_draft_tokens=torch.zeros(n, dtype=torch.int32), target_logits_indices=torch.zeros(0, dtype=torch.int32),
        bonus_logits_indices=torch.arange(n, dtype=torch.int32))
    torch.manual_seed(0)
    settings = _sampling_metadata(torch.full((n,), 0.7), torch.full((n,), 5), torch.full((n,), 0.95))
    out = SpeculativeRejectionSampler()(metadata, None, row.expand(n, -1), settings).sampled_token_ids
    assert out.shape == (n, 1)
    p = process_logits(row, temperature=0.7, top_k=5, top_p=0.95)[0]
    assert chi_square_pvalue(torch.bincount(out[:, 0].long(), minlength=8), p) > ALPHA


def test_parse_output_and_sampler_errors():
    out = torch.tensor([[3, 4, -1], [7, -1, -1], [1, 99, -1]], dtype=torch.int32)
    assert SpeculativeRejectionSampler.parse_output(out, 50, discard_req_indices=[1]) == [[3, 4], [], [1]]
    metadata, logits, inputs = _vllm_batch()
    sampler = SpeculativeRejectionSampler()
    settings = _sampling_metadata()
    with pytest.raises(ValueError, match="logits"):
        sampler(metadata, None, logits[:-1], settings)
    with pytest.raises(ValueError, match="max_spec_len"):
        sampler(SimpleNamespace(**dict(vars(metadata), max_spec_len=2)), None, logits, settings)
    with pytest.raises(ValueError, match="draft_token_ids"):
        sampler(SimpleNamespace(**dict(vars(metadata), num_draft_tokens=[3, 0, 5, 1, 4])), None, logits, settings)
    with pytest.raises(ValueError, match="draft_probs"):
        sampler(metadata, inputs["draft_probs"][:3], logits, settings)
    with pytest.raises(ValueError, match="temperature"):
        sampler(metadata, None, logits, _sampling_metadata(torch.ones(2)))
    with pytest.raises(ValueError, match="cfg"):
        SpeculativeRejectionSampler(SpeculativeVerifier("exact", cfg_scale=3.0))
    with pytest.raises(ValueError, match="not both"):
        SpeculativeRejectionSampler(SpeculativeVerifier("exact"), method="gsd")


# -- the documented snippets, executed as written --------------------------------------------------------------


def _python_block(path, containing):
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / path).read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if containing in b]
    assert len(blocks) == 1, (path, containing)
    return blocks[0]


def test_readme_serving_snippet_runs_as_written():
    metadata, logits, inputs = _vllm_batch(4)
    codebook = _codebook()
    scope = dict(codebook=codebook, spec_decode_metadata=metadata, draft_probs=inputs["draft_probs"], logits=logits,
                 sampling_metadata=_sampling_metadata(TEMPERATURES, TOP_KS, TOP_PS,
                                                      {b: b + 1 for b in range(len(NUM_DRAFTS))}))
    exec(compile(_python_block("README.md", "SpeculativeRejectionSampler("), "README.md", "exec"), scope)
    expected = SpeculativeRejectionSampler(method="lantern", codebook=codebook, delta=0.1)(
        metadata, inputs["draft_probs"], logits, scope["sampling_metadata"]).sampled_token_ids
    assert torch.equal(scope["output"].sampled_token_ids, expected)
    assert scope["accepted"] == [row[row >= 0].tolist() for row in expected]


def test_serving_doc_subclass_of_vllms_sampler_runs_as_written(monkeypatch):
    """docs/SERVING.md's subclass, against stand-ins for the two vLLM modules it imports (vLLM is not a
    dependency): the stand-ins have vLLM's names and constructor / field names only."""
    import dataclasses
    import sys
    import types

    class RejectionSampler(torch.nn.Module):  # vLLM: RejectionSampler(sampler), an nn.Module
        def __init__(self, sampler):
            super().__init__()
            self.sampler = sampler

    @dataclasses.dataclass
    class SamplerOutput:  # vLLM: vllm.v1.outputs.SamplerOutput
        sampled_token_ids: torch.Tensor
        logprobs_tensors: object

    modules = {"vllm": types.ModuleType("vllm"), "vllm.v1": types.ModuleType("vllm.v1"),
               "vllm.v1.outputs": types.ModuleType("vllm.v1.outputs"),
               "vllm.v1.sample": types.ModuleType("vllm.v1.sample"),
               "vllm.v1.sample.rejection_sampler": types.ModuleType("vllm.v1.sample.rejection_sampler")}
    modules["vllm.v1.outputs"].SamplerOutput = SamplerOutput
    modules["vllm.v1.sample.rejection_sampler"].RejectionSampler = RejectionSampler
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    scope = {}
    snippet = _python_block("docs/SERVING.md", "class ImageTokenRejectionSampler")
    exec(compile(snippet, "docs/SERVING.md", "exec"), scope)
    codebook = _codebook()
    sampler = scope["ImageTokenRejectionSampler"](sampler=None, codebook=codebook)
    metadata, logits, inputs = _vllm_batch(5)
    settings = _sampling_metadata(TEMPERATURES, TOP_KS, TOP_PS, {b: b for b in range(len(NUM_DRAFTS))})
    out = sampler(metadata, inputs["draft_probs"], logits, settings)
    assert isinstance(out, SamplerOutput) and out.logprobs_tensors is None
    expected = SpeculativeRejectionSampler(method="lantern", codebook=codebook, delta=0.1)(
        metadata, inputs["draft_probs"], logits, settings).sampled_token_ids
    assert torch.equal(out.sampled_token_ids, expected)
