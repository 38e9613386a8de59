"""The ``specdec`` command: a registry of subcommands (``demo``, ``sweep``, ``train``, ``metrics``, ``profile``).

Each subcommand is a function ``add(subparsers)`` that creates its parser and sets ``func`` (called with the parsed
namespace, returns an exit code). Add one by decorating its ``add`` function with :func:`subcommand`.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

SUBCOMMANDS: Dict[str, Callable] = {}


def subcommand(name: str):
    """Register ``add(subparsers) -> None`` under ``name``."""

    def register(add: Callable) -> Callable:
        SUBCOMMANDS[name] = add
        return add

    return register


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


@subcommand("train")
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train testbed models (resumable; exports weights + metrics.json)")
    p.add_argument("model", choices=["vq", "classifier", "tokens", "target", "draft", "eagle", "all",
                                     "cspd-target", "cspd-draft", "cspd-eagle", "cspd-eagle-2l"],
                   help="what to train ('tokens' pre-tokenises the dataset; 'all' runs everything in order; "
                        "cspd-*: the continuous-token testbed)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--out", type=Path, default=None, help="weights directory (default: the shipped weights)")
    p.add_argument("--cache", type=Path, default=Path(".cache") / "testbed",
                   help="checkpoints and token cache (default .cache/testbed)")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--ckpt-every", type=float, default=180.0, help="seconds between checkpoints (default 180)")

    def run(args) -> int:
        from .continuous.train import RECIPES as CONTINUOUS_RECIPES
        from .testbed.train import RECIPES, RunOptions

        RECIPES = {**RECIPES, **CONTINUOUS_RECIPES}
        _threads(args.threads)
        opts = RunOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          threads=args.threads, device=args.device, out=args.out, cache=args.cache,
                          fresh=args.fresh, ckpt_every_s=args.ckpt_every)
        metrics = RECIPES[args.model](opts)
        print(json.dumps(metrics, indent=2, default=str))
        return 0

    p.set_defaults(func=run)


@subcommand("metrics")
def _add_metrics(sub) -> None:
    p = sub.add_parser("metrics", help="quality metrics of the shipped (or given) testbed weights")
    p.add_argument("--weights", type=Path, default=None, help="weights directory (default: the shipped weights)")
    p.add_argument("--samples", type=int, default=2000, help="generated images (balanced over classes)")
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None, help="default: the shipped sampling setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grid", type=Path, default=None, help="also write a PNG grid of samples per class")
    p.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")

    def run(args) -> int:
        from .metrics.evaluate import evaluate_testbed

        _threads(args.threads)
        figures = evaluate_testbed(weights=args.weights, num_samples=args.samples, cfg=args.cfg,
                                   temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                                   grid_png=args.grid)
        text = json.dumps(figures, indent=2)
        print(text)
        if args.json:
            args.json.write_text(text + "\n")
        return 0

    p.set_defaults(func=run)


def _add_run_options(p, timed: bool = False) -> None:
    p.add_argument("--quick", action="store_true", help="a smoke run on a few images")
    p.add_argument("--seed", type=int, default=0)
    if timed:
        p.add_argument("--batch-size", type=int, default=None,
                       help="rows per generate call of the timed run (default 1)")
        p.add_argument("--images-per-class", type=int, default=None, help="timed images per class (default 20)")
    p.add_argument("--judge-images", type=int, default=None,
                   help="images per method for the quality figures (batched, untimed; default 1000)")
    p.add_argument("--judge-batch", type=int, default=None,
                   help="rows per generate call of the judged runs (default: per method, 8 to 250)")
    p.add_argument("--resume", type=Path, default=None, dest="resume_dir",
                   help="keep each judged run's tokens in this directory and reuse them when rerun (long runs)")
    p.add_argument("--bootstrap", type=int, default=None, dest="bootstrap_replicates",
                   help="bootstrap replicates of the intervals (default 200)")
    p.add_argument("--out", type=Path, default=Path("results"), help="output directory (default results)")
    p.add_argument("--weights", type=Path, default=None, help="weights directory (default: the shipped weights)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default, as the committed results), cuda or auto")


def _config(cls, args, **extra):
    fields = ("batch_size", "images_per_class", "judge_images", "judge_batch", "bootstrap_replicates", "resume_dir")
    given = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    kwargs = dict(seed=args.seed, out=args.out, weights=args.weights, threads=args.threads, device=args.device,
                  **extra, **given)
    return cls.quick(**kwargs) if args.quick else cls(**kwargs)


@subcommand("demo")
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="every decoding method on the shipped testbed: image grids, table, plot")
    _add_run_options(p, timed=True)
    p.add_argument("--methods", default=None,
                   help="comma-separated names of registered methods (default: the demo's methods, "
                        "specdec.decoding.methods; ar is always run)")
    p.add_argument("--size", choices=["auto", "fixed"], default="auto",
                   help="auto: cost-aware sizes for this device (default); fixed: the papers' sizes")
    p.add_argument("--no-cspd", dest="cspd", action="store_false",
                   help="skip the CSpD rows of the continuous testbed (demo_cspd.md)")

    def run(args) -> int:
        from .decoding.methods import method_names
        from .experiments.demo import DEMO_METHODS, DemoConfig, run_demo

        methods = DEMO_METHODS if args.methods is None else tuple(m.strip() for m in args.methods.split(","))
        unknown = sorted(set(methods) - set(method_names()))
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown}; choose from {list(method_names())}")
        extra = {"methods": ("ar",) + tuple(m for m in methods if m != "ar"), "size": args.size, "cspd": args.cspd}
        run_demo(_config(DemoConfig, args, **extra))
        return 0

    p.set_defaults(func=run)


@subcommand("sweep")
def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="LANTERN delta, LANTERN++ lambda and GSD group size G against quality")
    _add_run_options(p)
    p.add_argument("--keep-done", action="store_true",
                   help="keep the points of OUT/sweep.json that were judged on the same rows (same AR figures) "
                        "and run only the others")

    def run(args) -> int:
        from .experiments.sweep import SweepConfig, run_sweep

        run_sweep(_config(SweepConfig, args, keep_done=args.keep_done))
        return 0

    p.set_defaults(func=run)


@subcommand("profile")
def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="where a decoding step's time goes, per method and phase (docs/PROFILE.md)")
    p.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes (default 1,16)")
    p.add_argument("--images", type=int, default=3, help="batch-1 images per method (default 3)")
    p.add_argument("--sizes", default="fixed,auto", help="fixed, auto or both (default)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: the demo's)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--weights", type=Path, default=None, help="weights directory (default: the shipped weights)")
    p.add_argument("--out", type=Path, default=Path("docs"), help="output directory of the profile table and its plot (default docs)")
    p.add_argument("--note", default="", help="a sentence added to the header (e.g. how loaded the machine was)")

    def run(args) -> int:
        from .profiling.profile import ProfileConfig, run_profile

        run_profile(ProfileConfig(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
                                  images_at_batch_1=args.images, sizes=tuple(args.sizes.split(",")),
                                  methods=args.methods.split(",") if args.methods else None, threads=args.threads,
                                  device=args.device, weights=args.weights, out=args.out, note=args.note))
        return 0

    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS.values():
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
