"""The CSpD frontier: how far a draft's final means are from the target's, and what that buys.

Exact CSpD with a shared final-step std ``sigma_1`` accepts a draft token with probability
``2 Phi(-d / (2 sigma_1))``, ``d`` the distance between the draft's and the target's final means on the shared
(aligned) trajectory. :func:`draft_distances` measures ``d`` teacher-forced on held-out images for every draft the
demo runs and for an *oracle family* (the target itself with its conditions ``z`` perturbed by isotropic noise of
a given share of their RMS), and turns the acceptance into expected tokens per target forward for ``gamma`` drafts
(first draft at the first token's acceptance, the rest at the second's; pre-fill and the end of the image
ignored). :func:`plot_frontier` draws the demo's measured rows (tokens per forward against KID) beside tokens per
forward against ``d`` (measured rows and the oracle curve). Used by :mod:`.demo`; see docs/CSPD.md.
"""

from typing import Dict, List, Sequence

import torch

from .diffusion import denoise
from .model import ContinuousAR

#: Relative condition noise of the oracle family (share of the conditions' RMS).
ORACLE_NOISE = (0.003, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.4)


def expected_tokens_per_forward(first: float, later: float, gamma: int) -> float:
    """Tokens per verification when the first draft passes with probability ``first`` and each later one (given
    its predecessors passed) with ``later``: the accepted prefix plus the residual / bonus token."""
    prefix, p = 0.0, first
    for _ in range(gamma):
        prefix += p
        p *= later
    return 1.0 + prefix


def _acceptance(q_mu0, p_mu0, sigma):
    dist = (q_mu0 - p_mu0).norm(dim=-1)
    return dist, 2 * torch.distributions.Normal(0.0, 1.0).cdf(-dist / (2 * sigma))


@torch.no_grad()
def draft_distances(target: ContinuousAR, drafts: Dict[str, object], latents: torch.Tensor, labels: torch.Tensor,
                    cfg_scale: float = 3.0, gamma: int = 4, seed: int = 0) -> List[Dict]:
    """Teacher-forced on held-out ``latents`` ``(n, 64, D)`` / ``labels`` ``(n,)``, one fixed noise per token shared
    by both trajectories: per draft (``{name: ContinuousAR or FeatureDraft}``) and per oracle noise level, the
    relative RMS error of the conditions, the median final-mean distance, the mean expected exact acceptance and
    the expected tokens per target forward (:func:`expected_tokens_per_forward`). Feature drafts report the first
    drafted token (target features) and the second (its own); a trunk draft reads committed tokens only, so both
    are the same figure."""
    from .feature_draft import FeatureDraft

    gen = torch.Generator().manual_seed(seed)
    tokens = target.from_latents(latents.float())
    null = torch.full_like(labels, target.num_classes)
    z_p = torch.cat([target.forward_train(labels, tokens, drop_labels=False),
                     target.forward_train(null, tokens, drop_labels=False)])
    zc_p, zu_p = (z.flatten(0, 1) for z in z_p[:, 1:].chunk(2))
    noise = torch.randn(len(zc_p), target.config.num_steps + 1, target.token_dim, generator=gen)
    p = denoise(target.head, zc_p, noise, zu_p, cfg_scale)
    sigma = p.sigma0[:, 0]
    scale = z_p.pow(2).mean().sqrt()

    def figures(head, pred):
        zc, zu = (z.flatten(0, 1) for z in pred.chunk(2))
        dist, acc = _acceptance(denoise(head, zc, noise, zu, cfg_scale).mu0, p.mu0, sigma)
        rel = ((pred - z_p[:, 1:]).pow(2).mean().sqrt() / scale).item()
        return rel, dist.median().item(), acc.mean().item()

    rows = []
    for name, draft in drafts.items():
        if isinstance(draft, FeatureDraft):
            pairs = torch.cat([tokens, tokens])
            first = draft.forward_train(pairs, z_p)
            second = draft.forward_train(pairs, torch.cat([z_p[:, :1], first], dim=1))
            (rel, dist, acc), (_, dist2, acc2) = figures(target.head, first), figures(target.head, second)
        else:
            z_q = torch.cat([draft.forward_train(labels, tokens, drop_labels=False),
                             draft.forward_train(null, tokens, drop_labels=False)])[:, 1:]
            rel, dist, acc = figures(draft.head, z_q)
            dist2, acc2 = dist, acc
        rows.append({"draft": name, "parameters": sum(t.numel() for t in draft.parameters()), "z_rel_rmse": rel,
                     "median_distance": dist, "median_distance_later": dist2, "acceptance_first": acc,
                     "acceptance_later": acc2, "expected_tokens_per_forward": expected_tokens_per_forward(acc, acc2,
                                                                                                         gamma)})
    for level in ORACLE_NOISE:
        pred = z_p[:, 1:] + level * scale * torch.randn(z_p[:, 1:].shape, generator=gen)
        rel, dist, acc = figures(target.head, pred)
        rows.append({"draft": f"oracle: target z + {level:g} noise", "parameters": None, "z_rel_rmse": rel,
                     "median_distance": dist, "median_distance_later": dist, "acceptance_first": acc,
                     "acceptance_later": acc, "expected_tokens_per_forward": expected_tokens_per_forward(acc, acc,
                                                                                                         gamma)})
    return rows


def plot_frontier(demo_rows: Sequence[Dict], distance_rows: Sequence[Dict], draft_of: Dict[str, str], path) -> None:
    """Two panels: the demo's rows (tokens per target forward against KID with its interval, AR's chance band) and
    tokens per forward against the median final-mean distance (the exact, aligned rows as measured: ``draft_of``
    maps such a row's method to its draft's distance row; the oracle family as expected)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for r in demo_rows:
        if r["method"].endswith("(seed + 1)"):
            ax1.axhspan(r["kid_lo"], r["kid_hi"], color="gray", alpha=0.2, label="AR (other seeds): KID 95 % interval")
            continue
        exact = "tau_in" not in r["method"] and "released" not in r["method"]
        hollow = r.get("verdict", "within chance") != "within chance"
        ax1.errorbar([r["tokens_per_forward"]], [r["kid"]], yerr=[[r["kid"] - r["kid_lo"]], [r["kid_hi"] - r["kid"]]],
                     fmt="o" if exact else "s", ms=5, capsize=3, mfc="white" if hollow else None,
                     color="C0" if exact else "C3")
        ax1.annotate(r["method"].replace("cspd ", ""), (r["tokens_per_forward"], r["kid"]), fontsize=6,
                     xytext=(4, 2), textcoords="offset points")
    ax1.axvline(2.0, color="k", ls=":", lw=0.8)
    ax1.set_xlabel("tokens per target forward")
    ax1.set_ylabel("KID to held-out images (lower is better)")
    ax1.set_title("measured: circles exact (tau 1), squares relaxed; hollow: differs from AR", fontsize=8)
    ax1.legend(fontsize=7, loc="upper left")

    oracle = [d for d in distance_rows if d["draft"].startswith("oracle")]
    ax2.plot([d["median_distance"] for d in oracle], [d["expected_tokens_per_forward"] for d in oracle], "-",
             color="gray", label="oracle (target z + noise): expected")
    for d in oracle:
        ax2.annotate(d["draft"].split("+ ")[1].replace(" noise", ""), (d["median_distance"],
                     d["expected_tokens_per_forward"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    by_name = {d["draft"]: d for d in distance_rows}
    for r in demo_rows:
        d = by_name.get(draft_of.get(r["method"], ""))
        if d is None:
            continue
        ax2.plot([d["median_distance"]], [r["tokens_per_forward"]], "o", color="C0")
        ax2.plot([d["median_distance"]], [d["expected_tokens_per_forward"]], "x", color="C1")
        ax2.annotate(r["method"], (d["median_distance"], r["tokens_per_forward"]), fontsize=6, xytext=(4, -8),
                     textcoords="offset points")
    ax2.plot([], [], "o", color="C0", label="exact rows: measured")
    ax2.plot([], [], "x", color="C1", label="exact rows: expected from teacher-forced distance")
    ax2.axhline(2.0, color="k", ls=":", lw=0.8)
    ax2.set_xscale("log")
    ax2.set_xlabel("median distance of final means, draft vs target (standardised tokens, teacher-forced)")
    ax2.set_ylabel("tokens per target forward (gamma 4)")
    ax2.set_title("what a draft must reach for 2 tokens / forward at tau 1", fontsize=8)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
