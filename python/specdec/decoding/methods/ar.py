"""Plain autoregressive sampling: a chain of zero drafts (verify_chain then samples p by inverse CDF)."""

from .base import ChainMethod


class AR(ChainMethod):
    """Baseline: one target forward per token."""

    name = "ar"
    num_drafts = 0
