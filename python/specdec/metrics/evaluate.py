"""All testbed figures for a set of weights (``specdec metrics``): classifier accuracy, VQ reconstruction,
target NLL / flatness, and sample quality of plain AR sampling (class accuracy, FD-cls, KID, precision/recall).

Generated images are compared with the same number of held-out test images (balanced over classes).
"""

import time
from pathlib import Path
from typing import Dict, Optional

import torch

from ..testbed import shipped
from ..testbed.data import CLASS_NAMES, load_fashion_mnist
from .classifier import classify
from .flatness import flatness_diagnostics
from .quality import class_accuracy, frechet_distance, kernel_inception_distance, precision_recall

#: Shipped sampling setting for the AR baseline (docs/TESTBED.md §1.4 order: CFG -> temperature -> top-k).
DEFAULT_CFG, DEFAULT_TEMPERATURE, DEFAULT_TOP_K = 3.0, 1.0, 128


def balanced_classes(n: int, num_classes: int = 10) -> torch.Tensor:
    """``(n,)`` class ids 0, 1, ..., num_classes-1, 0, 1, ... (balanced)."""
    return torch.arange(n) % num_classes


def balanced_test_subset(n: int, num_classes: int = 10):
    """The first ``n / num_classes`` test images of each class: ``(images, labels, index)``."""
    images, labels = load_fashion_mnist("test")
    per = n // num_classes
    idx = torch.cat([(labels == c).nonzero()[:per, 0] for c in range(num_classes)])
    return images[idx], labels[idx], idx


@torch.no_grad()
def sample_images(target, vq, classes: torch.Tensor, *, cfg: float, temperature: float, top_k: Optional[int],
                  seed: int, batch: int = 250) -> Dict[str, torch.Tensor]:
    """Plain AR samples for ``classes``, decoded: ``images`` ``(N, 1, 32, 32)``, ``tokens``, ``top1``."""
    from ..testbed.sample import generate

    gen = torch.Generator().manual_seed(seed)
    out = {"tokens": [], "top1": [], "images": []}
    for i in range(0, len(classes), batch):
        res = generate(target, classes[i : i + batch], cfg=cfg, temperature=temperature, top_k=top_k, generator=gen)
        out["tokens"].append(res["tokens"])
        out["top1"].append(res["top1"])
        out["images"].append(vq.decode(res["tokens"]))
    return {k: torch.cat(v) for k, v in out.items()}


def sample_quality(classifier, images: torch.Tensor, classes: torch.Tensor, real_images: torch.Tensor,
                   k: int = 3) -> Dict[str, float]:
    """Class accuracy of generated ``images`` w.r.t. ``classes``; FD-cls, KID and precision/recall against
    ``real_images`` on the classifier's penultimate features."""
    fake = classify(classifier, images)
    real = classify(classifier, real_images)
    return {**class_accuracy(fake["probs"], classes),
            "fd_cls": frechet_distance(real["features"].numpy(), fake["features"].numpy()),
            "kid": kernel_inception_distance(real["features"], fake["features"]),
            **precision_recall(real["features"], fake["features"], k=k)}


@torch.no_grad()
def generated_nll(target, tokens: torch.Tensor, classes: torch.Tensor) -> float:
    """Mean per-token NLL (nats) of generated sequences under the conditional target (no CFG, T 1)."""
    logits = target.forward_train(classes, tokens)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).item()


def save_grid(images: torch.Tensor, classes: torch.Tensor, path: Path, per_class: int = 10,
              title: Optional[str] = None) -> None:
    """PNG grid: one row per class (labelled), ``per_class`` samples each, under an optional ``title``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for c in range(len(CLASS_NAMES)):
        pick = images[classes == c][:per_class]
        rows.append(torch.cat(list(pick[:, 0]), dim=1))
    grid = ((torch.cat(rows, 0) + 1) / 2).clamp(0, 1).numpy()
    fig, ax = plt.subplots(figsize=(per_class * 0.6 + 1.3, len(CLASS_NAMES) * 0.6 + 0.2), dpi=110)
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    size = images.shape[-1]
    ax.set_yticks([size * (c + 0.5) for c in range(len(CLASS_NAMES))], CLASS_NAMES, fontsize=8)
    ax.set_xticks([])
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def evaluate_testbed(weights: Optional[Path] = None, num_samples: int = 2000, cfg: float = DEFAULT_CFG,
                     temperature: float = DEFAULT_TEMPERATURE, top_k: Optional[int] = DEFAULT_TOP_K, seed: int = 0,
                     grid_png: Optional[Path] = None) -> Dict:
    """Compute every testbed figure for the weights in ``weights`` (default: shipped). ``num_samples`` generated
    images (balanced classes) are compared with as many balanced held-out test images."""
    from ..testbed.train import evaluate_ar, evaluate_vq

    t0 = time.time()
    top_k = DEFAULT_TOP_K if top_k is None else top_k
    tb = shipped.load_testbed("cpu", weights)
    test_images, test_labels = load_fashion_mnist("test")
    cls_acc = (classify(tb.classifier, test_images)["probs"].argmax(-1) == test_labels).double().mean().item()
    real, real_labels, _ = balanced_test_subset(num_samples)
    vq_figs = evaluate_vq(tb.vq, real)
    codes = tb.vq.encode(real)
    tokens = {"ids": codes[..., None], "labels": real_labels}
    ar_figs = {name: evaluate_ar(model, tokens, n=len(real)) for name, model in (("target", tb.target),
                                                                                 ("draft", tb.draft))}
    with torch.no_grad():
        ar_figs["target"]["flatness"] = flatness_diagnostics(tb.target.forward_train(real_labels, codes), codes,
                                                             tb.vq.codebook_normalized())
    classes = balanced_classes(num_samples)
    samples = sample_images(tb.target, tb.vq, classes, cfg=cfg, temperature=temperature, top_k=top_k, seed=seed)
    quality = sample_quality(tb.classifier, samples["images"], classes, real)
    if grid_png is not None:
        save_grid(samples["images"], classes, Path(grid_png))
    return {
        "num_samples": num_samples,
        "sampling": {"cfg": cfg, "temperature": temperature, "top_k": top_k, "seed": seed},
        "classifier_test_accuracy": round(cls_acc, 4),
        "vq": vq_figs,
        "target": ar_figs["target"],
        "draft": ar_figs["draft"],
        "generated": {**{k: round(v, 6 if k == "kid" else 4) for k, v in quality.items()},
                      "target_nll_of_samples": round(generated_nll(tb.target, samples["tokens"], classes), 4),
                      "mean_top1_prob_sampling": round(samples["top1"].mean().item(), 4)},
        "seconds": round(time.time() - t0, 1),
    }
