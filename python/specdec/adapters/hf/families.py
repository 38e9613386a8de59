"""What differs between Hugging Face image generators: where the decoder and its logits live, how image codes map
to input tokens, the grid, EOL columns, the VQ codebook and the unconditional prompt (docs/TESTBED.md §3.3)."""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


class ImageFamily:
    """Hooks of one model family. ``vocab_size`` counts image codes; image token ``c`` of the logits is VQ code
    ``c`` (row ``c`` of :attr:`codebook`)."""

    name = "model"
    default_cfg_scale = 5.0

    def __init__(self, model):
        self.model = model

    # language model and its inputs / outputs -----------------------------------------------------------------
    @property
    def language_model(self):
        raise NotImplementedError

    def embed_prompt(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def embed_image(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_eol(self, shape) -> torch.Tensor:
        ids = torch.full(shape, int(self.eol_token_id), dtype=torch.int64, device=self.device)
        return self.embed_prompt(ids)

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., d)`` last hidden states -> ``(..., vocab_size)`` logits over image codes."""
        raise NotImplementedError

    @property
    def codebook(self) -> torch.Tensor:
        return self.model.model.vqmodel.quantize.embedding.weight

    @property
    def vocab_size(self) -> int:
        return int(self.codebook.shape[0])

    @property
    def device(self) -> torch.device:
        return self.codebook.device

    # layout ------------------------------------------------------------------------------------------------
    eol_token_id: Optional[int] = None

    def grid(self, grid: Optional[Tuple[int, int]]) -> Tuple[int, int]:
        if grid is None:
            raise ValueError(f"grid: {self.name} needs the image size in tokens, grid=(rows, columns)")
        if len(grid) != 2 or int(grid[0]) < 1 or int(grid[1]) < 1:
            raise ValueError(f"grid must be (rows >= 1, columns >= 1), got {tuple(grid)}")
        return int(grid[0]), int(grid[1])

    def unconditional(self, ids: torch.Tensor, mask: torch.Tensor):
        raise ValueError(f"negative_inputs: {self.name} needs the unconditional prompt for CFG (e.g. the model's "
                         "negative prompt followed by the same image prefix); or pass cfg_scale=1")

    def decode(self, codes: torch.Tensor) -> Optional[torch.Tensor]:
        """``(B, rows, columns)`` codes -> ``(B, 3, H, W)`` images in the decoder's range, or None when the model
        has no decoder."""
        return None


class JanusFamily(ImageFamily):
    """``JanusForConditionalGeneration`` in image mode: a Llama decoder, ``generation_head`` logits over the 16384
    VQ codes, image inputs through ``prepare_embeddings_for_image_generation``; square grid, no EOL."""

    name = "Janus"
    default_cfg_scale = 5.0  # the model's own default guidance scale

    @property
    def language_model(self):
        return self.model.model.language_model

    def embed_image(self, codes):
        return self.model.prepare_embeddings_for_image_generation(codes)

    def image_logits(self, hidden):
        return self.model.model.generation_head(hidden)

    def grid(self, grid):
        n = int(self.model.model.vision_model.config.num_image_tokens)
        side = math.isqrt(n)
        if grid is not None and (int(grid[0]), int(grid[1])) != (side, side):
            raise ValueError(f"grid: this Janus model generates {side} x {side} tokens, got {tuple(grid)}")
        return side, side

    def unconditional(self, ids, mask):
        """The model's own rule: every prompt token except BOS and BOI replaced by the pad token."""
        config = self.model.generation_config
        boi = (config.generation_kwargs or {}).get("boi_token_id")
        if config.bos_token_id is None or config.pad_token_id is None or boi is None:
            raise ValueError("model.generation_config needs bos_token_id, pad_token_id and "
                             "generation_kwargs['boi_token_id'] to build Janus's unconditional prompt")
        keep = (ids == config.bos_token_id) | (ids == boi)
        return torch.where(keep, ids, config.pad_token_id), mask

    def decode(self, codes):
        return self.model.model.vqmodel.decode(codes.flatten(1))  # (B, 3, H, W), what postprocess expects


class _BpeImageFamily(ImageFamily):
    """Models whose image codes are ordinary vocabulary entries (Emu3, Chameleon): logits are the ``lm_head`` rows
    of the image tokens, in code order (the model's own masking of image tokens is bypassed)."""

    def _image_bpe_ids(self) -> torch.Tensor:
        mapping = self.model.model.vocabulary_mapping.img2bpe_mapping_tensor
        if mapping.shape[0] < self.vocab_size:
            raise ValueError(f"model: the vocabulary maps {mapping.shape[0]} image codes, the codebook has "
                             f"{self.vocab_size}")
        ids = mapping[: self.vocab_size].to(torch.int64).to(self.device)
        rows = self.model.lm_head.weight.shape[0]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= rows):
            raise ValueError(f"model: the vocabulary maps image codes to token ids in [{int(ids.min())}, "
                             f"{int(ids.max())}], outside the {rows} rows of lm_head")
        return ids

    def __init__(self, model, eol_token_id: Optional[int] = None):
        super().__init__(model)
        self.image_ids = self._image_bpe_ids()
        self.eol_token_id = eol_token_id

    def embed_image(self, codes):
        return self.embed_prompt(self.image_ids[codes])

    def image_logits(self, hidden):
        head = self.model.lm_head
        bias = None if head.bias is None else head.bias[self.image_ids]
        return F.linear(hidden, head.weight[self.image_ids], bias)


class Emu3Family(_BpeImageFamily):
    """``Emu3ForConditionalGeneration``: image rows end with an EOL token (``<|extra_200|>``); decoder present."""

    name = "Emu3"
    default_cfg_scale = 3.0

    def __init__(self, model, eol_token_id: Optional[int] = None):
        mapping = model.model.vocabulary_mapping
        super().__init__(model, mapping.eol_token_id if eol_token_id is None else eol_token_id)

    @property
    def language_model(self):
        return self.model.model.text_model

    def decode(self, codes):
        return self.model.model.vqmodel.decode(codes)  # (B, 3, H, W)


class ChameleonFamily(_BpeImageFamily):
    """``ChameleonForConditionalGeneration`` used as an image generator (Anole / Lumina-mGPT style): image tokens
    re-enabled by reading their ``lm_head`` rows directly; EOL after each row when ``eol_token_id`` is given
    (Lumina-mGPT: 8803). HF's Chameleon VQ has no decoder, so no images are decoded."""

    name = "Chameleon"
    default_cfg_scale = 3.0

    @property
    def language_model(self):
        return self.model.model


FAMILIES = {
    "JanusForConditionalGeneration": JanusFamily,
    "Emu3ForConditionalGeneration": Emu3Family,
    "ChameleonForConditionalGeneration": ChameleonFamily,
}


def family_of(model, eol_token_id: Optional[int] = None) -> ImageFamily:
    for cls in type(model).__mro__:
        if cls.__name__ in FAMILIES:
            family = FAMILIES[cls.__name__]
            return family(model) if family is JanusFamily else family(model, eol_token_id)
    raise ValueError(f"model: {type(model).__name__} is not supported; supported: {sorted(FAMILIES)}")
