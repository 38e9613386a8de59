"""Speculative image generation for Hugging Face ``transformers`` image generators.

``speculative_generate(model, input_ids, method="sjd")`` runs the testbed loop's methods on
``JanusForConditionalGeneration`` (image mode), ``Emu3ForConditionalGeneration`` and
``ChameleonForConditionalGeneration`` (Anole / Lumina-mGPT style), batched, with CFG as a doubled batch, ragged
acceptance on the model's own ``DynamicCache`` and the model's VQ codebook for GSD / LANTERN: Jacobi chains
without a draft model (AR, SJD, MC-SJD, GSD, MC-GSD, LANTERN-SJD), tree methods with a draft head
(``head=HFDraftHead(model)``, :mod:`.head`: EAGLE-2, LANTERN, LANTERN++) and SD with a smaller sibling model
(``draft_model=``). Settings follow ``model.generation_config`` and HF's argument names, as ``model.generate``
does. ``ChameleonVQGANDecoder`` decodes Chameleon-family codes with a VQGAN loaded from a local
checkpoint. Needs ``transformers`` (``pip install -e .[hf]``).
"""

from .generate import HFImageOutput, METHODS, speculative_generate
from .head import HFDraftHead, load_head
from .vqgan import ChameleonVQGANDecoder

__all__ = ["speculative_generate", "HFImageOutput", "METHODS", "HFDraftHead", "load_head", "ChameleonVQGANDecoder"]
