"""Target forwards and wall-clock per image of AR / SJD / GSD / LANTERN-SJD on a Hugging Face Janus model at real
image-token sizes: the 16384 x 8 VQ codebook, 24 x 24 = 576 tokens per image, a few decoder layers with random
weights (no download).

Random weights give nearly flat next-token distributions, so drafts are almost never accepted and the relaxed
methods cannot buy much: the figures show that the whole path (CFG doubled batch, ragged rows, cache rollback,
neighbour table of the real codebook) runs at real sizes and what it costs per step, not the speed-ups a trained
model gets. Wall-clock on a shared CPU is noisy.

Usage: ``python -m benchmarks.hf_janus [--layers 4] [--hidden 512] [--batches 1 8] [--threads 1] [--out DIR]``;
writes ``<out>/hf_janus_<machine>.md`` (default ``benchmarks/results``).
"""

import argparse
import os
import time

import torch

from specdec.adapters.hf import speculative_generate

from .timing import machine_name

METHODS = ("ar", "sjd", "gsd", "lantern")


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
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = janus_model(args.layers, args.hidden, args.heads).to(args.device)
    params = sum(p.numel() for p in model.model.language_model.parameters()) / 1e6
    prompt = torch.tensor([100000, 5, 17, 29, 41, 53, 100016])  # BOS, a few text tokens, BOI
    rows = []
    for batch in args.batches:
        ids = prompt.expand(batch, -1).to(args.device)
        for method in args.methods:
            # T 1, no top-k, seed 0 spelled out: speculative_generate follows model.generation_config otherwise
            sampling = dict(do_sample=True, temperature=1.0, top_k=0, seed=0)
            speculative_generate(model, ids[:1], method=method, cfg_scale=args.cfg, num_tokens=8, decode=False,
                                 **sampling)
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = speculative_generate(model, ids, method=method, cfg_scale=args.cfg, window=args.window,
                                       decode=False, **sampling)
            if args.device == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
            forwards = out.metrics.target_forwards
            rows.append((batch, method, forwards, wall / batch))
            print(f"batch {batch} {method:8s} target forwards {forwards:4d}  s / image {wall / batch:7.2f}",
                  flush=True)
    ar = {b: f for b, m, f, _ in rows if m == "ar"}
    ar_s = {b: s for b, m, _, s in rows if m == "ar"}
    lines = [f"Janus, random weights: {args.layers} layers x {args.hidden} ({params:.0f} M decoder parameters), "
             f"16384 x 8 codebook, 576 tokens / image, CFG {args.cfg}, T 1, no top-k, SJD window {args.window}; "
             f"{machine_name()}, {args.threads} thread(s), device {args.device}.",
             "",
             "| batch | method | target forwards | forwards vs AR | s / image | speed-up vs AR |",
             "|---|---|---|---|---|---|"]
    for batch, method, forwards, per_image in rows:
        ratio = f"{forwards / ar[batch]:.2f}" if batch in ar else "-"
        speed = f"{ar_s[batch] / per_image:.2f}x" if batch in ar_s else "-"
        lines.append(f"| {batch} | {method} | {forwards} | {ratio} | {per_image:.2f} | {speed} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"hf_janus_{machine_name()}.md")
    with open(path, "w") as f:
        f.write(table + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
