"""Continuous-token testbed and the CSpD decoding loop (Continuous Speculative Decoding, arXiv 2411.11925).

* :mod:`.diffusion`: per-token DDPM head (cosine schedule, fixed variance, epsilon prediction, CFG on epsilon)
  whose trajectories are driven by passed-in noise, so draft and target can share it (trajectory alignment).
* :mod:`.model`: class-conditional AR transformer over the shipped VQ encoder's pre-quantisation latents
  (64 tokens x 8 dims) with that head.
* :mod:`.train`: ``specdec train cspd-target | cspd-draft`` (resumable; weights in ``continuous/weights``).
* :mod:`.sample`: the AR baseline and the CSpD loop (pre-fill, gamma drafts, one target forward and one batched
  head pass per verification, ``specdec_kernels.cspd_verify``, ragged rows).
* :mod:`.demo`: the ``cspd`` rows of ``specdec demo``.

See ``docs/CSPD.md``.
"""
