"""``speculative_generate``: the decoding loop of :mod:`specdec.decoding` over a Hugging Face image generator."""

import weakref
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ...decoding import SamplingConfig, generate
from ...decoding.defaults import LANTERN_DELTA, lantern_k
from ...decoding.methods import AR, GSD, SJD
from ...decoding.metrics import GenerationMetrics
from ...verifier import SpeculativeVerifier
from .families import family_of
from .target import HFImageTarget

METHODS = ("ar", "sjd", "gsd", "lantern")


class LanternSJD(SJD):
    """SJD's Jacobi drafts verified with LANTERN's latent-neighbour relaxation (TV budget ``delta`` per test,
    neighbour table of ``k`` codes built once from the codebook); ``delta = 0`` is exactly SJD. Lossy."""

    name = "lantern-sjd"

    def __init__(self, codebook: torch.Tensor, *, delta: float = LANTERN_DELTA, k: Optional[int] = None,
                 window: int = 16, init: str = "random", grid_width: Optional[int] = None,
                 neighbors: Optional[torch.Tensor] = None):
        super().__init__(window=window, init=init, grid_width=grid_width)
        vocab = codebook.shape[0]
        self.k = lantern_k(vocab) if k is None else min(int(k), vocab - 1)
        if neighbors is not None and neighbors.shape != (vocab, self.k):
            raise ValueError(f"neighbors must be ({vocab}, {self.k}), got {tuple(neighbors.shape)}")
        self.verifier = SpeculativeVerifier("lantern", codebook=None if neighbors is not None else codebook,
                                            neighbors=neighbors, k=self.k, delta=delta)


# Neighbour tables per model and k, built once (a 16384-code table with k = 1024 takes seconds to tens of seconds
# on a CPU) and reused by later calls on the same model.
_NEIGHBOR_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _neighbors(model, codebook: torch.Tensor, k: Optional[int]) -> torch.Tensor:
    vocab = codebook.shape[0]
    k = lantern_k(vocab) if k is None else min(int(k), vocab - 1)
    tables = _NEIGHBOR_TABLES.setdefault(model, {})
    if k not in tables:
        tables[k] = SpeculativeVerifier("lantern", codebook=codebook, k=k).kernel_kwargs["neighbors"]
    return tables[k]


@dataclass
class HFImageOutput:
    """What :func:`speculative_generate` returns.

    codes : ``(B, num_tokens)`` int64 VQ codes in raster order (the model's image-token ids for Janus).
    image_tokens : ``(B, rows, columns)`` codes, when a whole image was generated (else None).
    sequences : ``(B, rows * (columns + 1))`` the model's token ids with the EOL column (Emu3 / Chameleon with
        an EOL token; else None): what the model's own loop emits for the image.
    images : ``(B, 3, H, W)`` decoded images in the decoder's range ([-1, 1]) when the model has a decoder and
        ``decode=True``, else None (Janus: ``processor.postprocess(list(images.float()), ...)`` makes PIL images).
    metrics : target forwards (prefill included), accepted lengths, wall time (:class:`GenerationMetrics`).
    """

    codes: torch.Tensor
    image_tokens: Optional[torch.Tensor]
    sequences: Optional[torch.Tensor]
    images: Optional[torch.Tensor]
    metrics: GenerationMetrics


def _method(name, model, codebook, *, window, init, grid_width, delta, k, rank_window, p_thr, d_thr):
    if name == "ar":
        return AR()
    if name == "sjd":
        return SJD(window=window, init=init, grid_width=grid_width)
    if name == "gsd":
        return GSD(codebook, rank_window=rank_window, p_thr=p_thr, d_thr=d_thr, window=window, init=init,
                   grid_width=grid_width)
    if name == "lantern":
        return LanternSJD(codebook, delta=delta, k=k, window=window, init=init, grid_width=grid_width,
                          neighbors=_neighbors(model, codebook, k))
    raise ValueError(f"method: unknown {name!r}; choose from {METHODS}")


def _check_ids(ids: torch.Tensor, name: str, vocab: int):
    if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be (batch, length) int64 token ids, got {tuple(ids.shape)} {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"{name} holds token ids outside the model's vocabulary [0, {vocab}): "
                         f"[{int(ids.min())}, {int(ids.max())}]")


def _left_pad(ids: torch.Tensor, mask: torch.Tensor, length: int, pad: int):
    extra = length - ids.shape[1]
    if extra == 0:
        return ids, mask
    return (torch.cat([ids.new_full((ids.shape[0], extra), pad), ids], 1),
            torch.cat([mask.new_zeros((mask.shape[0], extra)), mask], 1))


@torch.no_grad()
def speculative_generate(
    model,
    input_ids: torch.Tensor,
    *,
    method: str = "sjd",
    attention_mask: Optional[torch.Tensor] = None,
    negative_input_ids: Optional[torch.Tensor] = None,
    negative_attention_mask: Optional[torch.Tensor] = None,
    cfg_scale: Optional[float] = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    window: int = 16,
    init: str = "random",
    delta: float = LANTERN_DELTA,
    k: Optional[int] = None,
    rank_window: Optional[Tuple[int, int]] = None,
    p_thr: float = 0.15,
    d_thr: float = 0.5,
    grid: Optional[Tuple[int, int]] = None,
    eol_token_id: Optional[int] = None,
    num_tokens: Optional[int] = None,
    seed: int = 0,
    generator: Optional[torch.Generator] = None,
    row_keys: Optional[torch.Tensor] = None,
    decode: bool = True,
) -> HFImageOutput:
    """Generate one image per prompt with speculative decoding.

    Parameters
    ----------
    model : ``JanusForConditionalGeneration``, ``Emu3ForConditionalGeneration`` or
        ``ChameleonForConditionalGeneration`` (eval mode).
    input_ids : ``(B, P)`` int64 prompts ending where the first image token comes (Janus: after BOI; Emu3 /
        Chameleon: after the image-start and size tokens), left-padded with ``attention_mask`` ``(B, P)``.
    method : "ar" (baseline, one token per forward), "sjd" (exact), "gsd" (grouped, lossy), "lantern"
        (LANTERN-relaxed SJD, TV budget ``delta``, lossy). All draft with SJD's Jacobi window (``window`` - 1
        drafts, ``init`` "random" or "repeat_left").
    negative_input_ids, negative_attention_mask : the unconditional prompts ``(B, P')`` for CFG. Janus builds
        them as its own ``generate`` does (all but BOS / BOI replaced by pad); Emu3 / Chameleon need them.
    cfg_scale : guidance scale on raw logits, ``l_u + s (l_c - l_u)`` (default: Janus 5, Emu3 / Chameleon 3);
        1 runs no unconditional rows.
    temperature, top_k, top_p : applied after CFG, to target and drafts alike (``top_k=1`` is greedy).
    k, delta : LANTERN's neighbours per code (default V // 16; the table is built on the first call and kept per
        model) and budget. rank_window, p_thr, d_thr : GSD's.
    grid : ``(rows, columns)`` of image tokens (Janus: from its config). eol_token_id : token closing each grid
        row (Emu3: from its vocabulary; Lumina-mGPT: 8803; default none for Chameleon).
    num_tokens : generate only the first ``num_tokens`` image tokens (default the whole grid).
    seed, generator, row_keys : randomness. Row b's uniforms depend only on its key ``row_keys[b]`` (default:
        drawn from ``generator``, or from a generator seeded with ``seed``), so a row generated alone with its key
        gives the same tokens as in any batch.
    decode : decode complete images when the model has a VQ decoder.
    """
    family = family_of(model, eol_token_id)
    rows, cols = family.grid(grid)
    n_tok = rows * cols if num_tokens is None else int(num_tokens)
    if not 1 <= n_tok <= rows * cols:
        raise ValueError(f"num_tokens must be in [1, {rows * cols}], got {num_tokens}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    device = family.device
    text_vocab = model.get_input_embeddings().weight.shape[0]
    _check_ids(input_ids, "input_ids", text_vocab)
    if negative_input_ids is not None:
        _check_ids(negative_input_ids, "negative_input_ids", text_vocab)
    if family.eol_token_id is not None and not 0 <= int(family.eol_token_id) < text_vocab:
        raise ValueError(f"eol_token_id must be a token id in [0, {text_vocab}), got {family.eol_token_id}")
    ids = input_ids.to(device)
    mask = (torch.ones_like(ids) if attention_mask is None else attention_mask.to(device)).long()
    batch = ids.shape[0]
    scale = family.default_cfg_scale if cfg_scale is None else float(cfg_scale)
    sampling = SamplingConfig(cfg_scale=scale, temperature=temperature, top_k=top_k, top_p=top_p)
    if sampling.uses_cfg:
        if negative_input_ids is None:
            neg, neg_mask = family.unconditional(ids, mask)
        else:
            neg = negative_input_ids.to(device)
            neg_mask = (torch.ones_like(neg) if negative_attention_mask is None
                        else negative_attention_mask.to(device)).long()
        if neg.shape[0] != batch:
            raise ValueError(f"negative_input_ids: {neg.shape[0]} rows for {batch} prompts")
        length = max(ids.shape[1], neg.shape[1])
        pad = int(getattr(model.generation_config, "pad_token_id", None) or 0)
        ids, mask = _left_pad(ids, mask, length, pad)
        neg, neg_mask = _left_pad(neg, neg_mask, length, pad)
        prompts, prompt_mask = torch.cat([ids, neg]), torch.cat([mask, neg_mask])
    else:
        prompts, prompt_mask = ids, mask
    # Positions the longest prompt and the image (with its EOL tokens) take; past the model's maximum the rotary
    # positions are ones it was never trained on, so the output would be garbage rather than an error.
    max_positions = getattr(family.language_model.config, "max_position_embeddings", None)
    prompt_len = int(prompt_mask.sum(1).max())
    image_len = n_tok + ((n_tok - 1) // cols if family.eol_token_id is not None else 0)
    if max_positions is not None and prompt_len + image_len > int(max_positions):
        raise ValueError(f"input_ids: the prompt ({prompt_len} tokens) and the image ({image_len} tokens with EOLs) "
                         f"take {prompt_len + image_len} positions, more than the model's max_position_embeddings "
                         f"= {max_positions}")
    target = HFImageTarget(family, prompts, prompt_mask, (rows, cols), n_tok)
    dec = _method(method, model, family.codebook.detach(), window=window, init=init, grid_width=cols, delta=delta, k=k,
                  rank_window=rank_window, p_thr=p_thr, d_thr=d_thr)
    if row_keys is None:
        gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
        row_keys = torch.randint(0, 2**31 - 1, (batch,), generator=gen, device=gen.device)
    elif row_keys.shape != (batch,):
        raise ValueError(f"row_keys must be ({batch},), got {tuple(row_keys.shape)}")
    row_keys = row_keys.to(device)
    result = generate(target, torch.arange(batch, device=device), dec, sampling=sampling, row_keys=row_keys,
                      num_tokens=n_tok)
    codes = result.tokens
    whole = n_tok == rows * cols
    image_tokens = codes.view(batch, rows, cols) if whole else None
    sequences = None
    if whole and family.eol_token_id is not None:
        bpe = family.image_ids[codes].view(batch, rows, cols)
        eol = torch.full((batch, rows, 1), int(family.eol_token_id), dtype=bpe.dtype, device=device)
        sequences = torch.cat([bpe, eol], dim=2).flatten(1)
    images = family.decode(image_tokens) if (decode and whole) else None
    return HFImageOutput(codes, image_tokens, sequences, images, result.metrics)
