"""Feature-conditioned CSpD draft (EAGLE-style) for the continuous testbed: ``specdec train cspd-eagle``.

**Why.** Exact CSpD accepts a draft token with probability ``1 - TV(q_0, p_0)`` between the two final-step
Gaussians, which for a shared std ``sigma_1`` (0.062 on standardised tokens) is ``2 Phi(-|mu_q - mu_p| / (2
sigma_1))``: the draft's final mean must agree with the target's to about ``sigma_1`` in all 8 dimensions. Under
trajectory alignment the two final means are the same deterministic function of the shared noise and of the
condition ``z`` each head reads, so a draft that *shares the target's diffusion head* agrees with the target
exactly as far as it predicts the target's condition ``z``. Perturbing the target's own ``z`` by isotropic noise
of 3 % of its RMS already gives a median final-mean distance of 0.08 and expected acceptance 0.5 (docs/CSPD.md).

**Model.** Entry at slot ``s`` (``s >= 1``) reads the target's condition ``z_{s-1}`` and the token ``s - 1``:
``fc(concat(z_{s-1}, tok_proj(token_{s-1})))`` -> ``n_layer`` pre-RMSNorm decoder blocks (the testbed's
:class:`~specdec.testbed.model.Block`, 2D RoPE at position ``s``) -> RMSNorm -> predicted ``z_s``, which the
target's diffusion head (referenced, neither owned nor saved) turns into token ``s``. Slot 0 (the class token)
has no entry: the class reaches the draft through ``z``, and the CFG rows are simply rows whose features are the
target's null-class conditions. While drafting, ``z_{s-1}`` of an already drafted token is the draft's own
prediction; after verification the committed entries are re-fed with the target's true conditions (which the
verification forward computes anyway), so the first draft of every round starts from exact features.

**Training** (:func:`train_feature_draft`): distillation on the target's own teacher-forced conditions of
training images (both CFG halves): relative MSE of the predicted ``z`` plus the MSE between the target head's
CFG-mixed epsilon at the draft's and at the target's ``z`` (random steps and noise, same ``x_t``), once with the
target's features as input and once unrolled one step on the draft's own predictions (as the second drafted
token sees them).
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..testbed.model import ARConfig, Block, KVCache, RMSNorm
from .model import ContinuousAR, new_trunk_cache, run_trunk


@dataclass(frozen=True)
class FeatureDraftConfig:
    """``dim`` must equal the target's condition width; ``n_layer`` / ``n_head`` size the draft's decoder."""

    dim: int = 96
    n_layer: int = 1
    n_head: int = 4
    token_dim: int = 8
    grid_size: int = 8

    def block_config(self) -> ARConfig:
        return ARConfig(vocab_size=1, num_classes=1, grid_size=self.grid_size, dim=self.dim, n_layer=self.n_layer,
                        n_head=self.n_head, dropout=0.0)

    def to_dict(self) -> Dict:
        return asdict(self)


def check_compatible(config: FeatureDraftConfig, target: ContinuousAR) -> None:
    """Raise ``ValueError`` unless ``config`` fits ``target`` (condition width, token dim, grid)."""
    tc = target.config
    want = (tc.dim, tc.token_dim, tc.grid_size)
    got = (config.dim, config.token_dim, config.grid_size)
    if want != got:
        raise ValueError(f"feature draft (dim, token_dim, grid_size) = {got} does not match the target's {want}")
    if config.n_layer < 1 or config.dim % config.n_head or (config.dim // config.n_head) % 4:
        raise ValueError(f"feature draft needs n_layer >= 1 and dim / n_head a multiple of 4 (2D RoPE), got "
                         f"{config}")


class FeatureDraft(nn.Module):
    """Predicts the target's next condition ``z`` from its previous one and the previous token (module
    docstring). The target is referenced, not a submodule: its head drafts the tokens, its weights are not saved
    with the draft's."""

    def __init__(self, config: FeatureDraftConfig, target: ContinuousAR):
        super().__init__()
        check_compatible(config, target)
        self.config = config
        self._target = (target,)
        bc = config.block_config()
        self.num_tokens, self.token_dim = target.num_tokens, config.token_dim
        self.tok_proj = nn.Linear(config.token_dim, config.dim)
        self.fc = nn.Linear(2 * config.dim, config.dim, bias=False)
        self.layers = nn.ModuleList(Block(bc) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, bc.norm_eps)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # The output lives where the target's final-normed conditions live: start from the target's norm scale
        # and token projection.
        with torch.no_grad():
            self.norm.weight.copy_(target.norm.weight)
            self.tok_proj.load_state_dict(target.tok_proj.state_dict())

    @property
    def target(self) -> ContinuousAR:
        return self._target[0]

    @property
    def head(self):
        """The target's diffusion head: draft and target tokens differ only through their conditions."""
        return self.target.head

    def _run(self, tokens, feats, positions, cache=None, slots=None, attn_mask=None) -> torch.Tensor:
        h = self.fc(torch.cat([feats, self.tok_proj(tokens)], dim=-1))
        return run_trunk(self.layers, self.norm, self.config, h, positions, cache, slots, attn_mask)

    def new_cache(self, batch_size: int, max_slots: int, device=None) -> KVCache:
        return new_trunk_cache(self.layers, self.config, self.fc.weight, batch_size, max_slots, device)

    def forward_slots(self, tokens: torch.Tensor, feats: torch.Tensor, slots: torch.Tensor,
                      cache: KVCache) -> torch.Tensor:
        """Entries at cache ``slots`` ``(R, W)`` (all ``>= 1``): entry at slot ``s`` reads ``feats[r, s - 1]``
        (the condition of token ``s - 1``) and ``tokens[r, s - 1]`` (``feats`` ``(R, L, dim)``, ``tokens``
        ``(R, L, D)``), writes its K/V at ``s`` and sees slots ``1 .. s``. Returns the predicted conditions
        ``(R, W, dim)`` of tokens ``slots``."""
        if bool((slots < 1).any()):
            raise ValueError("feature-draft entries start at slot 1 (slot 0 is the class token, which has none)")
        idx = slots - 1
        tok = tokens.gather(1, idx[..., None].expand(*idx.shape, tokens.shape[-1]))
        feat = feats.gather(1, idx[..., None].expand(*idx.shape, feats.shape[-1]))
        keys = torch.arange(cache.num_slots, device=slots.device)[None, None, :]
        mask = (keys <= slots[..., None]) & (keys >= 1)
        return self._run(tok, feat, slots, cache, slots, mask)

    def forward_train(self, tokens: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Causal pass over entries at slots ``1 .. T-1`` for ``tokens`` ``(B, T, D)`` and the target's conditions
        ``feats`` ``(B, T, dim)`` (``feats[:, i]`` conditions ``tokens[:, i]``): returns the predictions
        ``(B, T - 1, dim)`` of ``feats[:, 1:]``."""
        B, T, _ = tokens.shape
        positions = torch.arange(1, T, device=tokens.device).expand(B, T - 1)
        return self._run(tokens[:, :-1], feats[:, :-1], positions)


# ---------------------------------------------------------------------------------------------------------------
# Distillation loss


def _cfg_eps(head, x_t, t, z_c, z_u, cfg_scale):
    eps = head(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([z_c, z_u]))
    eps_c, eps_u = eps.chunk(2)
    return eps_u + cfg_scale * (eps_c - eps_u)


def distill_loss(draft: FeatureDraft, cls: torch.Tensor, tokens: torch.Tensor, cfg_scale: float = 3.0,
                 eps_weight: float = 1.0, unroll_weight: float = 0.5) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Distillation loss of ``draft`` on teacher-forced standardised ``tokens`` ``(B, T, D)`` of classes ``cls``.

    Both CFG halves (class / null class) are rows. Per pass: relative MSE of the predicted conditions
    (``|z_q - z_p|^2 / mean |z_p|^2``) plus ``eps_weight`` x MSE between the target head's CFG-mixed epsilon at the
    draft's and the target's conditions (one random step and noise per token, same ``x_t``). Pass 1 reads the
    target's features; pass 2 (weight ``unroll_weight``, 0 skips it) reads pass 1's predictions in their place, as
    the second token of a drafting round does."""
    target = draft.target
    B, T, _ = tokens.shape
    with torch.no_grad():
        null = torch.full_like(cls, target.num_classes)
        z_p = torch.cat([target.forward_train(cls, tokens, drop_labels=False),
                         target.forward_train(null, tokens, drop_labels=False)])  # (2B, T, dim)
        scale = z_p.pow(2).mean()
        s = target.head.schedule
        x0 = tokens[:, 1:].flatten(0, 1)
        t = torch.randint(1, s.num_steps + 1, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = s.sqrt_abar.to(x0.device)[t - 1, None] * x0 + s.sqrt_one_minus_abar.to(x0.device)[t - 1, None] * noise
        zc_p, zu_p = (z.flatten(0, 1) for z in z_p[:, 1:].chunk(2))
        eps_p = _cfg_eps(target.head, x_t, t, zc_p, zu_p, cfg_scale)
    rows = torch.cat([tokens, tokens])
    logs, total = {}, 0.0
    feats = z_p
    for name, weight in (("tf", 1.0), ("unroll", unroll_weight)):
        if weight <= 0:
            continue
        pred = draft.forward_train(rows, feats)  # (2B, T-1, dim), predictions of z_p[:, 1:]
        z_loss = (pred - z_p[:, 1:]).pow(2).mean() / scale
        zc_q, zu_q = (z.flatten(0, 1) for z in pred.chunk(2))
        eps_loss = (_cfg_eps(target.head, x_t, t, zc_q, zu_q, cfg_scale) - eps_p).pow(2).mean()
        total = total + weight * (z_loss + eps_weight * eps_loss)
        logs[f"z_rel_{name}"], logs[f"eps_{name}"] = z_loss.item(), eps_loss.item()
        feats = torch.cat([z_p[:, :1], pred], dim=1)  # the next pass reads the draft's own features
    return total, logs


@torch.no_grad()
def heldout_distance(draft: FeatureDraft, split: Dict[str, torch.Tensor], n: int = 64, cfg_scale: float = 3.0,
                     seed: int = 0) -> Dict[str, float]:
    """Teacher-forced on the first ``n`` held-out images (CFG ``cfg_scale``, one fixed noise per token, shared by
    both trajectories): relative condition error, median distance between the draft's and the target's final
    means, and the expected exact acceptance ``2 Phi(-d / (2 sigma_1))`` of the first drafted token (features
    from the target) and of the second (features from the draft's own prediction)."""
    from .diffusion import denoise

    target = draft.target
    gen = torch.Generator().manual_seed(seed)
    tokens = target.from_latents(split["latents"][:n].float())
    cls = split["labels"][:n]
    null = torch.full_like(cls, target.num_classes)
    z_p = torch.cat([target.forward_train(cls, tokens, drop_labels=False),
                     target.forward_train(null, tokens, drop_labels=False)])
    rows = torch.cat([tokens, tokens])
    pred1 = draft.forward_train(rows, z_p)
    pred2 = draft.forward_train(rows, torch.cat([z_p[:, :1], pred1], dim=1))
    zc_p, zu_p = (z.flatten(0, 1) for z in z_p[:, 1:].chunk(2))
    noise = torch.randn(len(zc_p), target.config.num_steps + 1, target.token_dim, generator=gen)
    p = denoise(target.head, zc_p, noise, zu_p, cfg_scale)
    out = {}
    for name, pred in (("first", pred1), ("second", pred2)):
        zc_q, zu_q = (z.flatten(0, 1) for z in pred.chunk(2))
        q = denoise(target.head, zc_q, noise, zu_q, cfg_scale)
        dist = (q.mu0 - p.mu0).norm(dim=-1)
        accept = 2 * torch.distributions.Normal(0.0, 1.0).cdf(-dist / (2 * p.sigma0[:, 0]))
        out[f"z_rel_rmse_{name}"] = round(((pred - z_p[:, 1:]).pow(2).mean() / z_p.pow(2).mean()).sqrt().item(), 5)
        out[f"median_mu0_distance_{name}"] = round(dist.median().item(), 5)
        out[f"expected_accept_{name}"] = round(accept.mean().item(), 5)
    return out


def load_feature_draft(name: str, target: ContinuousAR, in_dir: Optional[Path] = None) -> FeatureDraft:
    """The exported feature draft ``name`` for ``target`` (eval mode, float32, no gradients)."""
    from ..testbed import shipped
    from .train import weights_dir

    kind, config, state = shipped.read_weights(name, weights_dir(in_dir))
    if kind != "cspd-feature-draft":
        raise ValueError(f"{name}: expected a cspd-feature-draft, found kind {kind!r}")
    draft = FeatureDraft(FeatureDraftConfig(**config), target)
    draft.load_state_dict(state)
    return draft.to(target.latent_mean.device).eval().requires_grad_(False)
