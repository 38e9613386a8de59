"""The registry of decoding methods: one :func:`register` call per method, read by :func:`make_method`, the
demo, the sweep and the ``specdec`` CLI.

A new method is one class (a :class:`~.base.ChainMethod` or :class:`~.tree.TreeMethod` subclass with a unique
``name``) plus one ``register(...)`` line in :mod:`specdec.decoding.methods`; nothing else lists methods.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Sequence, Tuple, Union

#: Resources a method may need, passed to its constructor positionally in the order the spec lists them.
RESOURCES = ("draft_model", "head", "codebook")

#: Order of the sweep's sections: relaxation budgets, then Jacobi inits, then group sizes.
SWEEP_KINDS = ("budget", "init", "group")


@dataclass(frozen=True)
class SweepKnob:
    """One knob ``specdec sweep`` turns for a method.

    label : the knob's name in the sweep table (``"delta"``, ``"G"``).
    values : a :class:`specdec.experiments.sweep.SweepConfig` field holding the values (``"deltas"``), or the
        values themselves.
    options : value -> constructor options (``lambda d: {"delta": d}``).
    kind : one of :data:`SWEEP_KINDS`; fixes where the knob's points sit in the sweep.
    family : the family name in the sweep table (default: the method's name).
    """

    label: str
    values: Union[str, Sequence]
    options: Callable[[object], dict]
    kind: str = "budget"
    family: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its class, what its constructor needs, and how it is described and exercised."""

    name: str
    cls: type
    needs: Tuple[str, ...]
    exact: bool
    drafts: str
    verification: str
    demo: bool
    sweep: Tuple[SweepKnob, ...]

    def build(self, resources: Mapping[str, object], options: Mapping[str, object]):
        missing = [r for r in self.needs if resources.get(r) is None]
        if missing:
            raise ValueError(f"method {self.name!r} needs {', '.join(missing)}")
        return self.cls(*(resources[r] for r in self.needs), **options)


REGISTRY: Dict[str, MethodSpec] = {}


def register(cls: type, *, exact: bool, drafts: str, verification: str, needs: Sequence[str] = (),
             demo: bool = True, sweep: Sequence[SweepKnob] = ()) -> MethodSpec:
    """Register ``cls`` under ``cls.name``.

    exact : whether the method preserves the target distribution.
    drafts, verification : one line each for the method table (:func:`method_table`).
    needs : resources from :data:`RESOURCES` its constructor takes positionally, in this order.
    demo : whether ``specdec demo`` runs it by default (registration order is the demo's order).
    sweep : knobs ``specdec sweep`` turns for it.
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or name == "method":
        raise ValueError(f"{cls.__name__} needs a class attribute 'name'")
    if name in REGISTRY:
        raise ValueError(f"method {name!r} is already registered (by {REGISTRY[name].cls.__name__})")
    unknown = [r for r in needs if r not in RESOURCES]
    if unknown:
        raise ValueError(f"needs must be among {RESOURCES}, got {unknown}")
    bad_kinds = [k.kind for k in sweep if k.kind not in SWEEP_KINDS]
    if bad_kinds:
        raise ValueError(f"sweep knob kinds must be among {SWEEP_KINDS}, got {bad_kinds}")
    spec = MethodSpec(name, cls, tuple(needs), bool(exact), drafts, verification, bool(demo), tuple(sweep))
    REGISTRY[name] = spec
    return spec


def make_method(name: str, *, draft_model=None, head=None, codebook=None, **options):
    """Build a registered method by name; ``draft_model`` (sd), ``head`` (tree methods) and ``codebook`` (gsd,
    lantern, lantern++) go to the methods that need them, ``options`` to the constructor."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(REGISTRY)}")
    resources = {"draft_model": draft_model, "head": head, "codebook": codebook}
    return REGISTRY[name].build(resources, options)


def method_names() -> Tuple[str, ...]:
    """Every registered method, in registration order."""
    return tuple(REGISTRY)


def demo_methods() -> Tuple[str, ...]:
    """The methods ``specdec demo`` runs by default, in registration order (``ar`` first)."""
    return tuple(name for name, spec in REGISTRY.items() if spec.demo)


def sweep_knobs() -> List[Tuple[str, SweepKnob]]:
    """``(method name, knob)`` for every sweep knob, ordered by :data:`SWEEP_KINDS`, then registration order."""
    pairs = [(name, knob) for name, spec in REGISTRY.items() for knob in spec.sweep]
    return sorted(pairs, key=lambda pair: SWEEP_KINDS.index(pair[1].kind))  # stable: registration order kept


def method_table() -> str:
    """The registered methods as a Markdown table (name, drafts, exact, verification)."""
    lines = ["| method | drafts | exact | verification |", "|---|---|---|---|"]
    for spec in REGISTRY.values():
        lines.append(f"| {spec.name} | {spec.drafts} | {'yes' if spec.exact else 'no'} | {spec.verification} |")
    return "\n".join(lines)


class ClassView(Mapping):
    """Read-only ``name -> class`` view of the registry (the ``METHODS`` mapping)."""

    def __getitem__(self, name: str) -> type:
        return REGISTRY[name].cls

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)

    def __repr__(self) -> str:
        return f"METHODS({', '.join(REGISTRY)})"
