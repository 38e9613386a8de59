"""``specdec train head``: self-distillation of an HF draft head on tiny random Janus / Emu3 / Chameleon models
built offline (the builders of test_adapters_hf.py; their image heads are sharpened, so distributions are not flat).

* Target features are those the decoder hands the head at run time (one causal pass == token-by-token feeds).
* The loss falls and a trained head's acceptance estimate beats the untrained head's on held-out prompts; the
  batched estimate equals chains drafted one entry at a time; the saved head loads back with the same estimate.
* An interrupted run resumes from its checkpoint (same weights as an uninterrupted run) without regenerating.
* The CLI runs end to end on a model saved with ``save_pretrained``; bad input exits with the reason.
"""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_adapters_hf import tiny_chameleon, tiny_emu3, tiny_janus  # noqa: E402

from specdec.adapters.hf import train_head as th  # noqa: E402
from specdec.adapters.hf.families import family_of  # noqa: E402
from specdec.adapters.hf.head import HFDraftHead, load_head  # noqa: E402
from specdec.adapters.hf.target import HFImageTarget  # noqa: E402
from specdec.cli import main  # noqa: E402
from specdec.decoding.feed import attention_mask  # noqa: E402

PROMPT_LINES = [f"1 {10 + i} {11 + i} {12 + i} 5" for i in range(0, 120, 5)]  # 24 prompts
SMALL_VOCAB_LINES = [f"1 {26 + i} {27 + (7 * i) % 36} 5" for i in range(12)]  # Emu3 / Chameleon: 64 text ids
NEGATIVE = "1 3 3 4 5"


def _options(**changes):
    base = dict(steps=150, batch_size=8, images=48, lr=1e-3, holdout=6, eval_every=75, progress=False)
    return th.HeadTrainOptions(**{**base, **changes})


@pytest.fixture(scope="module")
def janus_run(tmp_path_factory):
    torch.manual_seed(0)
    model = tiny_janus()
    out = tmp_path_factory.mktemp("janus_head")
    prompts = th.prompts_from_ids(PROMPT_LINES)
    metrics = th.train_head(model, prompts, out, _options())
    return model, prompts, out, metrics


def test_loss_falls_and_the_trained_head_beats_the_untrained_one(janus_run):
    model, prompts, out, metrics = janus_run
    curve = metrics["loss_curve"]
    assert len(curve) == 15 and curve[-1]["step"] == 150
    assert curve[-1]["loss"] < 0.7 * curve[0]["loss"]
    assert curve[-1]["top1_agree"] > curve[0]["top1_agree"] + 0.3
    untrained, final = metrics["untrained"], metrics["final"]
    assert untrained["step"] == 0 and final["step"] == 150 and final["starts"] == 6 * (16 - 5)
    assert final["mean_accepted_length"] > untrained["mean_accepted_length"] + 1.0
    assert [a["step"] for a in metrics["acceptance"]] == [0, 75, 150]
    assert json.loads((out / "metrics.json").read_text())["final"] == final
    # the saved head loads back and gives the same estimate on the held-out greedy images
    head = load_head(out, model)
    codes = torch.load(out / th.STATE_DIR / "eval_images.pt", weights_only=False)["codes"]
    hold = prompts.rows(torch.arange(18, 24))
    features, _ = th.target_features(model, hold, codes, uses_cfg=True)
    again = th.acceptance_estimate(head, codes, features, metrics["settings"]["sampling"]["cfg_scale"])
    assert again == {k: final[k] for k in again}
    # a fresh head of the same seed is the untrained one
    torch.manual_seed(0)
    fresh = th.acceptance_estimate(HFDraftHead(model), codes, features, 5.0)
    assert fresh["mean_accepted_length"] == untrained["mean_accepted_length"]


def _sequential_chains(head, codes, features, scale, depth):
    """Reference of acceptance_estimate: per start, a fresh cache, entries fed one at a time."""
    batch, n = codes.shape
    copies = features.shape[0] // batch
    x = codes.repeat(copies, 1)
    total, count = 0, 0
    for s in range(n - depth):
        cache = head.new_cache(features.shape[0], n + depth + 1)
        for j in range(s + 1):  # teacher entries: position j + 1, slot j
            slot = torch.full((x.shape[0], 1), j)
            mask = torch.arange(n + depth + 1)[None, None, :] <= j
            logits, feat = head.forward_tokens(x[:, j:j + 1], features[:, j:j + 1], slot + 1, slot,
                                               mask.expand(x.shape[0], 1, -1), cache)
        accepted = torch.zeros(batch, dtype=torch.bool)
        alive = torch.ones(batch, dtype=torch.bool)
        run = torch.zeros(batch)
        for k in range(depth):
            cond, uncond = logits[:batch, 0], logits[batch:, 0]
            guided = cond if copies == 1 else uncond + scale * (cond - uncond)
            accepted = guided.argmax(-1) == codes[:, s + 1 + k]
            alive = alive & accepted
            run += alive.float()
            if k == depth - 1:
                break
            slot = torch.full((x.shape[0], 1), s + 1 + k)  # chain entries continue the row's slots
            mask = torch.arange(n + depth + 1)[None, None, :] <= s + 1 + k
            logits, feat = head.forward_tokens(x[:, s + 1 + k:s + 2 + k], feat, slot + 1, slot,
                                               mask.expand(x.shape[0], 1, -1), cache)
        total += float(run.sum())
        count += batch
    return total / count


def test_acceptance_estimate_equals_chains_drafted_one_entry_at_a_time(janus_run):
    model, prompts, out, metrics = janus_run
    head = load_head(out, model)
    codes = torch.load(out / th.STATE_DIR / "eval_images.pt", weights_only=False)["codes"]
    features, _ = th.target_features(model, prompts.rows(torch.arange(18, 24)), codes, uses_cfg=True)
    for depth in (1, 3):
        batched = th.acceptance_estimate(head, codes, features, 5.0, depth)
        assert batched["depth"] == depth
        reference = _sequential_chains(head, codes, features, 5.0, depth)
        assert batched["mean_accepted_length"] == pytest.approx(reference, abs=1e-4)
    assert 0 < th.acceptance_estimate(head, codes, features, 5.0, 3)["mean_accepted_length"] < 3


@pytest.mark.parametrize("name", ["emu3", "chameleon"])
def test_features_are_those_of_token_by_token_decoding_with_eol_entries(name):
    model = tiny_emu3() if name == "emu3" else tiny_chameleon()
    grid, eol = ((3, 4), None) if name == "emu3" else ((3, 3), 8)
    prompts = th.prompts_from_ids(SMALL_VOCAB_LINES[:2], negative=NEGATIVE)
    codes = torch.randint(0, 16, (2, 7))
    features, logits = th.target_features(model, prompts, codes, uses_cfg=True, grid=grid, eol_token_id=eol)
    assert features.shape == (4, 7, 64) and logits.shape == (4, 7, 16)
    family = family_of(model, eol)
    rows, mask = th._prompt_rows(model, family, prompts, True)
    target = HFImageTarget(family, rows, mask, grid, 7)
    cache = target.new_cache(4, 9)
    with torch.no_grad():
        first, hidden = target.prefill(torch.arange(4), cache)
        torch.testing.assert_close(features[:, 0], hidden)
        for i in range(6):  # one token per forward, as AR decoding feeds them
            slot = torch.full((4, 1), i + 1)
            step_mask = attention_mask(slot, torch.ones_like(slot, dtype=torch.bool), torch.full((4,), i + 1), 9)
            lg, h = target.forward_tokens(codes[:, i:i + 1].repeat(2, 1), slot, slot, step_mask, cache)
            torch.testing.assert_close(features[:, i + 1], h[:, 0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(logits[:, i + 1], lg[:, 0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["emu3", "chameleon"])
def test_eol_layouts_train(name, tmp_path):
    model = tiny_emu3() if name == "emu3" else tiny_chameleon()
    extra = dict(grid=(3, 4)) if name == "emu3" else dict(grid=(3, 3), eol_token_id=8)
    prompts = th.prompts_from_ids(SMALL_VOCAB_LINES, negative=NEGATIVE)
    metrics = th.train_head(model, prompts, tmp_path, _options(steps=60, images=32, holdout=2, **extra))
    first, last = metrics["loss_curve"][0], metrics["loss_curve"][-1]
    assert last["loss"] < 0.9 * first["loss"] and last["top1_agree"] > first["top1_agree"] + 0.1
    assert metrics["settings"]["sampling"]["cfg_scale"] == 3.0  # the family's default guidance
    assert load_head(tmp_path, model).config.family == name


def test_interrupted_run_resumes_from_its_checkpoint_without_regenerating(tmp_path, monkeypatch):
    model = tiny_janus(seed=1)
    prompts = th.prompts_from_ids(PROMPT_LINES[:10])
    opts = dict(steps=24, images=16, batch_size=4, holdout=2, eval_every=8, log_every=4)
    whole = th.train_head(model, prompts, tmp_path / "whole", _options(**opts))
    first = th.train_head(model, prompts, tmp_path / "split", _options(stop_after=10, **opts))
    assert first == {"stopped_at": 10} and not (tmp_path / "split" / "head.safetensors").exists()
    state = torch.load(tmp_path / "split" / th.STATE_DIR / "checkpoint.pt", weights_only=False)
    assert state["step"] == 10 and state["cursor"] == {"epoch": 2, "batch_in_epoch": 2}  # 4 batches per epoch

    def refuse(*args, **kwargs):
        raise AssertionError("images were regenerated")

    monkeypatch.setattr(th, "speculative_generate", refuse)
    resumed = th.train_head(model, prompts, tmp_path / "split", _options(**opts))
    assert resumed["loss_curve"] == whole["loss_curve"] and resumed["acceptance"] == whole["acceptance"]
    a, b = load_head(tmp_path / "whole", model), load_head(tmp_path / "split", model)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    # other settings against the same checkpoint are refused; --fresh starts over
    with pytest.raises(ValueError, match="fresh"):
        th.train_head(model, prompts, tmp_path / "split", _options(**{**opts, "steps": 30}))
    monkeypatch.undo()
    again = th.train_head(model, prompts, tmp_path / "split", _options(fresh=True, **opts))
    assert again["loss_curve"] == whole["loss_curve"]


def _write(path, text):
    path.write_text(text)
    return path


def test_cli_trains_a_head_end_to_end_from_a_saved_model(tmp_path, capsys):
    model = tiny_janus()
    model.save_pretrained(tmp_path / "janus")
    prompts = _write(tmp_path / "prompts.txt", "\n".join(PROMPT_LINES[:8]) + "\n\n")
    out = tmp_path / "head"
    code = main(["train", "head", "--model", str(tmp_path / "janus"), "--prompt-ids", str(prompts),
                 "--out", str(out), "--steps", "12", "--images", "8", "--batch-size", "4", "--holdout", "2",
                 "--device", "cpu", "--num-tokens", "8"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["tokens_per_image"] == 8 and metrics["settings"]["steps"] == 12
    assert metrics["settings"]["sampling"]["temperature"] == 1.0 and metrics["final"]["depth"] == 5
    assert (out / "train_state" / "checkpoint.pt").is_file()
    assert load_head(out, model).config.family == "janus"
    assert printed["final"] == metrics["final"] and printed["family"] == "janus"


def test_cli_errors(tmp_path):
    prompts = _write(tmp_path / "p.txt", "1 10 11 5\n")
    base = ["train", "head", "--out", str(tmp_path / "o"), "--device", "cpu"]
    with pytest.raises(SystemExit, match="does not exist"):
        main(base + ["--model", str(tmp_path / "absent"), "--prompt-ids", str(prompts)])
    (tmp_path / "llama").mkdir()
    _write(tmp_path / "llama" / "config.json", json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(SystemExit, match="not supported"):
        main(base + ["--model", str(tmp_path / "llama"), "--prompt-ids", str(prompts)])
    empty = _write(tmp_path / "empty.txt", "\n  \n")
    with pytest.raises(SystemExit, match="empty"):
        main(base + ["--model", str(tmp_path / "llama"), "--prompt-ids", str(empty)])
    with pytest.raises(SystemExit, match="does not exist"):
        main(base + ["--model", str(tmp_path / "llama"), "--prompt-ids", str(tmp_path / "nope.txt")])
    with pytest.raises(SystemExit, match="exactly one"):
        main(base + ["--model", str(tmp_path / "llama")])
    with pytest.raises(SystemExit, match="only apply"):
        main(["train", "eagle", "--model", str(tmp_path / "llama")])
    bad = _write(tmp_path / "bad.txt", "1 two 3\n")
    with pytest.raises(ValueError, match="integers"):
        th.prompts_from_ids(th.read_lines(bad))
    with pytest.raises(ValueError, match="batch_size"):
        th.train_head(tiny_janus(), th.prompts_from_ids(PROMPT_LINES[:4]), tmp_path / "x",
                      _options(images=4, batch_size=8))
    with pytest.raises(ValueError, match="negative_inputs"):  # Emu3 without an unconditional prompt
        th.train_head(tiny_emu3(), th.prompts_from_ids(SMALL_VOCAB_LINES[:4]), tmp_path / "y",
                      _options(images=8, grid=(3, 4), holdout=1))


class _FakeProcessor:
    """Stands in for a local processor: records the calls, returns fixed ids."""

    def __init__(self):
        self.calls = []
        self.tokenizer = type("T", (), {"padding_side": "right"})()

    def __call__(self, text, **kwargs):
        self.calls.append((list(text), kwargs))
        ids = torch.tensor([[1, 10 + i, 5] for i in range(len(text))])
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if kwargs.get("return_for_image_generation"):
            out["image_sizes"] = [[3, 4]] * len(text)
        return out


def test_text_prompts_are_built_as_speculative_generate_expects(monkeypatch, tmp_path):
    fake = _FakeProcessor()
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", classmethod(lambda cls, *a, **k: fake))
    janus = th.prompts_from_text(tmp_path, "Janus", ["a fox", "a cat"])
    assert fake.calls[0][1]["generation_mode"] == "image" and fake.tokenizer.padding_side == "left"
    assert janus.ids.shape == (2, 3) and janus.negative_ids is None
    emu3 = th.prompts_from_text(tmp_path, "Emu3", ["a fox"], negative="blurry")
    assert emu3.grid == (3, 4) and emu3.negative_ids.shape == (1, 3)
    assert fake.calls[-1][0] == ["blurry"] and fake.calls[-1][1]["return_for_image_generation"]
    with pytest.raises(ValueError, match="image_prefix"):
        th.prompts_from_text(tmp_path, "Chameleon", ["a fox"])
