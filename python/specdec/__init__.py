"""specdec: the Python side of specdec-kernels.

Subpackages (imported on demand, nothing heavy here): ``specdec.decoding`` (the speculative decoding loop),
``specdec.testbed`` (the Fashion-MNIST AR image testbed: VQ tokenizer, target, drafts, training),
``specdec.metrics`` (offline quality metrics), and ``specdec.cli`` (the ``specdec`` command).
"""
