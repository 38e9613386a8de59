"""Hugging Face adapters on tiny random Janus / Emu3 / Chameleon models built offline (docs/TESTBED.md §3.1).

* Greedy (top-k 1): every method (AR, SJD, MC-SJD, GSD, LANTERN-SJD; the tree methods EAGLE-2, LANTERN, LANTERN++
  with a draft head; SD with a smaller sibling model) emits the model's own greedy tokens (Janus: HF ``generate``
  in image mode with CFG; Emu3 / Chameleon: a plain sequential loop over the model). At top-k 1, p is one-hot on
  the argmax a, so a draft x != a has p(x) = 0: GSD's group cannot take a in (|p(a) - p(x)| = 1 >= p_thr for any
  p_thr <= 1; default 0.15) and LANTERN (chains or trees) cannot merge a (its mass 1 exceeds any delta < 1, and
  LANTERN++'s budget (lam - 1) p(x) is 0).
* SJD, EAGLE-2, the exact static tree (LANTERN++ at lam = 1) and SD at T = 1 preserve the joint distribution of
  the first image tokens (chi-square, 8 codes).
* After steps with rejections (chains, and trees whose accepted paths were compacted), the cache gives the
  logits of a sequential decode (ragged rows, CFG, EOLs).
* Batched ragged rows equal rows generated alone; relaxations at zero strength equal their exact method; on the
  same tree, LANTERN accepts at least what EAGLE-2 accepts; T = 1 end to end.

Draft heads are :class:`HFDraftHead`; most tests fit one for a few seconds (:func:`fitted_head`) so that drafts
are both accepted and rejected; the chi-square tests use an untrained one (exactness does not depend on it).
"""


import pytest
import torch

transformers = pytest.importorskip("transformers")

from stats import ALPHA, chi_square_pvalue  # noqa: E402

from specdec.adapters.hf import speculative_generate  # noqa: E402
from specdec.adapters.hf.families import family_of, shallow_sibling  # noqa: E402
from specdec.adapters.hf.head import HFDraftHead  # noqa: E402
from specdec.adapters.hf.target import HFImageTarget, SlotCache  # noqa: E402
from specdec.decoding import SamplingConfig, generate  # noqa: E402
from specdec.decoding.feed import attention_mask  # noqa: E402
from specdec.decoding.methods import SJD, Eagle2, LanternPP  # noqa: E402

CHAIN_METHODS = ["ar", "sjd", "mc-sjd", "gsd", "lantern-sjd"]
TREE_METHODS = ["eagle2", "lantern", "lantern++"]
METHODS = CHAIN_METHODS + TREE_METHODS + ["sd"]
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)


def _sharpen(head, factor):
    """Random heads give near-uniform logits; scale them so acceptance and rejection both happen."""
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(factor)


def tiny_janus(codes=32, seed=0, upsampling=3):
    torch.manual_seed(seed)
    config = transformers.JanusConfig(
        text_config=dict(model_type="llama", vocab_size=300, **TEXT),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=64, patch_size=16, num_image_tokens=16),
        vq_config=dict(num_embeddings=codes, embed_dim=8, base_channels=32, channel_multiplier=[1] * upsampling,
                       num_res_blocks=1, latent_channels=32, projection_dim=64, image_token_embed_dim=64))
    model = transformers.JanusForConditionalGeneration(config).eval()
    model.generation_config = transformers.GenerationConfig(bos_token_id=1, pad_token_id=0, eos_token_id=2,
                                                            generation_kwargs={"boi_token_id": 5})
    _sharpen(model.model.generation_head, 4.0)
    return model


def tiny_emu3(codes=16, seed=0):
    torch.manual_seed(seed)
    vocab = {f"<|visual token {i:06d}|>": 10 + i for i in range(codes)}
    vocab.update({"<|extra_200|>": 8, "<image>": 9, "<|extra_201|>": 7, "<|image end|>": 6})
    config = transformers.Emu3Config(
        vq_config=dict(codebook_size=codes, embed_dim=4, latent_channels=4, temporal_downsample_factor=1,
                       base_channels=32, channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[],
                       hidden_size=32, num_attention_heads=1),
        text_config=dict(vocab_size=64, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, **TEXT),
        vocabulary_map=vocab)
    model = transformers.Emu3ForConditionalGeneration(config).eval()
    _sharpen(model.lm_head, 4.0)
    return model


def _chameleon_name(code):
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def tiny_chameleon(codes=16, seed=0):
    torch.manual_seed(seed)
    vocab = {_chameleon_name(i): 10 + i for i in range(codes)}
    vocab.update({"<image>": 9, "<eol>": 8})
    config = transformers.ChameleonConfig(
        vocab_size=64, vocabulary_map=vocab, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, vq_config=dict(embed_dim=8, num_embeddings=codes, base_channels=32,
                                       channel_multiplier=[1, 1], num_res_blocks=1, latent_channels=8,
                                       resolution=32), **TEXT)
    model = transformers.ChameleonForConditionalGeneration(config).eval()
    _sharpen(model.lm_head, 4.0)
    return model


CHAMELEON_EOL = 8


@pytest.fixture(scope="module")
def janus():
    return tiny_janus()


@pytest.fixture(scope="module")
def emu3():
    return tiny_emu3()


@pytest.fixture(scope="module")
def chameleon():
    return tiny_chameleon()


@pytest.fixture(scope="module")
def resources(janus, emu3, chameleon):
    """Per model name: a fitted draft head and a one-layer sibling draft model, built on first use."""
    built = {}
    specs = {"janus": (janus, {}), "emu3": (emu3, dict(grid=(3, 4), negative=NEGATIVE)),
             "chameleon": (chameleon, dict(grid=(3, 3), eol=CHAMELEON_EOL, negative=NEGATIVE))}

    def get(name, method):
        if method in TREE_METHODS:
            if ("head", name) not in built:
                model, kwargs = specs[name]
                built[("head", name)] = fitted_head(model, **kwargs)
            return {"head": built[("head", name)]}
        if method == "sd":
            if ("draft", name) not in built:
                built[("draft", name)] = shallow_sibling(specs[name][0], 1)
            return {"draft_model": built[("draft", name)]}
        return {}
    return get


SMALL_TREE = dict(total_tokens=10, depth=3, top_k=3)  # Eagle2's tree options (speculative_generate: tree_top_k)
CHOICES = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]  # a small static tree (LANTERN++)

PROMPTS = torch.tensor([[1, 10, 11, 12, 5], [1, 20, 21, 22, 5], [1, 30, 31, 32, 5]])
NEGATIVE = torch.tensor([[1, 3, 3, 4, 5], [1, 3, 3, 4, 5], [1, 3, 3, 4, 5]])  # same length: no padding needed


def fitted_head(model, grid=None, eol=None, negative=None, cfg_scale=3.0, steps=40, seed=0):
    """An :class:`HFDraftHead` fitted for a few seconds on random code sequences to the model's CFG-guided argmax
    (the head's cond / uncond logits mixed like the target's), with the features :class:`HFImageTarget` gives:
    good enough that tree drafts are accepted often and rejected often."""
    family = family_of(model, eol)
    rows, cols = family.grid(grid)
    n = rows * cols
    torch.manual_seed(seed)
    head = HFDraftHead(model)
    neg = family.unconditional(PROMPTS, torch.ones_like(PROMPTS))[0] if negative is None else negative
    prompts = torch.cat([PROMPTS, neg])
    count = PROMPTS.shape[0]
    target = HFImageTarget(family, prompts, torch.ones_like(prompts), (rows, cols), n)
    codes = torch.randint(0, family.vocab_size, (count * 8, n), generator=torch.Generator().manual_seed(seed))
    positions = torch.arange(1, n + 1).expand(2 * count, n)
    mask = torch.ones(n, n + 2, dtype=torch.bool).tril()[None].expand(2 * count, -1, -1)  # slot 0: the prompt

    def guided(logits):  # (2 B, ...) cond rows first -> CFG-mixed (B, ...)
        cond, uncond = logits.chunk(2)
        return uncond + cfg_scale * (cond - uncond)

    inputs, feats, labels = [], [], []
    with torch.no_grad():
        for chunk in codes.split(count):
            cache = target.new_cache(2 * count, n + 2)
            _, first = target.prefill(torch.arange(2 * count), cache)
            logits, hidden = target.forward_tokens(chunk.repeat(2, 1), positions, positions, mask, cache)
            inputs.append(chunk.repeat(2, 1))
            feats.append(torch.cat([first[:, None], hidden[:, :-1]], 1))
            labels.append(guided(logits).argmax(-1))
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = 0.0
        for tokens, feat, label in zip(inputs, feats, labels):
            logits, _ = head.forward_train(tokens, feat)  # logits[:, t] drafts code t + 1, label[:, t] is it
            mixed = guided(logits)[:, :-1]
            loss = loss + torch.nn.functional.cross_entropy(mixed.flatten(0, 1), label[:, :-1].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.requires_grad_(False).eval()


# -- greedy == the model's own loop ------------------------------------------------------------------------------


def _options(method):
    return dict(window=6) if method in CHAIN_METHODS else {}


@pytest.mark.parametrize("method", METHODS)
def test_janus_greedy_matches_hf_generate_with_cfg(janus, resources, method):
    reference = janus.generate(PROMPTS, attention_mask=torch.ones_like(PROMPTS), generation_mode="image",
                               guidance_scale=3.0)  # do_sample unset: greedy, as speculative_generate's default
    out = speculative_generate(janus, PROMPTS, method=method, guidance_scale=3.0, **_options(method),
                               **resources("janus", method))
    assert torch.equal(out.codes, reference)
    assert out.image_tokens.shape == (3, 4, 4) and out.images.shape == (3, 3, 16, 16)
    torch.testing.assert_close(out.images, janus.decode_image_tokens(out.codes).permute(0, 3, 1, 2))
    if method != "ar":
        assert int(out.metrics.row_steps.min()) < 15  # drafts were accepted


def _sequential_greedy(model, prompts, negative, grid, scale, eol, logits_fn):
    """Plain CFG loop: one token per forward on a DynamicCache, argmax over the image tokens, EOL after each row."""
    image_ids = model.model.vocabulary_mapping.img2bpe_mapping_tensor.long()
    rows, cols = grid
    ids = torch.cat([prompts, negative])
    cache = transformers.DynamicCache(config=model.config.get_text_config())
    logits = logits_fn(ids, cache)
    out = []
    for i in range(rows * cols):
        mixed = logits[prompts.shape[0]:] + scale * (logits[: prompts.shape[0]] - logits[prompts.shape[0]:])
        code = mixed[:, image_ids].argmax(-1)
        out.append(code)
        feed = image_ids[code][:, None].repeat(2, 1)
        if i % cols == cols - 1 and i < rows * cols - 1:
            logits_fn(feed, cache)
            feed = torch.full_like(feed, eol)
        logits = logits_fn(feed, cache)
    return torch.stack(out, 1)


def _emu3_logits(model):
    def run(ids, cache):
        return model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1]
    return run


def _chameleon_logits(model):
    def run(ids, cache):  # the model's own forward masks image tokens: read lm_head on the hidden states
        hidden = model.model(input_ids=ids, past_key_values=cache, use_cache=True).last_hidden_state[:, -1]
        return model.lm_head(hidden)
    return run


@pytest.mark.parametrize("method", METHODS)
def test_emu3_greedy_matches_sequential_loop(emu3, resources, method):
    reference = _sequential_greedy(emu3, PROMPTS, NEGATIVE, (3, 4), 3.0, 8, _emu3_logits(emu3))
    out = speculative_generate(emu3, PROMPTS, negative_prompt_ids=NEGATIVE, method=method, cfg_scale=3.0,
                               do_sample=False, grid=(3, 4), **_options(method), **resources("emu3", method))
    assert torch.equal(out.codes, reference)
    if method != "ar":
        assert int(out.metrics.row_steps.min()) < 11  # drafts were accepted
    assert out.sequences.shape == (3, 18) and (out.sequences[:, :15].view(3, 3, 5)[:, :, -1] == 8).all()
    assert out.sequences[:, 15:].tolist() == [[7, 6, 2]] * 3  # <|extra_201|>, <|image end|>, EOS
    torch.testing.assert_close(out.images, emu3.decode_image_tokens(image_tokens=out.sequences, height=3, width=4))


@pytest.mark.parametrize("method", METHODS)
def test_chameleon_greedy_matches_sequential_loop(chameleon, resources, method):
    reference = _sequential_greedy(chameleon, PROMPTS, NEGATIVE, (3, 3), 3.0, CHAMELEON_EOL,
                                   _chameleon_logits(chameleon))
    out = speculative_generate(chameleon, PROMPTS, negative_input_ids=NEGATIVE, method=method, cfg_scale=3.0,
                               grid=(3, 3), eol_token_id=CHAMELEON_EOL, **_options(method),
                               **resources("chameleon", method))
    assert torch.equal(out.codes, reference)
    if method != "ar":
        assert int(out.metrics.row_steps.min()) < 8  # drafts were accepted
    assert out.images is None  # HF's Chameleon VQ has no decoder


# -- exactness at T = 1 ----------------------------------------------------------------------------------------


def _janus_joint(model, prompt, scale, length, codes):
    """Exact joint probabilities of the first ``length`` image tokens (full forwards, no cache), CFG-mixed."""
    family = family_of(model)
    uncond, _ = family.unconditional(prompt, torch.ones_like(prompt))
    prompt_embeds = model.get_input_embeddings()(torch.cat([prompt, uncond]))  # (2, P, d)
    joint = torch.ones(1, dtype=torch.float64)
    prefixes = torch.zeros(1, 0, dtype=torch.int64)
    for _ in range(length):
        n = prefixes.shape[0]
        embeds = prompt_embeds[:, None].expand(2, n, -1, -1)
        if prefixes.shape[1]:
            image = model.prepare_embeddings_for_image_generation(prefixes)
            embeds = torch.cat([embeds, image[None].expand(2, -1, -1, -1)], dim=2)
        hidden = model.model.language_model(inputs_embeds=embeds.reshape(2 * n, -1, embeds.shape[-1]))
        logits = model.model.generation_head(hidden.last_hidden_state[:, -1]).double().view(2, n, codes)
        p = torch.softmax(logits[1] + scale * (logits[0] - logits[1]), -1)
        joint = (joint[:, None] * p).reshape(-1)
        prefixes = torch.cat([prefixes.repeat_interleave(codes, 0), torch.arange(codes).repeat(n)[:, None]], 1)
    return joint.view((codes,) * length)


@pytest.fixture(scope="module")
def janus8():
    """A Janus with 8 codes and the exact joint of its first 4 image tokens (CFG 2)."""
    model = tiny_janus(codes=8, seed=1)
    with torch.no_grad():
        joint = _janus_joint(model, torch.tensor([[1, 10, 11, 12, 5]]), 2.0, 4, 8)
    return model, joint


# Exact methods at T = 1 (LANTERN++ at lam = 1 is the exact static tree): the head is untrained, which costs
# acceptance, never exactness.
EXACT_AT_T1 = {"sjd": dict(window=4), "eagle2": dict(total_tokens=7, depth=2, tree_top_k=3),
               "lantern++": dict(lam=1.0, choices=CHOICES), "sd": dict(gamma=3)}


@pytest.mark.parametrize("method", list(EXACT_AT_T1))
def test_exact_methods_at_t1_preserve_the_joint_of_the_first_tokens(janus8, method):
    model, joint = janus8
    codes, length, samples = 8, 4, 4000
    prompt = torch.tensor([[1, 10, 11, 12, 5]])
    extra = dict(EXACT_AT_T1[method])
    if method in TREE_METHODS:
        extra["head"] = HFDraftHead(model)
    elif method == "sd":
        extra["draft_model"] = shallow_sibling(model, 1)
    out = speculative_generate(model, prompt, method=method, cfg_scale=2.0, do_sample=True, top_k=0,
                               num_return_sequences=samples, num_tokens=length, seed=0, decode=False, **extra)
    assert out.metrics.target_forwards < 1 + samples  # batched: one forward per step for all rows
    assert out.metrics.mean_accept_len > 0.2  # drafts were accepted (and rejected): the test has teeth
    tokens = out.codes
    for a, b in [(0, 1), (1, 2), (2, 3)]:
        pair = joint.sum(dim=tuple(d for d in range(length) if d not in (a, b))).reshape(-1)
        observed = torch.bincount(tokens[:, a] * codes + tokens[:, b], minlength=codes * codes)
        assert chi_square_pvalue(observed, pair) > ALPHA, (a, b)


def test_relaxations_at_zero_strength_equal_sjd_and_run_end_to_end_at_t1(janus):
    common = dict(cfg_scale=3.0, window=6, seed=3, do_sample=True, top_k=0)
    sjd = speculative_generate(janus, PROMPTS, method="sjd", **common)
    lantern0 = speculative_generate(janus, PROMPTS, method="lantern-sjd", delta=0.0, **common)
    gsd0 = speculative_generate(janus, PROMPTS, method="gsd", p_thr=0.0, **common)
    assert torch.equal(sjd.codes, lantern0.codes) and torch.equal(sjd.codes, gsd0.codes)
    for method in ("gsd", "lantern-sjd"):
        out = speculative_generate(janus, PROMPTS, method=method, delta=0.3, **common)
        assert out.codes.shape == (3, 16) and int(out.codes.min()) >= 0 and int(out.codes.max()) < 32
        assert out.images.shape == (3, 3, 16, 16) and torch.isfinite(out.images).all()
        assert out.metrics.target_forwards <= sjd.metrics.target_forwards + 3


# -- caches, CFG and ragged batches ------------------------------------------------------------------------------


def _full_forward_logits(model, family, prompts, prompt_mask, codes, cols, has_eol):
    """Logits after prompt + codes (with EOLs) by one uncached forward per row (left padding removed)."""
    out = []
    for r in range(prompts.shape[0]):
        prompt = prompts[r][prompt_mask[r].bool()]
        seq = [family.embed_prompt(prompt[None])[0]]
        for i, c in enumerate(codes[r].tolist()):
            seq.append(family.embed_image(torch.tensor([[c]]))[0])
            if has_eol and i % cols == cols - 1:
                seq.append(family.embed_eol((1, 1))[0])
        hidden = family.language_model(inputs_embeds=torch.cat(seq)[None]).last_hidden_state[:, -1]
        out.append(family.image_logits(hidden)[0])
    return torch.stack(out).float()


@pytest.mark.parametrize("compact_below", [0.5, 1.0])  # default, and compacting after every ragged step
@pytest.mark.parametrize("name", ["janus", "emu3"])
@pytest.mark.parametrize("method", ["sjd", "eagle2", "lantern++"])
def test_cache_after_rejections_gives_sequential_logits(name, compact_below, method, request, resources,
                                                         monkeypatch):
    """Chains roll rejected drafts back; trees (``compact_cache``) relabel the accepted path onto consecutive
    slots and drop the other nodes: either way the cache then holds exactly the committed tokens."""
    model = request.getfixturevalue(name)
    monkeypatch.setattr(SlotCache, "compact_below", compact_below)
    family = family_of(model)
    rows, cols = family.grid(None if name == "janus" else (3, 4))
    num_tokens = 7
    prompts = torch.cat([PROMPTS, NEGATIVE])
    mask = torch.ones_like(prompts)
    mask[1, 0] = 0  # a left-padded row
    target = HFImageTarget(family, prompts, mask, (rows, cols), num_tokens)
    if method == "sjd":
        dec = SJD(window=5, grid_width=cols)
    else:
        head = resources(name, method)["head"]
        dec = Eagle2(head, **SMALL_TREE) if method == "eagle2" else LanternPP(head, family.codebook.detach(),
                                                                              lam=1.0, k=2, choices=CHOICES)
    # Greedy for the trees: the fitted head's drafts are then accepted often (T = 1 at 32 codes rarely does).
    sampling = SamplingConfig(cfg_scale=3.0, temperature=1.0 if method == "sjd" else 0.0)
    with torch.no_grad():
        result = generate(target, torch.arange(3), dec, sampling=sampling, seed=1, num_tokens=num_tokens,
                          keep_context=True)
        accepted = result.metrics.accept_lens
        if method == "sjd":
            assert (accepted[:, 0] < 4).all()  # every row rejected one of its 4 drafts in the first step
        else:  # a path of 2 ends at a node >= 4 (3 children per level): compaction really moved entries
            assert int(accepted.max()) >= 2, accepted
            assert bool(((accepted >= 0) & (accepted < 3)).any())  # and some step stopped short of the depth
        ctx = result.context
        state, cache = ctx.state, ctx.cache
        last = state.tokens[:, -1:]
        slots = state.n_gen[:, None]
        valid = torch.ones_like(slots, dtype=torch.bool)
        step_mask = attention_mask(slots, valid, state.n_gen, ctx.num_slots)
        logits, _ = target.forward_tokens(last.repeat(2, 1), slots.repeat(2, 1), slots.repeat(2, 1),
                                          step_mask.repeat(2, 1, 1), cache)
        codes = state.tokens.repeat(2, 1)
        expected = _full_forward_logits(model, family, prompts, mask, codes, cols, family.eol_token_id is not None)
    torch.testing.assert_close(logits[:, 0], expected, atol=1e-4, rtol=1e-4)
    live = (cache.owner >= 0).sum(1).max()
    assert cache.length < live * (2 if compact_below == 0.5 else 1) + 6  # dead entries were cropped / compacted


@pytest.mark.parametrize("method", ["sjd", "lantern-sjd", "eagle2", "lantern", "lantern++", "sd"])
def test_batched_ragged_rows_equal_rows_alone(emu3, resources, method):
    negative = [torch.tensor([[1, 3, 4, 5]]), torch.tensor([[1, 3, 3, 3, 4, 5]]), torch.tensor([[1, 4, 5]])]
    width = max(n.shape[1] for n in negative)
    neg = torch.zeros(3, width, dtype=torch.int64)
    neg_mask = torch.zeros(3, width, dtype=torch.int64)
    for r, n in enumerate(negative):  # left padding
        neg[r, width - n.shape[1]:] = n[0]
        neg_mask[r, width - n.shape[1]:] = 1
    keys = torch.tensor([11, 22, 33])
    common = dict(method=method, cfg_scale=2.0, grid=(3, 4), decode=False, do_sample=True,
                  **{"sjd": dict(window=5), "lantern-sjd": dict(window=5), "lantern++": dict(choices=CHOICES)}
                  .get(method, {}), **resources("emu3", method))
    batched = speculative_generate(emu3, PROMPTS, negative_input_ids=neg, negative_attention_mask=neg_mask,
                                   row_keys=keys, **common)
    steps = batched.metrics.row_steps
    assert len(set(steps.tolist())) > 1  # rows really were ragged
    for r in range(3):
        alone = speculative_generate(emu3, PROMPTS[r:r + 1], negative_input_ids=negative[r], row_keys=keys[r:r + 1],
                                     **common)
        assert torch.equal(alone.codes[0], batched.codes[r])


def test_lantern_accepts_at_least_what_eagle2_accepts_on_the_same_tree(janus, resources):
    """The first step verifies the same tree (same head, prefix and uniforms) under both rules. On a chain-shaped
    tree (one child per node) LANTERN's relaxed mass p~(x) >= p(x) makes each row's accept length at least
    EAGLE-2's; with siblings the residuals differ after a rejection, so only the mean is compared. Later steps
    diverge once the rows' tokens do."""
    head = resources("janus", "eagle2")["head"]
    common = dict(cfg_scale=3.0, do_sample=True, top_k=0, num_return_sequences=40, num_tokens=8, seed=5,
                  decode=False, head=head)
    for tree, strict in ((dict(total_tokens=5, depth=4, tree_top_k=1), True),
                         (dict(total_tokens=12, depth=3, tree_top_k=3), False)):
        exact = speculative_generate(janus, PROMPTS, method="eagle2", **tree, **common).metrics.accept_lens[:, 0]
        relaxed = speculative_generate(janus, PROMPTS, method="lantern", delta=0.5, k=8, **tree,
                                       **common).metrics.accept_lens[:, 0]
        if strict:
            assert bool((relaxed >= exact).all()), (exact, relaxed)
        assert relaxed.float().mean() > exact.float().mean(), (tree, exact, relaxed)
        for zero in (dict(delta=0.0), dict(lam=1.0)):  # no relaxation: EAGLE-2
            same = speculative_generate(janus, PROMPTS, method="lantern", **zero, **tree, **common)
            assert torch.equal(same.metrics.accept_lens[:, 0], exact), zero


def test_method_resources_are_checked(janus, emu3, resources):
    head = resources("janus", "eagle2")["head"]
    with pytest.raises(ValueError, match="pass a head|head="):
        speculative_generate(janus, PROMPTS, method="eagle2")
    with pytest.raises(ValueError, match="lantern-sjd"):  # "lantern" is LANTERN on trees, as in the testbed loop
        speculative_generate(janus, PROMPTS, method="lantern")
    with pytest.raises(ValueError, match="takes no draft head"):
        speculative_generate(janus, PROMPTS, method="sjd", head=head)
    with pytest.raises(ValueError, match="another model instance"):
        speculative_generate(tiny_janus(), PROMPTS, method="eagle2", head=head)
    with pytest.raises(ValueError, match="needs draft_model"):
        speculative_generate(janus, PROMPTS, method="sd")
    draft = resources("janus", "sd")["draft_model"]
    with pytest.raises(ValueError, match="takes no draft model"):
        speculative_generate(janus, PROMPTS, method="eagle2", head=head, draft_model=draft)
    other_codebook = shallow_sibling(janus, 1)
    with torch.no_grad():
        other_codebook.model.vqmodel.quantize.embedding.weight.add_(0.1)
    with pytest.raises(ValueError, match="codebook differs"):
        speculative_generate(janus, PROMPTS, method="sd", draft_model=other_codebook)
    with pytest.raises(ValueError, match="image vocabularies differ"):
        speculative_generate(janus, PROMPTS, method="sd", draft_model=tiny_janus(codes=16))
    with pytest.raises(ValueError, match="cannot draft for"):
        speculative_generate(janus, PROMPTS, method="sd", draft_model=emu3)
    # The target as its own draft (its own cache): every draft is accepted, 5 tokens per step at gamma 4.
    itself = speculative_generate(janus, PROMPTS, method="sd", draft_model=janus, gamma=4, guidance_scale=3.0)
    assert itself.metrics.row_steps.tolist() == [3, 3, 3]
    assert torch.equal(itself.codes, janus.generate(PROMPTS, attention_mask=torch.ones_like(PROMPTS),
                                                    generation_mode="image", guidance_scale=3.0))


def test_errors(janus, emu3):
    with pytest.raises(ValueError, match="method"):
        speculative_generate(janus, PROMPTS, method="eagle2")
    with pytest.raises(ValueError, match="negative_inputs"):
        speculative_generate(emu3, PROMPTS, grid=(3, 4))
    with pytest.raises(ValueError, match="grid"):
        speculative_generate(emu3, PROMPTS, cfg_scale=1.0)
    with pytest.raises(ValueError, match="model"):
        speculative_generate(torch.nn.Linear(2, 2), PROMPTS)
    with pytest.raises(ValueError, match="num_tokens"):
        speculative_generate(janus, PROMPTS, num_tokens=17)


# -- behaving like model.generate -------------------------------------------------------------------------------


def test_settings_come_from_generation_config_and_explicit_arguments_win():
    model = tiny_janus(seed=2)
    common = dict(method="sjd", window=5, seed=4, decode=False)
    by_hand = speculative_generate(model, PROMPTS, do_sample=True, temperature=0.7, top_k=5, top_p=0.9,
                                   cfg_scale=2.0, **common)
    model.generation_config.update(do_sample=True, temperature=0.7, top_k=5, top_p=0.9, guidance_scale=2.0)
    from_config = speculative_generate(model, PROMPTS, **common)
    assert torch.equal(from_config.codes, by_hand.codes)
    hf_config = transformers.GenerationConfig(**model.generation_config.to_dict())
    hf_config.update(top_k=2)
    other = speculative_generate(model, PROMPTS, generation_config=hf_config, **common)
    assert torch.equal(other.codes, speculative_generate(model, PROMPTS, top_k=2, **common).codes)
    assert not torch.equal(other.codes, by_hand.codes)
    # do_sample=False wins over the config: the model's own greedy image, with CFG from the config's scale
    greedy = speculative_generate(model, PROMPTS, do_sample=False, **common)
    reference = model.generate(PROMPTS, attention_mask=torch.ones_like(PROMPTS), generation_mode="image",
                               do_sample=False, guidance_scale=2.0)
    assert torch.equal(greedy.codes, reference)


def test_default_randomness_follows_torch_global_seed_and_explicit_keys_are_batch_invariant(janus):
    common = dict(method="sjd", window=5, do_sample=True, top_k=0, decode=False)
    torch.manual_seed(7)
    first = speculative_generate(janus, PROMPTS, **common).codes
    second = speculative_generate(janus, PROMPTS, **common).codes
    torch.manual_seed(7)
    again = speculative_generate(janus, PROMPTS, **common).codes
    assert torch.equal(first, again) and not torch.equal(first, second)
    seeded = speculative_generate(janus, PROMPTS, seed=3, **common).codes
    torch.manual_seed(0)  # the global generator plays no part once seed is given
    assert torch.equal(seeded, speculative_generate(janus, PROMPTS, seed=3, **common).codes)
    keys = torch.tensor([5, 6, 7])
    batched = speculative_generate(janus, PROMPTS, row_keys=keys, **common).codes
    assert torch.equal(batched[1], speculative_generate(janus, PROMPTS[1:2], row_keys=keys[1:2], **common).codes[0])


def test_num_return_sequences_repeats_each_prompt_with_its_own_key(janus):
    common = dict(method="sjd", window=5, do_sample=True, decode=False)
    keys = torch.arange(6) + 40
    out = speculative_generate(janus, PROMPTS[:2], num_return_sequences=3, row_keys=keys, **common)
    assert out.codes.shape == (6, 16)
    repeated = speculative_generate(janus, PROMPTS[:2].repeat_interleave(3, 0), row_keys=keys, **common)
    assert torch.equal(out.codes, repeated.codes)
    assert not torch.equal(out.codes[0], out.codes[1])  # sampled: a prompt's images differ


def test_right_padding_is_refused_left_padding_is_fine(janus):
    ids = torch.tensor([[1, 10, 11, 12, 5], [1, 20, 5, 0, 0]])
    right = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with pytest.raises(ValueError, match="left"):
        speculative_generate(janus, ids, attention_mask=right)
    left_ids = torch.tensor([[1, 10, 11, 12, 5], [0, 0, 1, 20, 5]])
    left = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    out = speculative_generate(janus, left_ids, attention_mask=left, decode=False)
    alone = speculative_generate(janus, left_ids[1:, 2:], decode=False)
    assert torch.equal(out.codes[1], alone.codes[0])


def test_attention_that_ignores_4d_masks_is_refused_with_the_fix():
    model = tiny_emu3()
    model.model.text_model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="set_attn_implementation\\('sdpa'\\)"):
        speculative_generate(model, PROMPTS, negative_input_ids=NEGATIVE, grid=(3, 4))
    model.model.text_model.config._attn_implementation = "eager"
    eager = speculative_generate(model, PROMPTS, negative_input_ids=NEGATIVE, grid=(3, 4), decode=False)
    model.model.text_model.config._attn_implementation = "sdpa"
    sdpa = speculative_generate(model, PROMPTS, negative_input_ids=NEGATIVE, grid=(3, 4), decode=False)
    assert torch.equal(eager.codes, sdpa.codes)


def test_emu3_takes_the_processor_output_with_image_sizes(emu3):
    inputs = {"input_ids": PROMPTS, "attention_mask": torch.ones_like(PROMPTS), "image_sizes": [[3, 4]] * 3}
    out = speculative_generate(emu3, **inputs, negative_prompt_ids=NEGATIVE)
    assert out.image_tokens.shape == (3, 3, 4)
    torch.testing.assert_close(out.images, emu3.decode_image_tokens(image_tokens=out.sequences, height=3, width=4))
    with pytest.raises(ValueError, match="image_sizes"):
        speculative_generate(emu3, **inputs, negative_prompt_ids=NEGATIVE, grid=(4, 4))


def test_image_head_is_sliced_once_per_model_and_refreshed_when_weights_change(emu3):
    family = family_of(emu3)
    weight, _ = family.image_head()
    assert family_of(emu3).image_head()[0] is weight  # a new call's family reuses the slice
    ids = emu3.model.vocabulary_mapping.img2bpe_mapping_tensor.long()
    hidden = torch.randn(2, 64)
    torch.testing.assert_close(family.image_logits(hidden), emu3.lm_head(hidden)[:, ids])
    with torch.no_grad():
        emu3.lm_head.weight.mul_(1.5)
    try:
        assert family.image_head()[0] is not weight
        torch.testing.assert_close(family.image_logits(hidden), emu3.lm_head(hidden)[:, ids])
    finally:
        with torch.no_grad():
            emu3.lm_head.weight.div_(1.5)


@pytest.mark.parametrize("name, normalized", [("janus", True), ("emu3", False), ("chameleon", False)])
def test_lantern_table_geometry_is_chosen_per_family(name, normalized, request):
    import specdec_kernels as sk
    from specdec.adapters.hf.generate import _NEIGHBOR_TABLES

    model = request.getfixturevalue(name)
    family = family_of(model)
    extra = {} if name == "janus" else dict(negative_input_ids=NEGATIVE, grid=(3, 3))
    speculative_generate(model, PROMPTS, method="lantern-sjd", k=4, num_tokens=2, decode=False, **extra)
    codebook = family.codebook.detach().float()
    assert torch.equal(_NEIGHBOR_TABLES[model][(4, normalized)], sk.neighbor_table(codebook, 4, normalize=normalized))
    speculative_generate(model, PROMPTS, method="lantern-sjd", k=4, num_tokens=2, decode=False,
                         normalize_codebook=not normalized, **extra)
    assert torch.equal(_NEIGHBOR_TABLES[model][(4, not normalized)],
                       sk.neighbor_table(codebook, 4, normalize=not normalized))


# -- Chameleon-family VQGAN decoder ------------------------------------------------------------------------------


def _vqgan_checkpoint(model, path, seed=0, **changes):
    """A random VQGAN of the model's VQ config, saved as a Lightning-style checkpoint (with encoder weights and
    the codebook next to the decoder, as Chameleon's vqgan.ckpt)."""
    from specdec.adapters.hf.vqgan import ChameleonVQGANDecoder

    torch.manual_seed(seed)
    decoder = ChameleonVQGANDecoder(model.model.vqmodel.config)
    with torch.no_grad():
        for param in decoder.parameters():
            param.add_(0.05 * torch.randn_like(param))  # GroupNorm affine params leave their 1 / 0 init
    state = dict(decoder.state_dict())
    state["quantize.embedding.weight"] = model.model.vqmodel.quantize.embedding.weight.detach().clone()
    state["encoder.conv_in.weight"] = torch.zeros(1)
    state.update(changes)
    torch.save({"state_dict": state}, path)
    return decoder


def test_chameleon_vqgan_decoder_from_a_local_checkpoint_returns_images(tmp_path):
    model = tiny_chameleon(seed=3)
    path = tmp_path / "vqgan.ckpt"
    decoder = _vqgan_checkpoint(model, path)
    common = dict(negative_input_ids=NEGATIVE, grid=(3, 3), eol_token_id=CHAMELEON_EOL, seed=1)
    out = speculative_generate(model, PROMPTS, vqgan_checkpoint=path, **common)
    assert out.images.shape == (3, 3, 6, 6) and torch.isfinite(out.images).all()  # 2 levels: x2 upsampling
    codebook = model.model.vqmodel.quantize.embedding.weight
    torch.testing.assert_close(out.images, decoder.decode(out.image_tokens, codebook))
    again = speculative_generate(model, PROMPTS, **common)  # loaded once, kept for the model
    torch.testing.assert_close(again.images, out.images)
    # the weights really come from the file: another checkpoint, other pixels
    other = tmp_path / "other.ckpt"
    _vqgan_checkpoint(model, other, seed=1)
    assert not torch.allclose(speculative_generate(model, PROMPTS, vqgan_checkpoint=other, **common).images,
                              out.images)


def test_chameleon_vqgan_decoder_matches_an_independent_implementation(tmp_path):
    """HF's Janus VQ decoder is the same taming-transformers decoder (attention at the lowest resolution) with
    its levels stored in the other order: the same weights give the same pixels."""
    from specdec.adapters.hf.vqgan import ChameleonVQGANDecoder

    vq = transformers.ChameleonVQVAEConfig(embed_dim=8, num_embeddings=16, base_channels=32,
                                           channel_multiplier=[1, 2], num_res_blocks=1, latent_channels=32,
                                           resolution=32, attn_resolutions=[16])
    torch.manual_seed(0)
    ours = ChameleonVQGANDecoder(vq).eval()
    with torch.no_grad():
        for param in ours.parameters():
            param.add_(0.05 * torch.randn_like(param))
    janus_vq = transformers.models.janus.configuration_janus.JanusVQVAEConfig(
        embed_dim=8, num_embeddings=16, base_channels=32, channel_multiplier=[1, 2], num_res_blocks=1,
        latent_channels=32, out_channels=3)
    theirs = transformers.models.janus.modeling_janus.JanusVQVAEDecoder(janus_vq).eval()
    levels = 2
    mapped = {}
    for key, value in ours.decoder.state_dict().items():
        if key.startswith("up."):
            _, level, rest = key.split(".", 2)
            key = f"up.{levels - 1 - int(level)}.{rest}"
        mapped[key] = value
    missing, unexpected = theirs.load_state_dict(mapped, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    latents = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        expected, got = theirs(latents), ours.run_decoder(latents)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_vqgan_checkpoint_errors(tmp_path):
    model = tiny_chameleon(seed=3)
    common = dict(negative_input_ids=NEGATIVE, grid=(3, 3), num_tokens=1)
    wrong_codebook = tmp_path / "codebook.ckpt"
    _vqgan_checkpoint(model, wrong_codebook, **{"quantize.embedding.weight": torch.zeros(16, 8)})
    with pytest.raises(ValueError, match="codebook"):
        speculative_generate(model, PROMPTS, vqgan_checkpoint=wrong_codebook, **common)
    wrong_shape = tmp_path / "shape.ckpt"
    _vqgan_checkpoint(model, wrong_shape, **{"decoder.conv_in.weight": torch.zeros(3, 3, 3, 3)})
    with pytest.raises(ValueError, match="does not fit"):
        speculative_generate(model, PROMPTS, vqgan_checkpoint=wrong_shape, **common)
    with pytest.raises(ValueError, match="no file"):
        speculative_generate(model, PROMPTS, vqgan_checkpoint=tmp_path / "absent.ckpt", **common)
    with pytest.raises(ValueError, match="Chameleon family"):
        speculative_generate(tiny_emu3(), PROMPTS, vqgan_checkpoint=wrong_shape, **common)


# -- the README snippet, executed as written ---------------------------------------------------------------------


def _readme_snippet():
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Speed up a Hugging Face image generator", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    return code


class _OfflineJanusProcessor:
    """Stands in for ``JanusProcessor.from_pretrained`` (no download): a fixed prompt ending with BOI, and the
    real ``JanusImageProcessor.postprocess``."""

    image_processor = None

    def __call__(self, text, generation_mode, return_tensors):
        assert generation_mode == "image" and return_tensors == "pt"
        ids = torch.tensor([[1, 10, 11, 12, 5]] * len(text))
        return transformers.BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    def postprocess(self, images, **kwargs):
        return transformers.JanusImageProcessor().postprocess(images, **kwargs)


def test_readme_snippet_runs_as_written(monkeypatch, capsys):
    monkeypatch.setattr(transformers.JanusForConditionalGeneration, "from_pretrained",
                        classmethod(lambda cls, *args, **kwargs: tiny_janus(upsampling=5)))  # 64 x 64 px
    monkeypatch.setattr(transformers.JanusProcessor, "from_pretrained",
                        classmethod(lambda cls, *args, **kwargs: _OfflineJanusProcessor()))
    scope = {}
    exec(compile(_readme_snippet(), "README.md", "exec"), scope)
    images = scope["images"]
    assert len(images) == 2 and images[0].size == (64, 64)  # num_return_sequences=2
    assert "target_forwards" in capsys.readouterr().out


def _readme_block(heading: str, language: str) -> str:
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


class _OfflineJanusTextProcessor(_OfflineJanusProcessor):
    """The stand-in processor as ``specdec train head`` calls it (a batch of text prompts, padded left)."""

    tokenizer = type("Tokenizer", (), {"padding_side": "right"})()

    def __call__(self, text, generation_mode, return_tensors, padding=False):
        return super().__call__(text, generation_mode, return_tensors)


def test_readme_train_a_head_then_lantern_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's train-a-head section: its shell command (through the CLI's entry point, plus options that
    shrink the run to a test's size) on a tiny Janus saved as a local model directory, then its Python lines."""
    import shlex

    from specdec.cli import main

    monkeypatch.chdir(tmp_path)
    model = tiny_janus(upsampling=5)
    model.save_pretrained(tmp_path / "Janus-Pro-1B")
    (tmp_path / "prompts.txt").write_text("".join(f"prompt {i}\n" for i in range(6)))
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained",
                        classmethod(lambda cls, *args, **kwargs: _OfflineJanusTextProcessor()))
    command = shlex.split(_readme_block("### Train a draft head, then run LANTERN", "bash").strip())
    assert command[:3] == ["specdec", "train", "head"]
    small = ["--steps", "4", "--images", "4", "--batch-size", "2", "--holdout", "1", "--num-tokens", "8"]
    assert main(command[1:] + small + ["--device", "cpu"]) == 0
    assert (tmp_path / "heads" / "janus-pro-1b" / "head.json").is_file()
    capsys.readouterr()
    inputs = _OfflineJanusProcessor()(text=["a fox"], generation_mode="image", return_tensors="pt")
    scope = {"model": model, "inputs": inputs, "speculative_generate": speculative_generate}
    code = _readme_block("### Train a draft head, then run LANTERN", "python")
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["out"].codes.shape == (1, 16) and "target_forwards" in capsys.readouterr().out
