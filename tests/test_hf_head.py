"""The EAGLE-style draft head for Hugging Face image generators (``specdec.adapters.hf.head``), on the tiny random
models of ``test_adapters_hf``: the cached protocol path equals the causal training path, logits come from the
target's own image head, save / load round-trips only the head's weights, and a head refuses another model."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_adapters_hf import tiny_chameleon, tiny_emu3, tiny_janus  # noqa: E402

from specdec.adapters.hf.head import CONFIG_FILE, HFDraftHead, load_head  # noqa: E402

BUILDERS = {"janus": tiny_janus, "emu3": tiny_emu3, "chameleon": tiny_chameleon}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def model(request):
    return BUILDERS[request.param]()


def _inputs(head, batch=2, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, head.vocab_size, (batch, length), generator=g)
    hidden = torch.randn(batch, length, head.hidden_size, generator=g)
    return tokens, hidden


def test_cached_ragged_feed_equals_the_causal_training_pass(model):
    head = HFDraftHead(model)
    tokens, hidden = _inputs(head)
    logits, feature = head.forward_train(tokens, hidden)
    # The same entries fed in two calls through the slot cache (entry at position j in slot j - 1), the second
    # call seeing the first call's slots: the protocol path of the tree methods.
    slots_total, split = 10, 2
    cache = head.new_cache(tokens.shape[0], slots_total)
    outs = []
    for lo, hi in ((0, split), (split, tokens.shape[1])):
        slots = torch.arange(lo, hi).expand(tokens.shape[0], -1)
        mask = (torch.arange(slots_total)[None, None, :] <= slots[:, :, None])
        out = head.forward_tokens(tokens[:, lo:hi], hidden[:, lo:hi], slots + 1, slots, mask, cache)
        outs.append(out)
    torch.testing.assert_close(torch.cat([o[0] for o in outs], 1), logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([o[1] for o in outs], 1), feature, rtol=1e-5, atol=1e-5)
    assert logits.dtype == torch.float32 and logits.shape[-1] == head.family.vocab_size


def test_logits_are_the_targets_image_head_of_the_predicted_feature(model):
    head = HFDraftHead(model)
    tokens, hidden = _inputs(head, seed=1)
    logits, feature = head.forward_train(tokens, hidden)
    torch.testing.assert_close(logits, head.family.image_logits(feature).float())


def test_save_load_round_trip_keeps_only_the_heads_weights(model, tmp_path):
    head = HFDraftHead(model)
    tokens, hidden = _inputs(head, seed=2)
    head.save(tmp_path)
    names = set(head.state_dict())
    assert names and all(n.startswith(("fc.", "layer.")) for n in names)  # no target weights travel
    loaded = load_head(tmp_path, model)
    assert loaded.config == head.config
    torch.testing.assert_close(loaded.forward_train(tokens, hidden)[0], head.forward_train(tokens, hidden)[0])
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["family"] == head.config.family


def test_a_head_refuses_another_model_and_bad_files(tmp_path):
    janus, emu3 = tiny_janus(), tiny_emu3()
    HFDraftHead(janus).save(tmp_path / "janus")
    with pytest.raises(ValueError, match="another model.*family 'janus'"):
        load_head(tmp_path / "janus", emu3)
    with pytest.raises(ValueError, match="vocab_size 32"):
        load_head(tmp_path / "janus", tiny_janus(codes=64))
    with pytest.raises(ValueError, match="no draft head"):
        load_head(tmp_path / "missing", janus)
    with pytest.raises(ValueError, match="num_heads"):
        HFDraftHead(janus, num_heads=3)
