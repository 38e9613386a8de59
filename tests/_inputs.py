"""Random and edge-case inputs shared by the parity, opcheck and compile tests."""

from typing import Dict, Optional

import torch


def probs(*shape, sharpness: float = 2.0, device="cpu", dtype=torch.float32, zeros: float = 0.0, gen=None):
    """Random probability rows; ``zeros`` is the share of entries forced to 0 (rows keep one non-zero)."""
    logits = torch.randn(*shape, generator=gen) * sharpness
    if zeros > 0:
        mask = torch.rand(*shape, generator=gen) < zeros
        mask[..., 0] &= ~mask.all(-1)
        logits = logits.masked_fill(mask, float("-inf"))
    return torch.softmax(logits, -1).to(device=device, dtype=dtype)


def chain_case(batch=6, drafts=5, vocab=40, *, with_q=True, ragged=True, seed=0, device="cpu",
               dtype=torch.float32, zeros=0.2) -> Dict:
    """A ragged chain with drafts drawn from q (or arbitrary drafts when q is None)."""
    gen = torch.Generator().manual_seed(seed)
    p = probs(batch, drafts + 1, vocab, zeros=zeros, gen=gen)
    q = probs(batch, drafts, vocab, zeros=zeros, gen=gen) if with_q else None
    if with_q:
        draft = torch.multinomial(q.reshape(-1, vocab), 1, generator=gen).view(batch, drafts)
    else:  # mostly the target's argmax (so some pass), sometimes random
        draft = torch.where(torch.rand(batch, drafts, generator=gen) < 0.6, p[:, :drafts].argmax(-1),
                            torch.randint(0, vocab, (batch, drafts), generator=gen))
    num_drafts = (torch.randint(0, drafts + 1, (batch,), generator=gen) if ragged
                  else torch.full((batch,), drafts, dtype=torch.int64))
    case = dict(
        p=p, q=q, draft=draft, u_accept=torch.rand(batch, drafts, generator=gen),
        u_sample=torch.rand(batch, generator=gen), num_drafts=num_drafts,
    )
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in case.items()} | {
        "p": case["p"].to(device=device, dtype=dtype),
        "q": None if q is None else case["q"].to(device=device, dtype=dtype),
    }


def codebook(vocab=40, dim=4, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, dim, generator=gen).to(device)


def random_parents(batch=3, nodes=9, seed=0, device="cpu", ragged=True):
    """Random valid trees (parent < child) padded to ``nodes``; returns (parents, num_nodes)."""
    gen = torch.Generator().manual_seed(seed)
    parents = torch.full((batch, nodes), -1, dtype=torch.int64)
    num_nodes = (torch.randint(1, nodes + 1, (batch,), generator=gen) if ragged
                 else torch.full((batch,), nodes, dtype=torch.int64))
    for b in range(batch):
        for n in range(1, nodes):
            # Padding nodes get a harmless parent too (ignored by every op).
            parents[b, n] = int(torch.randint(0, n, (1,), generator=gen)) if n < num_nodes[b] else 0
    parents[:, 0] = -1
    return parents.to(device), num_nodes.to(device)


def tree_case(batch=3, nodes=9, vocab=30, *, with_q=True, seed=0, device="cpu", dtype=torch.float32,
              duplicate_siblings=True) -> Dict:
    gen = torch.Generator().manual_seed(seed)
    parents, num_nodes = random_parents(batch, nodes, seed, ragged=True)
    p = probs(batch, nodes, vocab, zeros=0.2, gen=gen)
    q = probs(batch, nodes, vocab, zeros=0.2, gen=gen) if with_q else None
    tokens = torch.where(torch.rand(batch, nodes, generator=gen) < 0.5,
                         p.argmax(-1).gather(1, parents.clamp_min(0)),
                         torch.randint(0, vocab, (batch, nodes), generator=gen))
    if duplicate_siblings:
        tokens[:, 2] = tokens[:, 1]  # node 2 repeats node 1's token (siblings when both hang off the root)
    return dict(
        p=p.to(device=device, dtype=dtype), q=None if q is None else q.to(device=device, dtype=dtype),
        tree_tokens=tokens.to(device), parents=parents.to(device),
        u_accept=torch.rand(batch, nodes, generator=gen).to(device),
        u_sample=torch.rand(batch, generator=gen).to(device), num_nodes=num_nodes.to(device),
    )


def one_hot_rows(tokens, vocab):
    return torch.nn.functional.one_hot(tokens, vocab).float()


def maybe(x: Optional[torch.Tensor], device):
    return None if x is None else x.to(device)


def method_kwargs(name: str, vocab: int, *, k: int = 4, seed: int = 1, embeddings: bool = False) -> Dict:
    """Keyword arguments that run rule ``name`` of the method table: its ``example`` parameters, a neighbour table
    when it needs one, and (``embeddings=True``) an embedding table when it takes one. Tests iterate over the table
    (``_methods.CHAIN_METHODS`` / ``TREE_METHODS``) with this, so a new rule is covered without editing them."""
    from specdec_kernels import _methods, reference

    method = _methods.METHODS[name]
    kw = dict(method.example)
    table = codebook(vocab, dim=4, seed=seed)
    if "neighbors" in method.needs:
        kw["neighbors"] = reference.neighbor_table(table, min(k, vocab - 1))
    if embeddings and "embeddings" in method.optional:
        kw["embeddings"] = torch.nn.functional.normalize(table, dim=-1)
    return kw
