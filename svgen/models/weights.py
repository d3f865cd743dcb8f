"""Load exported trained weights (safetensors from svgen.train.checkpoint.export_weights) into a
joint model built over the frozen bases."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from svgen.models.joint import JointModel


class WeightsError(ValueError):
    """Exported weights do not fit the joint model; the message names the file and the keys."""


def exported_config_yaml(path: str | Path) -> str | None:
    """The training config stored in the export's metadata, if any."""
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("config")


def load_trained_weights(model: JointModel, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no exported weights at '{path}' (launch/train.py writes out_dir/export/*.safetensors)")
    weights = load_file(str(path))
    own = dict(model.named_parameters())
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unexpected:
        raise WeightsError(f"'{path}' does not fit this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                           f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}; was it trained with "
                           "another model.* config (mode, insertion points, widths, train_motion_modules)?")
    with torch.no_grad():
        for name, p in own.items():
            w = weights[name]
            if w.shape != p.shape:
                raise WeightsError(f"'{path}': {name} has shape {tuple(w.shape)}, the model expects {tuple(p.shape)}")
            p.copy_(w.to(p.dtype))
