"""Speculative image generation for Hugging Face ``transformers`` image generators.

``speculative_generate(model, input_ids, method="sjd")`` runs AR, SJD (exact), GSD or LANTERN-relaxed SJD on
``JanusForConditionalGeneration`` (image mode), ``Emu3ForConditionalGeneration`` and
``ChameleonForConditionalGeneration`` (Anole / Lumina-mGPT style), batched, with CFG as a doubled batch, ragged
acceptance on the model's own ``DynamicCache`` and the model's VQ codebook for GSD / LANTERN. No draft model is
needed: drafts are SJD's Jacobi iterates. Settings follow ``model.generation_config`` and HF's argument names, as
``model.generate`` does. ``ChameleonVQGANDecoder`` decodes Chameleon-family codes with a VQGAN loaded from a local
checkpoint. Needs ``transformers`` (``pip install -e .[hf]``).
"""

from .generate import HFImageOutput, METHODS, speculative_generate
from .vqgan import ChameleonVQGANDecoder

__all__ = ["speculative_generate", "HFImageOutput", "METHODS", "ChameleonVQGANDecoder"]
