"""The fixed Fashion-MNIST classifier behind the quality metrics: a small CNN on 32x32 images in [-1, 1].

``features(x)`` returns the 128-d penultimate activations used by FD-cls and precision/recall.
"""

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn


class Classifier(nn.Module):
    def __init__(self, width: int = 32, feature_dim: int = 128, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.config = {"width": width, "feature_dim": feature_dim, "num_classes": num_classes, "dropout": dropout}
        w = width
        self.conv = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * w * 16, feature_dim), nn.ReLU())
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 32, 32)`` -> penultimate features ``(B, feature_dim)``."""
        return self.fc(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))

    def training_loss(self, x, y):
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.item(), "acc": (logits.argmax(-1) == y).float().mean().item()}


@torch.no_grad()
def classify(model: Classifier, images: torch.Tensor, batch: int = 1000) -> Dict[str, torch.Tensor]:
    """Eval-mode features ``(N, F)`` and class probabilities ``(N, C)`` of ``images``."""
    model.eval()
    feats, probs = [], []
    for i in range(0, len(images), batch):
        f = model.features(images[i : i + batch])
        feats.append(f)
        probs.append(model.out(f).softmax(-1))
    return {"features": torch.cat(feats), "probs": torch.cat(probs)}
