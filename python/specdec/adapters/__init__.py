"""Adapters that bring the verifier to models and servers people already run.

``specdec.adapters.hf``: speculative image generation for Hugging Face Janus, Emu3 and Chameleon-family models
(needs the optional ``transformers`` extra: ``pip install -e .[hf]``).
``specdec.adapters.vllm``: vLLM v1's rejection-sampler layout (flattened drafts, ``cu_num_draft_tokens``) in and
out, with exact, GSD or LANTERN acceptance.
"""
