"""The Triton backend as registered ops: ``torch.ops.specdec_kernels_triton.<op>``, one per launcher.

Each op has the schema of the C++ op of the same name (``csrc/ops.cpp``) and calls its launcher, which is imported
here by name (no import strings), only when the op first runs: registering the ops does not import Triton. As
registered ops with fake kernels (``specdec_kernels/_fake.py``) they trace under ``torch.compile(fullgraph=True)``
without a graph break and are covered by ``torch.library.opcheck``; every launcher's outputs are fresh tensors.
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._constants import TRITON_NAMESPACE


def _op(name: str):
    return torch.library.custom_op(f"{TRITON_NAMESPACE}::{name}", mutates_args=())


@_op("verify_chain")
def verify_chain(p: Tensor, q: Optional[Tensor], draft: Tensor, u_accept: Tensor, u_sample: Tensor,
                 num_drafts: Tensor, method: int, neighbors: Optional[Tensor], embeddings: Optional[Tensor],
                 params: List[float]) -> Tuple[Tensor, Tensor]:
    from .verify_chain import verify_chain_triton

    return verify_chain_triton(p, q, draft, u_accept, u_sample, num_drafts, method, neighbors, embeddings, params)


@_op("verify_tree")
def verify_tree(p: Tensor, q: Optional[Tensor], tree_tokens: Tensor, parents: Tensor, u_accept: Tensor,
                u_sample: Tensor, num_nodes: Tensor, method: int, neighbors: Optional[Tensor],
                params: List[float]) -> Tuple[Tensor, Tensor, Tensor]:
    from .verify_tree import verify_tree_triton

    return verify_tree_triton(p, q, tree_tokens, parents, u_accept, u_sample, num_nodes, method, neighbors, params)


@_op("build_tree")
def build_tree(parents: Tensor, num_nodes: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    from .build_tree import build_tree_triton

    return build_tree_triton(parents, num_nodes)


@_op("lantern_relaxed_mass")
def lantern_relaxed_mass(p: Tensor, x: Tensor, neighbors: Tensor, delta: Optional[float],
                         lam: Optional[float]) -> Tuple[Tensor, Tensor]:
    from .lantern_relaxed_mass import lantern_relaxed_mass_triton

    return lantern_relaxed_mass_triton(p, x, neighbors, delta, lam)


@_op("gsd_group_mass")
def gsd_group_mass(p: Tensor, q: Optional[Tensor], x: Tensor, embeddings: Optional[Tensor], h_lo: int, h_hi: int,
                   p_thr: float, d_thr: float) -> Tuple[Tensor, Tensor]:
    from .gsd_group_mass import gsd_group_mass_triton

    return gsd_group_mass_triton(p, q, x, embeddings, h_lo, h_hi, p_thr, d_thr)


@_op("neighbor_table")
def neighbor_table(codebook: Tensor, k: int, normalize: bool) -> Tensor:
    from .neighbor_table import neighbor_table_triton

    return neighbor_table_triton(codebook, k, normalize)


@_op("cspd_verify")
def cspd_verify(x: Tensor, mu_q: Tensor, sigma_q: Tensor, mu_p: Tensor, sigma_p: Tensor, s_q: Tensor, s_p: Tensor,
                u_accept: Tensor, u_prop: Tensor, u_ar: Tensor,
                inner_temperature: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    from .cspd_verify import cspd_verify_triton

    return cspd_verify_triton(x, mu_q, sigma_q, mu_p, sigma_p, s_q, s_p, u_accept, u_prop, u_ar, inner_temperature)


@_op("verify_chain_logits")
def verify_chain_logits(logits: Tensor, draft_logits: Optional[Tensor], draft_probs: Optional[Tensor], draft: Tensor,
                        u_accept: Tensor, u_sample: Tensor, num_drafts: Tensor, cfg_scale: Optional[float],
                        temperature: float, top_k: int, top_p: float, method: int, neighbors: Optional[Tensor],
                        embeddings: Optional[Tensor], params: List[float]) -> Tuple[Tensor, Tensor]:
    from .verify_logits import verify_chain_logits_triton

    return verify_chain_logits_triton(logits, draft_logits, draft_probs, draft, u_accept, u_sample, num_drafts,
                                      cfg_scale, temperature, top_k, top_p, method, neighbors, embeddings, params)


@_op("verify_tree_logits")
def verify_tree_logits(logits: Tensor, draft_probs: Optional[Tensor], tree_tokens: Tensor, parents: Tensor,
                       u_accept: Tensor, u_sample: Tensor, num_nodes: Tensor, cfg_scale: Optional[float],
                       temperature: float, top_k: int, top_p: float, method: int, neighbors: Optional[Tensor],
                       params: List[float]) -> Tuple[Tensor, Tensor, Tensor]:
    from .verify_logits import verify_tree_logits_triton

    return verify_tree_logits_triton(logits, draft_probs, tree_tokens, parents, u_accept, u_sample, num_nodes,
                                     cfg_scale, temperature, top_k, top_p, method, neighbors, params)


@_op("jacobi_step")
def jacobi_step(logits: Tensor, window: Tensor, q: Optional[Tensor], u_accept: Tensor, u_sample: Tensor,
                u_draft: Tensor, u_keep: Optional[Tensor], u_init: Optional[Tensor], num_drafts: Tensor,
                update: Tensor, cfg_scale: Optional[float], temperature: float, top_k: int, top_p: float, method: int,
                neighbors: Optional[Tensor], embeddings: Optional[Tensor],
                params: List[float]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    from .jacobi_step import jacobi_step_triton

    return jacobi_step_triton(logits, window, q, u_accept, u_sample, u_draft, u_keep, u_init, num_drafts, update,
                              cfg_scale, temperature, top_k, top_p, method, neighbors, embeddings, params)


#: Op name -> the registered Triton op (the dispatch table of ``specdec_kernels/ops/_dispatch.py``).
OPS = {
    "verify_chain": verify_chain,
    "verify_tree": verify_tree,
    "build_tree": build_tree,
    "lantern_relaxed_mass": lantern_relaxed_mass,
    "gsd_group_mass": gsd_group_mass,
    "neighbor_table": neighbor_table,
    "cspd_verify": cspd_verify,
    "verify_chain_logits": verify_chain_logits,
    "verify_tree_logits": verify_tree_logits,
    "jacobi_step": jacobi_step,
}
