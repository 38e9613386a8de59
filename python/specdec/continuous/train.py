"""Training recipes behind ``specdec train cspd-target | cspd-draft | cspd-eagle | cspd-eagle-2l``.

* ``cspd-target``: the continuous AR model (:data:`TARGET_CONFIG`) trained on the shipped VQ encoder's
  pre-quantisation latents of Fashion-MNIST with the DDPM loss of its diffusion head.
* ``cspd-draft``: a smaller model (:data:`DRAFT_CONFIG`: one trunk layer instead of three, initialised from the
  target's embeddings, first layer and head) *distilled* from the shipped target: for teacher-forced training
  images, random steps t and noise, its epsilon prediction is regressed onto the target's at the same
  ``(x_t, t, class or null class)``. Under trajectory alignment the draft
  and target tokens differ only through their epsilon predictions along the shared trajectory, which is what
  this loss shrinks (as an EAGLE draft is distilled from its target's features).
* ``cspd-eagle`` / ``cspd-eagle-2l``: the feature-conditioned draft of :mod:`.feature_draft` (one / two decoder
  layers) that predicts the shipped target's next condition from its previous one and the previous token and
  drafts with the target's own diffusion head; distilled on the target's teacher-forced conditions
  (:func:`.feature_draft.distill_loss`). Exported with their held-out final-mean distance and expected
  acceptance (:func:`.feature_draft.heldout_distance`).

Both reuse the discrete testbed's resumable loop (:func:`specdec.testbed.checkpoint.train_loop`: seeded,
checkpointed every ``--ckpt-every`` seconds under ``<cache>/ckpt``, tqdm progress), export
``<name>.safetensors`` into ``python/specdec/continuous/weights`` and record their figures (held-out diffusion
loss; for the target also class accuracy and FD-cls of CFG samples on the shipped classifier) in that folder's
``metrics.json``. The latents are computed once per VQ and cached (``<cache>/latents-<hash>.pt``).
"""

import hashlib
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from ..testbed import shipped
from ..testbed.checkpoint import EpochOrder, save_atomic
from ..testbed.train import Recipe, RunOptions, _meta, _run
from .model import ContinuousAR, ContinuousConfig

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TARGET_NAME, DRAFT_NAME = "cspd-target", "cspd-draft"
#: Sized for a shared 2-core CPU (one thread): each recipe trains in about 15 minutes there.
TARGET_CONFIG = {"dim": 96, "n_layer": 3, "n_head": 4, "head_width": 96, "head_depth": 2}
#: The draft keeps the target's width and head but only its first trunk layer, and starts from those weights.
DRAFT_CONFIG = {"dim": 96, "n_layer": 1, "n_head": 4, "head_width": 96, "head_depth": 2}
#: The shipped target ran 1000 steps and was then resumed with ``--steps 1600`` (so its learning rate followed the
#: 1000-step schedule first); the shipped draft ran 380 steps of an 800-step schedule, was resumed with
#: ``--steps 450`` and, after the target's extension, with ``--steps 650`` (docs/CSPD.md).
TARGET_RECIPE = Recipe(steps=1600, batch_size=64, lr=2e-3, weight_decay=0.01, extra={"repeats": 2})
DRAFT_RECIPE = Recipe(steps=650, batch_size=64, lr=1e-3, weight_decay=0.01, extra={"repeats": 2})
#: Figures of the target's CFG samples reported in ``metrics.json`` (the demo uses the same scale).
EVAL_CFG, EVAL_SAMPLES = 3.0, 1000
#: Feature-conditioned drafts (``continuous/feature_draft.py``): name -> decoder size.
FEATURE_DRAFTS = {"cspd-eagle": {"n_layer": 1, "n_head": 4}, "cspd-eagle-2l": {"n_layer": 2, "n_head": 4}}
#: The shipped cspd-eagle ran 273 steps of a 1200-step schedule and was resumed with ``--steps 800``; the shipped
#: cspd-eagle-2l ran ``--steps 600`` (metrics.json ``history``; about 1 s / 2 s per step on a quiet core).
FEATURE_DRAFT_RECIPE = Recipe(steps=800, batch_size=32, lr=2e-3, weight_decay=0.0,
                              extra={"eps_weight": 1.0, "unroll_weight": 0.5})


def weights_dir(opts_out: Optional[Path] = None) -> Path:
    return Path(opts_out) if opts_out is not None else WEIGHTS_DIR


# ---------------------------------------------------------------------------------------------------------------
# Data: pre-quantisation latents of the shipped VQ encoder


@torch.no_grad()
def load_latents(cache_dir: Path, batch: int = 500) -> Dict[str, Dict[str, torch.Tensor]]:
    """``{"train"|"test": {"latents" float16 (N, 64, 8), "labels" int64 (N,)}}``: the shipped VQ encoder's unit-norm
    latents before quantisation, computed once and cached under ``cache_dir`` (keyed by the VQ weights' hash)."""
    from ..testbed.data import load_fashion_mnist

    vq_file = shipped.weights_dir() / "vq.safetensors"
    digest = hashlib.sha256(vq_file.read_bytes()).hexdigest()[:12]
    path = Path(cache_dir) / f"latents-{digest}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    vq = shipped.load_model("vq")
    out = {}
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(split)
        lat = [vq.encode_latents(images[i : i + batch]).half() for i in range(0, len(images), batch)]
        out[split] = {"latents": torch.cat(lat), "labels": labels}
    save_atomic(out, path)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Shipped weights


def load_continuous(name: str, device="cpu", in_dir: Optional[Path] = None) -> ContinuousAR:
    """The shipped continuous model ``name`` (``cspd-target`` / ``cspd-draft``), eval mode, float32."""
    kind, config, state = shipped.read_weights(name, weights_dir(in_dir))
    if kind != "continuous":
        raise ValueError(f"{name}: expected a continuous model, found kind {kind!r}")
    model = ContinuousAR(ContinuousConfig(**config))
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False)


def read_metrics(in_dir: Optional[Path] = None) -> Dict:
    return shipped.read_metrics(weights_dir(in_dir))


@torch.no_grad()
def heldout_loss(model: ContinuousAR, data_split, n: int = 1000, batch: int = 250, seed: int = 0) -> float:
    """Mean DDPM loss on the first ``n`` held-out images (fixed noise seed; conditional, no label dropout)."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    total = 0.0
    for i in range(0, n, batch):
        tokens = model.from_latents(data_split["latents"][i : i + batch].float())
        total += model.loss(data_split["labels"][i : i + batch], tokens)[0].item() * len(tokens)
    torch.set_rng_state(state)
    return total / n


def evaluate_samples(model: ContinuousAR, num_samples: int = EVAL_SAMPLES, cfg: float = EVAL_CFG,
                     seed: int = 0) -> Dict[str, float]:
    """Class accuracy, FD-cls and precision / recall of ``num_samples`` balanced AR samples at CFG ``cfg`` against
    as many held-out test images, on the shipped classifier."""
    from ..decoding import derive_row_keys
    from ..metrics.evaluate import balanced_classes, balanced_test_subset, sample_quality
    from .sample import decode_images, generate_ar

    vq, classifier = shipped.load_model("vq"), shipped.load_model("classifier")
    classes = balanced_classes(num_samples)
    keys = derive_row_keys(num_samples, seed)
    tokens = torch.cat([generate_ar(model, classes[i : i + 250], keys[i : i + 250], cfg_scale=cfg).tokens
                        for i in range(0, num_samples, 250)])
    images = decode_images(model, vq, tokens)
    real, _, _ = balanced_test_subset(num_samples)
    figures = sample_quality(classifier, images, classes, real)
    return {k: round(v, 4) for k, v in figures.items()}


def _export(opts: RunOptions, name: str, model: ContinuousAR, extra: Dict) -> Dict:
    out = weights_dir(opts.out)
    shipped.save_weights(model.cpu().eval(), name, "continuous", model.config.to_dict(), torch.float32, out)
    model = load_continuous(name, in_dir=out)
    metrics = {"parameters": sum(p.numel() for p in model.parameters()), **extra}
    shipped.update_metrics(name, metrics, out)
    return metrics


def _new_model(opts: RunOptions, arch: Dict, train_latents: torch.Tensor) -> ContinuousAR:
    torch.manual_seed(opts.seed)
    model = ContinuousAR(ContinuousConfig(**arch))
    flat = train_latents.float().reshape(-1, train_latents.shape[-1])
    model.latent_mean.copy_(flat.mean(0))
    model.latent_std.copy_(flat.std(0))
    return model.to(opts.torch_device())


def train_target(opts: RunOptions) -> Dict:
    r = TARGET_RECIPE.resolve(opts)
    data = load_latents(Path(opts.cache))
    train = data["train"]
    model = _new_model(opts, TARGET_CONFIG, train["latents"])
    dev = opts.torch_device()
    order = EpochOrder(len(train["labels"]), r.batch_size, opts.seed)

    def loss_fn(step):
        idx = order.indices(step)
        tokens = model.from_latents(train["latents"][idx].float().to(dev))
        return model.loss(train["labels"][idx].to(dev), tokens, r.extra["repeats"])

    result = _run(opts, TARGET_NAME, model, r, loss_fn)
    model = model.cpu().eval()
    extra = {"test_loss": round(heldout_loss(model, data["test"]), 5), **result, **_meta(opts, r)}
    metrics = _export(opts, TARGET_NAME, model, extra)
    shipped_model = load_continuous(TARGET_NAME, in_dir=weights_dir(opts.out))
    metrics["samples"] = {"cfg": EVAL_CFG, "num_samples": EVAL_SAMPLES, **evaluate_samples(shipped_model)}
    shipped.update_metrics(TARGET_NAME, metrics, weights_dir(opts.out))
    return metrics


def train_draft(opts: RunOptions) -> Dict:
    r = DRAFT_RECIPE.resolve(opts)
    data = load_latents(Path(opts.cache))
    train = data["train"]
    dev = opts.torch_device()
    target = load_continuous(TARGET_NAME, dev, weights_dir(opts.out))
    model = _new_model(opts, DRAFT_CONFIG, train["latents"])
    # Start from the target's weights where the shapes agree (embeddings, first layer, final norm, head, token
    # scaling): the draft begins as the target with its upper layers skipped, and distillation repairs the rest.
    own = model.state_dict()
    shared = {k: v for k, v in target.state_dict().items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(shared, strict=False)
    order = EpochOrder(len(train["labels"]), r.batch_size, opts.seed)
    schedule = model.head.schedule
    drop = model.config.class_dropout

    def loss_fn(step):
        idx = order.indices(step)
        tokens = target.from_latents(train["latents"][idx].float().to(dev))
        cls = train["labels"][idx].to(dev)
        cls = torch.where(torch.rand(len(cls), device=dev) < drop, torch.full_like(cls, model.num_classes), cls)
        x0 = tokens.flatten(0, 1).repeat(r.extra["repeats"], 1)
        t = torch.randint(1, schedule.num_steps + 1, (len(x0),), device=dev)
        eps = torch.randn_like(x0)
        x_t = schedule.sqrt_abar.to(dev)[t - 1, None] * x0 + schedule.sqrt_one_minus_abar.to(dev)[t - 1, None] * eps
        with torch.no_grad():
            z_p = target.forward_train(cls, tokens, drop_labels=False).flatten(0, 1).repeat(r.extra["repeats"], 1)
            eps_p = target.head(x_t, t, z_p)
        z_q = model.forward_train(cls, tokens, drop_labels=False).flatten(0, 1).repeat(r.extra["repeats"], 1)
        eps_q = model.head(x_t, t, z_q)
        distill = (eps_q - eps_p).pow(2).mean()
        return distill, {"distill": distill.item(), "data": (eps_q.detach() - eps).pow(2).mean().item()}

    result = _run(opts, DRAFT_NAME, model, r, loss_fn)
    model = model.cpu().eval()
    extra = {"test_loss": round(heldout_loss(model, data["test"]), 5), **result, **_meta(opts, r)}
    return _export(opts, DRAFT_NAME, model, extra)


def train_feature_draft(opts: RunOptions, name: str = "cspd-eagle") -> Dict:
    """Distil the feature draft ``name`` (:data:`FEATURE_DRAFTS`) from the shipped target (module docstring)."""
    from .feature_draft import FeatureDraft, FeatureDraftConfig, distill_loss, heldout_distance

    r = FEATURE_DRAFT_RECIPE.resolve(opts)
    data = load_latents(Path(opts.cache))
    train = data["train"]
    dev = opts.torch_device()
    target = load_continuous(TARGET_NAME, dev, weights_dir(opts.out))
    torch.manual_seed(opts.seed)
    config = FeatureDraftConfig(dim=target.config.dim, token_dim=target.token_dim, grid_size=target.config.grid_size,
                                **FEATURE_DRAFTS[name])
    draft = FeatureDraft(config, target).to(dev)
    order = EpochOrder(len(train["labels"]), r.batch_size, opts.seed)

    def loss_fn(step):
        idx = order.indices(step)
        tokens = target.from_latents(train["latents"][idx].float().to(dev))
        return distill_loss(draft, train["labels"][idx].to(dev), tokens, EVAL_CFG, r.extra["eps_weight"],
                            r.extra["unroll_weight"])

    result = _run(opts, name, draft, r, loss_fn)
    draft = draft.cpu().eval()
    out = weights_dir(opts.out)
    shipped.save_weights(draft, name, "cspd-feature-draft", config.to_dict(), torch.float32, out)
    from .feature_draft import load_feature_draft

    draft = load_feature_draft(name, load_continuous(TARGET_NAME, in_dir=out), out)
    metrics = {"parameters": sum(p.numel() for p in draft.parameters()),
               "heldout": heldout_distance(draft, data["test"]), **result, **_meta(opts, r)}
    shipped.update_metrics(name, metrics, out)
    return metrics


RECIPES: Dict[str, Callable[[RunOptions], Dict]] = {
    TARGET_NAME: train_target, DRAFT_NAME: train_draft,
    **{name: (lambda opts, name=name: train_feature_draft(opts, name)) for name in FEATURE_DRAFTS}}
