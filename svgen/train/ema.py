"""EMA of the trained weights (docs/method.md: decay 0.9999 with warm-up, over the added modules only),
fp32, on the weights' device.

The decay of update n (1-based) follows diffusers' EMAModel, which the reference uses:
0 for the first update (the average starts as the weights), then min(decay, (1 + k) / (10 + k))
with k = n - 1, so early averages are not dominated by the random initialisation.
"""

from __future__ import annotations

import torch


def warmup_decay(update: int, decay: float) -> float:
    """The decay applied at the ``update``-th update (1-based)."""
    k = update - 1
    return 0.0 if k <= 0 else min(decay, (1 + k) / (10 + k))


class EMA:
    def __init__(self, named_params: dict[str, torch.Tensor], decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {n: p.detach().float().clone() for n, p in named_params.items()}

    @torch.no_grad()
    def update(self, named_params: dict[str, torch.Tensor]) -> float:
        """Average the tracked weights of ``named_params`` in; returns the decay used."""
        self.updates += 1
        d = warmup_decay(self.updates, self.decay)
        for n, shadow in self.shadow.items():
            shadow.lerp_(named_params[n].detach().float(), 1 - d)
        return d

    def merged(self, named_params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every trained weight, averaged where tracked (fp32, CPU): what a sampler loads."""
        return {n: (self.shadow[n] if n in self.shadow else p.detach().float()).cpu().clone()
                for n, p in named_params.items()}

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": {n: t.cpu() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.updates = state.get("updates", 10**9)  # checkpoints from before the warm-up: past it
        dev = {n: t.device for n, t in self.shadow.items()}
        self.shadow = {n: t.to(dev.get(n, t.device)).clone() for n, t in state["shadow"].items()}
