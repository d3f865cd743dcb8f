"""Speed levers (train.perf) leave the maths unchanged; FLOP counting and the MFU benchmark.

On CUDA, benchmarks/mfu.py compares every lever's first loss with eager at the real sizes; here
each lever is checked on the tiny model against plain eager: losses and trained weights after a
few AdamW steps."""

import re
import subprocess
import sys

import pytest
import torch

from svgen.config import LossConfig, PerfConfig, load_config
from svgen.data.latents import LatentBatch
from svgen.models.cmcpe import CMCPEBlock
from svgen.train.perf import (Levers, Throughput, apply_levers, attention_backend, card_peak_tflops, count_flops,
                              resolve_levers)

from .conftest import ROOT, TINY

OFF = Levers(compile=False, compile_mode="default", compile_backend="inductor", channels_last=False,
             fused_optimizer=False, attention="auto")


def _steps(system_factory, levers: Levers, steps: int = 3):
    """Losses of ``steps`` AdamW steps on one batch, the first step's gradients and how far each
    trained weight moved (the added blocks' zero-initialised outputs nudged so they take part from
    the first step)."""
    system = system_factory(seed=0)
    g = torch.Generator().manual_seed(0)
    for blocks in (system.model.blocks_a, system.model.blocks_v):
        for block in blocks.values():
            block.proj_out.weight.data.copy_(torch.randn(block.proj_out.weight.shape, generator=g) * 0.05)
    apply_levers(system.model, levers)
    batch = LatentBatch(torch.randn(2, 8, 32, 16, generator=g), torch.randn(2, 4, 8, 8, 8, generator=g),
                        *system.encode_text(["a", "b"]))
    params = system.model.named_trainable_parameters()
    start = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=1e-3, fused=levers.fused_optimizer or None)
    gen = torch.Generator().manual_seed(1)
    losses, grads = [], None
    for _ in range(steps):
        with attention_backend(levers.attention):
            loss, _ = system.loss(batch, LossConfig(x0_zero_prob=0.0), generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        grads = grads or {n: p.grad.clone() for n, p in params.items()}
        opt.step()
        losses.append(loss.item())
    return losses, grads, {n: p.detach() - start[n] for n, p in params.items()}


@pytest.fixture(scope="module")
def eager(system_factory):
    return _steps(system_factory, OFF)


@pytest.mark.parametrize("lever", [
    {"fused_optimizer": True},
    {"attention": "math"},
    {"attention": "efficient"},
    # Every region of both UNets and every added module through dynamo's graph capture and
    # aot_autograd's tracing (guards, functionalised forward and backward graphs,
    # grad and no-grad variants, recompiles per width); code generation is checked below.
    {"compile": True, "compile_backend": "aot_eager"},
], ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_levers_keep_losses_and_weights(system_factory, eager, lever):
    from dataclasses import replace

    losses, grads, weights = _steps(system_factory, replace(OFF, **lever))
    assert losses == pytest.approx(eager[0], rel=1e-5)
    scale = max(g.abs().max().item() for g in eager[1].values())
    for n, grad in eager[1].items():
        torch.testing.assert_close(grads[n], grad, rtol=1e-3, atol=1e-5 * scale, msg=lambda m: f"grad {n}: {m}")
    # AdamW normalises each update, so a weight whose gradient is rounding noise (a bias that a
    # one-channel-per-group GroupNorm removes) moves a whole step either way, and single elements
    # with tiny gradients nearly so: compare each tensor's movement as a whole, where its gradient
    # is not noise. A wrong update would be off by the movement itself.
    compared = [n for n, grad in eager[1].items() if grad.abs().max().item() > 1e-4 * scale]
    assert len(compared) > 0.8 * len(eager[1])
    for n in compared:
        moved = eager[2][n]
        assert (weights[n] - moved).norm() <= 0.02 * moved.norm(), n


def test_channels_last_keeps_the_joint_forward(system_factory):
    """channels_last is a CUDA lever (PyTorch's CPU backward of these UNets crashes with it); the
    forward here shows the layout change alone leaves both UNets' outputs as they were."""
    from svgen.models.joint import JointInputs

    from dataclasses import replace

    outs = []
    for layout in (False, True):
        system = system_factory(seed=0)
        apply_levers(system.model, replace(OFF, channels_last=layout))
        if layout:
            w = next(p for p in system.model.video_unet.parameters() if p.ndim == 4)
            assert w.is_contiguous(memory_format=torch.channels_last)
        g = torch.Generator().manual_seed(0)
        za, zv = torch.randn(1, 8, 32, 16, generator=g), torch.randn(1, 4, 8, 8, 8, generator=g)
        ta, tv = system.encode_text(["x"])
        t = torch.tensor([500])
        with torch.no_grad():
            outs.append(system.model(JointInputs(z_a=za, z_v=zv, t_a=t, t_v=t, text_a=ta, text_v=tv,
                                                  enc_a=torch.cat([za, za], 1), enc_v=torch.cat([zv, zv], 1),
                                                  s_a=t, s_v=t)))
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_inductor_compiles_the_cmcpe_block_to_the_same_values():
    """Inductor's generated code for the added module (the CMC-PE hot path included, which takes
    the reference maths inside a compiled region): forward and gradients equal eager."""
    torch.manual_seed(0)
    block = CMCPEBlock(32, 16, head_dim=8, per_frame=True)
    torch.nn.init.normal_(block.proj_out.weight, std=0.05)
    compiled = CMCPEBlock(32, 16, head_dim=8, per_frame=True)
    compiled.load_state_dict(block.state_dict())
    compiled.compile(backend="inductor", dynamic=False)
    g = torch.Generator().manual_seed(1)
    h, p = torch.randn(2, 32, 4, 16, generator=g), torch.randn(2, 16, 6, generator=g)
    outs = []
    for m in (block, compiled):
        x = h.clone().requires_grad_(True)
        y = m(x, p)
        y.square().mean().backward()
        outs.append((y.detach(), x.grad, {n: q.grad for n, q in m.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-4, atol=1e-6)
    for n, grad in outs[0][2].items():
        torch.testing.assert_close(outs[1][2][n.replace("_orig_mod.", "")], grad, rtol=1e-3, atol=1e-6)
    assert compiled.state_dict().keys() == block.state_dict().keys()  # in-place: checkpoints unchanged


def test_the_video_unets_mid_block_traces_whole_and_matches_eager(system_factory):
    """What compile_regions does to a region of the video UNet (after fuse_glue: the unit scales
    back to 1.0): aot_autograd traces the mid block (resnets, attention, motion module) with no
    graph break (the unit-scale object broke 86 graphs of the tiny model; the motion module's
    group norm of a permuted view crashed the CPU kernel once traced), with eager's values and
    input gradients."""
    import copy

    from torch._dynamo.utils import counters

    from svgen.models.fusion import plain_scales

    unet = system_factory().video.unet
    mid = unet.mid_block
    eager = copy.deepcopy(mid)
    assert plain_scales(mid) > 0
    mid.compile(backend="aot_eager", dynamic=False)
    g = torch.Generator().manual_seed(1)
    frames, c = 4, unet.config.block_out_channels[-1]
    x = torch.randn(2 * frames, c, 2, 2, generator=g)
    temb = torch.randn(2 * frames, unet.time_embedding.linear_2.out_features, generator=g)
    ctx = torch.randn(2 * frames, 3, unet.config.cross_attention_dim, generator=g)
    counters.clear()
    results = []
    for m in (eager, mid):
        xi = x.clone().requires_grad_(True)
        y = m(xi, temb, encoder_hidden_states=ctx, num_frames=frames)
        y.square().mean().backward()
        results.append((y.detach(), xi.grad))
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-6)


def test_auto_levers_follow_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_levers(PerfConfig(), cpu) == OFF
    default = resolve_levers(PerfConfig(), cuda)  # what measured fastest on an H200 (RESULTS.md)
    assert default.fused_optimizer and not default.compile and not default.channels_last
    on = resolve_levers(PerfConfig(compile="auto", channels_last="auto"), cuda)
    assert on.compile and on.channels_last and on.fused_optimizer
    forced = resolve_levers(PerfConfig(compile="on", channels_last="off", fused_optimizer="on"), cpu)
    assert forced.compile and not forced.channels_last and forced.fused_optimizer
    with pytest.raises(ValueError, match="channels_last=on is a CUDA lever"):
        resolve_levers(PerfConfig(channels_last="on"), cpu)


def test_on_off_read_from_yaml_and_flags():
    """YAML 1.1 reads on/off as booleans; the lever keys take them as the words they are."""
    cfg = load_config(TINY, ["train.perf.compile=on", "train.perf.channels_last=off", "train.perf.fused_optimizer=auto"])
    assert (cfg.train.perf.compile, cfg.train.perf.channels_last, cfg.train.perf.fused_optimizer) == ("on", "off", "auto")
    with pytest.raises(ValueError, match="train.perf.compile.*must be one of"):
        load_config(TINY, ["train.perf.compile=sometimes"])


def test_count_flops_counts_forward_and_backward_once_compiled_or_not():
    lin = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64, requires_grad=True)
    fwd = 2 * 8 * 64 * 32
    assert count_flops(lambda: lin(x).sum().backward()) == 3 * fwd  # forward, grad of input, grad of weight
    compiled = torch.nn.Linear(64, 32, bias=False)
    compiled.compile(backend="eager")
    assert count_flops(lambda: compiled(x).sum().backward()) == 3 * fwd


def test_throughput_and_peak():
    thr = Throughput(samples_per_step=16, samples_per_gpu_step=4, peak_tflops=2.0)
    assert thr.metrics(3, 6.0) == {"samples_per_s": 8.0}  # FLOPs not counted yet: no TFLOP/s
    thr.flops_per_sample = 0.5e12
    assert thr.metrics(3, 6.0) == pytest.approx({"samples_per_s": 8.0, "tflops_per_s": 1.0, "mfu": 0.5})
    recomputing = Throughput(16, 4, 2.0, flops_per_sample=0.5e12, recomputed=True)
    assert recomputing.metrics(3, 6.0) == pytest.approx({"samples_per_s": 8.0, "tflops_per_s": 1.0, "hfu": 0.5})
    assert card_peak_tflops(torch.device("cpu")) is None
    assert card_peak_tflops(torch.device("cpu"), configured=123.0) == 123.0


def test_log_lines_show_no_mfu_figure_that_rounds_to_zero():
    """A model too small for the figure to mean anything (the tiny config on a GPU) logs 'MFU -',
    not 'MFU 0.0%'; an unknown card's peak logs no MFU at all (issue 23, item 5)."""
    from svgen.train.perf import Throughput

    tiny = Throughput(8, 8, peak_tflops=989.4, flops_per_sample=1e9)
    assert tiny.describe(tiny.metrics(10, 1.0)) == "MFU -"
    real = Throughput(8, 8, peak_tflops=989.4, flops_per_sample=40e12)
    assert real.describe(real.metrics(1, 1.4)) == "MFU 23.1%"
    ckpt = Throughput(8, 8, peak_tflops=989.4, flops_per_sample=40e12, recomputed=True)
    assert ckpt.describe(ckpt.metrics(1, 1.4)).startswith("HFU ")
    unknown = Throughput(8, 8, peak_tflops=None, flops_per_sample=40e12)
    assert unknown.describe(unknown.metrics(1, 1.4)) == ""


def test_mfu_benchmark_prints_an_mfu_line():
    """The CPU smoke of benchmarks/mfu.py (the GPU run is benchmarks/gpu_check.sh): one row per
    configuration and batch, the baseline comparison, and the summary MFU line."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mfu.py"), "--tiny", "--batches", "1",
                           "--levers", "eager,fused", "--warmup", "1", "--repeats", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| eager |") or line.startswith("| fused |")]
    assert len(rows) == 2, proc.stdout
    assert re.search(r"\| fused \| 1 \| [0-9.e-]+ \| [0-9.]+ ms \|.*x, loss diff 0\.0e\+00 \|", rows[1]), rows[1]
    assert re.search(r"^MFU \d+\.\d % \(best: levers \w+, batch 1,", proc.stdout, re.M), proc.stdout
