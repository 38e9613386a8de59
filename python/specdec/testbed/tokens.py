"""Pre-tokenised Fashion-MNIST (cached once per VQ under ``<cache>/tokens-<hash>.pt``, gitignored).

For every image and grid position the cache holds the ``TOP_M`` nearest codes (cosine) and their cosines, so AR
training never runs the encoder. Training targets are drawn by *stochastic quantisation* (docs/TESTBED.md §6.5, lever 3):
code ``j`` among the ``TOP_M`` nearest with probability ``softmax(cos / tau)``; ``tau -> 0`` is plain nearest-code
tokenisation (used for every held-out evaluation).
"""

import hashlib
from pathlib import Path
from typing import Dict

import torch

from .data import load_fashion_mnist

TOP_M = 4


@torch.no_grad()
def topm_codes(vq, images: torch.Tensor, m: int = TOP_M, batch: int = 500) -> Dict[str, torch.Tensor]:
    """``ids`` int16 ``(N, T, m)`` and ``cos`` float16 ``(N, T, m)`` of the m nearest codes, nearest first."""
    vq.eval()
    book = vq.codebook_normalized()
    ids, cos = [], []
    for i in range(0, len(images), batch):
        sims = vq.encode_latents(images[i : i + batch]) @ book.t()
        top = sims.topk(m, dim=-1)
        ids.append(top.indices.to(torch.int16))
        cos.append(top.values.to(torch.float16))
    return {"ids": torch.cat(ids), "cos": torch.cat(cos)}


def _file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def load_token_cache(vq_file: Path, cache_dir: Path, vq=None) -> Dict[str, Dict[str, torch.Tensor]]:
    """``{"train"|"test": {"ids", "cos", "labels"}}`` for the VQ weights in ``vq_file``; built (and cached) on
    first use."""
    path = Path(cache_dir) / f"tokens-{_file_hash(vq_file)}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    if vq is None:
        from .shipped import load_model

        vq = load_model("vq", in_dir=Path(vq_file).parent)
    out = {}
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(split)
        out[split] = {**topm_codes(vq, images), "labels": labels}
    from .checkpoint import save_atomic

    save_atomic(out, path)
    return out


def sample_targets(ids: torch.Tensor, cos: torch.Tensor, tau: float, generator=None) -> torch.Tensor:
    """Stochastic quantisation: int64 ``(B, T)`` codes drawn from ``softmax(cos / tau)`` over the m candidates
    (``tau <= 0``: the nearest code)."""
    if tau <= 0:
        return ids[..., 0].long()
    probs = (cos.float() / tau).softmax(-1)
    pick = torch.multinomial(probs.flatten(0, -2), 1, generator=generator).view(ids.shape[:-1])
    return ids.gather(-1, pick[..., None])[..., 0].long()


def nearest_share(cos: torch.Tensor, tau: float) -> float:
    """Mean probability that stochastic quantisation keeps the nearest code."""
    return (cos.float() / tau).softmax(-1)[..., 0].mean().item() if tau > 0 else 1.0
