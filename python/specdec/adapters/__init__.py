"""Adapters that bring the verifier to models and servers people already run.

``specdec.adapters.hf``: speculative image generation for Hugging Face Janus, Emu3 and Chameleon-family models
(needs the optional ``transformers`` extra: ``pip install -e .[hf]``).
``specdec.adapters.vllm``: ``SpeculativeRejectionSampler``, shaped like vLLM v1's ``RejectionSampler`` (its
metadata, combined logits and per-request sampling settings in, its output layout out), and the free function
``rejection_sample`` on the older flattened layout; exact, GSD or LANTERN acceptance.
"""
