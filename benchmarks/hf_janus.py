"""Target forwards and wall-clock per image of every ``speculative_generate`` method on a Hugging Face Janus model
at real image-token sizes: the 16384 x 8 VQ codebook, 24 x 24 = 576 tokens per image, a few decoder layers with
random weights (no download). Chains without a draft model (AR, SJD, GSD, LANTERN-SJD), tree methods with an
untrained ``HFDraftHead`` (EAGLE-2, LANTERN, LANTERN++) and SD with a smaller sibling Janus (the target's first
``--draft-layers`` decoder layers and all its other weights, so the same vocabularies and codebook).

What random weights mean for acceptance: next-token distributions are nearly uniform over 16384 codes and hardly
depend on the context. A Jacobi draft refined once is then accepted with probability close to 1 (SJD needs far
fewer forwards than on a trained model). An untrained head's EAGLE-2 tree holds 58 fixed candidates of 16384
codes, so EAGLE-2 accepts almost nothing and costs more than AR per step. LANTERN's delta = 0.1 budget merges up
to k = 1024 neighbours of a flat p, so each candidate carries ~6 % of the mass; LANTERN++ draws its drafts from the
head's q, just as flat as p, and its ratio rule accepts x when u q(x) <= lambda p(x) ~ 5 q(x): nearly always.
Both relaxations thus accept far more than they would on a trained model. The figures show that each path runs
at real sizes (CFG doubled batch, ragged rows, cache rollback and tree compaction, neighbour tables of the real
codebook) and what a step costs, not the speed-ups of a trained Janus with a trained head. Wall-clock on a
shared CPU is noisy.

Usage: ``python -m benchmarks.hf_janus [--layers 4] [--hidden 512] [--batches 1 8] [--threads 1] [--methods ...]
[--tag NAME] [--out DIR]``; writes ``<out>/hf_janus_<machine>[_<tag>].md`` (default ``benchmarks/results``).
"""

import argparse
import os
import time

import torch

from specdec.adapters.hf import HFDraftHead, speculative_generate
from specdec.adapters.hf.families import shallow_sibling

from .timing import machine_name

METHODS = ("ar", "sjd", "gsd", "lantern-sjd", "eagle2", "lantern", "lantern++", "sd")


def janus_model(layers: int, hidden: int, heads: int, seed: int = 0):
    """JanusForConditionalGeneration with the real image vocabulary / codebook (16384 x 8), the real text
    vocabulary (102400) and a 384 px / patch 16 grid (576 image tokens); ``layers`` x ``hidden`` decoder."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.JanusConfig(
        text_config=dict(model_type="llama", vocab_size=102400, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=4096),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                           image_size=384, patch_size=16, num_image_tokens=576),
        vq_config=dict(num_embeddings=16384, embed_dim=8, base_channels=32, channel_multiplier=[1, 1, 1, 1, 1],
                       num_res_blocks=1, latent_channels=32, projection_dim=hidden, image_token_embed_dim=hidden))
    model = transformers.JanusForConditionalGeneration(config).eval()
    model.generation_config = transformers.GenerationConfig(bos_token_id=100000, pad_token_id=100015,
                                                            eos_token_id=100001,
                                                            generation_kwargs={"boi_token_id": 100016})
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--draft-layers", type=int, default=1, help="decoder layers of SD's sibling draft model")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tag", default="", help="suffix of the results file name (keeps other settings' files)")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args(argv)
    if not 1 <= args.draft_layers < args.layers:
        parser.error(f"--draft-layers must be in [1, {args.layers - 1}] (smaller than the target)")
    torch.set_num_threads(args.threads)
    model = janus_model(args.layers, args.hidden, args.heads).to(args.device)
    params = sum(p.numel() for p in model.model.language_model.parameters()) / 1e6
    resources = {}
    if any(m in ("eagle2", "lantern", "lantern++") for m in args.methods):
        torch.manual_seed(1)
        resources["head"] = HFDraftHead(model, device=args.device)  # untrained: random weights
    if "sd" in args.methods:
        resources["draft_model"] = shallow_sibling(model, args.draft_layers).to(args.device)
    prompt = torch.tensor([100000, 5, 17, 29, 41, 53, 100016])  # BOS, a few text tokens, BOI
    rows = []
    for batch in args.batches:
        ids = prompt.expand(batch, -1).to(args.device)
        for method in args.methods:
            extra = {"window": args.window} if method in ("sjd", "gsd", "lantern-sjd") else {}
            if method in ("eagle2", "lantern", "lantern++"):
                extra["head"] = resources["head"]
            if method == "sd":
                extra["draft_model"] = resources["draft_model"]
            # T 1, no top-k, seed 0 spelled out: speculative_generate follows model.generation_config otherwise
            sampling = dict(do_sample=True, temperature=1.0, top_k=0, seed=0)
            # warm-up (and LANTERN's neighbour tables, built once per model, before timing)
            speculative_generate(model, ids[:1], method=method, cfg_scale=args.cfg, num_tokens=8, decode=False,
                                 **sampling, **extra)
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = speculative_generate(model, ids, method=method, cfg_scale=args.cfg, decode=False, **sampling,
                                       **extra)
            if args.device == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
            forwards = out.metrics.target_forwards
            accepted = out.metrics.mean_accept_len
            rows.append((batch, method, forwards, accepted, wall / batch))
            print(f"batch {batch} {method:12s} target forwards {forwards:4d}  accepted / step {accepted:5.2f}  "
                  f"s / image {wall / batch:7.2f}", flush=True)
    ar = {b: f for b, m, f, _, _ in rows if m == "ar"}
    ar_s = {b: s for b, m, _, _, s in rows if m == "ar"}
    lines = [f"Janus, random weights: {args.layers} layers x {args.hidden} ({params:.0f} M decoder parameters), "
             f"16384 x 8 codebook, 576 tokens / image, CFG {args.cfg}, T 1, no top-k, SJD window {args.window}; "
             f"tree methods with an untrained HFDraftHead (EAGLE-2: 59 nodes, depth 4, top-10; LANTERN delta 0.1, "
             f"k 1024; LANTERN++ lambda 5, k 10, static tree of 56 nodes); SD: gamma 4 from a {args.draft_layers}-layer "
             f"sibling (the target's first layers, same codebook); {machine_name()}, {args.threads} thread(s), "
             f"device {args.device}.",
             "",
             "Random weights make p nearly uniform and context-free: Jacobi drafts are accepted far more often than "
             "on a trained model, an untrained head's EAGLE-2 tree (58 fixed codes of 16384) almost never; LANTERN's "
             "delta merges ~1024 neighbours of a flat p (each candidate carries ~6 % of the mass) and LANTERN++ "
             "accepts a draft from the head's equally flat q whenever u q(x) <= lambda p(x) ~ 5 q(x), i.e. nearly "
             "always, so neither relaxation's acceptance is what a trained model and head give. The rows measure "
             "that each path runs at real sizes and what a step costs, not speed-ups.",
             "",
             "| batch | method | target forwards | forwards vs AR | accepted / step | s / image | speed-up vs AR |",
             "|---|---|---|---|---|---|---|"]
    for batch, method, forwards, accepted, per_image in rows:
        ratio = f"{forwards / ar[batch]:.2f}" if batch in ar else "-"
        speed = f"{ar_s[batch] / per_image:.2f}x" if batch in ar_s else "-"
        lines.append(f"| {batch} | {method} | {forwards} | {ratio} | {accepted:.2f} | {per_image:.2f} | {speed} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    suffix = f"_{args.tag}" if args.tag else ""
    path = os.path.join(args.out, f"hf_janus_{machine_name()}{suffix}.md")
    with open(path, "w") as f:
        f.write(table + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
