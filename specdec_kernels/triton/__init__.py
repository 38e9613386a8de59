"""Triton kernels, one op per module: ``specdec_kernels.triton.<op>.<op>_triton``.

Each launcher takes exactly the op-schema arguments (``csrc/ops.cpp``) in schema order and returns the outputs of
the registered op. The public wrappers validate inputs and route ``backend="triton"`` here
(``specdec_kernels.ops._dispatch``); nothing is imported at package import time, so this package can be imported
without Triton. On CPU tensors the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``).
"""
