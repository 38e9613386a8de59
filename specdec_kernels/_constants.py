"""Names and codes shared by every layer (mirrored once in csrc/checks.h)."""

NAMESPACE = "specdec_kernels"

#: verify_chain / verify_tree method names -> the integer codes of the op schemas.
METHOD_CODES = {"exact": 0, "gsd": 1, "lantern": 2}
CHAIN_METHODS = ("exact", "gsd", "lantern")
TREE_METHODS = ("exact", "lantern")

#: Padding value of accepted_nodes / retrieve_indices.
PAD_INDEX = -1

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")

#: Floating dtypes accepted for probabilities; all arithmetic runs in float32/float64 regardless.
PROB_DTYPES = ("float32", "float16", "bfloat16")
