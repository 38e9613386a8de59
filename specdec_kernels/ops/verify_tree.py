"""Public ops: tree buffers and tree verification (EAGLE-2 / SpecInfer recursive rejection, LANTERN)."""

from typing import Optional, Tuple

import torch

from .. import _validation as v
from .. import reference
from .._constants import METHOD_CODES, TREE_METHODS
from ._dispatch import run
from .verify_chain import _packed_params


def _default_num_nodes(parents: torch.Tensor, num_nodes: Optional[torch.Tensor]) -> torch.Tensor:
    if num_nodes is None:
        return torch.full((parents.shape[0],), parents.shape[1], dtype=torch.int64, device=parents.device)
    return num_nodes


def build_tree(
    parents: torch.Tensor,
    num_nodes: Optional[torch.Tensor] = None,
    *,
    backend: str = "auto",
    validate: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Build the attention mask, depths and root-to-leaf paths of a batch of padded draft trees
    (tree data model of Medusa, arXiv 2401.10774, and EAGLE-2, arXiv 2406.16858).

    Parameters
    ----------
    parents : ``(batch_size, num_nodes)`` int64
        ``parents[b, 0] = -1`` (node 0 is the root, the last committed token) and ``0 <= parents[b, n] < n``
        for every valid node, so ids are topological.
    num_nodes : ``(batch_size,)`` int64 in [1, num_nodes], optional
        Valid nodes per tree (ragged); the rest is padding. Default: all.

    Returns
    -------
    attn_mask : ``(batch_size, num_nodes, num_nodes)`` bool
        ``attn_mask[b, i, j]`` iff j == i or j is an ancestor of i. Padding nodes see only themselves.
    position_ids : ``(batch_size, num_nodes)`` int64
        Depth (root 0; padding 0); add the root's absolute position.
    retrieve_indices : ``(batch_size, P, D)`` int64
        Root-to-leaf path of every leaf (valid node without children) in ascending leaf id, -1 padded;
        P = most leaves and D = deepest depth + 1 over the batch (data-dependent: one host synchronisation).

    Raises
    ------
    ValueError
        Wrong shape or dtype, ``num_nodes`` out of range, or malformed parents.

    Examples
    --------
    >>> mask, pos, paths = build_tree(torch.tensor([[-1, 0, 0, 1]]))
    >>> pos.tolist(), paths.tolist()
    ([[0, 1, 1, 2]], [[[0, 2, -1], [0, 1, 3]]])
    """
    num_nodes = _default_num_nodes(parents, num_nodes)
    v.tree_parent_shapes(parents, num_nodes)
    if validate:
        checks = v.new_checks()
        nodes = parents.shape[1]
        checks.add((num_nodes >= 1) & (num_nodes <= nodes), f"num_nodes must lie in [1, {nodes}]")
        v.check_parent_values(checks, parents, torch.arange(nodes, device=parents.device) < num_nodes[:, None])
        checks.run()
    return run(
        "build_tree", backend, parents.device, lambda: reference.build_tree(parents, num_nodes), (parents, num_nodes)
    )


def verify_tree(
    p: torch.Tensor,
    q: Optional[torch.Tensor],
    tree_tokens: torch.Tensor,
    parents: torch.Tensor,
    u_accept: torch.Tensor,
    u_sample: torch.Tensor,
    *,
    num_nodes: Optional[torch.Tensor] = None,
    method: str = "exact",
    neighbors: Optional[torch.Tensor] = None,
    delta: Optional[float] = None,
    lam: Optional[float] = None,
    backend: str = "auto",
    validate: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Verify a batch of draft trees by recursive rejection over siblings (SpecInfer, arXiv 2305.09781;
    EAGLE-2, arXiv 2406.16858), optionally LANTERN-relaxed (arXiv 2410.03355, 2502.06352).

    Semantics: starting at the root with ``r = p[b, 0]``, the children of the current node are tried in
    ascending id (a repeated sibling token is skipped). Child c with token t is *accepted* iff
    ``u_accept[b, c] * q'(t) < r(t)`` (exact) or ``p~(t) > 0 and u * q'(t) <= p~(t)`` (lantern, ``p~`` computed
    on r); acceptance descends to c with ``r = p[b, c]``. A rejection replaces r by ``norm(max(0, r~ - q'))``
    (``r~``: r with the merged neighbours' mass moved onto t; ``q'`` one-hot at t when q is None, else
    ``q[b, cur]`` without the earlier-tried tokens, renormalised; a zero residual falls back to ``p[b, cur]``).
    When all children fail, the *recovered* token is sampled from r; at a childless node the *bonus*
    token is sampled from ``p[b, cur]``. ``"exact"`` is lossless for q None (deterministic siblings) and for
    siblings drawn without replacement from ``q[b, parent]``.

    Parameters
    ----------
    p : ``(batch_size, num_nodes, vocab_size)`` float32/float16/bfloat16
        ``p[b, n]`` is the target distribution for the children of node n.
    q : same shape and dtype, or None
        ``q[b, n]``: draft distribution n's children were drawn from (without replacement); None means
        deterministic top-k drafts (q = 1).
    tree_tokens : ``(batch_size, num_nodes)`` int64
        Token of every node; node 0 is the root (the last committed token).
    parents : ``(batch_size, num_nodes)`` int64, as in :func:`build_tree`.
    u_accept : ``(batch_size, num_nodes)`` float32 in [0, 1)
        ``u_accept[b, n]`` is used only by node n's test (column 0 is unused).
    u_sample : ``(batch_size,)`` float32 in [0, 1)
    num_nodes : ``(batch_size,)`` int64, optional (ragged trees; default all).
    method : {"exact", "lantern"}; neighbors, delta, lam : as in :func:`verify_chain`.
    backend, validate : as in :func:`verify_chain`.

    Returns
    -------
    accepted_nodes : ``(batch_size, num_nodes - 1)`` int64
        Accepted node ids below the root from the top down, -1 padded (fixed width: no host sync).
    accept_len : ``(batch_size,)`` int64
    next_token : ``(batch_size,)`` int64, the recovered or bonus token.

    Raises
    ------
    ValueError
        As :func:`verify_chain`, plus malformed parents and ``num_nodes`` outside [1, num_nodes].

    Examples
    --------
    >>> p = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]])    # root with children 1 (token 1), 2 (token 0)
    >>> verify_tree(p, None, torch.tensor([[0, 1, 0]]), torch.tensor([[-1, 0, 0]]),
    ...             torch.zeros(1, 3), torch.tensor([0.9]))
    (tensor([[ 1, -1]]), tensor([1]), tensor([0]))
    """
    num_nodes = _default_num_nodes(parents, num_nodes)
    v.method_params(method, TREE_METHODS, neighbors=neighbors, delta=delta, lam=lam, embeddings=None, gsd_given=False)
    _, _, vocab = v.tree_shapes(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes)
    if neighbors is not None:
        v.neighbor_shapes(neighbors, vocab, p.device)
    if validate:
        v.check_tree_values(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, neighbors)
    delta = None if delta is None else float(delta)
    lam = None if lam is None else float(lam)
    return run(
        "verify_tree",
        backend,
        p.device,
        lambda: reference.verify_tree(
            p, q, tree_tokens, parents, u_accept, u_sample, num_nodes=num_nodes, method=method, neighbors=neighbors,
            delta=delta, lam=lam,
        ),
        (p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, METHOD_CODES[method], neighbors,
         _packed_params(method, delta, lam, 0, 0, 0.0, 0.0)),
    )
