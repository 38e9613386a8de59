"""Does the geometry of LANTERN's neighbour table change acceptance? The testbed's LANTERN (EAGLE-head trees,
delta 0.1, k = V // 16) with the table built on L2-normalised codes (the vectors the testbed decoder uses) and on
the raw stored code vectors, on the same classes, seeds and sampling (README's: CFG 3, T 1, top-k 128).

The Hugging Face adapter picks the geometry per family (normalised for Janus, raw for Emu3 / Chameleon, whose
decoders use raw codes); this measures how much the choice moves acceptance where both are available. Quality is
not measured here.

Usage: ``python -m benchmarks.codebook_geometry [--images-per-class 5] [--seeds 3] [--out DIR]``; writes
``<out>/codebook_geometry_<machine>.md`` (default ``benchmarks/results``).
"""

import argparse
import os
import statistics

import torch

import specdec_kernels as sk
from specdec import SpeculativeVerifier
from specdec.decoding import SamplingConfig, generate, make_method
from specdec.testbed.shipped import load_testbed

from .timing import machine_name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images-per-class", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tb = load_testbed()
    sampling = SamplingConfig(cfg_scale=3.0, temperature=1.0, top_k=128)
    classes = torch.arange(10).repeat(args.images_per_class)
    normalised = tb.vq.codebook_normalized().detach().float().contiguous()
    raw = tb.vq.codebook.detach().float().contiguous()
    base = make_method("lantern", head=tb.eagle, codebook=normalised)
    k, delta = base.k, base.verifier.kernel_kwargs["delta"]
    tables = {"normalised": sk.neighbor_table(normalised, k), "raw": sk.neighbor_table(raw, k, normalize=False)}
    shared = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(*tables.values())) / tables["raw"].numel()
    norms = raw.norm(dim=-1)
    results = {name: [] for name in tables}
    for seed in range(args.seeds):
        for name, table in tables.items():
            method = make_method("lantern", head=tb.eagle, codebook=normalised)
            method.verifier = SpeculativeVerifier("lantern", neighbors=table, k=k, delta=delta)
            method.neighbors = table
            metrics = generate(tb.target, classes, method, sampling=sampling, seed=seed).metrics
            results[name].append((float(metrics.tokens_per_step.mean()), metrics.mean_accept_len,
                                  metrics.target_forwards))
            print(f"seed {seed} {name:10s} tokens / step {results[name][-1][0]:.3f}  accept length "
                  f"{results[name][-1][1]:.3f}  target forwards {results[name][-1][2]}", flush=True)
    lines = [f"LANTERN neighbour-table geometry on the testbed: codebook {tuple(raw.shape)} (raw norms "
             f"{norms.min():.2f} to {norms.max():.2f}, median {norms.median():.2f}), k = {k}, delta = {delta}; "
             f"{len(classes)} images per seed (CFG 3, T 1, top-k 128), seeds 0..{args.seeds - 1}; "
             f"{machine_name()}, {args.threads} thread(s). The two tables share {shared:.1%} of their neighbours.",
             "", "| table | tokens / step per seed | mean | accept length per seed | target forwards per seed |",
             "|---|---|---|---|---|"]
    for name, rows in results.items():
        lines.append(f"| {name} | {', '.join(f'{r[0]:.3f}' for r in rows)} | "
                     f"{statistics.mean(r[0] for r in rows):.3f} | {', '.join(f'{r[1]:.3f}' for r in rows)} | "
                     f"{', '.join(str(r[2]) for r in rows)} |")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"codebook_geometry_{machine_name()}.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
