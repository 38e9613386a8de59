"""The Examples in the public docstrings run and print what they claim."""

import doctest
import importlib

import pytest
import torch

import specdec_kernels  # noqa: F401  (the ops package re-exports functions under the module names)

MODULES = [
    importlib.import_module(f"specdec_kernels.ops.{name}")
    for name in ("cspd_verify", "gsd_group_mass", "neighbors", "sample_from_probs", "verify_chain", "verify_tree",
                 "verify_logits", "jacobi_step")
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_examples(module):
    result = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
