"""EAGLE-style draft heads for Hugging Face image generators (Janus, Emu3, Chameleon families).

A head drafts image tokens from the target's own features, for the tree methods of :func:`speculative_generate`
(``eagle2``, ``lantern``, ``lantern++``). Entry ``j`` pairs the image token at protocol position ``j`` (image token
``i`` sits at ``1 + i``; position 0 is the last prompt token) with the target's last hidden state at ``j - 1``:

    feature_j = Block(fc(concat(hidden_{j-1}, embed(token_j))))        logits_j = image_head(feature_j)

``feature_j`` predicts the target's hidden state at ``j``, and its logits draft the token at ``j + 1``. The
token embedding (``family.embed_image``) and the image head (``family.image_logits``) are the target's: the head
references them, neither owns nor saves them, so a saved head is a few tensors (one decoder layer and ``fc``).
The decoder layer is the testbed head's (``specdec.testbed.model.Block``: RMSNorm, attention over a
slot-addressed K/V cache, SwiGLU) with 1-D rotary positions, so a head does not depend on the image's grid.

"Target features" are exactly the hidden states :class:`~specdec.adapters.hf.target.HFImageTarget` returns: the
decoder's last hidden state (after its final norm); for a token that ends a grid row in a layout with EOL tokens
(Emu3, Lumina-mGPT), that of its EOL entry, which is what predicts the next image token.

Saved as ``head.safetensors`` + ``head.json`` (:class:`HeadConfig`); :func:`load_head` loads one in one call and
refuses a head that belongs to another model (family, hidden size or image vocabulary differ).
"""

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from torch import nn

from ...testbed.model import ARConfig, Block, KVCache, apply_rope
from .families import family_of

WEIGHTS_FILE = "head.safetensors"
CONFIG_FILE = "head.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class HeadConfig:
    """What a saved head records (``head.json``).

    family : the target's family (``"janus"``, ``"emu3"``, ``"chameleon"``).
    hidden_size : the target's hidden size (the features the head reads and predicts).
    vocab_size : the target's image vocabulary (number of VQ codes).
    num_heads : attention heads of the head's decoder layer (``hidden_size`` must divide into an even head size).
    norm_eps : RMSNorm epsilon of the decoder layer.
    rope_base : base of the 1-D rotary frequencies.
    """

    family: str
    hidden_size: int
    vocab_size: int
    num_heads: int
    norm_eps: float = 1e-5
    rope_base: float = 10000.0

    def block_config(self) -> ARConfig:
        """The testbed ``ARConfig`` describing the one decoder layer (only its width fields are used)."""
        return ARConfig(vocab_size=self.vocab_size, dim=self.hidden_size, n_layer=1, n_head=self.num_heads,
                        norm_eps=self.norm_eps, rope_base=self.rope_base, dropout=0.0, class_dropout=0.0)


def default_num_heads(hidden_size: int) -> int:
    """Heads of size 64 where the width allows (as Llama-family decoders), at least one."""
    return max(1, hidden_size // 64) if hidden_size % 64 == 0 else 1


def rope_1d(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos / sin ``(*positions.shape, head_dim // 2)`` of plain rotary embeddings at absolute ``positions``
    (pair m rotates by ``position * base ** (-2m / head_dim)``), in the pair layout of ``apply_rope``."""
    freqs = base ** (-torch.arange(head_dim // 2, device=positions.device, dtype=torch.float32) * 2 / head_dim)
    angles = positions.float()[..., None] * freqs
    return torch.cos(angles), torch.sin(angles)


def _family_key(family) -> str:
    return family.name.lower()


class HFDraftHead(nn.Module):
    """EAGLE-style draft head for one Hugging Face image generator (module docstring for what it computes).

    model : the HF image generator (``JanusForConditionalGeneration``, ``Emu3ForConditionalGeneration``,
        ``ChameleonForConditionalGeneration`` or a model of their families); the head keeps a reference to it.
    num_heads : attention heads of the decoder layer (default: heads of size 64, else one); norm_eps, rope_base:
        its RMSNorm epsilon and rotary base.
    device, dtype : where the head's weights live (default: the model's device; float32, which trains well; pass
        the model's dtype to save memory at inference on large models).

    Follows the draft-head protocol of the decoding loop's tree methods (``specdec.decoding.methods.tree``):
    :meth:`new_cache` and :meth:`forward_tokens`; :meth:`forward_train` is the causal, cache-free training path.
    """

    def __init__(self, model, num_heads: Optional[int] = None, *, device=None, dtype=None, norm_eps: float = 1e-5,
                 rope_base: float = 10000.0):
        super().__init__()
        family = family_of(model)
        hidden_size = int(model.config.get_text_config().hidden_size)
        num_heads = default_num_heads(hidden_size) if num_heads is None else int(num_heads)
        if num_heads < 1 or hidden_size % num_heads or (hidden_size // num_heads) % 2:
            raise ValueError(f"num_heads={num_heads} must divide hidden_size={hidden_size} into an even head size")
        self.config = HeadConfig(family=_family_key(family), hidden_size=hidden_size, vocab_size=family.vocab_size,
                                 num_heads=num_heads, norm_eps=float(norm_eps), rope_base=float(rope_base))
        self._model = (model,)  # a reference, not a submodule: the head neither owns nor saves target weights
        self._family = family
        block = self.config.block_config()
        self.head_dim = block.head_dim
        self.fc = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.layer = Block(block)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        self.to(device=family.device if device is None else device, dtype=torch.float32 if dtype is None else dtype)

    # -- what the head reads from its target ---------------------------------------------------------------
    @property
    def model(self):
        return self._model[0]

    @property
    def family(self):
        return self._family

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    # -- protocol --------------------------------------------------------------------------------------------
    def new_cache(self, rows: int, max_slots: int, device=None, dtype=None) -> KVCache:
        """Empty K/V buffers ``(rows, heads, max_slots, head_dim)`` of the decoder layer, addressed by slot."""
        w = self.fc.weight
        shape = (rows, self.config.num_heads, max_slots, self.head_dim)
        kw = dict(device=device or w.device, dtype=dtype or w.dtype)
        return KVCache([torch.zeros(shape, **kw)], [torch.zeros(shape, **kw)])

    def _run(self, tokens, hidden, positions, cache=None, slots=None, attn_mask=None):
        w = self.fc.weight
        embeds = self.family.embed_image(tokens.to(self.family.device))
        x = self.fc(torch.cat([hidden.to(w.device, w.dtype), embeds.to(w.device, w.dtype)], dim=-1))
        rope = rope_1d(positions.to(w.device), self.head_dim, self.config.rope_base)
        kv = None if cache is None else (cache.k[0], cache.v[0])
        mask = None if attn_mask is None else attn_mask.to(w.device)
        feature = self.layer(x, rope, kv, None if slots is None else slots.to(w.device), mask)
        # The image head runs in the target's dtype, as on the target's own hidden states.
        logits = self.family.image_logits(feature.to(self.family.device, self.model.dtype)).float()
        return logits, feature

    def forward_tokens(self, tokens, hidden, positions, slots, attn_mask, cache: KVCache):
        """Entries ``(R, T)``: image codes ``tokens`` at protocol ``positions`` with the target features
        ``hidden`` ``(R, T, d)`` at ``positions - 1``; K/V written at ``slots`` before attending; entry t sees
        slot s iff ``attn_mask[r, t, s]``. Returns (logits ``(R, T, V)`` float32 drafting position + 1, predicted
        features ``(R, T, d)``)."""
        return self._run(tokens, hidden, positions, cache, slots, attn_mask)

    def forward_train(self, tokens: torch.Tensor, hidden: torch.Tensor):
        """Causal pass without a cache over entries at positions ``1 .. T``: ``tokens`` ``(B, T)`` = image codes
        ``0 .. T-1``, ``hidden`` ``(B, T, d)`` = the target features at positions ``0 .. T-1``. Returns (logits
        ``(B, T, V)`` float32 drafting image tokens ``1 .. T``, predicted features of positions ``1 .. T``)."""
        batch, length = tokens.shape
        positions = torch.arange(1, length + 1, device=tokens.device).expand(batch, length)
        return self._run(tokens, hidden, positions)

    # -- files -----------------------------------------------------------------------------------------------
    def save(self, directory: Union[str, Path]) -> Path:
        """Write ``head.safetensors`` (the head's own weights only) and ``head.json`` into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, directory / WEIGHTS_FILE)
        meta = {"format_version": FORMAT_VERSION, **asdict(self.config)}
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return directory


def read_head_config(directory: Union[str, Path]) -> HeadConfig:
    """The :class:`HeadConfig` of a saved head; ValueError when the directory holds no head."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ValueError(f"no draft head in {directory}: expected {CONFIG_FILE} and {WEIGHTS_FILE}")
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: head format {meta.get('format_version')!r}, this library reads {FORMAT_VERSION}")
    known = {f.name for f in fields(HeadConfig)}
    return HeadConfig(**{k: v for k, v in meta.items() if k in known})


def check_head_fits(config: HeadConfig, model) -> None:
    """ValueError naming every difference when a head's config does not belong to ``model``."""
    family = family_of(model)
    wanted = {"family": _family_key(family), "hidden_size": int(model.config.get_text_config().hidden_size),
              "vocab_size": family.vocab_size}
    wrong = [f"{k} {getattr(config, k)!r} (the model's: {v!r})" for k, v in wanted.items() if getattr(config, k) != v]
    if wrong:
        raise ValueError("this draft head was trained for another model: " + "; ".join(wrong))


def load_head(directory: Union[str, Path], model, *, device=None, dtype=None) -> HFDraftHead:
    """Load a head saved with :meth:`HFDraftHead.save` for ``model`` (weights on ``device`` in ``dtype``; default
    the model's device, float32). ValueError when it belongs to another model (family, hidden size or image
    vocabulary differ) or the files are missing."""
    from safetensors.torch import load_file

    config = read_head_config(directory)
    check_head_fits(config, model)
    head = HFDraftHead(model, num_heads=config.num_heads, device=device, dtype=dtype, norm_eps=config.norm_eps,
                       rope_base=config.rope_base)
    state = load_file(str(Path(directory) / WEIGHTS_FILE))
    head.load_state_dict({k: v.to(head.fc.weight.dtype) for k, v in state.items()})
    return head
