"""Loading feature-network weights from local files (nothing is ever downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


class FeatureWeightsError(FileNotFoundError):
    """A feature network's weights are missing or do not fit; the message names the file and the
    config key that points at it."""


def read_state(path: str | Path, what: str, key: str) -> dict[str, torch.Tensor]:
    """The state_dict in a torch file (or in a checkpoint dict under 'model' or 'state_dict')."""
    if not str(path):
        raise FeatureWeightsError(f"no {what} weights: set {key} to the local file (e.g. --set {key}=PATH), "
                                  "or drop the metric from eval.metrics")
    path = Path(path)
    if not path.is_file():
        raise FeatureWeightsError(f"{what} weights not found at '{path}' (config key {key}): put the "
                                  f"converted torch state_dict there, or drop the metric from eval.metrics")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same explanation
        raise FeatureWeightsError(f"'{path}' (config key {key}) is not a torch weights file: {e}") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise FeatureWeightsError(f"'{path}' (config key {key}) holds a {type(state).__name__}, not a state_dict")
    return state


def width_of(state: dict[str, torch.Tensor], first: str, base: int, *, path, what: str, key: str) -> float:
    """Channel scale of a network from its first layer (1.0 for the published networks; the
    narrow test networks are saved in the same layout and recognised the same way)."""
    if first not in state:
        raise FeatureWeightsError(f"'{path}' (config key {key}) does not hold {what} weights: no '{first}'")
    return state[first].shape[0] / base


def load_state(net: nn.Module, state: dict[str, torch.Tensor], *, path, what: str, key: str,
               ignore: tuple[str, ...] = (), rename: dict[str, str] | None = None) -> None:
    """Load ``state`` (from ``read_state``) into ``net``. Keys containing any of ``ignore`` may be
    absent or extra; ``rename`` maps file keys to module keys. Anything else is an error."""
    rename = rename or {}
    state = {rename.get(k, k): v for k, v in state.items()}
    own = net.state_dict()
    missing = [k for k in own if k not in state and not any(i in k for i in ignore)]
    extra = [k for k in state if k not in own and not any(i in k for i in ignore)]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or wrong:
        detail = "; ".join(f"{n}: {', '.join(v[:4])}{' ...' if len(v) > 4 else ''}"
                           for n, v in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if v)
        raise FeatureWeightsError(f"'{path}' (config key {key}) does not hold {what} weights in the expected "
                                  f"layout ({detail})")
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
