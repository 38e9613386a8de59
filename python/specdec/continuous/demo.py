"""The ``cspd`` rows of ``specdec demo``: CSpD on the continuous testbed beside its AR baseline.

Same classes and row keys as the discrete demo (``balanced_classes`` and ``derive_row_keys(seed)``), so the same
seeds drive every run. Rows (each a full pass over the rows, ragged batches of ``batch_size``):

* ``cspd-ar``: plain AR sampling of the continuous target (the baseline every speed-up is relative to);
* ``cspd-ar (seed + 1)``: AR with other row keys, untimed: how far quality moves by chance alone;
* ``cspd``: aligned trajectories, 5 % pre-fill, gamma 4, causal (paper) acceptance at tau_in = 1 (exact);
* ``cspd (independent noise)``: the same without trajectory alignment;
* ``cspd (tau_in X)``: aligned, causal, inner temperature X in the acceptance test (:data:`RELAXED_TAUS`): the
  density ratio is flattened, acceptance rises, the output is no longer exactly the target's; the table's verdict
  says whether the quality cost is beyond chance;
* ``cspd (released rule)``: aligned, the released code's independent per-token commits (approximate on an AR
  model; docs/CSPD.md);
* ``cspd (released tau_in 42)``: aligned, causal, the released code's inner temperature 42;
* ``cspd-eagle``, ``cspd-eagle-2l``: the same exact loop (aligned, causal, tau_in 1) with the feature-conditioned
  drafts of :mod:`.feature_draft` (one / two decoder layers on the target's conditions, the target's head);
* ``cspd-eagle (tau_in X)``: the one-layer feature draft with the relaxed test.

The frontier (:mod:`.frontier`) adds, teacher-forced on held-out images, each draft's distance between its and the
target's final means and the oracle family's (the target's own conditions plus noise), and writes
``demo_cspd_frontier.{md,json,png}``: tokens per forward against KID (the rows above) and against that distance.

Quality is judged as in ``specdec demo`` (:class:`specdec.experiments.common.QualityJudge`: class accuracy, FD-cls,
KID, precision / recall with bootstrap 95 % intervals, the paired difference to ``cspd-ar`` and a verdict), on
the same rows as the timing. Writes ``demo_cspd.md`` / ``.csv`` / ``.json``, ``demo_cspd.png`` (tokens per target
forward against KID with intervals) and ``samples_cspd.png`` / ``samples_cspd_ar.png`` to ``out``. Wall-clock
columns are measured in this run on whatever machine runs it; on a shared CPU they are noisy.
"""

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..decoding import derive_row_keys
from ..metrics.evaluate import balanced_classes, save_grid
from ..testbed import shipped
from .sample import decode_images, generate_ar, generate_cspd, timed
from .feature_draft import load_feature_draft
from .train import DRAFT_NAME, EVAL_CFG, FEATURE_DRAFTS, TARGET_NAME, load_continuous

#: Inner temperatures of the relaxed rows (between the exact tau = 1 and the released code's 42).
RELAXED_TAUS = (4.0, 12.0)

#: (row name, generate_cspd options) of the speculative rows.
CSPD_RUNS = (
    ("cspd", {}),
    ("cspd (independent noise)", {"align": False}),
    *((f"cspd (tau_in {tau:g})", {"inner_temperature": tau}) for tau in RELAXED_TAUS),
    ("cspd (released rule)", {"causal": False}),
    ("cspd (released tau_in 42)", {"inner_temperature": 42.0}),
    ("cspd-eagle", {"draft": "cspd-eagle"}),
    ("cspd-eagle-2l", {"draft": "cspd-eagle-2l"}),
    *((f"cspd-eagle (tau_in {tau:g})", {"draft": "cspd-eagle", "inner_temperature": tau}) for tau in RELAXED_TAUS),
)
#: Held-out images (balanced) the frontier's teacher-forced distances are measured on.
FRONTIER_IMAGES = 50


def _columns():
    from ..experiments.common import QUALITY_COLUMNS

    return (
        ("method", "method", "{}"),
        ("acceptance", "acceptance rate", "{:.3f}"),
        ("accepted_per_verification", "accepted prefix / verification", "{:.2f}"),
        ("tokens_per_forward", "tokens / target forward", "{:.2f}"),
        ("seconds_per_image", "s / image", "{:.4f}"),
        ("speedup", "wall-clock speed-up", "{:.2f}x"),
    ) + QUALITY_COLUMNS


def _generate(fn, classes, keys, batch_size, progress, desc, **kwargs):
    """Run ``fn`` over the rows in batches; returns (tokens, merged stats, seconds)."""
    tokens, stats, seconds = [], {}, 0.0
    for i in tqdm(range(0, len(classes), batch_size), desc=desc, leave=False, disable=not progress):
        res, sec = timed(fn, classes=classes[i : i + batch_size], keys=keys[i : i + batch_size], **kwargs)
        seconds += sec
        tokens.append(res.tokens)
        for k, v in res.stats.items():  # per-row tensors are concatenated, counters summed
            if torch.is_tensor(v):
                stats[k] = torch.cat([stats[k], v]) if k in stats else v
            else:
                stats[k] = stats.get(k, 0) + v
    return torch.cat(tokens), stats, seconds


def run_cspd_demo(out: Path = Path("results"), images: int = 200, seed: int = 0, batch_size: int = 200,
                  cfg_scale: float = EVAL_CFG, progress: bool = True, weights=None, threads: Optional[int] = None,
                  bootstrap_replicates: int = 200, runs: Sequence = CSPD_RUNS) -> List[Dict]:
    """Run every row (module docstring) over ``images`` balanced rows, write the table, plot, grids and JSON to
    ``out``; returns the rows.

    ``batch_size`` rows per call (ragged): the head's 25-step runs are cheap per row, so the widest batch is the
    fastest on a CPU (200 rows in one batch took about 0.7x the time of two batches of 100). ``threads``: torch
    threads for the run (restored afterwards; default: as set)."""
    if images < 10 or images % 10:
        raise ValueError(f"images must be a positive multiple of 10 (balanced classes), got {images}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        return _run_rows(Path(out), images, seed, batch_size, cfg_scale, progress, weights, bootstrap_replicates,
                         runs)
    finally:
        torch.set_num_threads(previous)


def _run_rows(out: Path, images: int, seed: int, batch_size: int, cfg_scale: float, progress: bool, weights,
              replicates: int, runs: Sequence) -> List[Dict]:
    from ..experiments.common import QualityJudge

    out.mkdir(parents=True, exist_ok=True)
    target = load_continuous(TARGET_NAME, in_dir=weights)
    drafts = {DRAFT_NAME: load_continuous(DRAFT_NAME, in_dir=weights)}
    for name in sorted({o["draft"] for _, o in runs if "draft" in o}):
        if name not in FEATURE_DRAFTS:
            raise ValueError(f"unknown draft {name!r} (known: {DRAFT_NAME}, {', '.join(FEATURE_DRAFTS)})")
        drafts[name] = load_feature_draft(name, target, weights)
    vq, classifier = shipped.load_model("vq"), shipped.load_model("classifier")
    classes = balanced_classes(images)
    keys = derive_row_keys(len(classes), seed)
    judge = QualityJudge(classifier, classes, replicates, seed)
    num_tokens = target.num_tokens

    # Untimed warm-up of the models and the op on one row, so one-off costs stay out of the timings.
    generate_ar(target, classes[:1], keys[:1], cfg_scale=cfg_scale)
    for draft in drafts.values():
        generate_cspd(target, draft, classes[:1], keys[:1], cfg_scale=cfg_scale, prefill_ratio=0.9)
    ar = lambda **kw: generate_ar(target, **kw)  # noqa: E731
    rows, ar_seconds, ar_judged = [], None, None
    for name, opts in tqdm([("cspd-ar", None)] + list(runs), desc="cspd", disable=not progress):
        if opts is None:
            fn, kwargs = ar, {}
        else:
            kwargs = {k: v for k, v in opts.items() if k != "draft"}
            draft = drafts[opts.get("draft", DRAFT_NAME)]
            fn = lambda draft=draft, **kw: generate_cspd(target, draft, **kw)  # noqa: E731
        tokens, stats, seconds = _generate(fn, classes, keys, batch_size, progress, name, cfg_scale=cfg_scale,
                                           **kwargs)
        img = decode_images(target, vq, tokens)
        judged = judge(img)
        ar_seconds, ar_judged = ar_seconds or seconds, ar_judged or judged
        forwards = stats["target_forwards"].double().mean().item()
        row = {"method": name, "tokens_per_forward": num_tokens / forwards, "seconds_per_image": seconds / len(classes),
               "speedup": ar_seconds / seconds, "options": opts or {},
               **judge.fields(judged, None if opts is None else ar_judged)}
        if opts is not None:
            row.update({"draft": opts.get("draft", DRAFT_NAME),
                        "acceptance": stats["drafts_accepted"] / max(1, stats["drafts_tested"]),
                        "accepted_per_verification": stats["accept_prefix"] / max(1, stats["verifications"]),
                        "fallbacks": stats["fallbacks"], "drafts_tested": stats["drafts_tested"]})
        rows.append(row)
        if name in ("cspd-ar", "cspd", "cspd-eagle"):
            save_grid(img, classes, out / f"samples_{name.replace('-', '_')}.png", per_class=min(10, images // 10),
                      title=f"{name}: {row['tokens_per_forward']:.2f} tokens / target forward")
    noise, _, _ = _generate(ar, classes, derive_row_keys(len(classes), seed + 1), batch_size, progress,
                            "cspd-ar (seed + 1)", cfg_scale=cfg_scale)
    rows.insert(1, {"method": "cspd-ar (seed + 1)", "tokens_per_forward": 1.0,
                    **judge.fields(judge(decode_images(target, vq, noise)), ar_judged)})
    _write_frontier(out, rows, target, drafts, vq, cfg_scale, seed)
    text = _write(out, rows, images, seed, batch_size, cfg_scale, replicates)
    if progress:
        print(text)
    return rows


def _write_frontier(out: Path, rows: List[Dict], target, drafts: Dict, vq, cfg_scale: float, seed: int) -> None:
    """Teacher-forced final-mean distances of every draft and of the oracle family on :data:`FRONTIER_IMAGES`
    held-out images, written with the exact rows' measured tokens per forward (``demo_cspd_frontier.*``)."""
    from ..experiments.common import markdown_table
    from ..metrics.evaluate import balanced_test_subset
    from .frontier import draft_distances, plot_frontier

    images, labels, _ = balanced_test_subset(FRONTIER_IMAGES)
    with torch.no_grad():
        latents = vq.encode_latents(images)
    dist = draft_distances(target, drafts, latents, labels, cfg_scale, seed=seed)
    exact = {r["draft"]: r for r in rows if r.get("draft") and not r["options"].keys() - {"draft"}}
    for d in dist:
        if d["draft"] in exact:
            d["measured_tokens_per_forward"] = exact[d["draft"]]["tokens_per_forward"]
            d["measured_acceptance"] = exact[d["draft"]]["acceptance"]
    columns = (("draft", "draft", "{}"), ("parameters", "own parameters", "{}"),
               ("z_rel_rmse", "condition error (rel. RMS)", "{:.3f}"),
               ("median_distance", "median distance of final means (1st draft)", "{:.3f}"),
               ("median_distance_later", "(later drafts)", "{:.3f}"),
               ("acceptance_first", "expected acceptance (1st)", "{:.3f}"),
               ("acceptance_later", "(later)", "{:.3f}"),
               ("expected_tokens_per_forward", "expected tokens / forward", "{:.2f}"),
               ("measured_acceptance", "measured acceptance", "{:.3f}"),
               ("measured_tokens_per_forward", "measured tokens / forward", "{:.2f}"))
    header = (f"# CSpD frontier: draft-target distance of final means\n\nTeacher-forced on {FRONTIER_IMAGES} "
              f"held-out images ({FRONTIER_IMAGES * 63} tokens), CFG {cfg_scale}, one noise per token shared by both "
              f"trajectories (alignment); final-step std {float(target.head.schedule.sigmas[0]):.3f}. Expected "
              f"acceptance 2 Phi(-d / (2 sigma_1)) averaged over tokens; expected tokens / forward for gamma 4 (first "
              f"draft at the 1st acceptance, later ones at the later). Oracle rows: the target's own conditions plus "
              f"isotropic noise of the given share of their RMS (not a draft: the distance a draft must reach). "
              f"Measured columns: the exact rows of `demo_cspd.md`. Feature drafts' parameters exclude the target's "
              f"head they share.")
    (out / "demo_cspd_frontier.md").write_text(header + "\n\n" + markdown_table(dist, columns))
    (out / "demo_cspd_frontier.json").write_text(json.dumps({"rows": dist}, indent=2, default=str) + "\n")
    aligned_exact = {r["method"]: r["draft"] for r in rows if r.get("draft") and not r["options"].keys() - {"draft"}}
    plot_frontier(rows, dist, aligned_exact, out / "demo_cspd_frontier.png")


def _write(out: Path, rows: List[Dict], images: int, seed: int, batch_size: int, cfg_scale: float,
           replicates: int) -> str:
    from ..experiments.common import machine_line, markdown_table

    header = (f"# CSpD on the continuous testbed\n\n{images} images ({images // 10} per class), CFG {cfg_scale} (on "
              f"epsilon), seed {seed}, ragged batches of {batch_size}; gamma 4, pre-fill 5 %, causal acceptance unless "
              f"the row says otherwise. Timing and quality on the same rows. Machine: "
              f"{machine_line(torch.get_num_threads())}.\n\nQuality against {images} held-out test images on the "
              f"shipped classifier's features: [95 % interval] from {replicates} class-stratified bootstrap "
              f"replicates; *- AR's*: paired difference to `cspd-ar`; *verdict*: worse / better when the interval of "
              f"the KID difference excludes zero. `cspd-ar (seed + 1)` is the chance reference.")
    text = header + "\n\n" + markdown_table(rows, _columns())
    (out / "demo_cspd.md").write_text(text)
    write_cspd_csv(rows, out / "demo_cspd.csv")
    (out / "demo_cspd.json").write_text(json.dumps({"rows": rows}, indent=2, default=str) + "\n")
    plot_cspd(rows, out / "demo_cspd.png")
    return text


def write_cspd_csv(rows: Sequence[Dict], path: Path) -> None:
    """Every field of the rows as CSV: the speed columns, then each quality figure with its interval, paired
    difference and verdict (:data:`specdec.experiments.common.QUALITY_FIELDS`)."""
    from ..experiments.common import QUALITY_FIELDS, write_csv

    speed = ("method", "acceptance", "accepted_per_verification", "tokens_per_forward", "seconds_per_image", "speedup",
             "fallbacks", "drafts_tested")
    write_csv(rows, speed + QUALITY_FIELDS, path)


def plot_cspd(rows: Sequence[Dict], path: Path) -> None:
    """KID (95 % interval) against tokens per target forward, one point per row, AR-with-other-seeds' interval as
    the chance band; hollow markers differ from AR beyond chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    for r in rows:
        lo, hi = r["kid_lo"], r["kid_hi"]
        if r["method"].endswith("(seed + 1)"):
            ax.axhspan(lo, hi, color="gray", alpha=0.2, label=f"{r['method']}: 95 % interval")
            continue
        hollow = r.get("verdict", "within chance") != "within chance"
        ax.errorbar([r["tokens_per_forward"]], [r["kid"]], yerr=[[r["kid"] - lo], [hi - r["kid"]]], fmt="o", ms=5,
                    capsize=3, mfc="white" if hollow else None)
        ax.annotate(r["method"].replace("cspd ", ""), (r["tokens_per_forward"], r["kid"]), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("tokens per target forward")
    ax.set_ylabel("KID to held-out images (lower is better)")
    ax.set_title("CSpD: tokens per forward vs quality (hollow: differs from AR)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
