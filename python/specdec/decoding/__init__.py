"""Speculative decoding loop for class-conditional AR image models (testbed protocol, docs/TESTBED.md §1.4-1.7).

Quick start::

    from specdec.decoding import generate, SamplingConfig, methods
    res = generate(target, classes, methods.SJD(), sampling=SamplingConfig(cfg_scale=4.0), seed=0)
    res.tokens            # (batch, num_tokens) image codes
    res.metrics.summary() # target forwards, tokens per step, mean accepted length, wall time

Every verification goes through the method's :class:`specdec.SpeculativeVerifier` (raw logits to tokens, on the
:mod:`specdec_kernels` ops); the loop only drafts, feeds and commits.
"""

from . import methods
from .api import compare_methods, summary_table
from .logits import SamplingConfig
from .loop import GenerationResult, generate
from .methods import METHODS, make_method
from .metrics import GenerationMetrics
from .rng import RowStreams, derive_row_keys

__all__ = ["generate", "GenerationResult", "GenerationMetrics", "SamplingConfig", "methods",
           "METHODS", "make_method", "RowStreams", "derive_row_keys", "compare_methods", "summary_table"]
