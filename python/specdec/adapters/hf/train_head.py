"""Self-distillation of an EAGLE-style draft head (:class:`~specdec.adapters.hf.head.HFDraftHead`) on a Hugging
Face image generator's own images (``specdec train head``; docs/HF_HEADS.md).

1. **Data.** The model generates images from the training prompts with ``speculative_generate(..., method="ar",
   do_sample=True)`` (temperature 1 unless given; CFG scale, top-k and top-p as the model's generation config says,
   resolved exactly as :func:`speculative_generate` resolves them). Image ``k`` uses training prompt
   ``k mod n`` and a randomness key that depends only on ``(seed, k)``, so the images do not depend on the
   generation batch. Held-out prompts get the target's *greedy* image each (``do_sample=False``), the reference of
   the acceptance estimate. Both sets are cached on disk in chunks (``<out>/train_state``): a resumed run, or one
   interrupted while generating, does not regenerate what is there.
2. **Features.** For a batch of images the target runs teacher-forced through
   :class:`~specdec.adapters.hf.target.HFImageTarget`: ``prefill`` of the (cond, then uncond) prompt rows and one
   causal ``forward_tokens`` over the image tokens, so the features are exactly those the decoding loop hands the
   head at run time (CFG rows included; for a token ending a grid row with an EOL, its EOL entry's state).
3. **Loss.** EAGLE-1 (:func:`distill_loss`, as ``specdec.testbed.eagle.EagleHead.distill_loss``): smooth-L1 between
   the head's predicted features and the target's, on every row, plus ``ce_weight`` x the cross-entropy of the
   head's guided distribution against the target's processed one (CFG, temperature, top-k, top-p: what the
   verifier compares drafts against). AdamW, warm-up + cosine learning rate, gradient clipping.
4. **Checkpoints.** Every ``ckpt_every_s`` seconds and at the end: head, optimiser, step, torch RNG state, the data
   fingerprint and order (the data cursor is a pure function of ``(seed, step)``: ``EpochOrder``) and the metrics
   so far; a killed run resumes on the same trajectory (CPU: the same weights bit for bit). ``fresh`` ignores them.
5. **Output.** ``head.save(out)`` (``head.safetensors`` + ``head.json``) and ``metrics.json`` (loss curve,
   acceptance estimates, settings).
"""

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ...decoding import SamplingConfig
from ...decoding.feed import attention_mask
from ...testbed.checkpoint import EpochOrder, lr_at, save_atomic
from .families import FAMILIES, family_of
from .generate import _resolve_sampling, cfg_prompt_rows, speculative_generate
from .head import HFDraftHead
from .target import HFImageTarget

STATE_DIR = "train_state"
METRICS_FILE = "metrics.json"
_KEY_MODULUS = 2**31 - 1  # randomness keys live in [0, 2^31 - 1), as speculative_generate draws them


# -- prompts -------------------------------------------------------------------------------------------------------


@dataclass
class PromptSet:
    """Prompts as :func:`speculative_generate` takes them, one row per prompt.

    ids, mask : ``(n, P)`` int64 token ids ending where the first image token comes, left-padded (mask 1 = real).
    negative_ids, negative_mask : ``(n, P')`` unconditional prompts for CFG (Emu3 / Chameleon), or None (Janus
        builds its own; or no CFG).
    grid : ``(rows, columns)`` of image tokens when the prompts fix it (Emu3's processor), else None.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    negative_ids: Optional[torch.Tensor] = None
    negative_mask: Optional[torch.Tensor] = None
    grid: Optional[Tuple[int, int]] = None

    def __post_init__(self):
        if self.ids.dim() != 2 or self.ids.shape[0] == 0 or self.ids.shape[1] == 0:
            raise ValueError(f"prompts: need at least one non-empty prompt, got ids of shape {tuple(self.ids.shape)}")
        if self.mask.shape != self.ids.shape:
            raise ValueError(f"prompts: mask {tuple(self.mask.shape)} does not match ids {tuple(self.ids.shape)}")
        if self.negative_ids is not None:
            if self.negative_mask is None:
                self.negative_mask = torch.ones_like(self.negative_ids)
            if self.negative_ids.shape[0] != self.ids.shape[0] or self.negative_mask.shape != self.negative_ids.shape:
                raise ValueError(f"prompts: negative prompts {tuple(self.negative_ids.shape)} (mask "
                                 f"{tuple(self.negative_mask.shape)}) do not pair with {self.ids.shape[0]} prompts")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def rows(self, index: torch.Tensor) -> "PromptSet":
        """The prompts at ``index`` (with repeats), padding trimmed to the longest selected row."""
        def take(ids, mask):
            ids, mask = ids[index], mask[index]
            keep = int(mask.sum(1).max())
            return ids[:, ids.shape[1] - keep:], mask[:, mask.shape[1] - keep:]

        ids, mask = take(self.ids, self.mask)
        neg = take(self.negative_ids, self.negative_mask) if self.negative_ids is not None else (None, None)
        return PromptSet(ids, mask, neg[0], neg[1], self.grid)

    def fingerprint(self) -> str:
        """A hash of the prompts (ids, masks, negatives, grid): what the token caches are keyed by."""
        h = hashlib.sha256()
        for t in (self.ids, self.mask, self.negative_ids, self.negative_mask):
            h.update(b"none" if t is None else t.to(torch.int64).cpu().numpy().tobytes() + str(tuple(t.shape)).encode())
        h.update(str(self.grid).encode())
        return h.hexdigest()[:16]


def _pack_left(rows: Sequence[Sequence[int]], pad: int) -> Tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad), dtype=torch.int64)
    mask = torch.zeros(len(rows), width, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.int64)
        mask[i, width - len(r):] = 1
    return ids, mask


def read_lines(path) -> List[str]:
    """Non-empty, stripped lines of a text file; ValueError when the file is missing or has none."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"prompt file {path} is empty (one prompt per line)")
    return lines


def parse_ids(line: str, what: str = "token ids") -> List[int]:
    """Whitespace-separated non-negative ints; ValueError naming ``what`` otherwise."""
    try:
        ids = [int(x) for x in line.split()]
    except ValueError:
        raise ValueError(f"{what}: {line!r} is not a list of whitespace-separated integers") from None
    if not ids or min(ids) < 0:
        raise ValueError(f"{what}: {line!r} must hold at least one id, all >= 0")
    return ids


def prompts_from_ids(lines: Sequence[str], negative: Optional[str] = None, grid=None, pad: int = 0) -> PromptSet:
    """Prompts from token-id lines (tokenizer-less models, class-id style prompts): each line is one prompt's ids,
    ending where the first image token comes; ``negative`` one line of ids used as every prompt's unconditional
    prompt (Emu3 / Chameleon CFG); ``pad`` the id used for left padding."""
    rows = [parse_ids(line, f"prompt {i + 1}") for i, line in enumerate(lines)]
    ids, mask = _pack_left(rows, pad)
    neg = neg_mask = None
    if negative is not None:
        ids_neg = parse_ids(negative, "negative prompt ids")
        neg, neg_mask = _pack_left([ids_neg] * len(rows), pad)
    return PromptSet(ids, mask, neg, neg_mask, None if grid is None else (int(grid[0]), int(grid[1])))


def prompts_from_text(model_dir, family_name: str, texts: Sequence[str], negative: Optional[str] = None,
                      image_prefix: Optional[str] = None, image_area: Optional[int] = None) -> PromptSet:
    """Tokenize text prompts with the local model directory's processor / tokenizer, as the README builds them for
    :func:`speculative_generate`:

    * Janus: ``JanusProcessor(text, generation_mode="image")`` (the prompt ends with the image-start token; the
      unconditional prompt is Janus's own rule, so ``negative`` is ignored).
    * Emu3: ``Emu3Processor(text, return_for_image_generation=True)`` (its ``image_sizes`` fix the grid; pass
      ``image_area`` in pixels to change it); the unconditional prompt is ``negative`` through the same call
      (the negative text followed by the same image prefix), required for CFG.
    * Chameleon family: the tokenizer's ids of the text followed by ``image_prefix`` (ids of the image-start and
      size tokens, e.g. Lumina-mGPT's ``"8197 8852 8852"``), required; ``negative`` likewise.
    """
    from transformers import AutoProcessor, AutoTokenizer

    texts = list(texts)
    common = dict(local_files_only=True)
    if family_name == "Janus":
        processor = AutoProcessor.from_pretrained(str(model_dir), **common)
        processor.tokenizer.padding_side = "left"
        out = processor(text=texts, generation_mode="image", return_tensors="pt", padding=True)
        return PromptSet(out["input_ids"].long(), out["attention_mask"].long())
    if family_name == "Emu3":
        processor = AutoProcessor.from_pretrained(str(model_dir), **common)
        processor.tokenizer.padding_side = "left"
        extra = {} if image_area is None else {"image_area": int(image_area)}
        out = processor(text=texts, return_for_image_generation=True, return_tensors="pt", padding=True, **extra)
        grid = tuple(int(x) for x in out["image_sizes"][0])
        neg = neg_mask = None
        if negative is not None:
            n = processor(text=[negative] * len(texts), return_for_image_generation=True, return_tensors="pt",
                          padding=True, **extra)
            neg, neg_mask = n["input_ids"].long(), n["attention_mask"].long()
        return PromptSet(out["input_ids"].long(), out["attention_mask"].long(), neg, neg_mask, grid)
    if family_name == "Chameleon":
        if image_prefix is None:
            raise ValueError("Chameleon-family text prompts need image_prefix (--image-prefix-ids): the ids of the "
                             "image-start and size tokens that end every prompt, e.g. Lumina-mGPT's '8197 8852 8852'")
        prefix = parse_ids(image_prefix, "image prefix ids")
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), **common)
        pad = tokenizer.pad_token_id or 0
        rows = [tokenizer(t)["input_ids"] + prefix for t in texts]
        ids, mask = _pack_left(rows, pad)
        neg = neg_mask = None
        if negative is not None:
            neg, neg_mask = _pack_left([tokenizer(negative)["input_ids"] + prefix] * len(texts), pad)
        return PromptSet(ids, mask, neg, neg_mask)
    raise ValueError(f"text prompts: unknown family {family_name!r}")


def load_model(model_dir, device="cpu", dtype=None):
    """Load a supported HF image generator from a local directory (``from_pretrained(..., local_files_only=True)``,
    eval mode). ValueError when the directory or its ``config.json`` is missing or its architecture is not one of
    Janus / Emu3 / Chameleon."""
    import transformers

    path = Path(model_dir)
    if not path.is_dir():
        raise ValueError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ValueError(f"model directory {path} has no config.json (save the model with save_pretrained)")
    config = json.loads((path / "config.json").read_text())
    names = [a for a in (config.get("architectures") or []) if a in FAMILIES]
    if not names:
        found = config.get("architectures") or config.get("model_type")
        raise ValueError(f"model family not supported: {path} is {found}; supported: {sorted(FAMILIES)}")
    kwargs = dict(local_files_only=True)
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = getattr(transformers, names[0]).from_pretrained(str(path), **kwargs)
    return model.to(device).eval()


# -- sampling, prompt rows, features -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """Resolved sampling settings of the training images (``do_sample=True``): what :func:`speculative_generate`
    is called with, and (as :attr:`config`) the processing that defines the target's distribution p."""

    cfg_scale: float
    temperature: float
    top_k: int
    top_p: float

    @property
    def config(self) -> SamplingConfig:
        return SamplingConfig(cfg_scale=self.cfg_scale, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p)

    @property
    def copies(self) -> int:
        """Rows per image in the target's batch: 2 with CFG (cond rows first), else 1."""
        return 2 if self.config.uses_cfg else 1


def resolve_sampling(model, *, temperature=None, top_k=None, top_p=None, cfg_scale=None) -> Sampling:
    """The settings :func:`speculative_generate` would use with ``do_sample=True`` (explicit values win, then the
    model's generation config, then transformers' defaults); temperature 1 unless given."""
    family = family_of(model)
    t = 1.0 if temperature is None else float(temperature)
    if not t > 0:
        raise ValueError(f"temperature must be > 0 for sampled training images, got {temperature}")
    scale, t, k, p = _resolve_sampling(getattr(model, "generation_config", None), family, do_sample=True,
                                       temperature=t, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale,
                                       guidance_scale=None)
    return Sampling(scale, t, k, p)


def _prompt_rows(model, family, prompts: PromptSet, uses_cfg: bool):
    """The target's prompt rows (cond rows, then uncond rows with CFG), left-padded to one width, as
    :func:`speculative_generate` builds them."""
    device = family.device
    ids, mask = prompts.ids.to(device), prompts.mask.to(device)
    if not uses_cfg:
        return ids, mask
    neg = neg_mask = None
    if prompts.negative_ids is not None:
        neg, neg_mask = prompts.negative_ids.to(device), prompts.negative_mask.to(device)
    return cfg_prompt_rows(model, family, ids, mask, neg, neg_mask)


@torch.no_grad()
def target_features(model, prompts: PromptSet, codes: torch.Tensor, *, uses_cfg: bool, grid=None,
                    eol_token_id=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced target pass over ``codes`` ``(B, N)`` (image tokens of the ``B`` prompts' images): prefill
    of the prompt rows, then one causal :meth:`HFImageTarget.forward_tokens` over codes ``0 .. N-2``.

    Returns (features ``(R, N, d)``, logits ``(R, N, V)`` float32), ``R = B`` or ``2B`` with CFG (cond rows
    first); index ``j`` is protocol position ``j``: the last prompt token (``j = 0``) or image token ``j - 1``
    (its EOL entry when it ends a grid row in an EOL layout), whose logits give image token ``j``."""
    family = family_of(model, eol_token_id)
    rows, mask = _prompt_rows(model, family, prompts, uses_cfg)
    batch, n = codes.shape
    copies = rows.shape[0] // batch
    target = HFImageTarget(family, rows, mask, family.grid(grid if grid is not None else prompts.grid), n)
    num_slots = n + 2  # slot 0: the prompt; 1 + i: image token i; last: trash
    cache = target.new_cache(rows.shape[0], num_slots)
    logits0, hidden0 = target.prefill(torch.arange(rows.shape[0], device=rows.device), cache)
    if n == 1:
        return hidden0[:, None], logits0[:, None]
    tokens = codes[:, :-1].to(rows.device).repeat(copies, 1)
    t = n - 1
    slots = torch.arange(1, n, device=rows.device).expand(rows.shape[0], t)
    valid = torch.ones_like(slots, dtype=torch.bool)
    prefix = torch.ones(rows.shape[0], dtype=torch.int64, device=rows.device)
    mask_ = attention_mask(slots, valid, prefix, num_slots)
    logits, hidden = target.forward_tokens(tokens, slots, slots, mask_, cache)
    return torch.cat([hidden0[:, None], hidden], 1), torch.cat([logits0[:, None], logits], 1)


def _guided(logits: torch.Tensor, copies: int, scale: float) -> torch.Tensor:
    """CFG on raw logits ``(copies * B, ..., V)`` -> ``(B, ..., V)``: ``l_u + s (l_c - l_u)``."""
    if copies == 1:
        return logits
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + scale * (cond - uncond)


# -- loss and acceptance estimate ----------------------------------------------------------------------------------


def distill_loss(head: HFDraftHead, codes: torch.Tensor, features: torch.Tensor, logits: torch.Tensor,
                 sampling: Sampling, ce_weight: float = 0.1):
    """EAGLE-1 loss on one teacher-forced batch (as ``specdec.testbed.eagle.EagleHead.distill_loss``).

    codes ``(B, N)``; features / logits ``(R, N, .)`` from :func:`target_features` (``R = copies * B``). The head
    runs ``forward_train(codes[:, :-1], features[:, :-1])`` on every row; loss = smooth-L1(predicted features,
    target features at positions ``1 .. N-1``) + ``ce_weight`` x cross-entropy of the head's guided, temperature-
    scaled distribution (untruncated, so finite) against the target's processed p (CFG, temperature, top-k, top-p)
    of image tokens ``1 .. N-1``. Returns (loss, logs: ``reg``, ``ce``, ``top1_agree`` (share of positions where
    the guided head and target argmaxes agree))."""
    copies = features.shape[0] // codes.shape[0]
    tokens = codes[:, :-1].to(features.device).repeat(copies, 1)
    h_logits, h_feature = head.forward_train(tokens, features[:, :-1])
    target = features[:, 1:].to(h_feature.device, h_feature.dtype)
    reg = F.smooth_l1_loss(h_feature, target)
    cfg = sampling.config
    p = cfg.process(logits[:, 1:].to(h_logits.device))
    q_guided = _guided(h_logits, copies, sampling.cfg_scale)
    log_q = (q_guided / max(sampling.temperature, 1e-5)).log_softmax(-1)
    ce = -(p * log_q).sum(-1).mean()
    agree = (q_guided.argmax(-1) == _guided(logits[:, 1:].to(h_logits.device), copies, sampling.cfg_scale)
             .argmax(-1)).float().mean()
    loss = reg + ce_weight * ce
    return loss, {"loss": loss.item(), "reg": reg.item(), "ce": ce.item(),
                                  "top1_agree": agree.item()}


@torch.no_grad()
def acceptance_estimate(head: HFDraftHead, codes: torch.Tensor, features: torch.Tensor, cfg_scale: float,
                        depth: int = 5) -> Dict[str, float]:
    """Mean accepted length of greedy chain drafting from the head against the target's greedy tokens.

    ``codes`` ``(B, N)`` are the target's greedy images (each token the argmax of the target's guided logits
    given the earlier ones) and ``features`` ``(R, N, d)`` their teacher-forced target features
    (:func:`target_features`, ``R = copies * B``). For every start ``s`` (the target has verified codes ``0 .. s``
    and produced features of positions ``0 .. s``; ``s = 0 .. N-1-L``, ``L = min(depth, N - 1)``, so every chain
    has its full length), the head drafts a chain of ``L`` tokens as EAGLE does at run time: draft 1 is the argmax
    of its guided logits at its entry for position ``s + 1`` (code ``s``, target feature ``s``, after the
    teacher-forced entries of positions ``1 .. s``), draft ``k + 1`` the argmax at a chain entry fed draft ``k``'s
    token and the head's own predicted feature (no target feature past ``s``). Accepted length ``a(s)`` = number of
    leading drafts equal to the target's greedy codes ``s + 1 ..``; within the count every fed token is the greedy
    code, so teacher forcing is exact. Returns ``mean_accepted_length`` (mean of ``a(s)`` over starts and images,
    in ``[0, L]``), ``first_draft_agreement`` (share with ``a(s) >= 1``), ``depth`` ``L`` and ``starts``.
    """
    batch, n = codes.shape
    if n < 2:
        raise ValueError("acceptance_estimate: images need at least 2 tokens")
    rows = features.shape[0]
    copies = rows // batch
    L = min(int(depth), n - 1)
    starts = n - L  # s = 0 .. n-1-L
    device = head.fc.weight.device
    codes = codes.to(device)
    x = codes.repeat(copies, 1)
    # Teacher-forced entries: position j = 1 .. n-1 (code j-1, feature j-1) in head slot j-1.
    teacher = n - 1
    num_slots = teacher + (L - 1) * starts + 1  # + a trash slot no entry uses
    cache = head.new_cache(rows, num_slots)
    slots = torch.arange(teacher, device=device).expand(rows, teacher)
    causal = torch.arange(num_slots, device=device)[None, :] <= torch.arange(teacher, device=device)[:, None]
    logits, feature = head.forward_tokens(x[:, :teacher], features[:, :teacher].to(device),
                                          slots + 1, slots, causal.expand(rows, -1, -1), cache)
    s = torch.arange(starts, device=device)
    matches = [(_guided(logits[:, :starts], copies, cfg_scale).argmax(-1) == codes[:, 1:starts + 1])]
    feat = feature[:, :starts]
    # Chain step k (1 .. L-1) for start s: code s + k at position s + 1 + k, slot teacher + (k-1) * starts + s; it
    # sees the teacher slots 0 .. s and its own chain's slots.
    seen = torch.arange(num_slots, device=device)[None, :] <= s[:, None]  # (starts, S)
    for k in range(1, L):
        chain_slots = teacher + (k - 1) * starts + s
        seen = seen.clone()
        seen[s, chain_slots] = True
        logits, feat = head.forward_tokens(x[:, k:k + starts], feat, (s + 1 + k).expand(rows, -1),
                                           chain_slots.expand(rows, -1), seen.expand(rows, -1, -1), cache)
        matches.append(_guided(logits, copies, cfg_scale).argmax(-1) == codes[:, k + 1:k + 1 + starts])
    accepted = torch.stack(matches, -1).long().cumprod(-1).sum(-1).float()  # (B, starts)
    return {"mean_accepted_length": round(float(accepted.mean()), 4),
            "first_draft_agreement": round(float((accepted >= 1).float().mean()), 4), "depth": L,
            "starts": int(accepted.numel())}


# -- generated images, cached on disk --------------------------------------------------------------------------------


def _model_fingerprint(model) -> str:
    """Config and a weight checksum of the image head: a cache made with another model is not reused."""
    family = family_of(model)
    h = hashlib.sha256(model.config.to_json_string().encode())
    with torch.no_grad():
        probe = family.image_logits(torch.ones(1, int(model.config.get_text_config().hidden_size),
                                               device=family.device, dtype=model.dtype)).float()
    h.update(f"{float(probe.sum()):.6e}".encode())
    return h.hexdigest()[:16]


def generated_images(model, prompts: PromptSet, count: int, path: Path, *, sampling: Sampling, seed: int,
                     greedy: bool = False, grid=None, eol_token_id=None, num_tokens=None, batch: int = 8,
                     fresh: bool = False, desc: str = "images", progress: bool = True) -> torch.Tensor:
    """``count`` images ``(count, N)`` of codes, image ``k`` from prompt ``k mod len(prompts)`` with key
    ``(seed, k)``: sampled with ``sampling`` (``method="ar", do_sample=True``), or, with ``greedy``, the target's
    greedy image (``do_sample=False``) at ``sampling``'s CFG scale.
    ``progress``: a tqdm bar. Kept in ``path`` (written after every generation call, atomically) and reused when
    the model, prompts, settings and seed are the same; a shorter cache is extended, never regenerated."""
    key = {"model": _model_fingerprint(model), "prompts": prompts.fingerprint(), "seed": int(seed),
           "sampling": asdict(sampling), "greedy": bool(greedy), "grid": None if grid is None else list(grid),
           "eol": eol_token_id, "num_tokens": num_tokens}
    codes = None
    if path.is_file() and not fresh:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("key") == key:
            codes = state["codes"]
    done = 0 if codes is None else int(codes.shape[0])
    chunks = [] if codes is None else [codes]
    bar = tqdm(total=count, initial=min(done, count), desc=desc, dynamic_ncols=True, mininterval=5.0,
               disable=not progress)
    kwargs = dict(method="ar", decode=False, grid=grid if grid is not None else prompts.grid,
                  eol_token_id=eol_token_id, num_tokens=num_tokens)
    if greedy:
        kwargs.update(do_sample=False, cfg_scale=sampling.cfg_scale)
    else:
        kwargs.update(do_sample=True, cfg_scale=sampling.cfg_scale, temperature=sampling.temperature,
                      top_k=sampling.top_k, top_p=sampling.top_p)
    while done < count:
        k = torch.arange(done, min(count, done + batch))
        part = prompts.rows(k % len(prompts))
        keys = (int(seed) * 1_000_003 + k) % _KEY_MODULUS
        out = speculative_generate(model, part.ids, attention_mask=part.mask, negative_input_ids=part.negative_ids,
                                   negative_attention_mask=part.negative_mask, row_keys=keys, **kwargs)
        chunks.append(out.codes.cpu())
        done += len(k)
        save_atomic({"key": key, "codes": torch.cat(chunks)}, path)
        bar.update(len(k))
    bar.close()
    return torch.cat(chunks)[:count]


# -- training ---------------------------------------------------------------------------------------------------------


@dataclass
class HeadTrainOptions:
    """Settings of :func:`train_head` (the CLI's flags).

    steps, batch_size, lr, weight_decay, warmup_frac, clip : optimisation (AdamW, warm-up + cosine decay).
    ce_weight : weight of the cross-entropy term (EAGLE-1: 0.1).
    images : sampled training images (prompts cycled); holdout : prompts held out for the acceptance estimate
        (default: a tenth, at least one; 0 skips the estimate); eval_every : steps between estimates (default a
        tenth of ``steps``; also at step 0 and at the end); eval_depth : chain length of the estimate.
    temperature, top_k, top_p, cfg_scale : sampling of the training images (``None``: temperature 1, the rest from
        the model's generation config); grid, eol_token_id, num_tokens : as :func:`speculative_generate`.
    gen_batch : prompts per generation call. num_heads : attention heads of the head's layer.
    seed : data order, image keys, initialisation. ckpt_every_s : seconds between checkpoints; fresh : ignore
        checkpoints and cached images. stop_after : end (with a checkpoint) after this step, e.g. to split a run
        into time slices; the head and metrics are written only when ``steps`` is reached.
    log_every : steps per loss-curve point. progress : show tqdm bars.
    """

    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_frac: float = 0.05
    clip: Optional[float] = 1.0
    ce_weight: float = 0.1
    images: int = 256
    holdout: Optional[int] = None
    eval_every: Optional[int] = None
    eval_depth: int = 5
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    cfg_scale: Optional[float] = None
    grid: Optional[Tuple[int, int]] = None
    eol_token_id: Optional[int] = None
    num_tokens: Optional[int] = None
    gen_batch: int = 8
    num_heads: Optional[int] = None
    seed: int = 0
    ckpt_every_s: float = 180.0
    fresh: bool = False
    stop_after: Optional[int] = None
    log_every: int = 10
    progress: bool = True

    def check(self, prompts: int) -> None:
        """ValueError on settings that cannot run with ``prompts`` prompts."""
        for name in ("steps", "batch_size", "images", "gen_batch", "eval_depth", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size > self.images:
            raise ValueError(f"batch_size ({self.batch_size}) must not exceed images ({self.images})")
        if self.holdout_count(prompts) >= prompts:
            raise ValueError(f"holdout ({self.holdout_count(prompts)}) leaves no training prompt of {prompts}; "
                             "give more prompts or --holdout 0")

    def holdout_count(self, prompts: int) -> int:
        if self.holdout is not None:
            if self.holdout < 0:
                raise ValueError(f"holdout must be >= 0, got {self.holdout}")
            return int(self.holdout)
        return max(1, prompts // 10) if prompts > 1 else 0


def train_head(model, prompts: PromptSet, out_dir, options: Optional[HeadTrainOptions] = None,
               state_dir=None) -> Dict:
    """Train a :class:`HFDraftHead` for ``model`` on its own images (module docstring) and write it to
    ``out_dir`` (``head.save``) with ``metrics.json`` (``options``: :class:`HeadTrainOptions`, default its
    defaults); checkpoints and cached images go to ``state_dir`` (default
    ``<out_dir>/train_state``). Returns the metrics (``loss_curve``: ``{step, loss, reg, ce, top1_agree}`` means
    over ``log_every`` steps; ``acceptance``: :func:`acceptance_estimate` at steps 0, every ``eval_every`` and
    the end; ``final``, ``untrained``: the last and the step-0 estimate), or, when ``stop_after`` ends the run
    early, ``{"stopped_at": step}``."""
    opts = HeadTrainOptions() if options is None else options
    opts.check(len(prompts))
    out = Path(out_dir)
    state_dir = Path(state_dir) if state_dir is not None else out / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    family = family_of(model, opts.eol_token_id)
    grid = family.grid(opts.grid if opts.grid is not None else prompts.grid)
    sampling = resolve_sampling(model, temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p,
                                cfg_scale=opts.cfg_scale)
    uses_cfg = sampling.config.uses_cfg
    n_hold = opts.holdout_count(len(prompts))
    train_prompts = prompts.rows(torch.arange(len(prompts) - n_hold))
    gen = dict(grid=grid, eol_token_id=opts.eol_token_id, num_tokens=opts.num_tokens, batch=opts.gen_batch,
               fresh=opts.fresh, progress=opts.progress)
    codes = generated_images(model, train_prompts, opts.images, state_dir / "train_images.pt", sampling=sampling,
                             seed=opts.seed, desc="training images", **gen)
    eval_set = None
    if n_hold:
        hold_prompts = prompts.rows(torch.arange(len(prompts) - n_hold, len(prompts)))
        # one greedy image per held-out prompt, at the training CFG scale: the target's greedy tokens
        eval_codes = generated_images(model, hold_prompts, n_hold, state_dir / "eval_images.pt", sampling=sampling,
                                      greedy=True, seed=opts.seed, desc="held-out images", **gen)
        eval_features, _ = target_features(model, hold_prompts, eval_codes, uses_cfg=uses_cfg, grid=grid,
                                           eol_token_id=opts.eol_token_id)
        eval_set = (eval_codes, eval_features)

    torch.manual_seed(opts.seed)
    head = HFDraftHead(model, num_heads=opts.num_heads)
    decay = [p for p in head.parameters() if p.dim() >= 2]
    other = [p for p in head.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                                   {"params": other, "weight_decay": 0.0}], lr=opts.lr, betas=(0.9, 0.95))
    data_key = {"images": hashlib.sha256(codes.numpy().tobytes()).hexdigest()[:16], "seed": opts.seed,
                "batch_size": opts.batch_size, "steps": opts.steps, "head": asdict(head.config),
                "sampling": asdict(sampling), "ce_weight": opts.ce_weight, "lr": opts.lr}
    order = EpochOrder(len(codes), opts.batch_size, opts.seed)
    eval_every = opts.eval_every or max(1, opts.steps // 10)
    history = {"loss_curve": [], "acceptance": []}
    start = 0
    sums: Dict[str, float] = {}  # running sums of the loss-curve point in progress (checkpointed with it)
    count = 0
    ckpt = state_dir / "checkpoint.pt"
    if ckpt.is_file() and not opts.fresh:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state.get("data_key") != data_key:
            raise ValueError(f"checkpoint {ckpt} was made with other data or settings; pass fresh=True (--fresh) "
                             "to start over")
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start, history = int(state["step"]), state["history"]
        sums, count = dict(state["pending"]["sums"]), int(state["pending"]["count"])
        print(f"[head] resumed from {ckpt} at step {start}/{opts.steps}", flush=True)

    def save(step: int) -> None:
        epoch, index = divmod(step, order.steps_per_epoch)
        save_atomic({"head": head.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "rng": torch.get_rng_state(), "history": history, "data_key": data_key,
                     "pending": {"sums": dict(sums), "count": count},
                     "cursor": {"epoch": epoch, "batch_in_epoch": index}}, ckpt)

    def evaluate(step: int) -> None:
        if eval_set is None:
            return
        head.eval()
        est = acceptance_estimate(head, eval_set[0], eval_set[1], sampling.cfg_scale, opts.eval_depth)
        head.train()
        history["acceptance"].append({"step": step, **est})

    if start == 0 and not history["acceptance"]:
        evaluate(0)
    t0 = time.time()
    last_save = time.time()
    end = opts.steps if opts.stop_after is None else min(opts.steps, int(opts.stop_after))
    head.train()
    bar = tqdm(range(start, end), initial=start, total=opts.steps, desc="head", dynamic_ncols=True,
               mininterval=5.0, disable=not opts.progress)
    for step in bar:
        torch.manual_seed(opts.seed * 1_000_003 + step)  # a resumed run takes the same random draws
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, opts.steps, opts.lr, opts.warmup_frac)
        idx = order.indices(step)
        batch_codes = codes[idx]
        features, logits = target_features(model, train_prompts.rows(idx % len(train_prompts)), batch_codes,
                                           uses_cfg=uses_cfg, grid=grid, eol_token_id=opts.eol_token_id)
        loss, logs = distill_loss(head, batch_codes, features, logits, sampling, opts.ce_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if opts.clip:
            torch.nn.utils.clip_grad_norm_(head.parameters(), opts.clip)
        optimizer.step()
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        if (step + 1) % opts.log_every == 0 or step + 1 == opts.steps:
            point = {"step": step + 1, **{k: round(v / count, 5) for k, v in sums.items()}}
            history["loss_curve"].append(point)
            bar.set_postfix({k: f"{v:.4g}" for k, v in point.items() if k != "step"}, refresh=False)
            sums, count = {}, 0
        if (step + 1) % eval_every == 0 and step + 1 < opts.steps:
            evaluate(step + 1)
        if time.time() - last_save >= opts.ckpt_every_s:
            save(step + 1)
            last_save = time.time()
    bar.close()
    if end < opts.steps:
        save(end)
        return {"stopped_at": end}
    if not history["acceptance"] or history["acceptance"][-1]["step"] != opts.steps:
        evaluate(opts.steps)
    save(opts.steps)
    head.eval()
    head.save(out)
    metrics = {
        "family": head.config.family, "head": asdict(head.config),
        "parameters": sum(p.numel() for p in head.parameters()),
        "untrained": history["acceptance"][0] if history["acceptance"] else None,
        "final": history["acceptance"][-1] if history["acceptance"] else None,
        "loss_curve": history["loss_curve"], "acceptance": history["acceptance"],
        "settings": {**{k: v for k, v in asdict(opts).items() if k not in ("progress", "fresh", "stop_after")},
                     "sampling": asdict(sampling), "grid": list(grid), "train_prompts": len(train_prompts),
                     "holdout_prompts": n_hold, "tokens_per_image": int(codes.shape[1])},
        "train_seconds_this_run": round(time.time() - t0, 2),
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
