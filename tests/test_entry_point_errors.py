"""Bad input to the user-facing entry points gives a ValueError naming the argument, never a crash (IndexError,
RuntimeError) or a silent result: ``specdec.SpeculativeVerifier`` and the Hugging Face adapters (tiny offline
Janus / Emu3 / Chameleon models from ``test_adapters_hf``)."""

import pytest
import torch

from specdec import SpeculativeVerifier

# -- SpeculativeVerifier -----------------------------------------------------------------------------------------

VOCAB = 32


def _inputs(vocab=VOCAB, batch=2, width=2):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, width + 1, vocab, generator=gen)
    drafts = torch.randint(0, vocab, (batch, width), generator=gen)
    return logits, drafts, gen


@pytest.mark.parametrize("method", ["lanturn", "", "EXACT", "gsd "])
def test_verifier_rejects_unknown_method(method):
    with pytest.raises(ValueError, match="^method: unknown"):
        SpeculativeVerifier(method)


@pytest.mark.parametrize("method", ["lantern", "gsd"])
@pytest.mark.parametrize("fused", [False, True])
def test_verifier_rejects_codebook_of_another_vocabulary(method, fused):
    verifier = SpeculativeVerifier(method, codebook=torch.randn(VOCAB // 2, 4))
    logits, drafts, gen = _inputs()
    with pytest.raises(ValueError, match=r"^codebook has 16 codes, but the logits' vocabulary has 32"):
        verifier.step(logits, drafts, generator=gen, return_probs=not fused)


@pytest.mark.parametrize("fused", [False, True])
def test_verifier_tree_rejects_codebook_of_another_vocabulary(fused):
    verifier = SpeculativeVerifier("lantern", codebook=torch.randn(VOCAB + 1, 4))
    logits, _, gen = _inputs(width=2)
    tokens = torch.zeros(2, 3, dtype=torch.int64)
    parents = torch.tensor([[-1, 0, 0]] * 2)
    with pytest.raises(ValueError, match=r"^codebook has 33 codes"):
        verifier.step_tree(logits, tokens, parents, generator=gen, return_probs=not fused)


def test_verifier_rejects_codebook_of_wrong_rank():
    with pytest.raises(ValueError, match="^codebook must be"):
        SpeculativeVerifier("lantern", codebook=torch.randn(VOCAB))


@pytest.mark.parametrize("bad_id", [VOCAB, -1, 2**40])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("method", ["exact", "lantern", "gsd"])
def test_verifier_rejects_draft_ids_outside_the_vocabulary(bad_id, fused, method):
    codebook = None if method == "exact" else torch.randn(VOCAB, 4)
    verifier = SpeculativeVerifier(method, codebook=codebook)
    logits, drafts, gen = _inputs()
    drafts[1, 0] = bad_id
    with raises_bad_row(match=r"row 1: draft holds an id outside"):
        verifier.step(logits, drafts, generator=gen, return_probs=not fused)


@pytest.mark.parametrize("fused", [False, True])
def test_verifier_rejects_tree_ids_outside_the_vocabulary(fused):
    verifier = SpeculativeVerifier("exact")
    logits, _, gen = _inputs()
    tokens = torch.tensor([[0, 1, 2], [0, VOCAB, 2]])
    parents = torch.tensor([[-1, 0, 0]] * 2)
    with raises_bad_row(match=r"row 1: tree_tokens holds an id outside"):
        verifier.step_tree(logits, tokens, parents, generator=gen, return_probs=not fused)


def test_verifier_rejects_logits_of_the_wrong_row_count():
    verifier = SpeculativeVerifier("exact", cfg_scale=3.0)
    logits, drafts, gen = _inputs()  # 2 rows for a batch of 2: CFG needs 4
    for fused in (False, True):
        with pytest.raises(ValueError, match="^logits: expected"):
            verifier.step(logits, drafts, generator=gen, return_probs=not fused)


# -- fused logits ops (regressions found by the fuzz suite) ------------------------------------------------------

import math  # noqa: E402

import specdec_kernels as sk  # noqa: E402

from _backends import device_for, raises_bad_row, to_device  # noqa: E402

#: Every backend this run has; each one's inputs live on its device.
LOGITS_BACKENDS = [b for b in ("reference", "cpu", "triton", "cuda") if b in sk.available_backends()]


@pytest.mark.parametrize("backend", LOGITS_BACKENDS)
@pytest.mark.parametrize("validate", [None, True, False])
@pytest.mark.parametrize("temperature", [math.inf, math.nan, -1.0])
def test_logits_ops_reject_non_finite_temperature_on_every_backend(backend, validate, temperature):
    logits, drafts, _ = _inputs()
    u = torch.full((2, 2), 0.5)
    logits, drafts, u = to_device((logits, drafts, u), device_for(backend))
    with pytest.raises(ValueError, match="^temperature must be"):
        sk.verify_chain_logits(logits, drafts, u, u[:, 0], temperature=temperature, backend=backend,
                               validate=validate)


@pytest.mark.parametrize("backend", LOGITS_BACKENDS)
@pytest.mark.parametrize("validate", [None, True, False])
def test_tree_logits_ignore_parents_of_nodes_past_num_nodes(backend, validate):
    """A parent id past the tree (unchecked: its node is not valid) once made the Triton launcher index out of
    range when the tree had draft probabilities."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 2, 16, generator=gen)
    draft_probs = torch.softmax(torch.randn(1, 2, 16, generator=gen), -1)
    tokens, parents = torch.tensor([[2, 14]]), torch.tensor([[-1, 2]])
    args = (logits, tokens, parents, torch.full((1, 2), 0.5), torch.tensor([0.25]))
    kwargs = dict(num_nodes=torch.tensor([1]), draft_probs=draft_probs)
    device = device_for(backend)
    got = to_device(sk.verify_tree_logits(*to_device(args, device), **to_device(kwargs, device), backend=backend,
                                          validate=validate), "cpu")
    want = sk.verify_tree_logits(*args, **kwargs, backend="reference", validate=False)
    assert all(torch.equal(g, w) for g, w in zip(got, want)) and int(want[2][0]) >= 0


# -- Hugging Face adapters ---------------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")

from test_adapters_hf import NEGATIVE, PROMPTS, TEXT, tiny_chameleon, tiny_emu3, tiny_janus  # noqa: E402

from specdec.adapters.hf import speculative_generate  # noqa: E402


@pytest.fixture(scope="module")
def emu3():
    return tiny_emu3()


@pytest.fixture(scope="module")
def chameleon():
    return tiny_chameleon()


@pytest.fixture(scope="module")
def janus():
    return tiny_janus()


def _emu3_with_vocabulary(vocabulary):
    torch.manual_seed(0)
    vocabulary = dict(vocabulary, **{"<|extra_200|>": 8, "<image>": 9})
    config = transformers.Emu3Config(
        vq_config=dict(codebook_size=16, embed_dim=4, latent_channels=4, temporal_downsample_factor=1,
                       base_channels=32, channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[],
                       hidden_size=32, num_attention_heads=1),
        text_config=dict(vocab_size=64, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, **TEXT),
        vocabulary_map=vocabulary)
    return transformers.Emu3ForConditionalGeneration(config).eval()


def _generate(model, prompts=PROMPTS[:1], negative=NEGATIVE[:1], **kwargs):
    kwargs = {"grid": (2, 2), "window": 4, "top_k": 1, **kwargs}
    return speculative_generate(model, prompts, negative_input_ids=negative, **kwargs)


def test_codebook_larger_than_the_mapped_image_tokens():
    model = _emu3_with_vocabulary({f"<|visual token {i:06d}|>": 10 + i for i in range(8)})  # 16 codes, 8 mapped
    with pytest.raises(ValueError, match="^model: the vocabulary maps 8 image codes, the codebook has 16"):
        _generate(model)


def test_image_tokens_mapped_outside_the_lm_head():
    model = _emu3_with_vocabulary({f"<|visual token {i:06d}|>": 60 + i for i in range(16)})  # ids 60..75 of 64
    with pytest.raises(ValueError, match=r"^model: the vocabulary maps image codes to token ids in \[60, 75\]"):
        _generate(model)


@pytest.mark.parametrize("family", ["emu3", "chameleon"])
def test_prompt_longer_than_the_max_positions(family, request):
    model = request.getfixturevalue(family)
    long = torch.ones(1, 250, dtype=torch.int64)  # + the image's tokens and EOLs > 256 positions
    with pytest.raises(ValueError, match="^input_ids: the prompt .* more than the model's max_position_embeddings"):
        _generate(model, long, long, grid=(3, 3), eol_token_id=8)


def test_prompt_that_just_fits_the_max_positions(emu3):
    prompt = torch.ones(1, 256 - 5, dtype=torch.int64)  # 2 x 2 image + 1 EOL = 5 positions
    out = _generate(emu3, prompt, prompt, decode=False)
    assert out.codes.shape == (1, 4) and bool(((out.codes >= 0) & (out.codes < 16)).all())


@pytest.mark.parametrize("name, value", [("input_ids", 500), ("input_ids", -1), ("negative_input_ids", 64)])
def test_prompt_ids_outside_the_vocabulary(emu3, name, value):
    prompts, negative = PROMPTS[:1].clone(), NEGATIVE[:1].clone()
    (prompts if name == "input_ids" else negative)[0, 2] = value
    with pytest.raises(ValueError, match=f"^{name} holds token ids outside the model's vocabulary"):
        _generate(emu3, prompts, negative)


@pytest.mark.parametrize("eol", [64, 10**6, -5])
@pytest.mark.parametrize("family", ["emu3", "chameleon"])
def test_eol_token_outside_the_vocabulary(family, eol, request):
    with pytest.raises(ValueError, match="^eol_token_id must be a token id in"):
        _generate(request.getfixturevalue(family), eol_token_id=eol)


@pytest.mark.parametrize("grid", [(0, 4), (2, 0), (-1, 2)])
def test_empty_or_negative_grid(emu3, grid):
    with pytest.raises(ValueError, match="^grid must be"):
        _generate(emu3, grid=grid)


def test_janus_grid_other_than_its_image_size(janus):
    with pytest.raises(ValueError, match="^grid: this Janus model generates 4 x 4 tokens"):
        speculative_generate(janus, PROMPTS[:1], grid=(3, 3), window=4)


@pytest.mark.parametrize("num_tokens", [0, 5, -1])
def test_num_tokens_outside_the_grid(emu3, num_tokens):
    with pytest.raises(ValueError, match=r"^num_tokens must be in \[1, 4\]"):
        _generate(emu3, num_tokens=num_tokens)


def test_unknown_method(emu3):
    with pytest.raises(ValueError, match="^method: unknown"):
        _generate(emu3, method="lanturn")
