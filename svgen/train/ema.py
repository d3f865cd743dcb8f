"""EMA of the trained weights (METHOD.md: the reference keeps one), fp32, on the weights' device."""

from __future__ import annotations

import torch


class EMA:
    def __init__(self, named_params: dict[str, torch.Tensor], decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in named_params.items()}

    @torch.no_grad()
    def update(self, named_params: dict[str, torch.Tensor]) -> None:
        for n, p in named_params.items():
            self.shadow[n].lerp_(p.detach().float(), 1 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {n: t.cpu() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        dev = {n: t.device for n, t in self.shadow.items()}
        self.shadow = {n: t.to(dev.get(n, t.device)).clone() for n, t in state["shadow"].items()}
