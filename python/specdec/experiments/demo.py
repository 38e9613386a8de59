"""``specdec demo``: every decoding method on the shipped testbed, same classes and seeds, side by side.

Each method is run twice (and its other sizes once, side by side):

* **timed**: the timed rows (``images_per_class`` per class) at ``batch_size`` (1 by default, the setting the
  targets are stated for): accepted drafts per verification, tokens per step, step compression (AR's target
  forwards / the method's), wall-clock seconds per image and the speed-up over AR measured in the same run, every
  method's calls interleaved with the others' (:func:`~specdec.experiments.common.run_methods`);
* **side by side**: on ``speed_images`` of the timed rows (spread over the run), the other sizing's rows (with ``size="auto"``: each
  method at the papers' size and at the fixed sizes of ``fixed_sizes``; with ``"fixed"``: auto-sized), their calls
  interleaved with the timed rows' calls, so that auto and fixed sizes are compared on the same images under the
  same drift (demo.md's *Sizes side by side*, and throughput.md);
* **judged**: ``judge_images`` rows (the same classes and per-row seeds for every method), generated in batches and
  untimed, judged against as many held-out images: class accuracy, FD-cls, KID, precision / recall with bootstrap
  95 % intervals, the paired difference to AR and a verdict (:mod:`specdec.metrics.bootstrap`). An
  ``ar (seed + 1)`` row (AR again with other seeds) is the chance reference.

Writes to ``out`` (default ``results/``): ``samples_<method>.png`` (timed rows, one row per class),
``demo.md`` (speed table and quality table), ``demo.csv`` / ``demo.json`` (every field), ``demo.png`` (step
compression next to wall-clock speed-up; KID with its interval against step compression).

Rows come from :data:`ROW_PRODUCERS`: a method of the decoding registry needs nothing there (it gets
:func:`decoding_output`); a row made some other way (another model, another decoding loop) registers a producer
``(setup, config, name, progress) -> MethodOutput`` under its name and adds the name to :data:`DEMO_METHODS`.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch
from tqdm.auto import tqdm

from ..decoding.methods import demo_methods
from ..decoding.sizing import held_size
from ..metrics.evaluate import save_grid
from .common import (DEFAULT_SAMPLING, KID_SCALE, QUALITY_COLUMNS, QUALITY_FIELDS, MethodRun, RunConfig, Setup,
                     build_method, cost_row, judged_header, judged_images, judged_run, machine_line, markdown_table, prepare,
                     spread_calls, timed_run, timed_runs, write_outputs)

#: The registered methods the demo runs by default (``register(..., demo=True)``), in registration order.
DEMO_METHODS = demo_methods()

SPEED_COLUMNS = (
    ("method", "method", "{}"),
    ("size", "size (settled)", "{}"),
    ("accepted_per_step", "accepted / step", "{:.2f}"),
    ("tokens_per_step", "tokens / step", "{:.2f}"),
    ("step_compression", "step compression", "{:.2f}x"),
    ("seconds_per_image", "s / image", "{:.3f}"),
    ("speedup", "wall-clock speed-up", "{:.2f}x"),
    ("speedup_over_compression", "speed-up / compression", "{:.2f}"),
)
QUALITY_TABLE_COLUMNS = (("method", "method", "{}"),) + QUALITY_COLUMNS
CSV_FIELDS = tuple(k for k, _, _ in SPEED_COLUMNS) + ("judged_step_compression",) + QUALITY_FIELDS


#: Fixed sizes (``method.apply_size`` values) timed side by side with the auto-sized rows, besides the papers'
#: size (the constructor's): shorter Jacobi windows and drafts, smaller trees.
DEMO_FIXED_SIZES = {
    "sd": (1, 2),
    "sjd": (4, 8, 12),
    "gsd": (4, 8, 12),
    "eagle2": ((4, 2), (10, 3)),
    "lantern": ((4, 2), (10, 3)),
    "lantern++": ((3, 0), (4, 1)),
}


@dataclass
class DemoConfig(RunConfig):
    images_per_class: int = 20
    batch_size: int = 1  # the targets are stated at batch 1; wall-clock is per image either way
    methods: Sequence[str] = DEMO_METHODS
    options: Dict[str, dict] = field(default_factory=dict)  # per-method constructor options
    size: str = "auto"  # "auto": cost-aware sizes (specdec.decoding.sizing); "fixed": the papers' sizes
    #: Timed rows (whole calls, spread evenly over the run) on which the other sizing's rows (with size="auto": the papers' size and
    #: ``fixed_sizes``; with "fixed": auto) run, their calls interleaved with every method's: the side-by-side
    #: table of demo.md and throughput.md (fixed vs auto sizes; ragged vs truncated at batch > 1).
    speed_images: int = 20
    fixed_sizes: Dict[str, Sequence] = field(default_factory=lambda: dict(DEMO_FIXED_SIZES))
    cspd: bool = True  # run the CSpD rows of the continuous testbed (demo_cspd.md)

    @classmethod
    def quick(cls, **kw) -> "DemoConfig":
        """A smoke run: 2 timed and 10 judged images per class."""
        return cls(**{"images_per_class": 2, "judge_images": 100, "speed_images": 4, **kw})


@dataclass
class MethodOutput:
    """What one demo row needs: the timed run over the timed rows and its images (for the grid), and the images
    of the judged rows (``setup.judged_classes`` / ``setup.judged_keys``, in row order) with the run that made them
    (its step counts; its wall-clock is not used)."""

    timed: MethodRun
    timed_images: torch.Tensor  # (images_per_class * 10, 1, 32, 32) in [-1, 1]
    judged: MethodRun
    judged_images: torch.Tensor  # (judge_images, 1, 32, 32) in [-1, 1]
    size: str = ""  # the size the timed run ended on and the judged rows ran at, in words ("" when none)


def decoding_output(setup: Setup, config: DemoConfig, name: str, progress: bool = True) -> MethodOutput:
    """A method of the decoding registry (:func:`build_method`), timed alone at ``config.batch_size`` and judged
    (:func:`judged_output`). The demo itself times its registry methods together, interleaved (:func:`run_demo`)."""
    method = build_method(setup.tb, name, **{"size": config.size, **config.options.get(name, {})})
    timed, timed_images = timed_run(setup, name, method, batch_size=config.batch_size, progress=progress)
    return judged_output(setup, name, method, timed, timed_images, progress)


def judged_output(setup: Setup, name: str, method, timed: MethodRun, timed_images: torch.Tensor,
                  progress: bool = True) -> MethodOutput:
    """The judged rows of a method already timed, at the size its timed run settled on (an auto-sized method
    would otherwise size its judged batches for their own width, and its quality would be that of another
    setting)."""
    with held_size(method):
        judged, images = judged_images(setup, name, method, progress=progress)
    return MethodOutput(timed, timed_images, judged, images, method.size_label())


#: Producers of rows that are not methods of the decoding registry: ``name -> (setup, config, name, progress) ->
#: MethodOutput`` (see :func:`decoding_output` for what the timed and judged runs must be).
ROW_PRODUCERS: Dict[str, Callable[..., MethodOutput]] = {}


def run_demo(config: DemoConfig = DemoConfig(), progress: bool = True) -> List[Dict]:
    """Run every method of ``config`` and write the outputs; returns the table rows (AR, AR with other seeds,
    then the methods)."""
    if "ar" not in config.methods:
        raise ValueError("the demo needs 'ar' among the methods: speed-ups and quality are relative to it")
    setup = prepare(config, progress)
    names = ["ar"] + [m for m in config.methods if m != "ar"]
    # The registry's methods are timed together, their calls interleaved (fair ratios on a drifting machine), and
    # so are the other sizing's rows, on speed_images of the rows spread over the run.
    methods = {n: build_method(setup.tb, n, **{"size": config.size, **config.options.get(n, {})})
               for n in names if n not in ROW_PRODUCERS}
    picked = spread_calls(-(-len(setup.classes) // config.batch_size), -(-config.speed_images // config.batch_size))
    others = other_sizing_methods(setup, config, [n for n in methods if n != "ar"]) if picked else {}
    timed = timed_runs(setup, {**methods, **{key: m for key, (_, _, m) in others.items()}},
                       batch_size=config.batch_size, progress=progress, calls={key: picked for key in others})
    speed_images = len(timed["ar"][0].select(picked).row_steps) if picked else 0
    rows, ar_run, ar_judged, timed_runs_by_name = [], None, None, {}
    for name in tqdm(names, desc="methods", disable=not progress):
        if name in ROW_PRODUCERS:
            out = ROW_PRODUCERS[name](setup, config, name, progress=progress)
        else:
            out = judged_output(setup, name, methods[name], *timed[name], progress=progress)
        judged = setup.judge(out.judged_images)
        ar_run, ar_judged = ar_run or out.timed, ar_judged or judged
        timed_runs_by_name[name] = (out.timed, out.size)
        rows.append({**cost_row(out.timed, ar_run), "method": name, "size": out.size or "-",
                     "judged_step_compression": out.judged.step_compression,
                     **setup.judge.fields(judged, None if name == "ar" else ar_judged)})
        save_grid(out.timed_images, setup.classes.cpu(), setup.out / f"samples_{_file_name(name)}.png",
                  per_class=min(10, config.images_per_class),
                  title=f"{name}: {out.timed.step_compression:.2f}x fewer target forwards")
    # (after the judged runs: an auto-sized method now holds the size it settled on, which its label names)
    side_by_side = side_by_side_rows(timed, methods, others, picked, config.size) if picked else []
    # Chance alone: AR with other seeds on the judged rows' classes.
    other_keys = _other_seed_keys(setup)
    noise, _, judged = judged_run(setup, "ar (seed + 1)", build_method(setup.tb, "ar"), keys=other_keys,
                                  progress=progress)
    rows.insert(1, {"method": "ar (seed + 1)", "judged_step_compression": noise.step_compression,
                    **setup.judge.fields(judged, ar_judged)})
    sampling = (f"CFG {DEFAULT_SAMPLING.cfg_scale}, T {DEFAULT_SAMPLING.temperature}, top-k {DEFAULT_SAMPLING.top_k}; "
                f"SJD and GSD with LlamaGen's repeat-left init")
    markdown = (f"# Demo: every method on the shipped testbed\n\n{sampling}. Machine: "
                f"{machine_line(config.threads, setup.device)}.\n\n## Speed\n\n{len(setup.classes)} images "
                f"({config.images_per_class} per class), seed {config.seed}, batch {config.batch_size}, timed.\n\n"
                + markdown_table([r for r in rows if "speedup" in r], SPEED_COLUMNS)
                + (f"\n## Sizes side by side\n\n{SIDE_BY_SIDE_HEADER.format(images=speed_images)}\n\n"
                   + markdown_table(side_by_side, SIDE_BY_SIDE_COLUMNS) if side_by_side else "")
                + f"\n## Quality\n\n{judged_header(setup)}\n\n" + markdown_table(rows, QUALITY_TABLE_COLUMNS))
    write_outputs(setup, "demo", rows, CSV_FIELDS, markdown, {"config": _jsonable(config), "rows": rows,
                                                               "side_by_side": side_by_side}, plot_demo, progress)
    if speed_images:  # throughput.md: fixed vs auto sizes (and ragged vs truncated rows at batch > 1)
        from .throughput import SpeedConfig, run_speed

        registered = [n for n in names if n not in ROW_PRODUCERS]  # sizes apply to the decoding registry's methods
        # Every ragged row was timed above, interleaved: AR and this sizing's rows over the picked calls, the other
        # sizing's (the papers' size for "fixed") there too. Only truncated rows (batch > 1) run again.
        other = "fixed" if config.size == "auto" else "auto"
        reuse = {(n, "fixed" if n == "ar" else config.size):
                 (timed[n][0].select(picked), timed_runs_by_name[n][1]) for n in registered}
        reuse.update({(n, other): (timed[key][0], method.size_label()) for key, (n, _, method) in others.items()
                      if key == _other_key(n, None if other == "fixed" else "auto")})
        run_speed(setup, registered, SpeedConfig(config.batch_size, speed_images), config.threads, progress,
                  reuse=reuse)
    # CSpD on the continuous-token testbed: own table (demo_cspd.md), plot and grids, same seed, as many rows as the
    # timed rows (at most 200: each CSpD row decodes all of them).
    from ..continuous.demo import run_cspd_demo

    if config.cspd:
        run_cspd_demo(setup.out, 10 * min(config.images_per_class, 20), config.seed,
                      bootstrap_replicates=config.bootstrap_replicates, progress=progress)
    return rows


SIDE_BY_SIDE_HEADER = (
    "{images} of the timed images, spread evenly over the run (the last one included), every row's calls "
    "interleaved with every other's (AR's and the auto rows are the speed table's calls on these images): each "
    "method at its auto size, at the papers' size and at the fixed sizes of `fixed_sizes`. *vs best fixed*: the "
    "auto row's speed over the fastest fixed row's of its method.")
SIDE_BY_SIDE_COLUMNS = (
    ("method", "method", "{}"),
    ("sizing", "sizes", "{}"),
    ("size", "size", "{}"),
    ("images", "images", "{}"),
    ("tokens_per_step", "tokens / step", "{:.2f}"),
    ("seconds_per_image", "s / image", "{:.3f}"),
    ("speedup", "speed-up vs ar", "{:.2f}x"),
    ("vs_best_fixed", "vs best fixed", "{:.2f}x"),
)


def _other_key(name: str, size) -> str:
    return f"{name} [{'papers' if size is None else size}]"


def other_sizing_methods(setup: Setup, config: DemoConfig, names: Sequence[str]) -> Dict[str, tuple]:
    """The rows timed side by side with the demo's own: ``key -> (method name, size label, method)``. With
    ``size="auto"``: each method at the papers' size (key ``"<name> [papers]"``) and at its ``fixed_sizes``
    (``"<name> [<size>]"``); with ``size="fixed"``: each method auto-sized (``"<name> [auto]"``)."""
    out = {}
    for name in names:
        options = config.options.get(name, {})
        if config.size == "fixed":
            method = build_method(setup.tb, name, **{**options, "size": "auto"})
            out[_other_key(name, "auto")] = (name, "auto", method)
            continue
        for size in (None,) + tuple(config.fixed_sizes.get(name, ())):
            method = build_method(setup.tb, name, **{**options, "size": "fixed"})
            if size is not None:
                method.apply_size(size)
            out[_other_key(name, size)] = (name, method.size_label(), method)
    return out


def side_by_side_rows(timed: Dict[str, tuple], methods: Dict[str, object], others: Dict[str, tuple],
                      calls: Sequence[int], sizing: str) -> List[Dict]:
    """AR, then per method its demo row (sizes ``sizing``; the size it settled on) over the ``calls`` the other
    sizing's rows were timed on, and those rows, with speed-ups over AR on the same rows and, for an auto row, its
    speed over the method's fastest fixed row (``vs_best_fixed``)."""
    ar = timed["ar"][0].select(calls)
    rows = [{"method": "ar", "sizing": "-", "size": "-", **_speed_fields(ar, ar)}]
    for name in dict.fromkeys(n for n, _, _ in others.values()):
        method_rows = [{"method": name, "sizing": sizing, "size": methods[name].size_label() or "-",
                        **_speed_fields(timed[name][0].select(calls), ar)}]
        for key, (n, label, method) in others.items():
            if n == name:
                other = "auto" if label == "auto" else "fixed"
                if other == "auto":
                    with held_size(method):  # the size it settled on
                        label = method.size_label()
                method_rows.append({"method": name, "sizing": other, "size": label or "-",
                                    **_speed_fields(timed[key][0], ar)})
        fixed = [r["speedup"] for r in method_rows if r["sizing"] == "fixed"]
        for r in method_rows:
            if r["sizing"] == "auto" and fixed:
                r["vs_best_fixed"] = r["speedup"] / max(fixed)
        rows += method_rows
    return rows


def _speed_fields(run, ar) -> Dict[str, float]:
    return {"images": len(run.row_steps), "tokens_per_step": run.tokens_per_step,
            "seconds_per_image": run.seconds_per_image, "speedup": ar.seconds_per_image / run.seconds_per_image}


def _other_seed_keys(setup: Setup) -> torch.Tensor:
    from ..decoding import derive_row_keys

    return derive_row_keys(len(setup.judged_classes), setup.config.seed + 1, setup.device)


def _file_name(method: str) -> str:
    return method.replace("+", "p").replace(" ", "_")


def _jsonable(config: DemoConfig) -> Dict:
    d = asdict(config)
    d["out"], d["weights"] = str(config.out), (str(config.weights) if config.weights else None)
    d["resume_dir"] = str(config.resume_dir) if config.resume_dir else None
    d["methods"] = list(config.methods)
    return d


def plot_demo(rows: Sequence[Dict], path: Path) -> None:
    """Left: step compression and wall-clock speed-up per method. Right: KID (95 % interval; class accuracy in the
    labels) against step compression, with AR-with-other-seeds' interval as the chance band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noise = [r for r in rows if r["method"].startswith("ar (")]
    rows = [r for r in rows if not r["method"].startswith("ar (")]
    names = [r["method"] for r in rows]
    x = torch.arange(len(rows)).numpy()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    ax1.bar(x - 0.2, [r["step_compression"] for r in rows], 0.4, label="step compression")
    ax1.bar(x + 0.2, [r.get("speedup", 0.0) or 0.0 for r in rows], 0.4, label="wall-clock speed-up (this CPU)")
    ax1.axhline(1.0, color="gray", lw=0.8)
    ax1.set_xticks(x, names, rotation=30)
    ax1.set_ylabel("x over AR")
    ax1.legend(fontsize=8)
    ax1.set_title("What each method buys")
    for r in rows:
        y, err = _kid_and_error(r)
        ax2.errorbar([r["step_compression"]], [y], yerr=err, fmt="o", ms=5, capsize=3,
                     mfc="white" if r.get("verdict", "within chance") != "within chance" else None)
        ax2.annotate(f"{r['method']}\nacc {r['class_accuracy']:.3f}", (r["step_compression"], y),
                     fontsize=7, xytext=(4, 2), textcoords="offset points")
    for r in noise:  # AR again with other seeds: the chance band
        y, err = _kid_and_error(r)
        ax2.axhspan(y - err[0][0], y + err[1][0], color="gray", alpha=0.2, label=f"{r['method']}: 95 % interval")
    if noise:
        ax2.legend(fontsize=7, loc="upper left")
    ax2.set_xlabel("step compression (x)")
    ax2.set_ylabel("KID to held-out images (lower is better)")
    ax2.set_title("Quality vs compression (95 % intervals; hollow: differs from AR)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _kid_and_error(row: Dict):
    """KID of a row and its interval as matplotlib's asymmetric ``yerr``."""
    y = row["kid"] * KID_SCALE
    lo, hi = row.get("kid_lo", row["kid"]) * KID_SCALE, row.get("kid_hi", row["kid"]) * KID_SCALE
    return y, [[y - lo], [hi - y]]
