"""The ``specdec`` command: a registry of subcommands (``demo``, ``sweep``, ``train``, ``metrics``, ``profile``);
``specdec train head`` trains a draft head for a Hugging Face image generator (docs/HF_HEADS.md).

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
    p = sub.add_parser("train", help="train testbed models, or a draft head for a Hugging Face image generator "
                                     "(resumable; exports weights + metrics.json)")
    p.add_argument("model", choices=["vq", "classifier", "tokens", "target", "draft", "eagle", "all",
                                     "cspd-target", "cspd-draft", "cspd-eagle", "cspd-eagle-2l", "head"],
                   help="what to train ('tokens' pre-tokenises the dataset; 'all' runs everything in order; "
                        "cspd-*: the continuous-token testbed; 'head': an EAGLE-style draft head for the HF model "
                        "in --model, docs/HF_HEADS.md)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--out", type=Path, default=None, help="weights directory (default: the shipped weights; "
                                                          "required for 'head')")
    p.add_argument("--cache", type=Path, default=None,
                   help="checkpoints and token cache (default .cache/testbed; 'head': OUT/train_state)")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints (and, for 'head', cached images)")
    p.add_argument("--ckpt-every", type=float, default=180.0, help="seconds between checkpoints (default 180)")
    _add_head_options(p.add_argument_group("head (specdec train head)"))

    def run(args) -> int:
        if args.model == "head":
            return _train_head(args)
        given = [flag for flag, dest in HEAD_ONLY if getattr(args, dest) is not None]
        if given:
            raise SystemExit(f"specdec train {args.model}: {', '.join(given)} only apply to 'specdec train head'")
        from .continuous.train import RECIPES as CONTINUOUS_RECIPES
        from .testbed.train import DEFAULT_CACHE, RECIPES, RunOptions

        RECIPES = {**RECIPES, **CONTINUOUS_RECIPES}
        _threads(args.threads)
        opts = RunOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          threads=args.threads, device=args.device, out=args.out,
                          cache=DEFAULT_CACHE if args.cache is None else args.cache,
                          fresh=args.fresh, ckpt_every_s=args.ckpt_every)
        metrics = RECIPES[args.model](opts)
        print(json.dumps(metrics, indent=2, default=str))
        return 0

    p.set_defaults(func=run)


# Flags of 'specdec train head' alone: (flag, argparse dest).
HEAD_ONLY = (("--model", "hf_model"), ("--prompts", "prompts"), ("--prompt-ids", "prompt_ids"))


def _add_head_options(g) -> None:
    g.add_argument("--model", type=Path, default=None, dest="hf_model",
                   help="local directory of a Janus / Emu3 / Chameleon model (save_pretrained layout)")
    g.add_argument("--prompts", type=Path, default=None,
                   help="text prompts, one per line (tokenized with the model directory's processor)")
    g.add_argument("--prompt-ids", type=Path, default=None,
                   help="prompts as token ids, one prompt per line (whitespace-separated ints ending where the "
                        "image starts)")
    g.add_argument("--negative", default=None, help="unconditional prompt text for CFG (Emu3 / Chameleon)")
    g.add_argument("--negative-ids", default=None,
                   help="unconditional prompt as token ids, e.g. '1 3 3 4 5' (Emu3 / Chameleon with --prompt-ids)")
    g.add_argument("--image-prefix-ids", default=None,
                   help="Chameleon-family text prompts: ids of the image-start and size tokens ending each prompt")
    g.add_argument("--image-area", type=int, default=None, help="Emu3 text prompts: image area in pixels")
    g.add_argument("--grid", type=int, nargs=2, default=None, metavar=("ROWS", "COLUMNS"),
                   help="image tokens (Chameleon; Emu3 with --prompt-ids)")
    g.add_argument("--eol-token-id", type=int, default=None, help="token ending each grid row (Lumina-mGPT: 8803)")
    g.add_argument("--num-tokens", type=int, default=None, help="train on the first image tokens only")
    g.add_argument("--images", type=int, default=None, help="generated training images (default 256)")
    g.add_argument("--holdout", type=int, default=None,
                   help="prompts held out for the acceptance estimate (default a tenth; 0: none)")
    g.add_argument("--eval-every", type=int, default=None, help="steps between acceptance estimates")
    g.add_argument("--eval-depth", type=int, default=None, help="draft chain length of the estimate (default 5)")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 1)")
    g.add_argument("--top-k", type=int, default=None, help="default: the model's generation config")
    g.add_argument("--top-p", type=float, default=None, help="default: the model's generation config")
    g.add_argument("--cfg-scale", type=float, default=None, help="default: the model's generation config")
    g.add_argument("--ce-weight", type=float, default=None, help="cross-entropy weight (default 0.1)")
    g.add_argument("--num-heads", type=int, default=None, help="attention heads of the head's layer")
    g.add_argument("--gen-batch", type=int, default=None, help="prompts per generation call (default 8)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="dtype to load the model in (default: the checkpoint's)")


def _train_head(args) -> int:
    """``specdec train head``: load the model and prompts, train (``specdec.adapters.hf.train_head``), print the
    summary. Bad input exits with the reason."""
    import torch

    from .adapters.hf.train_head import (HeadTrainOptions, load_model, prompts_from_ids, prompts_from_text,
                                         read_lines, train_head)

    try:
        if args.hf_model is None:
            raise ValueError("--model DIR is required (a local model directory)")
        if args.out is None:
            raise ValueError("--out DIR is required (where head.safetensors, head.json and metrics.json go)")
        if (args.prompts is None) == (args.prompt_ids is None):
            raise ValueError("give exactly one of --prompts FILE (text) and --prompt-ids FILE (token ids)")
        lines = read_lines(args.prompts if args.prompts is not None else args.prompt_ids)
        _threads(args.threads)
        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(args.hf_model, device, None if args.dtype is None else getattr(torch, args.dtype))
        from .adapters.hf.families import family_of

        family = family_of(model, args.eol_token_id)
        if args.prompts is not None:
            prompts = prompts_from_text(args.hf_model, family.name, lines, negative=args.negative,
                                        image_prefix=args.image_prefix_ids, image_area=args.image_area)
        else:
            pad = int(getattr(model.generation_config, "pad_token_id", None) or 0)
            prompts = prompts_from_ids(lines, negative=args.negative_ids, pad=pad)
        given = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "images": args.images,
                 "holdout": args.holdout, "eval_every": args.eval_every, "eval_depth": args.eval_depth,
                 "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
                 "cfg_scale": args.cfg_scale, "ce_weight": args.ce_weight, "num_heads": args.num_heads,
                 "gen_batch": args.gen_batch, "grid": None if args.grid is None else tuple(args.grid),
                 "eol_token_id": args.eol_token_id, "num_tokens": args.num_tokens}
        opts = HeadTrainOptions(seed=args.seed, ckpt_every_s=args.ckpt_every, fresh=args.fresh,
                                **{k: v for k, v in given.items() if v is not None})
        metrics = train_head(model, prompts, args.out, opts, state_dir=args.cache)
    except ValueError as e:
        raise SystemExit(f"specdec train head: {e}") from None
    summary = {k: metrics[k] for k in ("family", "parameters", "untrained", "final") if k in metrics}
    print(json.dumps({**summary, "loss_first": metrics["loss_curve"][0] if metrics["loss_curve"] else None,
                      "loss_last": metrics["loss_curve"][-1] if metrics["loss_curve"] else None,
                      "out": str(args.out)}, indent=2))
    return 0


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
