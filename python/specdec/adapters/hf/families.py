"""What differs between Hugging Face image generators: where the decoder and its logits live, how image codes map
to input tokens, the grid, EOL columns, the VQ codebook and the unconditional prompt (docs/TESTBED.md §3.3)."""

import copy
import math
import weakref
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

# The image rows of each model's lm_head, sliced once (Emu3: 32768 of 184622 rows, 256 MiB in float32) and
# reused by every forward of every call; refreshed when the head's weights are replaced or changed in place.
_IMAGE_HEADS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# Chameleon-family VQGAN decoders loaded from local checkpoints, per model and path.
_VQGAN_DECODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class ImageFamily:
    """Hooks of one model family. ``vocab_size`` counts image codes; image token ``c`` of the logits is VQ code
    ``c`` (row ``c`` of :attr:`codebook`)."""

    name = "model"
    default_cfg_scale = 5.0
    # Geometry of LANTERN's neighbour table: L2-normalised codes (cosine order) or the raw vectors the decoder
    # uses (the generate() docstring gives the choice per family).
    normalize_codebook = True

    def __init__(self, model):
        self.model = model

    # language model and its inputs / outputs -----------------------------------------------------------------
    @property
    def language_model(self):
        raise NotImplementedError

    def embed_prompt(self, ids: torch.Tensor) -> torch.Tensor:
        table = self.model.get_input_embeddings()
        return table(ids.to(table.weight.device))  # device_map="auto": the table may sit on another device

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

    def sequences(self, codes: torch.Tensor) -> Optional[torch.Tensor]:
        """``(B, rows, columns)`` codes -> the model's token ids for the image, or None."""
        return None

    def load_vqgan(self, checkpoint) -> None:
        raise ValueError(f"vqgan_checkpoint: {self.name} models decode with their own VQ model; only the Chameleon "
                         "family (Chameleon, Anole, Lumina-mGPT) takes a VQGAN checkpoint")


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
        return self.embed_prompt(self.image_ids[codes.to(self.image_ids.device)])

    def image_head(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The image rows of ``lm_head`` (weight, bias), in code order, on the head's device: sliced on the first
        call and cached per model while the head's parameters stay the same tensors, unmodified."""
        head = self.model.lm_head
        weight, bias = head.weight, head.bias
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) if t is not None else None for t in (weight, bias))
        cached = _IMAGE_HEADS.get(self.model)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                ids = self.image_ids.to(weight.device)
                cached = (key, weight[ids].contiguous(), None if bias is None else bias[ids].contiguous())
            _IMAGE_HEADS[self.model] = cached
        return cached[1], cached[2]

    def image_logits(self, hidden):
        weight, bias = self.image_head()
        return F.linear(hidden.to(weight.device), weight, bias).to(self.device)

    def sequences(self, codes):
        """BPE ids of the codes with the EOL column (``rows * (columns + 1)``), as the model's loop emits them."""
        batch, rows, cols = codes.shape
        bpe = self.image_ids[codes.to(self.image_ids.device)]
        eol = torch.full((batch, rows, 1), int(self.eol_token_id), dtype=bpe.dtype, device=bpe.device)
        return torch.cat([bpe, eol], dim=2).flatten(1)


class Emu3Family(_BpeImageFamily):
    """``Emu3ForConditionalGeneration``: image rows end with an EOL token (``<|extra_200|>``); decoder present."""

    name = "Emu3"
    default_cfg_scale = 3.0
    normalize_codebook = False  # 32768 x 4 codes: the norm is most of what a 4-d code says
    # The tokens that close an image in Emu3's own output, after the last row's EOL: what
    # Emu3Model.decode_image_tokens strips (its last 3 tokens).
    closing_tokens = ("<|extra_201|>", "<|image end|>")

    def __init__(self, model, eol_token_id: Optional[int] = None):
        mapping = model.model.vocabulary_mapping
        super().__init__(model, mapping.eol_token_id if eol_token_id is None else eol_token_id)

    @property
    def language_model(self):
        return self.model.model.text_model

    def decode(self, codes):
        return self.model.model.vqmodel.decode(codes)  # (B, 3, H, W)

    def sequences(self, codes):
        """The EOL-column ids, then ``<|extra_201|>``, ``<|image end|>`` and EOS, as Emu3's ``generate`` ends an
        image; without those tokens in the vocabulary (or no EOS id), only the EOL-column ids."""
        ids = super().sequences(codes)
        vocab = self.model.model.vocabulary_mapping.vocab_map
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
        closing = [vocab.get(name) for name in self.closing_tokens] + [eos]
        if any(token is None for token in closing):
            return ids
        tail = torch.tensor(closing, dtype=ids.dtype, device=ids.device).expand(ids.shape[0], -1)
        return torch.cat([ids, tail], dim=1)


class ChameleonFamily(_BpeImageFamily):
    """``ChameleonForConditionalGeneration`` used as an image generator (Anole / Lumina-mGPT style): image tokens
    re-enabled by reading their ``lm_head`` rows directly; EOL after each row when ``eol_token_id`` is given
    (Lumina-mGPT: 8803). HF's Chameleon VQ has no decoder: images are decoded when a VQGAN checkpoint was
    loaded (:meth:`load_vqgan`), else none."""

    name = "Chameleon"
    default_cfg_scale = 3.0
    normalize_codebook = False  # the VQGAN decoder uses the raw 256-d code vectors

    @property
    def language_model(self):
        return self.model.model

    def load_vqgan(self, checkpoint) -> None:
        """Load (once per model and checkpoint path) the VQGAN decoder that turns this model's codes into
        pixels; see :mod:`specdec.adapters.hf.vqgan`."""
        from .vqgan import ChameleonVQGANDecoder

        decoders = _VQGAN_DECODERS.setdefault(self.model, {})
        key = str(checkpoint)
        if key not in decoders:
            decoders[key] = ChameleonVQGANDecoder.from_checkpoint(checkpoint, self.model.model.vqmodel.config,
                                                                  codebook=self.codebook, device=self.device)
        decoders["active"] = decoders[key]

    def decode(self, codes):
        decoder = _VQGAN_DECODERS.get(self.model, {}).get("active")
        return None if decoder is None else decoder.decode(codes.to(self.device), self.codebook)


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


def shallow_sibling(model, layers: int):
    """A smaller model of ``model``'s family for SD (``speculative_generate(method="sd", draft_model=...)``): its
    first ``layers`` decoder layers and all its other weights (embeddings, image head, VQ codebook), so it shares
    the vocabularies and the codebook SD requires. A layer-truncated self-draft: it drafts well only as far as
    the first layers already predict the last's output; a real sibling (a 1B Janus-Pro for the 7B) drafts better."""
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    config = copy.deepcopy(model.config)
    config.get_text_config().num_hidden_layers = int(layers)
    draft = type(model)(config).eval()
    own = draft.state_dict()
    draft.load_state_dict({k: v for k, v in model.state_dict().items() if k in own}, strict=True)
    draft.generation_config = model.generation_config
    return draft.to(device=next(model.parameters()).device, dtype=next(model.parameters()).dtype)
