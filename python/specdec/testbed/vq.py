"""VQ tokenizer: LlamaGen's design in miniature (docs/TESTBED.md §2 and §6.2).

Conv encoder -> 1x1 conv to the code dimension -> l2-normalised codebook (cosine nearest code) -> conv decoder.
Loss: pixel MSE + codebook loss + ``beta`` * commitment (no GAN, no LPIPS). Unused codes are re-seeded from recent
encoder outputs every ``restart_every`` training steps (dead-code restarts).

Configurations: :data:`FM64` (x4 downsampling, 8x8 = 64 tokens, shipped) and :data:`FM256` (x2, 16x16 = 256
tokens, config only).
"""

from dataclasses import asdict, dataclass
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VQConfig:
    """``channels[i]`` is the width after the i-th stride-2 stage; ``len(channels)`` stages -> downsampling 2^n."""

    codebook_size: int = 1024
    code_dim: int = 8
    channels: Tuple[int, ...] = (32, 96)
    image_size: int = 32
    beta: float = 0.25
    restart_every: int = 50

    @property
    def downsample(self) -> int:
        return 2 ** len(self.channels)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.downsample

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "VQConfig":
        return cls(**{**d, "channels": tuple(d["channels"])})


FM64 = VQConfig(channels=(32, 96))  # x4 -> 8x8 = 64 tokens (shipped)
FM256 = VQConfig(channels=(64,))  # x2 -> 16x16 = 256 tokens (config only)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class VQModel(nn.Module):
    """Images ``(B, 1, 32, 32)`` in [-1, 1] <-> codes ``(B, grid*grid)`` int64 (row-major grid)."""

    def __init__(self, config: VQConfig = FM64):
        super().__init__()
        self.config = config
        enc, ch_in = [], 1
        for ch in config.channels:
            enc += [nn.Conv2d(ch_in, ch, 4, stride=2, padding=1), ResBlock(ch)]
            ch_in = ch
        enc += [nn.GroupNorm(8, ch_in), nn.SiLU(), nn.Conv2d(ch_in, config.code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        chans = list(reversed(config.channels))
        dec = [nn.Conv2d(config.code_dim, chans[0], 1), ResBlock(chans[0])]
        for i, ch in enumerate(chans):
            out = chans[i + 1] if i + 1 < len(chans) else 32
            dec += [nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1)]
            dec += [ResBlock(out)] if i + 1 < len(chans) else []
        dec += [nn.GroupNorm(8, 32), nn.SiLU(), nn.Conv2d(32, 1, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.codebook = nn.Parameter(torch.randn(config.codebook_size, config.code_dim))  # stored unnormalised
        self.register_buffer("usage", torch.zeros(config.codebook_size), persistent=True)  # since last restart
        self._recent = None  # last batch's normalised latents, for restarts

    # -- public API --------------------------------------------------------------------------------------------
    def codebook_normalized(self) -> torch.Tensor:
        """``(codebook_size, code_dim)`` unit-norm code vectors: the geometry the decoder sees (neighbour tables,
        GSD distances)."""
        return F.normalize(self.codebook, dim=-1)

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> unit-norm latents ``(B, grid*grid, code_dim)``."""
        z = self.encoder(images)
        return F.normalize(z.flatten(2).transpose(1, 2), dim=-1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 32, 32)`` in [-1, 1] -> codes ``(B, grid*grid)`` int64 (cosine nearest code)."""
        return self.quantize_ids(self.encode_latents(images))

    def quantize_ids(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents @ self.codebook_normalized().t()).argmax(-1)

    def decode_latents(self, zq: torch.Tensor) -> torch.Tensor:
        g = self.config.grid_size
        return self.decoder(zq.transpose(1, 2).reshape(zq.shape[0], -1, g, g))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, grid*grid)`` -> images ``(B, 1, 32, 32)``, clamped to [-1, 1]."""
        return self.decode_latents(self.codebook_normalized()[codes]).clamp(-1, 1)

    # -- training ----------------------------------------------------------------------------------------------
    def training_loss(self, images: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        z = self.encode_latents(images)
        book = self.codebook_normalized()
        ids = (z.detach() @ book.t()).argmax(-1)
        zq = book[ids]
        codebook_loss = F.mse_loss(zq, z.detach())
        commit_loss = F.mse_loss(z, zq.detach())
        recon = self.decode_latents(z + (zq - z).detach())  # straight-through
        mse = F.mse_loss(recon, images)
        with torch.no_grad():
            self.usage += torch.bincount(ids.flatten(), minlength=self.config.codebook_size).float()
            self._recent = z.detach().reshape(-1, self.config.code_dim)
        loss = mse + codebook_loss + self.config.beta * commit_loss
        return loss, {"mse": mse.item(), "commit": commit_loss.item()}

    @torch.no_grad()
    def maybe_restart(self, step: int) -> int:
        """Every ``restart_every`` steps, re-seed codes unused since the last restart from recent latents."""
        if (step + 1) % self.config.restart_every or self._recent is None:
            return 0
        dead = (self.usage == 0).nonzero()[:, 0]
        if len(dead):
            pick = torch.randint(len(self._recent), (len(dead),))
            noise = 0.01 * torch.randn(len(dead), self.config.code_dim)
            self.codebook.data[dead] = F.normalize(self._recent[pick] + noise, dim=-1)
        self.usage.zero_()
        return len(dead)


@torch.no_grad()
def codebook_stats(codes: torch.Tensor, codebook_size: int) -> Dict[str, float]:
    """Codes used and perplexity ``exp(entropy)`` of the code histogram of ``codes`` (any shape)."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codes_used": int((counts > 0).sum()), "perplexity": float(entropy.exp()),
            "top_code_share": float(p.max())}
