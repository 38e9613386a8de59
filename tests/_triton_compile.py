"""Compile every Triton kernel family to a cubin for sm_90 without a GPU (ptxas ships with Triton), outside the
interpreter, so that GPU-only front-end, layout and ptxas errors show up on CPU machines too.

One subprocess (without ``TRITON_INTERPRET``) compiles all families once per test session; each per-op test file
checks its own op's families (``test_triton_compiles_for_sm90``).
"""

import functools
import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from specdec_kernels import _methods
    from specdec_kernels.triton import (build_tree, cspd_verify, gsd_group_mass, lantern_relaxed_mass,
                                        neighbor_table, verify_chain, verify_tree)
    from specdec_kernels.triton._common import rule_constexprs
    P, I64, I32, F64 = "*fp32", "*i64", "*i32", "*fp64"
    chain = dict(p_ptr="*bf16", p_buf_ptr=P, q_ptr="*bf16", q_buf_ptr=P, draft_ptr=I64, u_accept_ptr=P,
                 u_sample_ptr=P, num_drafts_ptr=I64, nbr_ptr=I32, emb_ptr=P, scratch_ptr=F64, accept_len_ptr=I64,
                 next_token_ptr=I64, u_draft_ptr=P, u_keep_ptr=P, u_init_ptr=P, update_ptr="*i8",
                 new_window_ptr=I64, new_q_ptr=P, first_init_ptr=I64, L="i32", V="i32", K="i32", D_EMB="i32",
                 budget_bits="i64", h_lo="i32", h_hi="i32", p_thr="fp32", d_thr="fp32", epsilon_bits="i64",
                 alpha_bits="i64", p_uncond_rows="i64", q_uncond_rows="i64", top_k="i32", scale_bits="i64",
                 temperature_bits="i64", top_p_bits="i64")
    tree = dict(p_ptr=P, p_buf_ptr=P, q_ptr=P, tok_ptr=I64, par_ptr=I64, u_accept_ptr=P, u_sample_ptr=P,
                num_nodes_ptr=I64, nbr_ptr=I32, scratch_ptr=F64, marker_ptr=I32, accepted_ptr=I64,
                accept_len_ptr=I64, next_token_ptr=I64, M="i32", V="i32", K="i32", budget_bits="i64",
                p_uncond_rows="i64", top_k="i32", scale_bits="i64", temperature_bits="i64", top_p_bits="i64")
    rule = lambda m: rule_constexprs(_methods.BY_CODE[m])  # noqa: E731
    off = dict(P_LOGITS=False, Q_LOGITS=False, P_CFG=False, Q_CFG=False, TOP_K=False, TOP_P=False, REFRESH=False,
               HAS_KEEP=False, HAS_INIT=False)
    logits = dict(off, P_LOGITS=True, P_CFG=True, TOP_K=True, TOP_P=True)
    blocks = dict(BLOCK_V=2048, BLOCK_K=128, BLOCK_L=16)
    # verify_chain: every rule on probability rows. The logits source adds the row processing to the same walk
    # (every rule's test is compiled above): one logits variant per op, with every processing step and draft logits
    # (GSD: the whole-row reader with embeddings), and the Jacobi refresh (coupled, random inits, q read). A logits
    # variant takes 30-80 s to compile on the 2-core machines, so the list stays short.
    cases = [("verify_chain", verify_chain._chain_kernel, chain,
              dict(rule(m), **off, HAS_Q=True, USE_LAMBDA=m == 2, HAS_EMB=m == 1, **blocks)) for m in (0, 1, 2, 3)]
    cases += [("verify_chain_logits", verify_chain._chain_kernel, chain,
               dict(rule(1), **dict(logits, Q_LOGITS=True, Q_CFG=True), HAS_Q=True, USE_LAMBDA=False, HAS_EMB=True,
                    **blocks))]
    cases += [("jacobi_step", verify_chain._chain_kernel, dict(chain, p_ptr=P, q_ptr=P),
               dict(rule(2), **dict(logits, REFRESH=True, HAS_KEEP=True, HAS_INIT=True), HAS_Q=True,
                    USE_LAMBDA=True, HAS_EMB=False, **blocks))]
    cases += [("verify_tree", verify_tree._tree_kernel, tree,
               dict(rule(m), **off, HAS_Q=m == 2, USE_LAMBDA=False, BLOCK_V=2048, BLOCK_K=128, BLOCK_M=64))
              for m in (0, 2)]
    cases += [("verify_tree_logits", verify_tree._tree_kernel, dict(tree, p_ptr="*fp16"),
               dict(rule(2), **logits, HAS_Q=True, USE_LAMBDA=True, BLOCK_V=2048, BLOCK_K=128, BLOCK_M=64))]
    cases += [
        ("build_tree", build_tree._build_tree_kernel, dict(par_ptr=I64, num_nodes_ptr=I64, mask_ptr="*u8",
                                                           depth_ptr=I64, paths_ptr=I64, stats_ptr=I64, M="i32"),
         dict(BLOCK_M=64)),
        ("neighbor_table", neighbor_table._normalize_kernel, dict(emb_ptr=P, out_ptr=P, N="i32", D="i32"),
         dict(BLOCK_R=256)),
        ("neighbor_table", neighbor_table._neighbor_table_kernel, dict(emb_ptr=P, out_ptr=I32, N="i32", D="i32",
                                                                       K="i32"), dict(BLOCK_I=2, BLOCK_K=1024)),
        ("neighbor_table", neighbor_table._mark_non_finite_rows_kernel,
         dict(codebook_ptr=P, out_ptr=I32, N="i32", D="i32", K="i32"), dict(BLOCK_R=64, BLOCK_K=64)),
        ("cspd_verify", cspd_verify._cspd_verify_kernel, dict(x_ptr=P, mu_q_ptr=P, sigma_q_ptr=P, mu_p_ptr=P,
                                                              sigma_p_ptr=P, s_q_ptr=P, s_p_ptr=P, u_accept_ptr=P,
                                                              u_prop_ptr=P, u_ar_ptr=P, tokens_ptr=P,
                                                              accepted_ptr="*u8", fallback_ptr="*u8",
                                                              status_ptr=I32, N="i32", D="i32", K="i32",
                                                              tau_bits="i64"),
         dict(BLOCK_N=16, BLOCK_D=16)),
        ("gsd_group_mass", gsd_group_mass._gsd_group_mass_kernel, dict(p_ptr=P, q_ptr=P, x_ptr=I64, emb_ptr=P,
                                                                      group_p_ptr=P, group_q_ptr=P, V="i32",
                                                                      D_EMB="i32", h_lo="i32", h_hi="i32",
                                                                      p_thr="fp32", d_thr="fp32"),
         dict(HAS_Q=True, HAS_EMB=True, BLOCK_V=2048)),
        ("lantern_relaxed_mass", lantern_relaxed_mass._lantern_relaxed_mass_kernel,
         dict(p_ptr="*fp16", x_ptr=I64, nbr_ptr=I32, p_tilde_ptr=P, merged_ptr=I32, V="i32", K="i32",
              budget_bits="i64"), dict(USE_LAMBDA=True, BLOCK_K=128)),
    ]
    for op, fn, sig, consts in cases:
        consts = {k: v for k, v in consts.items() if k in fn.arg_names}  # kernels that lack one (BLOCK_L) skip it
        sig = {**sig, **{k: "constexpr" for k in consts}}
        try:
            triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                           options={"enable_fp_fusion": False, "num_warps": 8})
            print("compiled", op, flush=True)
        except Exception as exc:  # report per op, keep compiling the others
            print("failed", op, repr(exc)[:2000].replace(chr(10), " "), flush=True)
""")


@functools.lru_cache(maxsize=1)
def _compile_all():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600,
                          check=False)


def check_triton_compiles_for_sm90(op: str) -> None:
    """Assert that every Triton kernel of ``op`` compiles for sm_90 (skips without Triton's NVIDIA backend)."""
    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError:
        pytest.skip("this Triton build has no NVIDIA backend")
    out = _compile_all()
    lines = [line for line in out.stdout.splitlines() if line.split(" ", 2)[1:2] == [op]]
    assert lines, f"the compile script did not reach {op}:\n{out.stderr[-4000:]}"
    failures = [line for line in lines if line.startswith("failed")]
    assert not failures, "\n".join(failures)
