"""Method defaults, rescaled from the published settings to this project's vocabulary (V = 1024 in the testbed).

* GSD window: released ``(7, 6)`` ranks around x out of an image top-k of 2000 (Lumina-mGPT), i.e. about 0.35 %
  of the candidate codes on each side. We keep that fraction: ``h = round(V * 7 / 2000)`` less-probable and
  ``round(V * 6 / 2000)`` more-probable ranks, at least 1: ``(4, 3)`` at V = 1024, ``(7, 6)`` at V ~ 2000.
  p_thr = 0.15 and d_thr = 0.5 are probability / cosine thresholds and do not scale with V.
* LANTERN k: released k = 1000 of 16 384 codes (LlamaGen), about V / 16; we use ``k = V // 16`` (64 at
  V = 1024), capped to V - 1. delta = 0.1 (released default; a TV budget does not scale with V).
* LANTERN++: lambda = 5 with k = 10 (``run.sh``); k counts nearest codes and lambda bounds merged mass by a
  multiple of p(x), so neither is rescaled (10 of 1024 codes is still a tight neighbourhood).
* EAGLE-2 trees: LANTERN's LlamaGen settings, 59 nodes (root included), depth 4 expansion rounds, top-K 10.
* Static tree (LANTERN++): every rank path of depth <= 5 with rank sum <= 2 (55 nodes + root), close to
  LANTERN's ``naive_extend_57`` in size and depth.
"""


def gsd_rank_window(vocab_size: int) -> tuple:
    return (max(1, round(vocab_size * 7 / 2000)), max(1, round(vocab_size * 6 / 2000)))


def lantern_k(vocab_size: int) -> int:
    return max(1, min(vocab_size // 16, vocab_size - 1))


LANTERN_DELTA = 0.1
LANTERNPP_LAMBDA = 5.0
LANTERNPP_K = 10
EAGLE_TOTAL_TOKENS = 59
EAGLE_DEPTH = 4
EAGLE_TOP_K = 10
STATIC_MAX_DEPTH = 5
STATIC_MAX_RANK_SUM = 2
