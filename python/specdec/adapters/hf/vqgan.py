"""The VQGAN decoder of the Chameleon family (Chameleon, Anole, Lumina-mGPT), loaded from a local checkpoint.

Hugging Face's ``ChameleonVQVAE`` keeps only the encoder and the codebook, so HF Chameleon models cannot make
pixels. Their image tokenizer is a taming-transformers VQGAN; its checkpoint (e.g. Chameleon's ``vqgan.ckpt``, a
Lightning checkpoint with a ``state_dict``) also holds the decoder, under ``decoder.*``, with the 1 x 1
``post_quant_conv`` between the codebook and the decoder. This module rebuilds that decoder from the model's
``ChameleonVQVAEConfig`` (``base_channels``, ``channel_multiplier``, ``num_res_blocks``, ``attn_resolutions``,
``latent_channels``, ``embed_dim``, ``resolution``) and loads those weights, strictly: a missing or extra
decoder weight, a shape that does not match, or a checkpoint codebook other than the model's is an error.

Decoding: codes ``(B, rows, columns)`` -> codebook rows ``(B, embed_dim, rows, columns)`` -> ``post_quant_conv``
-> decoder -> ``(B, 3, 2^(levels - 1) * rows, 2^(levels - 1) * columns)`` in [-1, 1] (roughly: the decoder's
output is not clamped).
"""

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class _ResnetBlock(nn.Module):
    """GroupNorm, SiLU, 3 x 3 conv, twice, plus the input (through a 1 x 1 ``nin_shortcut`` when the width
    changes): taming-transformers' ``ResnetBlock`` without time embedding."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + (x if self.nin_shortcut is None else self.nin_shortcut(x))


class _AttnBlock(nn.Module):
    """Single-head self-attention over the ``h * w`` positions, 1 x 1 projections, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x):
        batch, channels, height, width = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).reshape(batch, channels, height * width).transpose(1, 2)
                   for conv in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        return x + self.proj_out(h.transpose(1, 2).reshape(batch, channels, height, width))


class _Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ChameleonVQGANDecoder(nn.Module):
    """``post_quant_conv`` and the taming-transformers decoder, with the checkpoint's parameter names
    (``post_quant_conv.*``, ``decoder.conv_in``, ``decoder.mid.block_1`` / ``attn_1`` / ``block_2``,
    ``decoder.up.{level}.block.{i}`` / ``attn.{i}`` / ``upsample``, ``decoder.norm_out``, ``decoder.conv_out``).

    config : the model's ``ChameleonVQVAEConfig`` (``model.model.vqmodel.config``).
    """

    def __init__(self, config):
        super().__init__()
        mult = list(config.channel_multiplier)
        base, levels = int(config.base_channels), len(mult)
        attn_at = set(config.attn_resolutions or [])
        vanilla = getattr(config, "attn_type", "vanilla") == "vanilla"
        dropout = float(getattr(config, "dropout", 0.0))
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.latent_channels, 1)
        decoder = nn.Module()
        block_in = base * mult[-1]
        resolution = int(config.resolution) // 2 ** (levels - 1)
        decoder.conv_in = nn.Conv2d(config.latent_channels, block_in, 3, padding=1)
        decoder.mid = nn.Module()
        decoder.mid.block_1 = _ResnetBlock(block_in, block_in, dropout)
        decoder.mid.attn_1 = _AttnBlock(block_in) if vanilla else nn.Identity()
        decoder.mid.block_2 = _ResnetBlock(block_in, block_in, dropout)
        ups = [None] * levels
        for level in reversed(range(levels)):  # lowest resolution first; stored by level as in the checkpoint
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            block_out = base * mult[level]
            for _ in range(int(config.num_res_blocks) + 1):
                up.block.append(_ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if resolution in attn_at and vanilla:
                    up.attn.append(_AttnBlock(block_in))
            if level != 0:
                up.upsample = _Upsample(block_in)
                resolution *= 2
            ups[level] = up
        decoder.up = nn.ModuleList(ups)
        decoder.norm_out = _norm(block_in)
        decoder.conv_out = nn.Conv2d(block_in, int(getattr(config, "out_channels", 3)), 3, padding=1)
        self.decoder = decoder
        self.num_levels = levels

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, embed_dim, rows, columns)`` quantised latents -> ``(B, 3, H, W)`` pixels."""
        return self.run_decoder(self.post_quant_conv(latents))

    def run_decoder(self, h: torch.Tensor) -> torch.Tensor:
        """The decoder proper: ``(B, latent_channels, rows, columns)`` (after ``post_quant_conv``) -> pixels."""
        d = self.decoder
        h = d.conv_in(h)
        h = d.mid.block_2(d.mid.attn_1(d.mid.block_1(h)))
        for level in reversed(range(self.num_levels)):
            up = d.up[level]
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if level != 0:
                h = up.upsample(h)
        return d.conv_out(F.silu(d.norm_out(h)))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        """``(B, rows, columns)`` int codes -> ``(B, 3, H, W)``, through the model's codebook ``(N, embed_dim)``."""
        if codes.dim() != 3:
            raise ValueError(f"codes must be (batch, rows, columns), got shape {tuple(codes.shape)}")
        weight = self.post_quant_conv.weight
        latents = codebook.to(weight.device)[codes.to(weight.device)].permute(0, 3, 1, 2).to(weight.dtype)
        return self.forward(latents)

    @classmethod
    def from_checkpoint(cls, checkpoint, config, *, codebook: Optional[torch.Tensor] = None,
                        device=None) -> "ChameleonVQGANDecoder":
        """Build from ``config`` and load ``post_quant_conv.*`` and ``decoder.*`` from ``checkpoint``: a path to a
        ``.safetensors`` file or a ``torch.save`` / Lightning checkpoint (a state dict, or a dict holding one
        under ``state_dict``), or such a dict itself. With ``codebook``, the checkpoint's
        ``quantize.embedding.weight`` (when present) must equal it: the decoder must belong to the codes."""
        state = _read_state_dict(checkpoint)
        prefixes = ("decoder.", "post_quant_conv.")
        wanted = {key: value for key, value in state.items() if key.startswith(prefixes)}
        if not wanted:
            raise ValueError(f"vqgan_checkpoint: no decoder.* / post_quant_conv.* weights in {_describe(checkpoint)}; "
                             "a taming-transformers VQGAN checkpoint (Chameleon's vqgan.ckpt) holds them")
        model = cls(config)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(wanted))
        unexpected = sorted(set(wanted) - set(expected))
        wrong = sorted(key for key in set(expected) & set(wanted)
                       if tuple(expected[key].shape) != tuple(wanted[key].shape))
        if missing or unexpected or wrong:
            raise ValueError(f"vqgan_checkpoint: {_describe(checkpoint)} does not fit the model's VQ config "
                             f"(missing {missing[:4]}, unexpected {unexpected[:4]}, wrong shape {wrong[:4]})")
        stored_codebook = state.get("quantize.embedding.weight")
        if codebook is not None and stored_codebook is not None and (
                tuple(stored_codebook.shape) != tuple(codebook.shape)
                or not torch.allclose(stored_codebook.float().cpu(), codebook.detach().float().cpu(), atol=1e-4)):
            raise ValueError("vqgan_checkpoint: its codebook (quantize.embedding.weight) is not the model's: the "
                             "decoder belongs to another tokenizer")
        model.load_state_dict(wanted, strict=True)
        model = model.eval().requires_grad_(False)
        return model if device is None else model.to(device)


def _describe(checkpoint) -> str:
    return repr(os.fspath(checkpoint)) if isinstance(checkpoint, (str, os.PathLike)) else "the given state dict"


def _read_state_dict(checkpoint) -> dict:
    if isinstance(checkpoint, dict):
        state = checkpoint
    else:
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise ValueError(f"vqgan_checkpoint: no file at {path!r}")
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # pickled non-tensor objects (e.g. Lightning hyper-parameters)
                raise ValueError(f"vqgan_checkpoint: {path!r} holds more than tensors ({error}); save its state dict "
                                 "alone (torch.save(ckpt['state_dict'], ...)) or as .safetensors") from error
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state
