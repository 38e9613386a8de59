"""The one table of verification methods (mirrored once in ``csrc/methods.h``).

Each :class:`Method` holds its name, its integer code in the op schemas, whether ``verify_chain`` /
``verify_tree`` support it, its parameters with their defaults and checks, and how they pack into the
``float[] params`` argument of the ``verify_chain`` / ``verify_tree`` schemas (docs/ALGORITHMS.md §3.2-3.4):

=========  ====  =====  ====  ============================================  =====================================
method     code  chain  tree  parameters (defaults)                         params layout
=========  ====  =====  ====  ============================================  =====================================
exact      0     yes    yes   none                                          ``[]``
gsd        1     yes    no    rank_window (7, 6), p_thr 0.15, d_thr 0.5     ``[h_lo, h_hi, p_thr, d_thr]``
lantern    2     yes    yes   exactly one of delta in [0, 1] or lam >= 1    ``[use_lambda (0 or 1), budget]``
typical    3     yes    no    epsilon 0.09, alpha 0.3                       ``[epsilon, alpha]``
=========  ====  =====  ====  ============================================  =====================================

Row status codes (``ROW_*``, docs/ALGORITHMS.md §3.8) are reported by every backend as
``next_token[b] = -code`` for a row whose inputs break a structural precondition; they live here too because the
wrappers translate them into error messages. The Triton kernels read codes from this module as ``tl.constexpr``
globals (``specdec_kernels/triton/_common.py``); nothing else spells a method code as a number.

Adding a method: one :class:`Method` entry (parameters, ``pack``, traits), its row in ``csrc/methods.h``'s traits
table, and its acceptance test in each backend's walk (docs/CONTRIBUTING.md counts the files).
"""

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple


def _fail(message: str):
    raise ValueError(message)


def check_number(value, name: str, low: float, high: float = math.inf) -> float:
    """A real number (not a bool) in ``[low, high]`` (NaN is outside every range); returns it as a float."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (low <= value <= high):
        _fail(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def check_window(value, name: str = "rank_window") -> Tuple[int, int]:
    """A pair of non-negative ints ``(h_lo, h_hi)``."""
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 0 for h in value)
    ):
        _fail(f"{name} must be a pair of non-negative ints (h_lo, h_hi), got {value!r}")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class Param:
    """One method parameter: its keyword name, default (``None``: no default) and check (returns the clean value)."""

    name: str
    default: object
    check: Callable[[object], object]
    doc: str = ""


@dataclass(frozen=True)
class Method:
    """One verification method: name, schema code, supported ops, parameters and their packing."""

    name: str
    code: int
    chain: bool
    tree: bool
    params: Tuple[Param, ...] = ()
    #: (clean parameter values by name, vocab_size) -> the schema's ``params`` list.
    pack: Callable[[Mapping[str, object], int], List[float]] = field(default=lambda values, vocab: [])
    #: The schema's ``params`` list -> keyword values (None: one float per parameter, in ``params`` order).
    unpack: Optional[Callable[[Sequence[float]], Dict[str, object]]] = None
    #: Cross-parameter rule on the raw keyword values (``None`` = not given); raises ValueError.
    check_all: Optional[Callable[[Mapping[str, object]], None]] = None
    #: Tensor inputs the method needs (``"neighbors"``) or may take (``"embeddings"``, chain only).
    needs: Tuple[str, ...] = ()
    optional: Tuple[str, ...] = ()
    #: Traits the kernels branch on (``csrc/methods.h`` MethodTraits; a test compares the two tables):
    #: the test reads the whole target row (GSD's ranking, typical's entropy) ...
    reads_whole_row: bool = False
    #: ... the test compares ``u_accept`` (typical's test is deterministic) ...
    uses_uniform: bool = True
    #: ... and what the recovered token is sampled from: ``"over_q"`` max(0, p - q), ``"over_relaxed"``
    #: max(0, p~_x - q) with the merged neighbours' mass moved onto x, or ``"target"`` p itself.
    residual: str = "over_q"
    #: Parameter values that exercise the rule where its defaults alone cannot (LANTERN has no default budget); the
    #: table-driven tests (parity, fuzz, bounds, logits, Jacobi) build every rule's call from this and ``needs``.
    example: Mapping[str, object] = field(default_factory=dict)

    @property
    def param_names(self) -> Tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def num_params(self) -> int:
        """Length of the packed ``params`` list."""
        return len(self.pack({p.name: p.default for p in self.params}, 1))


def _lantern_rule(values: Mapping[str, object]):
    if (values.get("delta") is None) == (values.get("lam") is None):
        _fail("LANTERN needs exactly one of delta (TV budget in [0, 1]) or lam (ratio >= 1)")


def _lantern_pack(values: Mapping[str, object], vocab: int) -> List[float]:
    lam = values.get("lam")
    return [1.0, float(lam)] if lam is not None else [0.0, float(values.get("delta") or 0.0)]


def _gsd_pack(values: Mapping[str, object], vocab: int) -> List[float]:
    h_lo, h_hi = gsd_window(*values["rank_window"], vocab)
    return [float(h_lo), float(h_hi), float(values["p_thr"]), float(values["d_thr"])]


EXACT = Method("exact", 0, chain=True, tree=True)
GSD = Method(
    "gsd", 1, chain=True, tree=False,
    params=(
        Param("rank_window", (7, 6), check_window, "(h_lo, h_hi): ranks below / above the draft in its window"),
        Param("p_thr", 0.15, lambda v: check_number(v, "p_thr", 0.0), "probability-difference threshold"),
        Param("d_thr", 0.5, lambda v: check_number(v, "d_thr", 0.0), "squared-distance threshold"),
    ),
    pack=_gsd_pack,
    unpack=lambda params: {"rank_window": (int(params[0]), int(params[1])), "p_thr": float(params[2]),
                           "d_thr": float(params[3])},
    optional=("embeddings",),
    reads_whole_row=True,
)
LANTERN = Method(
    "lantern", 2, chain=True, tree=True,
    params=(
        Param("delta", None, lambda v: check_number(v, "delta", 0.0, 1.0), "TV budget (LANTERN)"),
        Param("lam", None, lambda v: check_number(v, "lam", 1.0), "ratio budget (LANTERN++)"),
    ),
    pack=_lantern_pack,
    unpack=lambda params: ({"delta": None, "lam": float(params[1])} if params[0] != 0.0
                           else {"delta": float(params[1]), "lam": None}),
    check_all=_lantern_rule,
    needs=("neighbors",),
    residual="over_relaxed",
    example={"delta": 0.3},
)

TYPICAL = Method(
    "typical", 3, chain=True, tree=False,
    params=(
        Param("epsilon", 0.09, lambda v: check_number(v, "epsilon", 0.0), "hard threshold on p(x) (Medusa's 0.09)"),
        Param("alpha", 0.3, lambda v: check_number(v, "alpha", 0.0), "entropy-scaled threshold factor (Medusa's 0.3)"),
    ),
    pack=lambda values, vocab: [float(values["epsilon"]), float(values["alpha"])],
    reads_whole_row=True,
    uses_uniform=False,
    residual="target",
)

#: Every method by name, in code order.
METHODS: Dict[str, Method] = {m.name: m for m in (EXACT, GSD, LANTERN, TYPICAL)}
BY_CODE: Dict[int, Method] = {m.code: m for m in METHODS.values()}
CHAIN_METHODS: Tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.chain)
TREE_METHODS: Tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.tree)
METHOD_CODES: Dict[str, int] = {name: m.code for name, m in METHODS.items()}

# Codes as module constants for the kernels (Triton mirrors them as tl.constexpr).
EXACT_CODE = EXACT.code
GSD_CODE = GSD.code
LANTERN_CODE = LANTERN.code
TYPICAL_CODE = TYPICAL.code

#: Residual kinds in ``csrc/methods.h`` order (``Residual``).
RESIDUALS: Tuple[str, ...] = ("over_q", "over_relaxed", "target")


def traits_vector(method: Optional[Method]) -> List[int]:
    """The traits of ``method`` in the order the C++ ``method_info`` op reports them (None: an unknown code):
    known, chain, tree, num_params, reads_whole_row, uses_uniform, needs_neighbors, takes_embeddings, residual."""
    if method is None:
        return [0] * 9
    return [1, int(method.chain), int(method.tree), method.num_params, int(method.reads_whole_row),
            int(method.uses_uniform), int("neighbors" in method.needs), int("embeddings" in method.optional),
            RESIDUALS.index(method.residual)]


def default(method: Method, name: str):
    """The default of parameter ``name`` of ``method`` (the one place defaults live)."""
    for param in method.params:
        if param.name == name:
            return param.default
    raise KeyError(f"method {method.name!r} has no parameter {name!r}")

# ------------------------------------------------------------------------------------------ row status codes

ROW_OK = 0
ROW_BAD_COUNT = 1  # num_drafts[b] outside [0, L] (tree: num_nodes[b] outside [1, M])
ROW_BAD_ID = 2  # a used draft / valid node token outside [0, V)
ROW_BAD_PARENTS = 3  # tree: parents[b, 0] != -1 or parents[b, n] outside [0, n) for a valid node
ROW_BAD_NEIGHBOR = 4  # lantern: a neighbour id of a used token outside [0, V) or equal to the token
ROW_BAD_UNIFORM = 5  # a uniform the row uses outside [0, 1) (NaN included)
ROW_BAD_PROB = 6  # a probability read is NaN / inf / negative, or the sampled row has zero mass
ROW_BAD_METHOD = 7  # a method code the kernel does not implement (the wrappers refuse it before any kernel runs)

#: What each code means, phrased for an error message: (argument, problem).
ROW_CODES: Dict[int, Tuple[str, str]] = {
    ROW_BAD_COUNT: ("num_drafts / num_nodes", "is outside its range ([0, L] for num_drafts, [1, M] for num_nodes)"),
    ROW_BAD_ID: ("draft / tree_tokens / x", "holds an id outside [0, vocab_size) at a used position"),
    ROW_BAD_PARENTS: ("parents", "is malformed (parents[b, 0] must be -1 and 0 <= parents[b, n] < n for valid nodes)"),
    ROW_BAD_NEIGHBOR: ("neighbors", "lists an id outside [0, vocab_size), or a code as its own neighbour, in the row "
                       "of a used token"),
    ROW_BAD_UNIFORM: ("u_accept / u_sample", "holds a value outside [0, 1) (or NaN) that the row uses"),
    ROW_BAD_PROB: ("p / q", "holds a NaN, inf or negative probability that the row reads, or the row sampled from "
                   "has zero total mass"),
    ROW_BAD_METHOD: ("method", "is a code this kernel does not implement"),
}


def get(name: str, op: str = "verify_chain") -> Method:
    """The method called ``name``, checked to be supported by ``op`` (``"verify_chain"`` or ``"verify_tree"``)."""
    allowed = CHAIN_METHODS if op == "verify_chain" else TREE_METHODS
    if name not in allowed:
        _fail(f"method must be one of {allowed}, got {name!r}")
    return METHODS[name]


def pack_params(method: Method, given: Mapping[str, object], tensors: Mapping[str, object], vocab: int
                ) -> List[float]:
    """Check ``given`` (keyword -> value or None) for ``method`` and pack them into the schema's ``params`` list.

    Rejects parameters and tensor inputs that another method owns (they would be silently ignored), missing
    required tensors, values outside their ranges and broken cross-parameter rules. ``tensors`` maps the optional
    tensor inputs (``neighbors``, ``embeddings``) to the caller's values. GSD windows are capped at
    ``vocab - 1`` (:func:`gsd_window`).
    """
    foreign = [name for name, value in given.items() if value is not None and name not in method.param_names]
    if foreign:
        owners = sorted({m.name for m in METHODS.values() for n in foreign if n in m.param_names})
        _fail(f"{' / '.join(foreign)} only apply to method {' / '.join(repr(o) for o in owners)}, not {method.name!r}")
    for name, value in tensors.items():
        if value is not None and name not in method.needs + method.optional:
            owners = sorted(m.name for m in METHODS.values() if name in m.needs + m.optional)
            _fail(f"{name} only apply to method {' / '.join(repr(o) for o in owners)}, not {method.name!r}")
    for name in method.needs:
        if tensors.get(name) is None:
            _fail(f"method {method.name!r} needs {name} (see specdec_kernels.neighbor_table)")
    if method.check_all is not None:
        method.check_all(given)
    clean = {}
    for param in method.params:
        value = given.get(param.name)
        if value is None:
            clean[param.name] = param.default
        else:
            clean[param.name] = param.check(value)
    return method.pack(clean, vocab)


def unpack_params(method: Method, params: Sequence[float]) -> Dict[str, object]:
    """Inverse of :func:`pack_params` for the reference and the kernels' launchers: the method's keyword values
    (``rank_window`` as ints; ``delta`` / ``lam`` with the unused one ``None``). Raises on a wrong length."""
    params = list(params)
    if len(params) != method.num_params:
        _fail(f"params for method {method.name!r} must have {method.num_params} entries, got {len(params)}")
    if method.unpack is not None:
        return method.unpack(params)
    return {param.name: float(value) for param, value in zip(method.params, params)}


def gsd_window(h_lo: int, h_hi: int, vocab: int) -> Tuple[int, int]:
    """GSD's window clamped to the vocabulary: a window never reaches further than ``vocab - 1`` ranks, so wider
    windows change nothing and are capped before any kernel loops over them."""
    cap = max(int(vocab) - 1, 0)
    return min(int(h_lo), cap), min(int(h_hi), cap)
