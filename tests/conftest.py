"""Shared fixtures: tiny random bases built once per session in the real diffusers layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Without a GPU, Triton kernels run in its interpreter (set before svgen.kernels.triton_cmcpe
# is imported: triton.jit reads it at decoration time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from svgen.config import load_config  # noqa: E402
from svgen.models.tiny import build_tiny_bases  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
MEDIA_SOUNDS = ROOT.parent / "shared" / "media" / "audio"
"""Recorded one-shots the ablation's corpus mixes in (the tests' read-only media)."""


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_bases(tmp_path_factory.mktemp("bases"))


def tiny_overrides(bases: dict[str, Path]) -> list[str]:
    return [f"model.audio.path={bases['audio']}", f"model.video.path={bases['video']}",
            f"model.video.motion_adapter_path={bases['motion_adapter']}"]


@pytest.fixture
def tiny_cfg(tiny_bases):
    def make(*overrides: str):
        return load_config(TINY, tiny_overrides(tiny_bases) + list(overrides))
    return make


@pytest.fixture(scope="session")
def system_factory(tiny_bases):
    from svgen.system import build_system

    def make(*overrides: str, seed: int = 0):
        return build_system(load_config(TINY, tiny_overrides(tiny_bases) + list(overrides)), seed=seed)
    return make


def local_steps(system, batch, lr: float = 1e-3, steps: int = 3, seed: int = 0, **loss_overrides) -> list[float]:
    """A few single-process AdamW steps of the docs/method.md objective on one batch (component tests;
    the real loop is svgen.train.loop, tested in test_train.py)."""
    from svgen.config import LossConfig

    cfg = LossConfig(**loss_overrides)
    opt = torch.optim.AdamW(system.model.trainable_parameters(), lr=lr)
    gen = torch.Generator(device=batch.x_a.device).manual_seed(seed)
    system.model.train()
    losses = []
    for _ in range(steps):
        loss, _ = system.loss(batch, cfg, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def yuv420p_round_trip(frames) -> "np.ndarray":
    """RGB frames as a yuv420p video stores them, back in RGB (what a lossless mp4 decodes to)."""
    import av
    import numpy as np

    return np.stack([av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24").reformat(format="yuv420p")
                     .reformat(format="rgb24").to_ndarray() for f in np.asarray(frames)])
