"""Names shared by every layer that are not about methods (methods and row codes: ``_methods.py``)."""

NAMESPACE = "specdec_kernels"

#: Namespace of the Triton backend's registered ops (same schemas as ``NAMESPACE``'s).
TRITON_NAMESPACE = "specdec_kernels_triton"

#: Padding value of accepted_nodes / retrieve_indices.
PAD_INDEX = -1

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")

#: Floating dtypes accepted for probabilities; all arithmetic runs in float32/float64 regardless.
PROB_DTYPES = ("float32", "float16", "bfloat16")
