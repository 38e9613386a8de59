"""Shipped weights: one safetensors file per model (config in the metadata) plus ``metrics.json`` next to them.

:func:`load_testbed` returns the shipped VQ, target, small AR draft, EAGLE head and classifier.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch
from safetensors.torch import load_file, save_file

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
METRICS_FILE = "metrics.json"
MODEL_NAMES = ("vq", "classifier", "target", "draft", "eagle")


class WeightsMissingError(FileNotFoundError):
    """A shipped weight file is absent; the message says how to train it."""


def weights_dir(path: Optional[os.PathLike] = None) -> Path:
    return Path(path) if path is not None else WEIGHTS_DIR


def save_weights(module: torch.nn.Module, name: str, kind: str, config: Dict, dtype=torch.float32,
                 out_dir: Optional[os.PathLike] = None) -> Path:
    """Write ``module``'s parameters and buffers as ``<name>.safetensors`` (floating tensors cast to ``dtype``)."""
    out = weights_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().cpu()
               for k, v in module.state_dict().items()}
    path = out / f"{name}.safetensors"
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"kind": kind, "config": json.dumps(config)})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def read_weights(name: str, in_dir: Optional[os.PathLike] = None):
    """Return ``(kind, config dict, state dict in float32)`` of ``<name>.safetensors``."""
    from safetensors import safe_open

    path = weights_dir(in_dir) / f"{name}.safetensors"
    if not path.is_file():
        raise WeightsMissingError(
            f"{path.name} not found in the testbed weights directory; train it with `specdec train {name}` "
            f"(or `specdec train all`)."
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    return meta["kind"], json.loads(meta["config"]), state


def read_metrics(in_dir: Optional[os.PathLike] = None) -> Dict:
    path = weights_dir(in_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def update_metrics(name: str, values: Dict, out_dir: Optional[os.PathLike] = None) -> None:
    """Set ``metrics.json[name] = values`` (atomic rewrite)."""
    out = weights_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = read_metrics(out)
    data[name] = values
    tmp = out / (METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / METRICS_FILE)


def load_model(name: str, device="cpu", in_dir: Optional[os.PathLike] = None, target=None) -> torch.nn.Module:
    """Build the shipped model ``name`` (``vq``, ``classifier``, ``target``, ``draft``; ``eagle`` needs ``target``)
    in eval mode, float32, on ``device``."""
    from ..metrics.classifier import Classifier
    from .eagle import EagleConfig, EagleHead
    from .model import ARConfig, ARTransformer
    from .vq import VQConfig, VQModel

    kind, config, state = read_weights(name, in_dir)
    if kind == "vq":
        model = VQModel(VQConfig.from_dict(config))
    elif kind == "ar":
        model = ARTransformer(ARConfig(**config))
    elif kind == "eagle":
        if target is None:
            raise ValueError("the EAGLE head needs its target model: load_model('eagle', target=...)")
        model = EagleHead(target, EagleConfig(**config))
    elif kind == "classifier":
        model = Classifier(**config)
    else:
        raise ValueError(f"{name}: unknown kind {kind!r}")
    model.load_state_dict(state)
    return model.to(device).eval().requires_grad_(False)


@dataclass
class Testbed:
    """The shipped models (eval mode, float32): ``vq``, ``target``, ``draft`` (small AR), ``eagle`` (head on
    ``target``), ``classifier``; ``metrics`` is ``metrics.json``."""

    vq: torch.nn.Module
    target: torch.nn.Module
    draft: torch.nn.Module
    eagle: torch.nn.Module
    classifier: torch.nn.Module
    metrics: Dict


def load_testbed(device="cpu", weights: Optional[os.PathLike] = None) -> Testbed:
    """Load every shipped testbed model onto ``device``; raises :class:`WeightsMissingError` naming the missing
    file and the training command."""
    target = load_model("target", device, weights)
    return Testbed(vq=load_model("vq", device, weights), target=target, draft=load_model("draft", device, weights),
                   eagle=load_model("eagle", device, weights, target=target),
                   classifier=load_model("classifier", device, weights), metrics=read_metrics(weights))
