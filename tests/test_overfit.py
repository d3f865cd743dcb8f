"""A tiny joint model memorises one batch: the loss (fixed noise and timesteps) falls by more
than half within a few hundred steps. Blocks at every resolution give the adapters enough reach
over the frozen random bases."""

import torch

from svgen.config import LossConfig, load_config
from svgen.data.latents import LatentBatch
from svgen.train.engine import make_optimizer

from .conftest import TINY


def test_tiny_model_overfits_one_batch(system_factory):
    system = system_factory("model.cmcpe.down_blocks=[0, 1, 2, 3]", "model.cmcpe.up_blocks=[0, 1, 2, 3]")
    cfg = LossConfig(caption_dropout=0.0, x0_zero_prob=1.0)
    g = torch.Generator().manual_seed(0)
    batch = LatentBatch(torch.randn(1, 8, 32, 16, generator=g), torch.randn(1, 4, 8, 8, 8, generator=g),
                        *system.encode_text(["a red square flashes with a click"]))
    opt = make_optimizer(system.model, load_config(TINY, ["train.optim.lr=3e-3"]).train.optim)
    losses = []
    for step in range(300):
        loss, _ = system.loss(batch, cfg, generator=torch.Generator().manual_seed(1))  # same noise and t every step
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < 0.45 * losses[0]:
            break
    assert losses[-1] < 0.5 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f} after {len(losses)} steps"
