"""Training recipes behind ``specdec train <vq|classifier|target|draft|eagle|all>``.

Every recipe is seeded, resumable (:func:`.checkpoint.train_loop`; checkpoints under ``<cache>/ckpt``), evaluates
itself on the held-out test split, and exports ``<name>.safetensors`` plus its entry in ``metrics.json``. Order of
dependencies: vq -> (tokens) -> target -> draft, eagle; the classifier is independent.
"""

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from . import shipped
from .checkpoint import CHECKPOINT_EVERY_S, EpochOrder, train_loop
from .data import load_fashion_mnist

DEFAULT_CACHE = Path(".cache") / "testbed"


@dataclass
class RunOptions:
    """Options shared by all recipes (CLI flags); ``None`` fields fall back to the recipe's defaults."""

    steps: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    seed: int = 0
    threads: int = 1
    device: str = "auto"
    out: Optional[Path] = None  # weights directory (default: the package's shipped weights)
    cache: Path = DEFAULT_CACHE
    fresh: bool = False  # ignore an existing checkpoint
    ckpt_every_s: float = CHECKPOINT_EVERY_S

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


@dataclass
class Recipe:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.95)
    extra: Dict = field(default_factory=dict)

    def resolve(self, opts: RunOptions) -> "Recipe":
        return replace(self, steps=opts.steps or self.steps, batch_size=opts.batch_size or self.batch_size,
                       lr=opts.lr or self.lr)


def _ckpt(opts: RunOptions, name: str) -> Path:
    path = Path(opts.cache) / "ckpt" / f"{name}.pt"
    if opts.fresh and path.exists():
        path.unlink()
    return path


def _optimizer(model, r: Recipe):
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=r.lr, betas=r.betas)


def _meta(opts: RunOptions, r: Recipe) -> Dict:
    return {"recipe": asdict(r), "seed": opts.seed, "threads": torch.get_num_threads(),
            "device": str(opts.torch_device())}


def _run(opts: RunOptions, name: str, model, r: Recipe, loss_fn, **loop_kwargs) -> Dict:
    """:func:`train_loop` with the recipe's optimiser, checkpoint and seed; returns final logs and wall time."""
    t0 = time.time()
    logs = train_loop(name, model, _optimizer(model, r), loss_fn, total_steps=r.steps, lr=r.lr,
                      ckpt_path=_ckpt(opts, name), seed=opts.seed, ckpt_every_s=opts.ckpt_every_s, **loop_kwargs)
    return {"train_logs": logs, "train_minutes": round((time.time() - t0) / 60, 2)}


# ---------------------------------------------------------------------------------------------------------------
# VQ tokenizer

VQ_RECIPE = Recipe(steps=2500, batch_size=128, lr=1e-3, betas=(0.9, 0.99))


@torch.no_grad()
def evaluate_vq(vq, images: torch.Tensor, batch: int = 500) -> Dict[str, float]:
    """Test reconstruction MSE on [-1, 1] (and PSNR with peak-to-peak 2), codes used, perplexity."""
    from .vq import codebook_stats

    vq.eval()
    sq, codes = 0.0, []
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        c = vq.encode(x)
        codes.append(c)
        sq += F.mse_loss(vq.decode(c), x, reduction="sum").item()
    mse = sq / images.numel()
    stats = codebook_stats(torch.cat(codes), vq.config.codebook_size)
    return {"test_mse": round(mse, 5), "psnr_db": round(10 * torch.log10(torch.tensor(4.0 / mse)).item(), 2),
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()}}


def train_vq(opts: RunOptions) -> Dict:
    from .vq import FM64, VQModel

    r = VQ_RECIPE.resolve(opts)
    dev = opts.torch_device()
    images, _ = load_fashion_mnist("train")
    torch.manual_seed(opts.seed)
    vq = VQModel(FM64).to(dev)
    order = EpochOrder(len(images), r.batch_size, opts.seed)

    def loss_fn(step):
        return vq.training_loss(images[order.indices(step)].to(dev))

    result = _run(opts, "vq", vq, r, loss_fn, warmup_frac=0.02, after_step=vq.maybe_restart)
    vq = vq.cpu().eval()
    test_images, _ = load_fashion_mnist("test")
    metrics = {**evaluate_vq(vq, test_images), **result, **_meta(opts, r)}
    shipped.save_weights(vq, "vq", "vq", vq.config.to_dict(), torch.float32, opts.out)
    shipped.update_metrics("vq", metrics, opts.out)
    return metrics


RECIPES: Dict[str, Callable[[RunOptions], Dict]] = {"vq": train_vq}


# ---------------------------------------------------------------------------------------------------------------
# Classifier (metrics)

CLASSIFIER_RECIPE = Recipe(steps=1800, batch_size=128, lr=2e-3, weight_decay=1e-4, betas=(0.9, 0.99),
                           extra={"max_shift": 2})


def _random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels (zero = background fill), on the padded 32x32 canvas."""
    if max_shift <= 0:
        return x
    B = x.shape[0]
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, B))
    out = torch.empty_like(x)
    for i in range(B):
        out[i] = padded[i, :, dy[i] : dy[i] + x.shape[2], dx[i] : dx[i] + x.shape[3]]
    return out


def train_classifier(opts: RunOptions) -> Dict:
    from ..metrics.classifier import Classifier, classify

    r = CLASSIFIER_RECIPE.resolve(opts)
    dev = opts.torch_device()
    images, labels = load_fashion_mnist("train")
    torch.manual_seed(opts.seed)
    model = Classifier().to(dev)
    order = EpochOrder(len(images), r.batch_size, opts.seed)

    def loss_fn(step):
        idx = order.indices(step)
        x = _random_shift(images[idx], r.extra["max_shift"])
        return model.training_loss(x.to(dev), labels[idx].to(dev))

    result = _run(opts, "classifier", model, r, loss_fn, warmup_frac=0.03)
    model = model.cpu().eval()
    test_images, test_labels = load_fashion_mnist("test")
    acc = (classify(model, test_images)["probs"].argmax(-1) == test_labels).float().mean().item()
    metrics = {"test_accuracy": round(acc, 4), **result, **_meta(opts, r)}
    shipped.save_weights(model, "classifier", "classifier", model.config, torch.float32, opts.out)
    shipped.update_metrics("classifier", metrics, opts.out)
    return metrics


RECIPES["classifier"] = train_classifier


# ---------------------------------------------------------------------------------------------------------------
# Tokens, target and small AR draft

#: Stochastic-quantisation temperature for AR training targets (see tokens.py); 0 = nearest code.
TARGET_TAU = 0.01
TARGET_CONFIG = {"dim": 192, "n_layer": 4, "n_head": 6}
DRAFT_CONFIG = {"dim": 128, "n_layer": 2, "n_head": 4}
TARGET_RECIPE = Recipe(steps=3600, batch_size=64, lr=1e-3, weight_decay=0.05, extra={"tau": TARGET_TAU})
DRAFT_RECIPE = Recipe(steps=1200, batch_size=64, lr=2e-3, weight_decay=0.05, extra={"tau": TARGET_TAU})


def _tokens(opts: RunOptions):
    from .tokens import load_token_cache

    return load_token_cache(shipped.weights_dir(opts.out) / "vq.safetensors", Path(opts.cache))


def build_tokens(opts: RunOptions) -> Dict:
    from .tokens import nearest_share
    from .vq import codebook_stats

    data = _tokens(opts)
    train = data["train"]
    vocab = shipped.read_weights("vq", opts.out)[1]["codebook_size"]
    return {"train_images": len(train["ids"]), "nearest": codebook_stats(train["ids"][..., 0].long(), vocab),
            "mean_cos_gap_1_2": (train["cos"][..., 0].float() - train["cos"][..., 1].float()).mean().item(),
            "nearest_share_at_tau": {t: nearest_share(train["cos"][:2000], t) for t in (0.002, 0.005, 0.01, 0.02)}}


@torch.no_grad()
def evaluate_ar(model, data_split, n: int = 2000, batch: int = 250) -> Dict[str, float]:
    """Teacher-forced NLL (nats/token), top-1 accuracy and mean top-1 probability on the first ``n`` held-out
    images tokenised with the nearest code, conditioned on their class (no CFG)."""
    model.eval()
    nll = acc = top1 = 0.0
    count = 0
    for i in range(0, n, batch):
        tokens = data_split["ids"][i : i + batch, :, 0].long()
        cls = data_split["labels"][i : i + batch]
        logits = model.forward_train(cls, tokens)
        logp = logits.log_softmax(-1)
        nll += -logp.gather(-1, tokens[..., None]).sum().item()
        acc += (logits.argmax(-1) == tokens).sum().item()
        top1 += logp.exp().max(-1).values.sum().item()
        count += tokens.numel()
    return {"test_nll": round(nll / count, 4), "test_top1_accuracy": round(acc / count, 4),
            "test_mean_top1_prob": round(top1 / count, 4)}


def _train_ar(opts: RunOptions, name: str, recipe: Recipe, arch: Dict, dtype) -> Dict:
    from .model import ARConfig, ARTransformer
    from .tokens import sample_targets

    r = recipe.resolve(opts)
    dev = opts.torch_device()
    data = _tokens(opts)
    train = data["train"]
    vocab = shipped.read_weights("vq", opts.out)[1]["codebook_size"]
    torch.manual_seed(opts.seed)
    config = ARConfig(vocab_size=vocab, **arch)
    model = ARTransformer(config).to(dev)
    order = EpochOrder(len(train["ids"]), r.batch_size, opts.seed)

    def loss_fn(step):
        idx = order.indices(step)
        tokens = sample_targets(train["ids"][idx], train["cos"][idx], r.extra["tau"]).to(dev)
        loss = model.nll(train["labels"][idx].to(dev), tokens)
        return loss, {"nll": loss.item()}

    result = _run(opts, name, model, r, loss_fn)
    model = model.cpu().eval()
    shipped.save_weights(model, name, "ar", config.to_dict(), dtype, opts.out)
    model = shipped.load_model(name, in_dir=opts.out)  # evaluate what is shipped (rounded to ``dtype``)
    params = sum(p.numel() for p in model.parameters())
    metrics = {**evaluate_ar(model, data["test"]), "parameters": params, **result,
               **_meta(opts, r)}
    shipped.update_metrics(name, metrics, opts.out)
    return metrics


def train_target(opts: RunOptions) -> Dict:
    return _train_ar(opts, "target", TARGET_RECIPE, TARGET_CONFIG, torch.float16)


def train_draft(opts: RunOptions) -> Dict:
    return _train_ar(opts, "draft", DRAFT_RECIPE, DRAFT_CONFIG, torch.float16)


RECIPES.update({"tokens": build_tokens, "target": train_target, "draft": train_draft})


# ---------------------------------------------------------------------------------------------------------------
# EAGLE-1 head on the shipped target

EAGLE_RECIPE = Recipe(steps=1600, batch_size=64, lr=2e-3, weight_decay=0.0,
                      extra={"tau": TARGET_TAU, "ce_weight": 0.1, "n_head": 6})


@torch.no_grad()
def evaluate_eagle(head, target, data_split, n: int = 1000, batch: int = 250) -> Dict[str, float]:
    """Teacher-forced on held-out images: share of positions where the head's argmax equals the target's argmax,
    the head's mean probability of the target's argmax, and the expected one-step acceptance
    ``sum_x min(p, q)`` (exact speculative sampling, T 1, no CFG)."""
    agree = mass = accept = 0.0
    count = 0
    for i in range(0, n, batch):
        tokens = data_split["ids"][i : i + batch, :, 0].long()
        cls = data_split["labels"][i : i + batch]
        t_logits, hidden = target.forward_train(cls, tokens, return_hidden=True)
        h_logits, _ = head.forward_train(tokens[:, :-1], hidden[:, :-1])
        p, q = t_logits[:, 1:].softmax(-1), h_logits.softmax(-1)
        top = p.argmax(-1, keepdim=True)
        agree += (q.argmax(-1, keepdim=True) == top).sum().item()
        mass += q.gather(-1, top).sum().item()
        accept += torch.minimum(p, q).sum(-1).sum().item()
        count += top.numel()
    return {"top1_agreement": round(agree / count, 4), "q_of_target_argmax": round(mass / count, 4),
            "expected_accept_rate": round(accept / count, 4)}


def train_eagle(opts: RunOptions) -> Dict:
    from .eagle import EagleConfig, EagleHead
    from .tokens import sample_targets

    r = EAGLE_RECIPE.resolve(opts)
    dev = opts.torch_device()
    data = _tokens(opts)
    train = data["train"]
    target = shipped.load_model("target", dev, opts.out)
    torch.manual_seed(opts.seed)
    config = EagleConfig(n_head=r.extra["n_head"])
    head = EagleHead(target, config).to(dev)
    order = EpochOrder(len(train["ids"]), r.batch_size, opts.seed)
    drop = target.config.class_dropout

    def loss_fn(step):
        idx = order.indices(step)
        tokens = sample_targets(train["ids"][idx], train["cos"][idx], r.extra["tau"]).to(dev)
        cls = train["labels"][idx].to(dev)
        cls = torch.where(torch.rand(len(cls), device=dev) < drop, torch.full_like(cls, target.num_classes), cls)
        with torch.no_grad():
            t_logits, hidden = target.forward_train(cls, tokens, return_hidden=True)
        return head.distill_loss(tokens, hidden, t_logits, r.extra["ce_weight"])

    result = _run(opts, "eagle", head, r, loss_fn)
    head = head.cpu().eval()
    shipped.save_weights(head, "eagle", "eagle", config.to_dict(), torch.float16, opts.out)
    target = shipped.load_model("target", in_dir=opts.out)
    head = shipped.load_model("eagle", in_dir=opts.out, target=target)
    metrics = {**evaluate_eagle(head, target, data["test"]), "parameters": sum(p.numel() for p in head.parameters()),
               **result, **_meta(opts, r)}
    shipped.update_metrics("eagle", metrics, opts.out)
    return metrics


def train_all(opts: RunOptions) -> Dict:
    """Everything in dependency order (each step resumes or re-exports from its own checkpoint)."""
    return {name: RECIPES[name](opts) for name in ("vq", "classifier", "tokens", "target", "draft", "eagle")}


RECIPES.update({"eagle": train_eagle, "all": train_all})
