"""Public ops: tree buffers and tree verification (EAGLE-2 / SpecInfer recursive rejection, LANTERN)."""

from typing import Optional, Tuple

import torch

from .. import _methods
from .. import _validation as v
from .. import reference
from ._dispatch import run


def _default_num_nodes(parents: torch.Tensor, num_nodes: Optional[torch.Tensor]) -> torch.Tensor:
    v.tree_parent_shapes(parents, None)  # a 1-D or non-tensor parents is a ValueError, not an IndexError
    if num_nodes is None:
        return torch.full((parents.shape[0],), parents.shape[1], dtype=torch.int64, device=parents.device)
    return num_nodes


def build_tree(
    parents: torch.Tensor,
    num_nodes: Optional[torch.Tensor] = None,
    *,
    backend: str = "auto",
    validate: Optional[bool] = None,
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

    backend : {"auto", "reference", "cpu", "triton", "cuda"}
    validate : None (default), True or False
        Every backend checks each row and never walks a bad one (so cyclic parents cannot hang it): a row with
        ``num_nodes[b]`` outside [1, M] (code 1) or malformed parents among its valid nodes (code 3) comes back with
        ``position_ids[b, :] = -code``, an all-False mask row and no paths (it does not count towards P and D).
        ``None``: shape and dtype checks, then a ValueError naming the argument and row for a bad row (one check
        over B values; CUDA / ``torch.compile``: a device assertion). ``True``: the same checks before the
        kernel (one host synchronisation). ``False``: bad rows are only reported in the outputs.

    Raises
    ------
    ValueError
        Wrong shape or dtype (1-D parents included); ``num_nodes`` out of range or malformed parents (unless
        ``validate=False``).

    Examples
    --------
    >>> mask, pos, paths = build_tree(torch.tensor([[-1, 0, 0, 1]]))
    >>> pos.tolist(), paths.tolist()
    ([[0, 1, 1, 2]], [[[0, 2, -1], [0, 1, 3]]])
    """
    validate = v.validate_level(validate)
    v.tree_parent_shapes(parents, num_nodes)
    num_nodes = _default_num_nodes(parents, num_nodes)
    if validate:
        checks = v.new_checks()
        nodes = parents.shape[1]
        checks.add((num_nodes >= 1) & (num_nodes <= nodes), f"num_nodes must lie in [1, {nodes}]")
        v.check_parent_values(checks, parents, torch.arange(nodes, device=parents.device) < num_nodes[:, None])
        checks.run()
    mask, depth, paths = run(
        "build_tree", backend, parents.device, lambda: reference.build_tree(parents, num_nodes), (parents, num_nodes)
    )
    if validate is not False:
        v.raise_on_bad_rows("build_tree", depth[:, 0], validate)
    return mask, depth, paths


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
    validate: Optional[bool] = None,
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
    u_accept : ``(batch_size, num_nodes)`` float32 in [0, 1] (docs/ALGORITHMS.md §3.1: 1.0 is valid)
        ``u_accept[b, n]`` is used only by node n's test (column 0 is unused).
    u_sample : ``(batch_size,)`` float32 in [0, 1] (docs/ALGORITHMS.md §3.1: 1.0 is valid)
    num_nodes : ``(batch_size,)`` int64, optional (ragged trees; default all).
    method : {"exact", "lantern"}; neighbors, delta, lam : as in :func:`verify_chain`.
    backend : as in :func:`verify_chain`.
    validate : None (default), True or False, as in :func:`verify_chain`. Bad rows (every backend, whatever
        ``validate`` says) come back with ``accepted_nodes[b] = -1``, ``accept_len[b] = 0`` and
        ``next_token[b] = -code``: 1 ``num_nodes[b]`` outside [1, M]; 2 a valid node's token outside [0, V) (the
        root's included); 3 malformed parents among the valid nodes; 4 (lantern) a bad neighbour id in a valid
        node token's table row; 5 ``u_accept[b, n]`` of a valid node (column 0 included) or ``u_sample[b]``
        outside [0, 1]; 6 a NaN / inf / negative tested entry ``p[b, cur, t]`` / ``q[b, cur, t]``, or in the
        final node's row ``p[b, cur]`` (and ``q[b, cur]`` after a rejection), or that row has no mass.
        ``None`` raises a ValueError naming the argument and row (CUDA / compile: a device assertion);
        ``True`` adds the full value checks before the kernel; ``False`` only reports.

    Returns
    -------
    accepted_nodes : ``(batch_size, num_nodes - 1)`` int64
        Accepted node ids below the root from the top down, -1 padded (fixed width: no host sync).
    accept_len : ``(batch_size,)`` int64
    next_token : ``(batch_size,)`` int64, the recovered or bonus token.

    Raises
    ------
    ValueError
        As :func:`verify_chain`, plus malformed parents and ``num_nodes`` outside [1, num_nodes] (unless
        ``validate=False``).

    Examples
    --------
    >>> p = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]])    # root with children 1 (token 1), 2 (token 0)
    >>> verify_tree(p, None, torch.tensor([[0, 1, 0]]), torch.tensor([[-1, 0, 0]]),
    ...             torch.zeros(1, 3), torch.tensor([0.9]))
    (tensor([[ 1, -1]]), tensor([1]), tensor([0]))
    """
    validate = v.validate_level(validate)
    num_nodes = _default_num_nodes(parents, num_nodes)
    _, _, vocab = v.tree_shapes(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes)
    code, params = v.method_params(method, "verify_tree", vocab, neighbors=neighbors, delta=delta, lam=lam)
    if neighbors is not None:
        v.neighbor_shapes(neighbors, vocab, p.device)
    if validate:
        v.check_tree_values(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, neighbors)
    accepted_nodes, accept_len, next_token = run(
        "verify_tree",
        backend,
        p.device,
        lambda: reference.verify_tree(
            p, q, tree_tokens, parents, u_accept, u_sample, num_nodes=num_nodes, method=method, neighbors=neighbors,
            **_methods.unpack_params(_methods.METHODS[method], params),
        ),
        (p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, code, neighbors, params),
    )
    if validate is not False:
        v.raise_on_bad_rows("verify_tree", next_token, validate)
    return accepted_nodes, accept_len, next_token
