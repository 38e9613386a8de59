"""specdec: the Python side of specdec-kernels.

:class:`SpeculativeVerifier` (``specdec.verifier``) is the one verification API: raw target logits, drafts and
uniforms in, tokens to commit and cache lengths out. Subpackages (imported on demand, nothing heavy here):
``specdec.decoding`` (the speculative decoding loop), ``specdec.adapters`` (Hugging Face image generators and a
vLLM-layout rejection sampler), ``specdec.testbed`` (the Fashion-MNIST AR image testbed: VQ tokenizer, target,
drafts, training), ``specdec.metrics`` (offline quality metrics), and ``specdec.cli`` (the ``specdec`` command).
"""


def __getattr__(name):
    if name in ("SpeculativeVerifier", "ChainStep", "TreeStep"):
        from . import verifier

        return getattr(verifier, name)
    if name == "process_logits":  # the one processing: specdec_kernels.process_logits
        import specdec_kernels

        return specdec_kernels.process_logits
    raise AttributeError(f"module 'specdec' has no attribute {name!r}")


__all__ = ["SpeculativeVerifier", "process_logits", "ChainStep", "TreeStep"]
