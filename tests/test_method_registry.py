"""The method registry: one class plus one ``register`` call is seen by make_method, the demo, the sweep and the
CLI; bad registrations fail clearly."""

import pytest
import torch

from specdec.decoding import METHODS, make_method
from specdec.decoding.methods import AR, ChainMethod, registry
from specdec.experiments.demo import DemoConfig
from specdec.experiments.sweep import SweepConfig, sweep_points


@pytest.fixture
def fresh_registry(monkeypatch):
    """A copy of the registry, so registrations made by a test vanish with it."""
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    return registry


class TwoDrafts(ChainMethod):
    """A stand-in method: two zero drafts per step, exact verification."""

    name = "two-drafts"
    num_drafts = 2

    def __init__(self, codebook, *, scale: float = 1.0):
        self.codebook, self.scale = codebook, scale


def test_one_registration_is_seen_everywhere(fresh_registry):
    fresh_registry.register(TwoDrafts, needs=("codebook",), exact=True, drafts="two zeros", verification="exact",
                            sweep=[fresh_registry.SweepKnob("scale", (1.0, 2.0), lambda s: {"scale": s})])
    method = make_method("two-drafts", codebook="cb", scale=3.0)
    assert isinstance(method, TwoDrafts) and method.codebook == "cb" and method.scale == 3.0
    assert METHODS["two-drafts"] is TwoDrafts and "two-drafts" in fresh_registry.method_names()
    assert fresh_registry.demo_methods()[-1] == "two-drafts"
    points = [(family, knob, value) for family, knob, value, _ in sweep_points(SweepConfig())]
    assert ("two-drafts", "scale", 2.0) in points
    assert "| two-drafts | two zeros | yes | exact |" in fresh_registry.method_table()


def test_demo_and_sweep_defaults_come_from_the_registry():
    assert DemoConfig().methods == ("ar", "sd", "sjd", "gsd", "eagle2", "lantern", "lantern++", "mc-sjd")
    families = [family for family, *_ in sweep_points(SweepConfig.quick())]
    # Registered knobs plus static-cluster GSD, the tree families (the costliest per image on a CPU) last.
    assert families == (["sjd init"] * 2 + ["gsd init"] * 2 + ["mc-sjd init"] * 2 + ["gsd"] * 2 + ["gsd-static"] * 2
                        + ["lantern++"] * 2 + ["lantern"] * 2)


def test_bad_registrations_and_lookups_fail_clearly(fresh_registry):
    with pytest.raises(ValueError, match="already registered"):
        fresh_registry.register(AR, exact=True, drafts="", verification="")
    with pytest.raises(ValueError, match="needs must be among"):
        fresh_registry.register(TwoDrafts, needs=("tokenizer",), exact=True, drafts="", verification="")
    with pytest.raises(ValueError, match="kinds must be among"):
        fresh_registry.register(TwoDrafts, exact=True, drafts="", verification="",
                                sweep=[fresh_registry.SweepKnob("x", (1,), dict, kind="other")])
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        make_method("nope")
    with pytest.raises(ValueError, match="needs head, codebook"):
        make_method("lantern")


def test_cli_checks_demo_methods_against_the_registry():
    from specdec.cli import main

    with pytest.raises(SystemExit, match=r"unknown method\(s\) \['nope'\]; choose from .*'static'"):
        main(["demo", "--methods", "sd,nope"])


def test_static_cluster_gsd_is_a_registered_method():
    """A rule without a kernel change (GSD over fixed k-means clusters) is one class plus one registration:
    make_method builds it, and it equals the sweep's gsd-static family member."""
    from specdec.experiments.sweep import static_cluster_gsd

    codebook = torch.nn.functional.normalize(torch.randn(48, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    method = make_method("gsd-static", codebook=codebook, group_size=6)
    assert method.name == "gsd-static" and "gsd-static" in registry.method_names()
    assert "gsd-static" not in registry.demo_methods()
    assert method.verifier.kernel_kwargs["method"] == "gsd"
    assert torch.equal(method.embeddings, static_cluster_gsd(codebook, 6).embeddings)
    assert method.rank_window == (48, 48) and method.p_thr == 2.0  # the whole vocabulary (kernels cap it)
