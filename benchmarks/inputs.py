"""One input factory per op, shared by the sweep script and the pytest-benchmark tests."""

from typing import Dict

import torch

from specdec_kernels import reference


def _probs(shape, gen, device):
    return torch.softmax(torch.randn(*shape, generator=gen) * 2.0, -1).to(device)


def verify_chain_inputs(batch: int, drafts: int, vocab: int, *, with_q: bool = True, device="cpu", seed=0) -> Dict:
    """A chain where most drafts are plausible under p (so acceptance runs a few positions deep)."""
    gen = torch.Generator().manual_seed(seed)
    p = _probs((batch, drafts + 1, vocab), gen, "cpu")
    q = _probs((batch, drafts, vocab), gen, "cpu") if with_q else None
    draft = torch.multinomial(p[:, :drafts].reshape(-1, vocab), 1, generator=gen).view(batch, drafts)
    case = dict(p=p, q=q, draft=draft, u_accept=torch.rand(batch, drafts, generator=gen),
                u_sample=torch.rand(batch, generator=gen),
                num_drafts=torch.full((batch,), drafts, dtype=torch.int64))
    return {k: (None if v is None else v.to(device)) for k, v in case.items()}


def tree_parents(nodes: int, width: int = 4) -> torch.Tensor:
    """An EAGLE-style tree: the root's `width` children, then each level hangs off the first nodes above."""
    parents = [-1]
    level = [0]
    while len(parents) < nodes:
        nxt = []
        for parent in level:
            for _ in range(width if parent == 0 else max(width // 2, 1)):
                if len(parents) < nodes:
                    nxt.append(len(parents))
                    parents.append(parent)
        level = nxt[: max(width // 2, 1)]
    return torch.tensor(parents)


def verify_tree_inputs(batch: int, nodes: int, vocab: int, *, with_q: bool = False, device="cpu", seed=0) -> Dict:
    gen = torch.Generator().manual_seed(seed)
    parents = tree_parents(nodes).expand(batch, nodes).contiguous()
    p = _probs((batch, nodes, vocab), gen, "cpu")
    q = _probs((batch, nodes, vocab), gen, "cpu") if with_q else None
    tokens = p.argmax(-1).gather(1, parents.clamp_min(0))
    case = dict(p=p, q=q, tree_tokens=tokens, parents=parents, u_accept=torch.rand(batch, nodes, generator=gen),
                u_sample=torch.rand(batch, generator=gen), num_nodes=torch.full((batch,), nodes, dtype=torch.int64))
    return {k: (None if v is None else v.to(device)) for k, v in case.items()}


def codebook_inputs(num_codes: int, dim: int = 8, device="cpu", seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_codes, dim, generator=gen).to(device)


def neighbor_inputs(vocab: int, k: int, device="cpu") -> torch.Tensor:
    return reference.neighbor_table(codebook_inputs(vocab), k).to(device)
