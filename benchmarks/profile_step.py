"""Where the training step's time goes (issue 23): the GPU truth, and a proxy any machine can run.

**Proxy (any machine).** One training step (x0_hat pass, training pass, backward) of the
full-size joint model at the paper's shapes on PyTorch's meta device, under a dispatch mode that
sees every operator. Matrix products (mm, bmm, addmm, convolutions, attention) are the useful
work; every other operator that produces a new tensor is *glue*: copies and casts, layout changes,
normalisation, activations, element-wise arithmetic, reductions. The glue is memory-bound, so what
it costs is the bytes it reads and writes; views move none and are not counted. Printed: glue
bytes per sample by category, by module (the innermost module that ran it in the forward
passes; backward glue by category), and the last line ``glue bytes per sample: N`` (the figure to drive down
between GPU sessions).

**CUDA (with --cuda, or by default when a GPU is present).** The same step at real size on the
GPU under torch.profiler: kernel time by category (matrix product, convolution, attention,
normalisation, activation, copy/cast, layout transform, optimizer, element-wise, other; kernel
names matched with care: ``gpu_kernel_impl_nocast`` is element-wise, not a cast), and the top
kernels with their launch counts, the aten operator and the Python site that launched them.

    python benchmarks/profile_step.py                       # the proxy (and the GPU profile on a GPU)
    python benchmarks/profile_step.py --batch 8 --top 25 --set model.train_motion_modules=false
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from common import bench_config, random_batch, sync  # noqa: I001

from svgen.data.latents import LatentBatch
from svgen.models.codec import latent_shapes
from svgen.system import build_system

aten = torch.ops.aten
MATMUL = {aten.mm, aten.bmm, aten.addmm, aten.baddbmm, aten.convolution, aten.convolution_backward,
          aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention_for_cpu_backward,
          aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_efficient_attention_backward,
          aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_flash_attention_backward,
          aten._scaled_dot_product_cudnn_attention, aten._scaled_dot_product_cudnn_attention_backward,
          aten.cudnn_convolution, aten.mkldnn_convolution}
CATEGORIES = [  # (category, aten name pattern), first match wins
    ("copy/cast", r"^(_to_copy|copy_|clone|contiguous|_copy_from|lift_fresh_copy)$"),
    ("layout (cat/stack/pad/index)", r"^(cat|stack|constant_pad_nd|index|index_put_?|gather|scatter|slice_scatter|"
                                     r"select_scatter|repeat|repeat_interleave|roll|flip|split_with_sizes_copy|"
                                     r"_unsafe_index|new_zeros|zeros_like|empty_like|fill_|zero_)"),
    # svgen's fused operators by what they replace: row_norm (add + layer/gain norm) and
    # group_norm_silu are normalisation, geglu / geglu_shift activation (not element-wise: the
    # anchored "ge" below would otherwise take them).
    ("normalisation", r"(layer_norm|group_norm|batch_norm|var_mean|rsqrt|native_norm|row_norm)"),
    ("activation", r"(gelu|geglu|silu|sigmoid|tanh|softmax|relu)"),
    ("reduction", r"^(sum|mean|amax|max|min|norm|linalg_vector_norm|_foreach_norm)"),
    ("element-wise", r"^(add|sub|mul|div|neg|exp|log|sqrt|pow|where|clamp|lerp|addcmul|addcdiv|sin|cos|masked_fill|"
                     r"_foreach_|abs|sign|maximum|minimum|reciprocal|square|floor|ceil|round|eq|ne|lt|gt|le|ge)"),
]


def category(name: str) -> str:
    for cat, pattern in CATEGORIES:
        if re.search(pattern, name):
            return cat
    return "other"


def _nbytes(x) -> int:
    return x.numel() * x.element_size() if isinstance(x, torch.Tensor) else 0


class GlueCounter(TorchDispatchMode):
    """Bytes read and written by every non-matmul, non-view operator, by category and module."""

    def __init__(self, tracker):
        super().__init__()
        self.tracker = tracker
        self.by_cat: collections.Counter = collections.Counter()
        self.by_module: collections.Counter = collections.Counter()
        self.by_op: collections.Counter = collections.Counter()
        self.matmul_ops = 0
        self.glue_ops = 0

    def _module(self, category: str) -> str:
        # Backward: the tracker's parents go stale where a module's input needs no gradient, so
        # backward glue is told by category only.
        if self.tracker.is_bw:
            return f"(backward: {category})"
        parents = [p for p in self.tracker.parents if p != "Global"]
        if not parents:
            return "(forward, outside modules)"
        return _short(max(parents, key=len))  # the innermost

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        if packet in MATMUL:
            self.matmul_ops += 1
            return out
        if func.is_view or packet in (aten.detach, aten.alias, aten._unsafe_view, aten.view, aten.t,
                                      aten.expand, aten.permute, aten.transpose, aten.unsqueeze, aten.squeeze,
                                      aten.slice, aten.select, aten.as_strided, aten.split, aten.chunk, aten.unbind):
            return out
        flat = torch.utils._pytree.tree_leaves((args, kwargs))
        outs = torch.utils._pytree.tree_leaves(out)
        moved = sum(_nbytes(t) for t in flat) + sum(_nbytes(t) for t in outs)
        if not moved:
            return out
        name = packet.__name__
        cat = category(name)
        self.glue_ops += 1
        self.by_cat[cat] += moved
        self.by_module[self._module(cat)] += moved
        self.by_op[name] += moved
        return out


def _short(name: str) -> str:
    """'JointModel.video_unet.down_blocks.1.motion_modules.0.transformer_blocks.0.attn1.to_q' ->
    a readable module path, numbers kept, the leading class dropped."""
    parts = name.split(".")
    return ".".join(parts[1:]) if len(parts) > 1 else name


_SDPA = F.scaled_dot_product_attention


def _flash_style(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """On meta tensors PyTorch takes the maths path (materialised attention matrices, not what a
    GPU runs): take the flash-style kernel as benchmarks/activation_memory.py does, and for an
    additive bias (the video encoder's relative positions) the memory-efficient kernel that CUDA
    picks for one, the bias broadcast as PyTorch broadcasts it before that kernel."""
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            return _SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
        bias = attn_mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True, dropout_p, is_causal,
                                                                      scale=scale)[0]
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, dropout_p, is_causal, scale=scale)[0]


def proxy(cfg, batch: int, top: int) -> int:
    """Glue bytes of one step on the meta device; prints the tables; returns bytes per sample."""
    from torch.utils.module_tracker import ModuleTracker

    system = build_system(cfg)
    system.model.to_device(torch.device("meta"))
    system.model.to(torch.bfloat16)  # as DeepSpeed's bf16 mode
    system.empty_a, system.empty_v = system.empty_a.to("meta"), system.empty_v.to("meta")
    meta = torch.device("meta")
    shape_a, shape_v = latent_shapes(system.audio, system.video, cfg.data, batch)
    text_a, text_v = system.encode_text(["x"] * batch)
    data = LatentBatch(torch.randn(shape_a, device=meta), torch.randn(shape_v, device=meta), text_a.to(meta),
                       text_v.to(meta))
    F.scaled_dot_product_attention = _flash_style
    try:
        with ModuleTracker() as tracker, GlueCounter(tracker) as counter:
            loss, _ = system.loss(data, cfg.train.loss, skip_unused_pass=False)
            loss.backward()
    finally:
        F.scaled_dot_product_attention = _SDPA
    total = sum(counter.by_cat.values())
    per_sample = total // batch
    print(f"\nProxy: one training step at batch {batch} on the meta device ({counter.glue_ops} glue operators, "
          f"{counter.matmul_ops} matrix products), glue bytes read + written:")
    print("| category | GiB per step | share |\n|---|---|---|")
    for cat, b in counter.by_cat.most_common():
        print(f"| {cat} | {b / 2**30:.2f} | {b / total:.1%} |")
    print(f"\n| top operators | GiB per step | share |\n|---|---|---|")
    for op, b in counter.by_op.most_common(top):
        print(f"| {op} | {b / 2**30:.2f} | {b / total:.1%} |")
    print(f"\n| top modules (innermost) | GiB per step | share |\n|---|---|---|")
    for m, b in counter.by_module.most_common(top):
        print(f"| {m} | {b / 2**30:.2f} | {b / total:.1%} |")
    return per_sample


KERNEL_CATEGORIES = [  # (category, kernel name pattern), first match wins; order matters
    ("attention", r"(flash|fmha|attention|sdpa|cudnn_generated_fort_native_sdpa)"),
    ("convolution", r"(conv|implicit_gemm|winograd|dgrad|wgrad|fprop)"),
    ("matmul", r"(gemm|nvjet|cutlass|xmma|sm90_|sm80_|cublas|ampere_bf16|hopper)"),
    ("layout transform", r"(nchwToNhwc|nhwcToNchw|transpose|permute)"),
    ("normalisation", r"(layer_norm|LayerNorm|group_norm|GroupNorm|batch_norm|RowwiseMoments|ComputeFused|"
                      r"compute_stats|welford)"),
    ("activation", r"(gelu|GeluCUDA|silu|sigmoid|softmax|tanh)"),
    ("optimizer", r"(multi_tensor_apply|adam|Adam|fused_adam|_foreach)"),
    ("copy/cast", r"(direct_copy_kernel|copy_kernel|CatArrayBatchedCopy|Memcpy|memcpy|cast_|_to_copy)"),
    ("reduction", r"(reduce_kernel|Reduce)"),
    ("element-wise", r"(elementwise|vectorized_elementwise|unrolled_elementwise|gpu_kernel_impl)"),
]


def kernel_category(name: str) -> str:
    for cat, pattern in KERNEL_CATEGORIES:
        if re.search(pattern, name):
            return cat
    return "other"


def gpu_profile(cfg, batch: int, top: int) -> None:
    """Kernel time of one eager training step (after two warm-up steps) by category, and the top
    kernels with their aten operator and Python site."""
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device("cuda")
    torch.manual_seed(0)
    system = build_system(cfg).to(dev)
    system.model.to(torch.bfloat16)
    opt = torch.optim.AdamW(system.model.trainable_parameters(), lr=1e-5, fused=True)
    lb = random_batch(system, cfg, batch, dev)
    gen = torch.Generator(device=dev).manual_seed(0)

    def step():
        loss, _ = system.loss(lb, cfg.train.loss, generator=gen, skip_unused_pass=False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    sync(dev)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True, record_shapes=False) as prof:
        step()
        sync(dev)
    by_cat: collections.Counter = collections.Counter()
    kernels: dict[str, list] = {}
    events = prof.events()
    for evt in events:
        if evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        us = evt.device_time_total if hasattr(evt, "device_time_total") else evt.cuda_time_total
        by_cat[kernel_category(evt.name)] += us
        k = kernels.setdefault(evt.name, [0.0, 0, collections.Counter(), collections.Counter()])
        k[0] += us
        k[1] += 1
    # Which operator launched each kernel, and from where in Python: the profiler hangs a
    # kernel on the CPU event that launched it (the runtime call, under its aten op).
    for evt in events:
        launched = getattr(evt, "kernels", None) or []
        if evt.device_type == torch.autograd.DeviceType.CUDA or not launched:
            continue
        op = evt
        while op is not None and not op.name.startswith("aten::"):
            op = op.cpu_parent
        owner = op or evt
        frames = owner.stack or []
        site = next((f for f in frames if "svgen" in f or "diffusers" in f), frames[0] if frames else None)
        for kern in launched:
            if kern.name in kernels:
                kernels[kern.name][2][owner.name] += 1
                kernels[kern.name][3][site or "-"] += 1
    total = sum(by_cat.values())
    print(f"\nCUDA: one eager training step at batch {batch}: {total / 1e3:.1f} ms of kernels, "
          f"{sum(k[1] for k in kernels.values())} launches")
    print("| category | ms | share |\n|---|---|---|")
    for cat, us in by_cat.most_common():
        print(f"| {cat} | {us / 1e3:.1f} | {us / total:.1%} |")
    print(f"\n| top kernels | ms | launches | category | aten op | Python site |\n|---|---|---|---|---|---|")
    for name, (us, n, ops, sites) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]:
        op = ops.most_common(1)[0][0] if ops else "-"
        site = sites.most_common(1)[0][0] if sites else "-"
        print(f"| {name[:70]} | {us / 1e3:.1f} | {n} | {kernel_category(name)} | {op} | {site} |")
    print("\nOperators by their own device time, with the Python stack that called them:")
    print(prof.key_averages(group_by_stack_n=4).table(sort_by="self_device_time_total", row_limit=top,
                                                      max_name_column_width=40, max_src_column_width=90))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--cuda", action="store_true", help="the GPU profile (default when a GPU is present)")
    ap.add_argument("--no-proxy", action="store_true", help="skip the meta-device proxy")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--size", default="full-size", help="benchmarks/common.py size (default: the paper's)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # What a GPU runs: the fused glue operators (one op each way on meta tensors); the CMC-PE
        # op's Triton autograd function cannot run on meta, so its reference maths is counted.
        cfg, _ = bench_config(args.size, Path(tmp), ["model.cmcpe.kernel=reference", "model.glue_kernel=triton",
                                                     *args.set])
        if (args.cuda or torch.cuda.is_available()) and torch.cuda.is_available():
            gpu_cfg, _ = bench_config(args.size, Path(tmp), args.set, bases=_bases(cfg))
            gpu_profile(gpu_cfg, args.batch, args.top)
        if not args.no_proxy:
            per_sample = proxy(cfg, args.batch, args.top)
            print(f"\nglue bytes per sample: {per_sample}")


def _bases(cfg) -> dict:
    return {"audio": Path(cfg.model.audio.path), "video": Path(cfg.model.video.path),
            "motion_adapter": Path(cfg.model.video.motion_adapter_path)}


if __name__ == "__main__":
    main()
