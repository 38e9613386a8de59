"""Per-row decoding state: committed tokens, lengths and step counters for a ragged batch."""

import torch


class DecodeState:
    """Committed image tokens of ``batch_size`` rows, each at its own length.

    Layout (docs/TESTBED.md §1.5): the class token sits at position / slot 0 and image token i at position 1 + i.
    After a row has committed ``n_gen`` tokens, target K/V is valid at slots ``0 .. n_gen - 1`` (class + tokens
    0..n_gen-2); the *last* token ``tokens[n_gen - 1]`` has no K/V yet and is fed, at position ``n_gen``, by the
    next step (the chain's slot 0 / the tree's root).
    """

    def __init__(self, classes: torch.Tensor, num_tokens: int):
        self.classes = classes
        self.batch_size = classes.shape[0]
        self.num_tokens = num_tokens
        self.device = classes.device
        self.tokens = torch.full((self.batch_size, num_tokens), -1, dtype=torch.int64, device=self.device)
        self.n_gen = torch.zeros(self.batch_size, dtype=torch.int64, device=self.device)
        self.steps = torch.zeros(self.batch_size, dtype=torch.int64, device=self.device)

    @property
    def active(self) -> torch.Tensor:
        return self.n_gen < self.num_tokens

    @property
    def remaining(self) -> torch.Tensor:
        return self.num_tokens - self.n_gen

    @property
    def last(self) -> torch.Tensor:
        return self.tokens.gather(1, (self.n_gen - 1).clamp_min(0)[:, None])[:, 0]

    def commit(self, new_tokens: torch.Tensor, counts: torch.Tensor) -> None:
        """Append ``new_tokens[b, :counts[b]]`` to row b (``counts`` 0 for idle rows)."""
        width = new_tokens.shape[1]
        offs = torch.arange(width, device=self.device)
        keep = offs[None, :] < counts[:, None]
        idx = (self.n_gen[:, None] + offs[None, :]).clamp_max(self.num_tokens - 1)
        # Scatter through a padded copy so rows with nothing to write keep their values.
        padded = torch.cat([self.tokens, self.tokens.new_full((self.batch_size, 1), -1)], dim=1)
        idx = torch.where(keep, idx, self.num_tokens)
        padded.scatter_(1, idx, torch.where(keep, new_tokens, -1))
        self.tokens = padded[:, : self.num_tokens]
        self.n_gen = self.n_gen + counts
