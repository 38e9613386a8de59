"""``speculative_generate``: the decoding loop of :mod:`specdec.decoding` over a Hugging Face image generator."""

import weakref
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

import specdec_kernels as sk

from ...decoding import SamplingConfig, generate
from ...decoding.defaults import LANTERN_DELTA, LANTERNPP_K, LANTERNPP_LAMBDA, lantern_k
from ...decoding.methods import AR, GSD, SD, SJD, Eagle2, Lantern, LanternPP, StaticTreeMethod
from ...decoding.metrics import GenerationMetrics
from ...verifier import SpeculativeVerifier
from .families import family_of
from .target import HFImageTarget

#: Method names, as in the testbed loop (``specdec.decoding.methods``): Jacobi chains without a draft model, tree
#: methods with a draft head (``head=``) and SD with a smaller sibling model (``draft_model=``).
METHODS = ("ar", "sjd", "mc-sjd", "gsd", "mc-gsd", "lantern-sjd", "eagle2", "lantern", "lantern++", "sd")
CHAIN_METHODS = ("ar", "sjd", "mc-sjd", "gsd", "mc-gsd", "lantern-sjd")
TREE_METHODS = ("eagle2", "lantern", "lantern++")


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


# Neighbour tables per model, k and geometry (normalised or raw codes), built once (a 16384-code table with
# k = 1024 takes seconds to tens of seconds on a CPU) and reused by later calls on the same model.
_NEIGHBOR_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _neighbors(model, codebook: torch.Tensor, k: Optional[int], normalize: bool) -> torch.Tensor:
    vocab = codebook.shape[0]
    k = lantern_k(vocab) if k is None else min(int(k), vocab - 1)
    tables = _NEIGHBOR_TABLES.setdefault(model, {})
    if (k, normalize) not in tables:
        tables[(k, normalize)] = sk.neighbor_table(codebook.float().contiguous(), k, normalize=normalize)
    return tables[(k, normalize)]


@dataclass
class HFImageOutput:
    """What :func:`speculative_generate` returns.

    B counts generated images: prompts x ``num_return_sequences`` (a prompt's images are adjacent).
    codes : ``(B, num_tokens)`` int64 VQ codes in raster order (the model's image-token ids for Janus).
    image_tokens : ``(B, rows, columns)`` codes, when a whole image was generated (else None).
    sequences : the model's token ids for the image, what its own loop emits (Emu3 / Chameleon with an EOL
        token; else None): ``rows * (columns + 1)`` ids with the EOL column; Emu3 adds its closing tokens
        (``<|extra_201|>``, ``<|image end|>``, EOS) so ``model.decode_image_tokens(image_tokens=sequences,
        height=rows, width=columns)`` accepts it.
    images : ``(B, 3, H, W)`` decoded images in the decoder's range ([-1, 1]) when the model has a decoder and
        ``decode=True``, else None (Janus: ``processor.postprocess(list(images.float()), ...)`` makes PIL images).
    metrics : target forwards (prefill included), accepted lengths, wall time (:class:`GenerationMetrics`).
    """

    codes: torch.Tensor
    image_tokens: Optional[torch.Tensor]
    sequences: Optional[torch.Tensor]
    images: Optional[torch.Tensor]
    metrics: GenerationMetrics


class _TableLantern(Lantern):
    """:class:`~specdec.decoding.methods.Lantern` (EAGLE-2 trees, delta relaxation) verified with a prebuilt
    neighbour table: the adapter's per-model table in the family's geometry, as ``lantern-sjd`` uses."""

    def __init__(self, head, neighbors: torch.Tensor, *, delta: Optional[float] = LANTERN_DELTA,
                 lam: Optional[float] = None, **tree):
        Eagle2.__init__(self, head, **tree)
        if lam is not None:  # the LANTERN++ ratio rule on this tree, as Lantern(lam=...) in the testbed
            delta = None
        self.k = int(neighbors.shape[1])
        self.verifier = SpeculativeVerifier("lantern", neighbors=neighbors, k=self.k, delta=delta, lam=lam)
        self.neighbors, self.delta, self.lam = neighbors, delta, lam


class _TableLanternPP(LanternPP):
    """:class:`~specdec.decoding.methods.LanternPP` (static tree, lambda relaxation) with a prebuilt neighbour
    table (see :class:`_TableLantern`)."""

    def __init__(self, head, neighbors: torch.Tensor, *, lam: float, choices=None):
        StaticTreeMethod.__init__(self, head, choices=choices)
        self.k = int(neighbors.shape[1])
        self.lam = float(lam)
        self.verifier = SpeculativeVerifier("lantern", neighbors=neighbors, k=self.k, lam=self.lam)
        self.neighbors = neighbors


def _tree_options(total_tokens, depth, tree_top_k) -> dict:
    """EAGLE-2 tree shape: only the options given (the testbed defaults otherwise)."""
    given = {"total_tokens": total_tokens, "depth": depth, "top_k": tree_top_k}
    return {key: int(value) for key, value in given.items() if value is not None}


def _method(name, model, codebook, *, window, init, grid_width, delta, k, rank_window, p_thr, d_thr, normalize,
            head=None, draft=None, gamma=4, total_tokens=None, depth=None, tree_top_k=None, lam=None, choices=None):
    """The testbed method object for ``name`` (resources already checked by :func:`_check_resources`)."""
    if name == "ar":
        return AR()
    if name in ("sjd", "mc-sjd"):  # mc-: the coupled (MC-SJD) Jacobi refresh
        return SJD(window=window, init=init, grid_width=grid_width, coupled=name == "mc-sjd")
    if name in ("gsd", "mc-gsd"):
        return GSD(codebook, rank_window=rank_window, p_thr=p_thr, d_thr=d_thr, window=window, init=init,
                   grid_width=grid_width, coupled=name == "mc-gsd")
    if name == "lantern-sjd":
        return LanternSJD(codebook, delta=delta, k=k, window=window, init=init, grid_width=grid_width,
                          neighbors=_neighbors(model, codebook, k, normalize))
    tree = _tree_options(total_tokens, depth, tree_top_k)
    if name == "eagle2":
        return Eagle2(head, **tree)
    if name == "lantern":
        return _TableLantern(head, _neighbors(model, codebook, k, normalize), delta=delta, lam=lam, **tree)
    if name == "lantern++":
        return _TableLanternPP(head, _neighbors(model, codebook, LANTERNPP_K if k is None else k, normalize),
                               lam=LANTERNPP_LAMBDA if lam is None else lam, choices=choices)
    if name == "sd":
        return SD(draft, gamma=gamma)
    raise ValueError(f"method: unknown {name!r}; choose from {METHODS}")


def _check_resources(method: str, head, draft_model) -> None:
    """A head for the tree methods only, a draft model for SD only, each where it is needed."""
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; choose from {METHODS}")
    if method in TREE_METHODS and head is None:
        hint = (" (LANTERN on EAGLE-2 trees); for LANTERN-relaxed SJD without a head use method='lantern-sjd'"
                if method == "lantern" else "")
        raise ValueError(f"method {method!r} drafts with a draft head: pass head=HFDraftHead(model) or "
                         f"head=load_head(directory, model){hint}")
    if head is not None and method not in TREE_METHODS:
        raise ValueError(f"head: method {method!r} takes no draft head; the methods that do are {TREE_METHODS}")
    if method == "sd" and draft_model is None:
        raise ValueError("method 'sd' needs draft_model: a smaller model of the same family sharing the image "
                         "vocabulary and VQ codebook")
    if draft_model is not None and method != "sd":
        raise ValueError(f"draft_model: method {method!r} takes no draft model; only 'sd' does")


def _check_head(head, model, family) -> None:
    """The head follows the draft-head protocol and drafts this model's image vocabulary with its features."""
    if not (callable(getattr(head, "new_cache", None)) and callable(getattr(head, "forward_tokens", None))):
        raise ValueError(f"head: {type(head).__name__} is not a draft head (needs new_cache and forward_tokens); "
                         "use specdec.adapters.hf.head.HFDraftHead")
    owner = getattr(head, "model", None)
    if owner is not None and owner is not model:
        raise ValueError("head: this head reads another model instance's embeddings and image head; build it for "
                         "this model (HFDraftHead(model) or load_head(directory, model))")
    vocab = getattr(head, "vocab_size", None)
    if vocab is not None and int(vocab) != family.vocab_size:
        raise ValueError(f"head: drafts {vocab} image codes, the model has {family.vocab_size}")
    hidden = getattr(head, "hidden_size", None)
    model_hidden = getattr(family.language_model.config, "hidden_size", None)
    if hidden is not None and model_hidden is not None and int(hidden) != int(model_hidden):
        raise ValueError(f"head: reads features of size {hidden}, the model's hidden size is {model_hidden}")


def _draft_family(draft_model, model, family, grid):
    """The draft model's family, checked against the target's: same family, image vocabulary, VQ codebook (its
    codes index the same latents), text vocabulary (it reads the same prompt ids) and grid, on the same device."""
    draft = family_of(draft_model, family.eol_token_id)
    if type(draft) is not type(family):
        raise ValueError(f"draft_model: a {draft.name} model cannot draft for a {family.name} model (same family "
                         "needed: the drafts are the target's image codes)")
    _check_attention(draft)
    if draft.device != family.device:
        raise ValueError(f"draft_model is on {draft.device}, the model on {family.device}: put both on one device")
    if draft.vocab_size != family.vocab_size or draft.codebook.shape != family.codebook.shape:
        raise ValueError(f"draft_model: its VQ codebook is {tuple(draft.codebook.shape)}, the model's "
                         f"{tuple(family.codebook.shape)}: the image vocabularies differ")
    if not torch.equal(draft.codebook.detach(), family.codebook.detach().to(draft.codebook.dtype)):
        raise ValueError("draft_model: its VQ codebook differs from the model's (same size, other code vectors): "
                         "its codes would mean other image patches")
    ours, theirs = model.get_input_embeddings().weight.shape[0], draft_model.get_input_embeddings().weight.shape[0]
    if ours != theirs:
        raise ValueError(f"draft_model: its text vocabulary has {theirs} tokens, the model's {ours}: it would read "
                         "the prompts as other tokens")
    if hasattr(family, "image_ids") and not torch.equal(draft.image_ids, family.image_ids):
        raise ValueError("draft_model: its vocabulary maps image codes to other token ids than the model's")
    draft.grid(grid)  # Janus: the draft's own grid must be the target's
    return draft


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


def cfg_prompt_rows(model, family, ids: torch.Tensor, mask: torch.Tensor, neg: Optional[torch.Tensor] = None,
                    neg_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The target's prompt rows under CFG, ``(2B, P)`` ids and mask: the ``B`` cond rows, then the uncond rows
    (``neg`` / ``neg_mask``, or the family's own rule when None: Janus's; a clear error for the others), both
    left-padded with the model's pad token to one width."""
    if neg is None:
        neg, neg_mask = family.unconditional(ids, mask)
    length = max(ids.shape[1], neg.shape[1])
    pad = int(getattr(model.generation_config, "pad_token_id", None) or 0)
    ids, mask = _left_pad(ids, mask, length, pad)
    neg, neg_mask = _left_pad(neg, neg_mask, length, pad)
    return torch.cat([ids, neg]), torch.cat([mask, neg_mask])


# transformers' own defaults for the settings a model's generation_config leaves unset
# (GenerationConfig._get_default_generation_params in transformers 5): greedy unless do_sample, top-k 50.
HF_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "num_return_sequences": 1}


def _setting(config, name: str, explicit):
    """An explicit argument wins; then the generation config's value; then transformers' default."""
    if explicit is not None:
        return explicit
    value = getattr(config, name, None) if config is not None else None
    return HF_DEFAULTS.get(name) if value is None else value


def _resolve_sampling(config, family, *, do_sample, temperature, top_k, top_p, cfg_scale, guidance_scale):
    """(cfg_scale, temperature, top_k, top_p) as ``model.generate`` would use them: ``do_sample=False`` is greedy
    (temperature 0: verified by argmax, whatever the other settings)."""
    if cfg_scale is not None and guidance_scale is not None and float(cfg_scale) != float(guidance_scale):
        raise ValueError(f"cfg_scale = {cfg_scale} and guidance_scale = {guidance_scale} name the same setting; "
                         "pass one")
    scale = cfg_scale if cfg_scale is not None else guidance_scale
    if scale is None:
        scale = getattr(config, "guidance_scale", None) if config is not None else None
    scale = family.default_cfg_scale if scale is None else float(scale)
    if not bool(_setting(config, "do_sample", do_sample)):
        return scale, 0.0, 0, 1.0
    return (scale, float(_setting(config, "temperature", temperature)), int(_setting(config, "top_k", top_k) or 0),
            float(_setting(config, "top_p", top_p)))


def _check_left_padded(mask: torch.Tensor, name: str):
    """The first image token is read from the last position: a right-padded row would read a pad token's
    logits and continue from there, silently."""
    if mask.dim() != 2:
        raise ValueError(f"{name} must be (batch, length), got shape {tuple(mask.shape)}")
    if mask.shape[1] and bool((mask[:, :-1].bool() & ~mask[:, 1:].bool()).any()):
        raise ValueError(f"{name}: a row is right-padded (a real token followed by padding); pad on the left "
                         "(tokenizer.padding_side = 'left' or processor.tokenizer.padding_side = 'left'): the "
                         "image starts after the last position")
    if mask.shape[0] and not bool(mask.bool().any(1).all()):
        raise ValueError(f"{name}: a row has no real token")


def _check_positions(family, prompt_len: int, image_len: int, name: str) -> None:
    """Positions the longest prompt and the image (with its EOL tokens) take; past the model's maximum the rotary
    positions are ones it was never trained on, so the output would be garbage rather than an error."""
    max_positions = getattr(family.language_model.config, "max_position_embeddings", None)
    if max_positions is not None and prompt_len + image_len > int(max_positions):
        raise ValueError(f"input_ids: the prompt ({prompt_len} tokens) and the image ({image_len} tokens with EOLs) "
                         f"take {prompt_len + image_len} positions, more than the {name}'s max_position_embeddings "
                         f"= {max_positions}")


# Attention implementations known to apply an additive 4-D float mask (docs/TESTBED.md §3.2). Others
# (FlashAttention-2 / 3 read only a 2-D padding mask) would let every draft see every other draft.
MASK_HONOURING_ATTENTION = ("eager", "sdpa")


def _check_attention(family):
    impl = getattr(family.language_model.config, "_attn_implementation", None)
    if impl is not None and impl not in MASK_HONOURING_ATTENTION:
        raise ValueError(f"model: attention implementation {impl!r} ignores the 4-D attention mask speculative "
                         f"verification needs (drafts would see later drafts); use one of "
                         f"{MASK_HONOURING_ATTENTION}: model.set_attn_implementation('sdpa'), or load with "
                         "from_pretrained(..., attn_implementation='sdpa')")


def _grid_from_image_sizes(image_sizes, grid):
    """Emu3's processor returns ``image_sizes`` ``[[rows, columns]] * B`` (in tokens) for image generation."""
    sizes = torch.as_tensor(image_sizes).reshape(-1, 2)
    if sizes.shape[0] == 0 or not bool((sizes == sizes[0]).all()):
        raise ValueError(f"image_sizes: every prompt must ask for the same image size, got {sizes.tolist()}")
    size = (int(sizes[0, 0]), int(sizes[0, 1]))
    if grid is not None and (int(grid[0]), int(grid[1])) != size:
        raise ValueError(f"grid = {tuple(grid)} and image_sizes = {list(size)} disagree")
    return size


def _row_keys(batch, seed, generator, row_keys, device):
    """Per-row randomness keys. Explicit ``row_keys``, ``generator`` or ``seed``: reproducible, batch-invariant
    keys; none of them: keys drawn from torch's global generator, so ``torch.manual_seed`` applies and repeated
    calls differ (as with ``model.generate``)."""
    if row_keys is not None:
        if tuple(row_keys.shape) != (batch,):
            raise ValueError(f"row_keys must be ({batch},) (one per generated image), got {tuple(row_keys.shape)}")
        return row_keys.to(device)
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    gen_device = generator.device if generator is not None else "cpu"
    return torch.randint(0, 2**31 - 1, (batch,), generator=generator, device=gen_device).to(device)


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
    do_sample: Optional[bool] = None,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    guidance_scale: Optional[float] = None,
    negative_prompt_ids: Optional[torch.Tensor] = None,
    negative_prompt_attention_mask: Optional[torch.Tensor] = None,
    num_return_sequences: Optional[int] = None,
    generation_config=None,
    image_sizes=None,
    normalize_codebook: Optional[bool] = None,
    vqgan_checkpoint=None,
    window: int = 16,
    init: str = "random",
    delta: float = LANTERN_DELTA,
    k: Optional[int] = None,
    rank_window: Optional[Tuple[int, int]] = None,
    p_thr: float = 0.15,
    d_thr: float = 0.5,
    head=None,
    total_tokens: Optional[int] = None,
    depth: Optional[int] = None,
    tree_top_k: Optional[int] = None,
    lam: Optional[float] = None,
    choices: Optional[Sequence[Tuple[int, ...]]] = None,
    draft_model=None,
    gamma: int = 4,
    grid: Optional[Tuple[int, int]] = None,
    eol_token_id: Optional[int] = None,
    num_tokens: Optional[int] = None,
    seed: Optional[int] = None,
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
        Chameleon: after the image-start and size tokens), left-padded with ``attention_mask`` ``(B, P)``
        (right padding is an error). ``speculative_generate(model, **processor_output)`` works: Emu3's
        ``image_sizes`` (``[[rows, columns]] * B`` in tokens) gives the grid.
    method : one of :data:`METHODS`, each meaning what it means in the testbed loop (``specdec.decoding``).
        Without a draft model: "ar" (baseline, one token per forward), "sjd" (exact), "mc-sjd" (exact, SJD with
        the coupled MC-SJD refresh), "gsd" / "mc-gsd" (grouped, lossy), "lantern-sjd" (SJD's drafts verified with
        LANTERN's relaxation, TV budget ``delta``, lossy); these draft with SJD's Jacobi window (``window`` - 1
        drafts, ``init`` "random" or "repeat_left"), verified and refreshed by one fused call per step
        (``specdec_kernels.jacobi_step``). With a draft head ``head``, trees verified by ``verify_tree`` in one
        target forward per step: "eagle2" (EAGLE-2 dynamic trees, exact), "lantern" (LANTERN: EAGLE-2 trees
        verified with the latent-neighbour relaxation ``delta``, lossy; ``delta = 0`` is "eagle2"), "lantern++"
        (a static tree, siblings drawn from the head's q, ratio relaxation ``lam``, lossy; ``lam = 1`` is exact).
        With ``draft_model``: "sd" (speculative decoding, ``gamma`` drafts per step from the smaller model,
        exact).
    head : the tree methods' draft head: an ``HFDraftHead`` of this model (``specdec.adapters.hf.head``;
        ``load_head(directory, model)`` loads a trained one). An untrained head keeps the exact methods exact
        (it only drafts badly). Given to any other method: ValueError.
    total_tokens, depth, tree_top_k : EAGLE-2 tree shape for "eagle2" / "lantern": nodes per tree (root
        included, default 59), expansion rounds (4) and children per expanded node (10).
    lam, choices : "lantern++": the ratio relaxation (default 5) and the static tree as rank paths (default
        every path of depth <= 5 and rank sum <= 2); its neighbour count ``k`` defaults to 10. ``lam`` given to
        "lantern" verifies its EAGLE-2 trees with the ratio rule instead of ``delta`` (as in the testbed).
    draft_model : "sd": a smaller model of the same family that shares the image vocabulary, the VQ codebook and
        the text vocabulary (it is run on the same prompts, CFG rows included, with its own ``DynamicCache``);
        ValueError when they differ. gamma : SD's drafts per step.
    negative_input_ids, negative_attention_mask : the unconditional prompts ``(B, P')`` for CFG (HF's names
        ``negative_prompt_ids`` / ``negative_prompt_attention_mask`` are accepted). Janus builds them as its own
        ``generate`` does (all but BOS / BOI replaced by pad); Emu3 / Chameleon need them.
    cfg_scale (or HF's ``guidance_scale``) : guidance scale on raw logits, ``l_u + s (l_c - l_u)``; 1 runs no
        unconditional rows.
    do_sample, temperature, top_k, top_p : as in ``model.generate``: applied after CFG, to target and drafts
        alike; ``do_sample=False`` is greedy (drafts accepted while they are the argmax).
    generation_config : a ``GenerationConfig`` to use instead of ``model.generation_config``. Every setting not
        passed explicitly comes from it, then from transformers' defaults (``do_sample=False``, ``top_k=50``,
        temperature 1, top-p 1, one sequence per prompt); ``guidance_scale`` unset: Janus 5, Emu3 / Chameleon 3.
    num_return_sequences : images per prompt (rows repeated, each with its own randomness key).
    normalize_codebook : geometry of LANTERN's neighbour table: L2-normalised codes (cosine order) or raw
        Euclidean. Default per family: Janus normalised (its quantiser normalises codes), Emu3 / Chameleon raw
        (their decoders use the raw code vectors; normalising a 4-d Emu3 code discards its norm). On the testbed
        the choice did not move acceptance beyond seed noise (benchmarks/codebook_geometry.py). GSD's distance
        filter always uses normalised codes (its threshold d < 0.5 is cos > 0.75, scale-free).
    vqgan_checkpoint : Chameleon family: a local VQGAN checkpoint (``.ckpt`` / ``.pt`` / ``.safetensors``; the
        taming-transformers VQGAN of Chameleon, Anole and Lumina-mGPT) whose decoder turns codes into ``images``
        (HF's Chameleon has no decoder). Loaded once per model and path.
    k, delta : LANTERN's neighbours per code ("lantern-sjd" / "lantern": default V // 16; "lantern++": 10; the
        table is built on the first call and kept per model) and budget. rank_window, p_thr, d_thr : GSD's.
    grid : ``(rows, columns)`` of image tokens (Janus: from its config). eol_token_id : token closing each grid
        row (Emu3: from its vocabulary; Lumina-mGPT: 8803; default none for Chameleon).
    num_tokens : generate only the first ``num_tokens`` image tokens (default the whole grid).
    seed, generator, row_keys : randomness. Row b's uniforms depend only on its key ``row_keys[b]`` (drawn
        from ``generator``, or from a generator seeded with ``seed``), so a row generated alone with its key gives
        the same tokens as in any batch. With none of the three, the keys come from torch's global generator
        (``torch.manual_seed`` applies; repeated calls give different images).
    decode : decode complete images when the model has a VQ decoder.
    """
    if negative_prompt_ids is not None:
        if negative_input_ids is not None:
            raise ValueError("pass negative_input_ids or negative_prompt_ids (the same argument), not both")
        negative_input_ids = negative_prompt_ids
    if negative_prompt_attention_mask is not None:
        if negative_attention_mask is not None:
            raise ValueError("pass negative_attention_mask or negative_prompt_attention_mask, not both")
        negative_attention_mask = negative_prompt_attention_mask
    _check_resources(method, head, draft_model)
    family = family_of(model, eol_token_id)
    _check_attention(family)
    if head is not None:
        _check_head(head, model, family)
    config = generation_config if generation_config is not None else getattr(model, "generation_config", None)
    if image_sizes is not None:
        grid = _grid_from_image_sizes(image_sizes, grid)
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
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask must match input_ids {tuple(ids.shape)}, got {tuple(mask.shape)}")
    _check_left_padded(mask, "attention_mask")
    repeats = int(_setting(config, "num_return_sequences", num_return_sequences))
    if repeats < 1:
        raise ValueError(f"num_return_sequences must be >= 1, got {repeats}")
    ids, mask = ids.repeat_interleave(repeats, 0), mask.repeat_interleave(repeats, 0)
    batch = ids.shape[0]
    scale, temperature, top_k, top_p = _resolve_sampling(
        config, family, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale,
        guidance_scale=guidance_scale)
    sampling = SamplingConfig(cfg_scale=scale, temperature=temperature, top_k=top_k, top_p=top_p)
    if sampling.uses_cfg:
        neg = neg_mask = None
        if negative_input_ids is not None:
            neg = negative_input_ids.to(device)
            neg_mask = (torch.ones_like(neg) if negative_attention_mask is None
                        else negative_attention_mask.to(device)).long()
            if neg_mask.shape != neg.shape:
                raise ValueError(f"negative_attention_mask must match negative_input_ids {tuple(neg.shape)}, "
                                 f"got {tuple(neg_mask.shape)}")
            _check_left_padded(neg_mask, "negative_attention_mask")
            neg, neg_mask = neg.repeat_interleave(repeats, 0), neg_mask.repeat_interleave(repeats, 0)
            if neg.shape[0] != batch:
                raise ValueError(f"negative_input_ids: {neg.shape[0] // repeats} rows for {batch // repeats} prompts")
        prompts, prompt_mask = cfg_prompt_rows(model, family, ids, mask, neg, neg_mask)
    else:
        prompts, prompt_mask = ids, mask
    prompt_len = int(prompt_mask.sum(1).max())
    image_len = n_tok + ((n_tok - 1) // cols if family.eol_token_id is not None else 0)
    _check_positions(family, prompt_len, image_len, "model")
    target = HFImageTarget(family, prompts, prompt_mask, (rows, cols), n_tok)
    draft = None
    if draft_model is not None:
        draft_family = _draft_family(draft_model, model, family, (rows, cols))
        _check_positions(draft_family, prompt_len, image_len, "draft_model")
        draft = HFImageTarget(draft_family, prompts, prompt_mask, (rows, cols), n_tok)
    normalize = family.normalize_codebook if normalize_codebook is None else bool(normalize_codebook)
    dec = _method(method, model, family.codebook.detach(), window=window, init=init, grid_width=cols, delta=delta, k=k,
                  rank_window=rank_window, p_thr=p_thr, d_thr=d_thr, normalize=normalize, head=head, draft=draft,
                  gamma=gamma, total_tokens=total_tokens, depth=depth, tree_top_k=tree_top_k, lam=lam,
                  choices=choices)
    row_keys = _row_keys(batch, seed, generator, row_keys, device)
    if vqgan_checkpoint is not None:
        family.load_vqgan(vqgan_checkpoint)
    result = generate(target, torch.arange(batch, device=device), dec, sampling=sampling, row_keys=row_keys,
                      num_tokens=n_tok)
    codes = result.tokens
    whole = n_tok == rows * cols
    image_tokens = codes.view(batch, rows, cols) if whole else None
    sequences = family.sequences(image_tokens) if whole and family.eol_token_id is not None else None
    images = family.decode(image_tokens) if (decode and whole) else None
    return HFImageOutput(codes, image_tokens, sequences, images, result.metrics)
