"""Speed levers of the training step (``train.perf``) and the FLOP accounting that measures them.

Every lever leaves the maths unchanged (tests/test_perf.py checks the losses against eager):

- compiled regions: each block of the two frozen UNets, the environment encoders and the
  cross-modal blocks compiled in place with ``nn.Module.compile`` (state_dict keys unchanged, so
  checkpoints and exports do not see it). Regions rather than the whole model: the joint forward
  walks both UNets block by block in Python, and a region recompiles only for its own shapes.
- channels_last for the frozen UNets' convolution weights (the convolutions then run NHWC).
- a fused AdamW over the trained weights.
- an SDPA backend preference for every attention call of the step.

MFU: :func:`count_flops` counts one step's FLOPs once (``FlopCounterMode``, eager), and
:func:`card_peak_tflops` gives the card's dense peak; achieved TFLOP/s over that peak is the MFU
that the training loop logs and ``benchmarks/mfu.py`` prints.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from svgen.config import PerfConfig
from svgen.models.fusion import plain_scales
from svgen.models.joint import JointModel
from svgen.models.unet_runner import unet_blocks

# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' datasheets, TFLOP/s, matched
# against torch.cuda.get_device_name in order (the first substring that matches wins).
PEAK_TFLOPS_16BIT = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.4), ("H200", 989.4), ("H100", 989.4),
    ("H800", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.1),
    ("A10G", 70.0), ("L4", 121.0),
)


@dataclass(frozen=True)
class Levers:
    """``train.perf`` resolved for one device ('auto' decided)."""

    compile: bool
    compile_mode: str
    compile_backend: str
    channels_last: bool
    fused_optimizer: bool
    attention: str

    def describe(self) -> str:
        on = [name for name in ("compile", "channels_last", "fused_optimizer") if getattr(self, name)]
        mode = f" ({self.compile_backend}, {self.compile_mode})" if self.compile else ""
        return f"levers: {', '.join(on) or 'none'}{mode}; attention {self.attention}"


def resolve_levers(p: PerfConfig, device: torch.device) -> Levers:
    if p.channels_last == "on" and device.type != "cuda":
        # Seen with torch 2.13+cpu: the backward through either base UNet segfaults.
        raise ValueError("train.perf.channels_last=on is a CUDA lever: PyTorch's CPU backward through the "
                         "UNets crashes in channels-last layout; use 'auto' (off on CPU) or 'off'")

    def on(value: str) -> bool:
        return device.type == "cuda" if value == "auto" else value == "on"

    return Levers(compile=on(p.compile), compile_mode=p.compile_mode, compile_backend=p.compile_backend,
                  channels_last=on(p.channels_last),
                  fused_optimizer=on(p.fused_optimizer), attention=p.attention)


def compile_regions(model: JointModel, mode: str = "default", added: bool = True, backend: str = "inductor"
                    ) -> list[str]:
    """Compile every UNet block (and, with ``added``, the encoders and cross-modal blocks) in
    place; returns the compiled regions' names. Blocks of one class at several widths compile
    once each, so the recompile limit is raised to cover them."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, key):
            setattr(cfg, key, max(getattr(cfg, key), 64))
    regions: dict[str, torch.nn.Module] = {}
    for prefix, unet in (("audio_unet", model.audio_unet), ("video_unet", model.video_unet)):
        regions.update({f"{prefix}.{name}": block for name, block in unet_blocks(unet).items()})
    if added:
        regions["encoder_a"], regions["encoder_v"] = model.encoder_a, model.encoder_v
        for name, blocks in (("blocks_a", model.blocks_a), ("blocks_v", model.blocks_v)):
            for key, block in blocks.items():
                regions[f"{name}.{key}"] = block
    options = {"mode": mode} if backend == "inductor" else {}
    for module in regions.values():
        plain_scales(module)  # the compiler fuses x / 1.0 away; the unit-scale object breaks graphs
        module.compile(backend=backend, dynamic=False, **options)
    return list(regions)


def apply_levers(model: JointModel, levers: Levers, compile_added: bool = True) -> None:
    """Model-side levers, before the model is wrapped (DeepSpeed) or stepped.

    ``compile_added``: also compile the trained modules (False under ZeRO-3, whose
    parameter-gathering hooks on them do not trace)."""
    if levers.channels_last:
        for unet in (model.audio_unet, model.video_unet):
            unet.to(memory_format=torch.channels_last)
    if levers.compile:
        compile_regions(model, levers.compile_mode, added=compile_added, backend=levers.compile_backend)


def attention_backend(name: str) -> contextlib.AbstractContextManager:
    """Context in which scaled-dot-product attention tries ``name`` first ('auto': PyTorch's own
    choice). The other backends stay enabled behind it, so a shape the named one cannot run
    (e.g. fp32 inputs for flash) still runs."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    first = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]
    rest = [b for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                        SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH) if b != first]
    if name == "math":  # the reference maths: no fused backend may take over
        return sdpa_kernel([first])
    return sdpa_kernel([first, *rest], set_priority=True)


def count_flops(step: Callable[[], object]) -> int:
    """FLOPs of one call of ``step`` (matmuls, convolutions and attention, forward and backward),
    counted eagerly: compiled regions run uncompiled for this one call."""
    from torch.utils.flop_counter import FlopCounterMode

    eager = torch.compiler.set_stance("force_eager") if hasattr(torch.compiler, "set_stance") \
        else contextlib.nullcontext()
    with eager, FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


class _LiveBytes(TorchDispatchMode):
    """Bytes of the storages that ops run within have made and that are still alive, and their peak."""

    def __init__(self):
        super().__init__()
        self.live: set[int] = set()
        self.now = self.peak = 0

    def _freed(self, key: int, nbytes: int) -> None:
        self.live.discard(key)
        self.now -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata  # the C++ storage: also tells meta storages apart (no data pointer)
                if key not in self.live:
                    self.live.add(key)
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                    # The Python storage object lives as long as its C++ storage (PyObject preservation).
                    weakref.finalize(storage, self._freed, key, storage.nbytes())
        return out


def peak_live_bytes(step: Callable[[], object]) -> int:
    """Peak bytes of tensors that ``step`` allocates and holds at once (activations, gradients,
    temporaries; not what existed before, such as the weights). Works on any device, the meta
    device included, so a step can be sized at real shapes without the memory
    (benchmarks/activation_memory.py: with the weights and AdamW state added, within a few per cent
    of an H200's measured peak)."""
    with _LiveBytes() as live:
        step()
    return live.peak


def card_peak_tflops(device: torch.device, configured: float = 0.0, dtype: str = "bfloat16") -> float | None:
    """Dense peak of the card in TFLOP/s: ``configured`` when set, else the datasheet's 16-bit
    value for a known card when the bases compute in 16 bits, else None (CPUs, unknown cards,
    fp32 bases: no MFU, only TFLOP/s)."""
    if configured > 0:
        return configured
    if device.type != "cuda" or dtype not in ("bfloat16", "float16"):
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS_16BIT:
        if key in name:
            return tflops
    return None


class Throughput:
    """Samples/s (all processes), TFLOP/s and MFU (per GPU) over log intervals, from the FLOPs per
    sample counted once (``samples_per_gpu_step`` samples per GPU and optimizer step).

    ``recomputed``: activation checkpointing is on, so the counted FLOPs include the recomputed
    forward; the utilisation is then logged as ``hfu`` (hardware FLOPs), not ``mfu``."""

    def __init__(self, samples_per_step: int, samples_per_gpu_step: int, peak_tflops: float | None,
                 flops_per_sample: float | None = None, recomputed: bool = False):
        self.key = "hfu" if recomputed else "mfu"
        self.samples_per_step = samples_per_step
        self.samples_per_gpu_step = samples_per_gpu_step
        self.peak = peak_tflops
        self.flops_per_sample = flops_per_sample

    def describe(self, logged: dict[str, float]) -> str:
        """The utilisation for a log line: 'MFU 23.1%'; 'MFU -' when it would print as 0.0 %
        (a model too small for the figure to mean anything, such as the tiny config on a GPU);
        empty when the card's peak is unknown."""
        if self.key not in logged:
            return ""
        value = logged[self.key]
        return f"{self.key.upper()} {value:.1%}" if value >= 0.0005 else f"{self.key.upper()} -"

    def metrics(self, steps: int, seconds: float) -> dict[str, float]:
        seconds = max(seconds, 1e-9)
        out = {"samples_per_s": self.samples_per_step * steps / seconds}
        if self.flops_per_sample is not None:
            tflops = self.flops_per_sample * self.samples_per_gpu_step * steps / seconds / 1e12
            out["tflops_per_s"] = tflops
            if self.peak:
                out[self.key] = tflops / self.peak
        return out
