"""The ``cspd`` rows of ``specdec demo``: CSpD on the continuous testbed beside its AR baseline.

Same classes and row keys as the discrete demo (``balanced_classes`` and ``derive_row_keys(seed)``), so the same
seeds drive every run. Rows (each a full pass over the evaluation images, ragged batches of ``batch_size``):

* ``cspd-ar``: plain AR sampling of the continuous target (the baseline every speed-up is relative to);
* ``cspd-ar (seed + 1)``: AR with other row keys, untimed: how far quality moves by chance alone;
* ``cspd``: aligned trajectories, 5 % pre-fill, gamma 4, causal (paper) acceptance;
* ``cspd (independent noise)``: the same without trajectory alignment;
* ``cspd (released rule)``: aligned, with the released code's independent per-token commits (approximate on an
  AR model; docs/CSPD.md);
* ``cspd (released tau_in 42)``: aligned, causal, with the released code's inner temperature 42 in the acceptance
  test (flattens the density ratio: high acceptance, not exact).

Writes ``demo_cspd.md`` / ``.csv`` / ``.json`` and ``samples_cspd.png`` / ``samples_cspd_ar.png`` to ``out``.
Wall-clock columns are measured in this run on whatever machine runs it; on a shared CPU they are noisy.
"""

import json
from pathlib import Path
from typing import Dict, List

import torch
from tqdm.auto import tqdm

from ..decoding import derive_row_keys
from ..metrics.evaluate import balanced_classes, balanced_test_subset, save_grid, sample_quality
from ..testbed import shipped
from .sample import decode_images, generate_ar, generate_cspd, timed
from .train import DRAFT_NAME, EVAL_CFG, TARGET_NAME, load_continuous

COLUMNS = (
    ("method", "method", "{}"),
    ("acceptance", "acceptance rate", "{:.3f}"),
    ("accepted_per_verification", "accepted prefix / verification", "{:.2f}"),
    ("tokens_per_forward", "tokens / target forward", "{:.2f}"),
    ("seconds_per_image", "s / image", "{:.4f}"),
    ("speedup", "wall-clock speed-up", "{:.2f}x"),
    ("class_accuracy", "class acc", "{:.3f}"),
    ("fd_cls", "FD-cls", "{:.2f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
)

#: (row name, generate_cspd options) of the speculative rows.
CSPD_RUNS = (
    ("cspd", {}),
    ("cspd (independent noise)", {"align": False}),
    ("cspd (released rule)", {"causal": False}),
    ("cspd (released tau_in 42)", {"inner_temperature": 42.0}),
)


def _generate(fn, classes, keys, batch_size, **kwargs):
    """Run ``fn`` over the rows in batches; returns (tokens, merged stats, seconds)."""
    tokens, stats, seconds = [], {}, 0.0
    for i in range(0, len(classes), batch_size):
        res, sec = timed(fn, classes=classes[i : i + batch_size], keys=keys[i : i + batch_size], **kwargs)
        seconds += sec
        tokens.append(res.tokens)
        for k, v in res.stats.items():  # per-row tensors are concatenated, counters summed
            if torch.is_tensor(v):
                stats[k] = torch.cat([stats[k], v]) if k in stats else v
            else:
                stats[k] = stats.get(k, 0) + v
    return torch.cat(tokens), stats, seconds


def run_cspd_demo(out: Path = Path("results"), images_per_class: int = 10, seed: int = 0, batch_size: int = 100,
                  cfg_scale: float = EVAL_CFG, progress: bool = True, weights=None, threads: int = 1) -> List[Dict]:
    """Run every row (module docstring), write the table, grids and JSON to ``out``; returns the rows.

    Runs with ``threads`` torch threads (restored afterwards): the models are small enough that a second thread
    buys little, and on a shared CPU it can cost several times the wall-clock."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_rows(Path(out), images_per_class, seed, batch_size, cfg_scale, progress, weights)
    finally:
        torch.set_num_threads(previous)


def _run_rows(out: Path, images_per_class: int, seed: int, batch_size: int, cfg_scale: float, progress: bool,
              weights) -> List[Dict]:
    out.mkdir(parents=True, exist_ok=True)
    target = load_continuous(TARGET_NAME, in_dir=weights)
    draft = load_continuous(DRAFT_NAME, in_dir=weights)
    vq, classifier = shipped.load_model("vq"), shipped.load_model("classifier")
    classes = balanced_classes(10 * images_per_class)
    keys = derive_row_keys(len(classes), seed)
    real, _, _ = balanced_test_subset(len(classes))
    num_tokens = target.num_tokens

    def judge(tokens):
        images = decode_images(target, vq, tokens)
        return images, sample_quality(classifier, images, classes, real)

    # Untimed warm-up of both models and the op on one row, so one-off costs stay out of the timings.
    generate_ar(target, classes[:1], keys[:1], cfg_scale=cfg_scale)
    generate_cspd(target, draft, classes[:1], keys[:1], cfg_scale=cfg_scale, prefill_ratio=0.9)
    runs = [("cspd-ar", None, {})] + [(name, "cspd", opts) for name, opts in CSPD_RUNS]
    rows, ar_seconds = [], None
    for name, kind, opts in tqdm(runs, desc="cspd", disable=not progress):
        if kind is None:
            tokens, stats, seconds = _generate(lambda **kw: generate_ar(target, **kw), classes, keys, batch_size,
                                               cfg_scale=cfg_scale)
            ar_seconds = seconds
        else:
            tokens, stats, seconds = _generate(lambda **kw: generate_cspd(target, draft, **kw), classes, keys,
                                               batch_size, cfg_scale=cfg_scale, **opts)
        images, quality = judge(tokens)
        forwards = stats["target_forwards"].double().mean().item()
        row = {"method": name, "tokens_per_forward": num_tokens / forwards,
               "seconds_per_image": seconds / len(classes), "speedup": ar_seconds / seconds, **quality,
               "options": opts}
        if kind is not None:
            row.update({"acceptance": stats["drafts_accepted"] / max(1, stats["drafts_tested"]),
                        "accepted_per_verification": stats["accept_prefix"] / max(1, stats["verifications"]),
                        "fallbacks": stats["fallbacks"], "drafts_tested": stats["drafts_tested"]})
        rows.append(row)
        if name in ("cspd-ar", "cspd"):
            save_grid(images, classes, out / f"samples_{name.replace('-', '_')}.png",
                      per_class=min(10, images_per_class),
                      title=f"{name}: {row['tokens_per_forward']:.2f} tokens / target forward")
    noise_tokens, _, _ = _generate(lambda **kw: generate_ar(target, **kw), classes,
                                   derive_row_keys(len(classes), seed + 1), batch_size, cfg_scale=cfg_scale)
    rows.insert(1, {"method": "cspd-ar (seed + 1)", "tokens_per_forward": 1.0, **judge(noise_tokens)[1]})
    text = _write(out, rows, images_per_class, seed, batch_size, cfg_scale)
    if progress:
        print(text)
    return rows


def _write(out: Path, rows: List[Dict], images_per_class: int, seed: int, batch_size: int, cfg_scale: float) -> str:
    from ..experiments.common import machine_line, write_table

    header = (f"# CSpD on the continuous testbed\n\n{10 * images_per_class} images ({images_per_class} per class), "
              f"CFG {cfg_scale} (on epsilon), seed {seed}, ragged batches of {batch_size}; gamma 4, pre-fill 5 %, "
              f"causal acceptance unless the row says otherwise. Machine: {machine_line(torch.get_num_threads())}.")
    text = write_table(rows, COLUMNS, out / "demo_cspd.csv", out / "demo_cspd.md", header)
    (out / "demo_cspd.json").write_text(json.dumps({"rows": rows}, indent=2, default=str) + "\n")
    return text
