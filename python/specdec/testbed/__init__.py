"""The Fashion-MNIST AR image testbed (docs/TESTBED.md §6).

* :mod:`.data`: Fashion-MNIST from the Debian package, padded to 32x32.
* :mod:`.vq`: the l2-normalised VQ tokenizer (x4 -> 64 tokens shipped; x2 -> 256 tokens as a config).
* :mod:`.model`: the LlamaGen-style class-conditional AR transformer (target and small draft) with a slot-addressed
  KV cache, tree masks and explicit positions; :mod:`.eagle`: the EAGLE-1-style draft head.
* :mod:`.tokens`: pre-tokenised dataset cache; :mod:`.sample`: plain AR sampling (CFG, temperature, top-k).
* :mod:`.train`: training recipes; :mod:`.checkpoint`: resumable training loop; :mod:`.shipped`: shipped weights
  and :func:`load_testbed`.
"""

from .shipped import load_testbed  # noqa: F401
