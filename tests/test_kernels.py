"""The fused CMC-PE op: Triton (interpreted on CPU, native on CUDA) and torch.compile against the
PyTorch reference, forward and backward, over odd shapes, dtypes, resample modes and layouts."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from svgen.kernels import norm_add_embedding
from svgen.kernels.reference import norm_add_embedding_reference, resample_time

triton_cmcpe = pytest.importorskip("svgen.kernels.triton_cmcpe", reason="the triton extra is not installed")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 2e-5, torch.bfloat16: 6e-2, torch.float16: 8e-3}

SHAPES = [  # (B, T, S, C, T_other)
    (1, 7, 5, 13, 3),      # T_other < T, primes, batch 1
    (2, 5, 11, 17, 13),    # T_other > T
    (1, 13, 1, 31, 13),    # S = 1, equal lengths
    (3, 4, 9, 64, 1),      # a single embedding step broadcast over all time
]


def _inputs(shape, dtype, seed=0):
    B, T, S, C, To = shape
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, T, S, C, generator=g) * 2 + 0.5).to(DEV, dtype).requires_grad_(True)
    e = torch.randn(B, To, C, generator=g).to(DEV, dtype).requires_grad_(True)
    w = (1 + 0.1 * torch.randn(C, generator=g)).to(DEV).requires_grad_(True)
    b = (0.1 * torch.randn(C, generator=g)).to(DEV).requires_grad_(True)
    gu = torch.randn(B, T, S, C, generator=g).to(DEV, dtype)
    ga = torch.randn(B, T, S, C, generator=g).to(DEV, dtype)
    return x, e, w, b, gu, ga


def _run(fn, x, e, w, b, gu, ga, mode):
    u, a = fn(x, e, w, b, eps=1e-5, mode=mode)
    loss = (u.float() * gu.float()).sum() + (a.float() * ga.float()).sum()
    grads = torch.autograd.grad(loss, [x, e, w, b])
    return [u, a, *grads]


def _close(outs, refs, dtype):
    names = ["u", "a", "dx", "demb", "dweight", "dbias"]
    for name, o, r in zip(names, outs, refs):
        scale = r.float().abs().max().clamp_min(1.0)
        err = (o.float() - r.float()).abs().max() / scale
        assert err <= TOL[dtype], f"{name}: relative error {err:.2e} > {TOL[dtype]:.0e}"


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_triton_matches_reference(shape, dtype, mode):
    args = _inputs(shape, dtype)
    outs = _run(triton_cmcpe.norm_add_embedding_triton, *args, mode)
    refs = _run(norm_add_embedding_reference, *args, mode)
    assert outs[0].dtype == dtype and outs[3].dtype == dtype
    _close(outs, refs, dtype)


def test_non_contiguous_inputs():
    """A channel-first hidden state (B, C, T, S) viewed as tokens (B, T, S, C) is read in place."""
    B, C, T, S, To = 2, 24, 6, 10, 4
    h = torch.randn(B, C, T, S, device=DEV, requires_grad=True)
    e_cf = torch.randn(B, C, To, device=DEV, requires_grad=True)
    x, e = h.permute(0, 2, 3, 1), e_cf.transpose(1, 2)
    assert not x.is_contiguous() and not e.is_contiguous()
    w, b = torch.ones(C, device=DEV, requires_grad=True), torch.zeros(C, device=DEV, requires_grad=True)
    gu, ga = torch.randn(B, T, S, C, device=DEV), torch.randn(B, T, S, C, device=DEV)
    outs = _run(triton_cmcpe.norm_add_embedding_triton, x, e, w, b, gu, ga, "nearest")
    refs = _run(norm_add_embedding_reference, x.contiguous(), e.contiguous(), w, b, gu, ga, "nearest")
    _close(outs, refs, torch.float32)


def test_bad_inputs_are_rejected_by_name():
    x = torch.randn(1, 3, 4, 8, device=DEV)
    with pytest.raises(ValueError, match="shape mismatch"):
        triton_cmcpe.norm_add_embedding_triton(x, torch.randn(1, 2, 7, device=DEV), torch.ones(8, device=DEV),
                                               torch.zeros(8, device=DEV))
    with pytest.raises(ValueError, match="expected x"):
        triton_cmcpe.norm_add_embedding_triton(x[0], torch.randn(1, 2, 8, device=DEV), torch.ones(8, device=DEV),
                                               torch.zeros(8, device=DEV))
    with pytest.raises(ValueError, match="resample mode"):
        triton_cmcpe.norm_add_embedding_triton(x, torch.randn(1, 2, 8, device=DEV), torch.ones(8, device=DEV),
                                               torch.zeros(8, device=DEV), mode="cubic")


def test_nearest_resample_is_interpolate_nearest():
    e = torch.randn(2, 7, 5)
    for t in (3, 7, 11, 32):
        ref = F.interpolate(e.transpose(1, 2), size=t, mode="nearest").transpose(1, 2)
        torch.testing.assert_close(resample_time(e, t, "nearest"), ref, rtol=0, atol=0)


def test_compile_variant_matches_reference():
    args = _inputs((2, 5, 6, 16, 3), torch.float32)
    outs = _run(lambda *a, **k: norm_add_embedding(*a, **k, kernel="compile"), *args, "nearest")
    refs = _run(norm_add_embedding_reference, *args, "nearest")
    _close(outs, refs, torch.float32)


def test_joint_model_trains_the_same_with_either_path(system_factory):
    from svgen.data.latents import LatentBatch

    from .conftest import local_steps

    curves = {}
    for kernel in ("reference", "triton"):
        system = system_factory(f"model.cmcpe.kernel={kernel}", seed=0).to(torch.device(DEV))
        g = torch.Generator().manual_seed(0)
        batch = LatentBatch(torch.randn(1, 8, 32, 16, generator=g), torch.randn(1, 4, 8, 8, 8, generator=g),
                            *system.encode_text(["a"])).to(torch.device(DEV))
        curves[kernel] = local_steps(system, batch, steps=3)
    for r, t in zip(curves["reference"], curves["triton"]):
        assert abs(r - t) <= 1e-4 * max(1.0, abs(r)), curves


def test_joint_model_trains_the_same_with_the_fused_glue(system_factory):
    """model.glue_kernel=triton (every fused glue operator: GEGLU, GroupNorm + SiLU, the transformer
    blocks' add + layer norm, the gain norm; their PyTorch implementations on CPU) against
    PyTorch's own ops: the same loss curve over a few optimiser steps."""
    from svgen.data.latents import LatentBatch
    from svgen.models.fusion import FusedBasicTransformerBlock

    from .conftest import local_steps

    curves = {}
    for kernel in ("reference", "triton"):
        system = system_factory(f"model.glue_kernel={kernel}", seed=0)
        blocks = [m for m in system.model.modules() if isinstance(m, FusedBasicTransformerBlock)]
        assert blocks and all(b.kernel == kernel and b._plain() for b in blocks)
        g = torch.Generator().manual_seed(0)
        batch = LatentBatch(torch.randn(1, 8, 32, 16, generator=g), torch.randn(1, 4, 8, 8, 8, generator=g),
                            *system.encode_text(["a"]))
        curves[kernel] = local_steps(system, batch, steps=3)
    for r, t in zip(curves["reference"], curves["triton"]):
        assert abs(r - t) <= 1e-4 * max(1.0, abs(r)), curves


@pytest.mark.parametrize("tile,programs", [(64, 10**6), (64, 7), (32, 20)])
def test_chunked_launch_matches_reference(monkeypatch, tile, programs):
    """S split into several chunks per (b, t), with a last chunk shorter than the others: the
    per-program partial sums of d(emb), d(weight), d(bias) must add up to the reference's."""
    for k in ("fwd_tile", "bwd_tile"):
        monkeypatch.setitem(triton_cmcpe.LAUNCH, k, tile)
    for k in ("fwd_programs", "bwd_programs"):
        monkeypatch.setitem(triton_cmcpe.LAUNCH, k, programs)
    shape = (2, 3, 23, 20, 5)   # C=20 -> 32 lanes: 2 (tile 64) or 1 (tile 32) rows per step
    block_s = triton_cmcpe._block_s(23, 20, tile)
    rows, n = triton_cmcpe._chunks(6, 23, block_s, programs)
    assert n > 1 and 23 % rows != 0
    args = _inputs(shape, torch.float32)
    _close(_run(triton_cmcpe.norm_add_embedding_triton, *args, "linear"),
           _run(norm_add_embedding_reference, *args, "linear"), torch.float32)


# ---------------------------------------------------------------------------------------------
# GEGLU (issue 23): the Triton kernels, the svgen::geglu operator and the models' swap


class _Ops(TorchDispatchMode):
    """The operators that run below autograd, in order."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


GLU_SHAPES = [(1, 1), (3, 7), (2, 5, 1000), (4, 1030)]  # (..., I): odd widths, one past a block


def _glu_inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape[:-1], 2 * shape[-1], generator=g) * 2).to(DEV, dtype)
    dy = torch.randn(*shape, generator=g).to(DEV, dtype)
    return x, dy


@pytest.mark.parametrize("shape", GLU_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_geglu_triton_matches_reference(shape, dtype):
    from svgen.kernels.reference import geglu_backward_reference, geglu_reference

    triton_glu = pytest.importorskip("svgen.kernels.triton_glu")
    x, dy = _glu_inputs(shape, dtype)
    y = triton_glu.geglu_forward_triton(x)
    ref = geglu_reference(x.float())
    assert y.dtype == dtype and y.shape == ref.shape
    assert (y.float() - ref).abs().max() / ref.abs().max().clamp_min(1) <= TOL[dtype]
    xr = x.float().requires_grad_(True)
    (geglu_reference(xr) * dy.float()).sum().backward()
    dx = triton_glu.geglu_backward_triton(dy, x)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert (dx.float() - xr.grad).abs().max() / xr.grad.abs().max().clamp_min(1) <= TOL[dtype]
    # The hand-written backward of the reference (the CPU operator's) agrees with autograd too.
    assert torch.allclose(geglu_backward_reference(dy.float(), x.float()), xr.grad, atol=1e-5, rtol=1e-5)


def test_geglu_triton_reads_strided_rows():
    """A projection sliced out of a wider one: rows with a stride, the width unit-stride."""
    triton_glu = pytest.importorskip("svgen.kernels.triton_glu")
    from svgen.kernels.reference import geglu_reference

    wide = torch.randn(6, 50, device=DEV)
    x = wide[:, 3:43]  # (6, 40): row stride 50
    assert not x.is_contiguous()
    assert torch.allclose(triton_glu.geglu_forward_triton(x), geglu_reference(x), atol=2e-6)
    dy = torch.randn(6, 20, device=DEV)
    xr = x.detach().clone().requires_grad_(True)
    (geglu_reference(xr) * dy).sum().backward()
    assert torch.allclose(triton_glu.geglu_backward_triton(dy, x), xr.grad, atol=2e-6)


def test_geglu_operator_matches_autograd_and_moves_one_pass_on_meta():
    from svgen.kernels import geglu
    from svgen.kernels.reference import geglu_reference

    x = torch.randn(3, 4, 26, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(3, 4, 13, dtype=torch.float64)
    (g_op,) = torch.autograd.grad((geglu(x, kernel="triton") * dy).sum(), x)
    (g_ref,) = torch.autograd.grad((geglu_reference(x) * dy).sum(), x)
    assert torch.allclose(geglu(x, kernel="triton"), geglu_reference(x), atol=1e-12)
    assert torch.allclose(g_op, g_ref, atol=1e-5)
    # One operator each way on the meta device (what profile_step.py counts)
    xm = torch.empty(2, 8, 64, device="meta", requires_grad=True)
    with _Ops() as ops:
        y = geglu(xm, kernel="triton")
        y.backward(torch.empty_like(y))
    assert y.shape == (2, 8, 32) and xm.grad.shape == xm.shape
    assert [n for n in ops.seen if n not in ("ones_like", "empty_like", "detach")] == ["geglu", "geglu_backward"]


def test_models_geglus_swap_to_the_kernel_with_the_same_weights_and_outputs():
    from diffusers.models.attention import FeedForward

    from svgen.models.encoders import TokenShiftFeedForward
    from svgen.models.fusion import FusedGEGLU, fuse_glue

    torch.manual_seed(0)
    ff, shift = FeedForward(16, activation_fn="geglu"), TokenShiftFeedForward(12)
    nn_ = torch.nn.ModuleList([ff, shift])
    keys = list(nn_.state_dict())
    x, xs = torch.randn(2, 5, 16), torch.randn(1, 3, 2, 2, 12)
    before = ff(x), shift(xs)
    counts = fuse_glue([nn_], "triton")
    assert counts["geglu"] == 1 and counts["modules"] == 2  # the token-shift feed-forward and its gain norm
    assert type(ff.net[0]) is FusedGEGLU and ff.net[0].kernel == "triton" and shift.glue_kernel == "triton"
    assert shift.norm.glue_kernel == "triton"
    assert list(nn_.state_dict()) == keys
    after = ff(x), shift(xs)
    for b, a in zip(before, after):
        assert torch.allclose(a, b, atol=1e-6)
    # gradients flow to the projection through the operator
    ff(x).sum().backward()
    assert ff.net[0].proj.weight.grad is not None and ff.net[0].proj.weight.grad.abs().sum() > 0


def test_unit_output_scales_are_skipped_bit_identically_and_others_kept():
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    from svgen.models.fusion import UNIT, fuse_glue

    torch.manual_seed(0)
    res, attn, halved = ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=16, groups=4), \
        Attention(8, heads=2, dim_head=4), ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=16, groups=4,
                                                         output_scale_factor=2.0)
    x, temb, seq = torch.randn(2, 8, 4, 4), torch.randn(2, 16), torch.randn(2, 6, 8)
    before = res(x, temb), attn(seq), halved(x, temb)
    counts = fuse_glue([torch.nn.ModuleList([res, attn, halved])], "reference")
    assert counts == {"geglu": 0, "resnets": 2, "transformer_blocks": 0, "motion_norms": 0, "modules": 0,
                      "unit_scales": 2}
    assert res.output_scale_factor is UNIT and attn.rescale_output_factor is UNIT and halved.output_scale_factor == 2.0
    t = torch.randn(3)
    assert (t / UNIT) is t and float(UNIT) == 1.0 and UNIT == 1.0
    after = res(x, temb), attn(seq), halved(x, temb)
    for b, a in zip(before, after):
        assert torch.equal(a, b)


# GroupNorm + SiLU (issue 23)

GN_SHAPES = [((2, 8, 5, 3), 4), ((1, 6, 7), 3), ((3, 4, 1100), 2), ((1, 32, 2, 2, 2), 32)]  # (x shape, groups)


@pytest.mark.parametrize("shape,groups", GN_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_norm_silu_triton_matches_reference(shape, groups, dtype):
    triton_gn = pytest.importorskip("svgen.kernels.triton_gn")
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(*shape, generator=g) * 3 + 1).to(DEV, dtype)
    w = (1 + 0.3 * torch.randn(shape[1], generator=g)).to(DEV, dtype)
    b = (0.2 * torch.randn(shape[1], generator=g)).to(DEV, dtype)
    dy = torch.randn(*shape, generator=g).to(DEV, dtype)
    y, mean, rstd = triton_gn.group_norm_silu_forward_triton(x, w, b, groups, 1e-5)
    xr, wr, br = (t.float().requires_grad_(True) for t in (x, w, b))
    ref = F.silu(F.group_norm(xr, groups, wr, br, 1e-5))
    (ref * dy.float()).sum().backward()
    assert y.dtype == dtype and mean.shape == (shape[0] * groups,)
    for name, got, want in (("y", y, ref.detach()),) + tuple(zip(
            ("dx", "dw", "db"), triton_gn.group_norm_silu_backward_triton(dy, x, w, b, mean, rstd, groups),
            (xr.grad, wr.grad, br.grad))):
        err = (got.float() - want).abs().max() / want.abs().max().clamp_min(1)
        assert err <= TOL[dtype] * (4 if name in ("dw", "db") else 1), f"{name}: {err:.2e}"


def test_group_norm_silu_operator_matches_autograd_and_is_one_op_each_way_on_meta():
    from svgen.kernels import group_norm_silu

    norm = torch.nn.GroupNorm(3, 6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    got = group_norm_silu(x, norm, kernel="triton")
    want = F.silu(norm(x))
    assert torch.allclose(got, want, atol=1e-6)
    g_got = torch.autograd.grad((got * dy).sum(), [x, norm.weight, norm.bias])
    g_want = torch.autograd.grad((want * dy).sum(), [x, norm.weight, norm.bias])
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, atol=1e-5)

    frozen = torch.nn.GroupNorm(4, 8, device="meta").requires_grad_(False)
    xm = torch.empty(2, 8, 3, 3, device="meta", requires_grad=True)
    with _Ops() as ops:
        y = group_norm_silu(xm, frozen, kernel="triton")
        y.backward(torch.empty_like(y))
    assert xm.grad.shape == xm.shape and frozen.weight.grad is None
    assert [n for n in ops.seen if n not in ("ones_like", "empty_like", "detach")] == \
        ["group_norm_silu", "group_norm_silu_backward"]


@pytest.mark.parametrize("channels", [(8, 8), (8, 16)])
def test_fused_resnet_block_is_diffusers_block(channels):
    from diffusers.models.resnet import ResnetBlock2D

    from svgen.models.fusion import FusedResnetBlock2D, fuse_glue

    torch.manual_seed(0)
    block = ResnetBlock2D(in_channels=channels[0], out_channels=channels[1], temb_channels=12, groups=4)
    with torch.no_grad():
        block.conv2.weight.normal_()  # not the zero init: every path shows in the output
    x, temb = torch.randn(2, channels[0], 5, 5, requires_grad=True), torch.randn(2, 12)
    want = block(x, temb)
    (gx_want,) = torch.autograd.grad(want.sum(), x)
    fuse_glue([block], "auto")
    assert type(block) is FusedResnetBlock2D
    got = block(x, temb)  # CPU: PyTorch's own ops in the same order, bit for bit
    assert torch.equal(got, want)
    block.kernel = "triton"  # the fused operator (its PyTorch implementation on CPU)
    got = block(x, temb)
    (gx_got,) = torch.autograd.grad(got.sum(), x)
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(gx_got, gx_want, atol=1e-4)


# Residual add + layer norm (+ position embedding), and the encoders' gain norm (issue 23)

RN_CASES = [  # (shape, T of pe or None, residual, weight, bias, clamp)
    ((3, 5, 13), 5, True, True, True, False),      # a motion block's add + norm + position embedding
    ((2, 7, 300), None, True, True, True, False),  # a spatial block's add + norm
    ((2, 7, 300), 7, False, True, True, False),    # a block's first norm (no residual) with pe
    ((4, 1, 9, 1030), None, False, True, False, True),  # gain norm: one past a power of two, no bias
    ((1, 1, 1), None, True, False, False, True),   # one channel: the variance clamps
]


def _rn_inputs(shape, t, res, wt, bias, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s, scale=1.0, shift=0.0: (torch.randn(*s, generator=g) * scale + shift).to(DEV, dtype)  # noqa: E731
    x = mk(*shape, scale=2, shift=0.3)
    r = mk(*shape) if res else None
    w = mk(shape[-1], scale=0.2, shift=1) if wt else None
    b = mk(shape[-1], scale=0.1) if bias else None
    pe = mk(t, shape[-1]) if t else None
    return x, r, w, b, pe, mk(*shape), (mk(*shape) if res else None)


@pytest.mark.parametrize("case", RN_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_norm_triton_matches_reference(case, dtype):
    triton_rn = pytest.importorskip("svgen.kernels.triton_rownorm")
    from svgen.kernels.reference import row_norm_backward_reference, row_norm_reference

    shape, t, res, wt, bias, clamp = case
    x, r, w, b, pe, dy, ds = _rn_inputs(shape, t, res, wt, bias, dtype)
    if clamp and shape[-1] > 1:  # one near-constant row: its variance (~1e-6) is clamped to eps
        x.view(-1, shape[-1])[0] = (0.25 + 1e-3 * torch.randn(shape[-1], generator=torch.Generator().manual_seed(3))
                                    ).to(DEV, dtype)
    s, y, mean, rstd = triton_rn.row_norm_forward_triton(x, r, w, b, pe, 1e-5, clamp)
    s_ref, y_ref, mean_ref, rstd_ref = row_norm_reference(x, r, w, b, pe, eps=1e-5, clamp=clamp)
    src = s_ref if res else x
    got = [("y", y, y_ref), ("mean", mean, mean_ref), ("rstd", rstd, rstd_ref)]
    if res:
        got.append(("s", s, s_ref))
    dx, dw, db = triton_rn.row_norm_backward_triton(dy, ds, src, w, mean, rstd, 1e-5, clamp, True)
    dx_ref, dw_ref, db_ref = row_norm_backward_reference(dy, ds, src, w, b, eps=1e-5, clamp=clamp)
    got.append(("dx", dx, dx_ref))
    if wt:
        got.append(("dw", dw, dw_ref))
    if bias:
        got.append(("db", db, db_ref))
    assert y.dtype == dtype and dx.dtype == dtype
    for name, a, want in got:
        err = (a.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1)
        assert err <= TOL[dtype] * (4 if name in ("dw", "db") else 1), f"{name}: {err:.2e}"


def test_add_layer_norm_operator_matches_eager_and_absorbs_the_stream_gradient():
    from svgen.kernels import add_layer_norm

    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.2, 0.2)
    x, r = (torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True) for _ in range(2))
    pe = torch.randn(4, 6, dtype=torch.float64)
    params = [x, r, norm.weight, norm.bias]

    def loss(s, y):  # the stream feeds on (as the next block does) and the norm feeds a branch
        return (s.sin() * 3).sum() + (y.cos() * torch.arange(6.0, dtype=torch.float64)).sum()

    want = (x + r, norm(x + r) + pe)
    got = add_layer_norm(x, r, norm, pe, kernel="triton")
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-12)
    for a, b in zip(torch.autograd.grad(loss(*got), params), torch.autograd.grad(loss(*want), params)):
        assert torch.allclose(a, b, atol=1e-10)
    # Without a residual the stream is x itself, and only the norm's gradient comes back through it.
    s0, y0 = add_layer_norm(x, None, norm, None, kernel="triton")
    assert s0 is x and torch.allclose(y0, norm(x), atol=1e-12)

    # On the meta device: one operator forward, one backward, and no separate addition of the
    # skip and norm gradients (the autograd engine's accumulation) for a frozen norm.
    frozen = torch.nn.LayerNorm(8, device="meta").requires_grad_(False)
    xm, rm = (torch.empty(2, 3, 8, device="meta", requires_grad=True) for _ in range(2))
    with _Ops() as ops:  # x and r come from other operators, as in a block (not leaves)
        s, y = add_layer_norm(xm * 1, rm * 1, frozen, None, kernel="triton")
        (s, y) = (s * 1, y * 1)
        torch.autograd.backward([s, y], [torch.empty_like(s), torch.empty_like(y)])
    assert xm.grad.shape == xm.shape and frozen.weight.grad is None
    assert [n for n in ops.seen if n not in ("ones_like", "empty_like", "detach", "mul")] == \
        ["row_norm", "row_norm_backward"]


def test_gain_norm_operator_matches_the_encoders_eager_norm_and_its_clamp():
    from svgen.models.encoders import GainNorm

    norm = GainNorm(5).double()
    with torch.no_grad():
        norm.g.uniform_(0.5, 1.5)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    # A near-constant row: its variance (about 1e-8) is clamped to eps, and no gradient flows through it.
    x[0, 0] = 0.25 + 1e-4 * torch.randn(5, dtype=torch.float64)
    x.requires_grad_(True)
    dy = torch.randn(3, 4, 5, dtype=torch.float64)
    want = norm(x)
    g_want = torch.autograd.grad((want * dy).sum(), [x, norm.g])
    norm.glue_kernel = "triton"
    got = norm(x)
    g_got = torch.autograd.grad((got * dy).sum(), [x, norm.g])
    assert torch.allclose(got, want, atol=1e-10)
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, atol=1e-8)


@pytest.mark.parametrize("motion", [False, True])
def test_fused_transformer_block_is_diffusers_block(motion):
    from diffusers.models.attention import BasicTransformerBlock

    from svgen.models.fusion import FusedBasicTransformerBlock, fuse_glue

    torch.manual_seed(0)
    kw = (dict(positional_embeddings="sinusoidal", num_positional_embeddings=12, double_self_attention=True)
          if motion else dict(cross_attention_dim=24))
    block = BasicTransformerBlock(16, 2, 8, activation_fn="geglu", **kw).double()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))  # not the init: every path shows in the output
    x = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    context = None if motion else torch.randn(3, 5, 24, dtype=torch.float64)
    params = [x, *block.parameters()]
    want = block(x, encoder_hidden_states=context)
    g_want = torch.autograd.grad((want ** 2).sum(), params)
    counts = fuse_glue([block], "reference")
    assert type(block) is FusedBasicTransformerBlock and counts["transformer_blocks"] == 1
    assert torch.equal(block(x, encoder_hidden_states=context), want)  # diffusers' own forward, bit for bit
    block.kernel = "triton"
    block.ff.net[0].kernel = "reference"  # this test is about the norms: GEGLU's op keeps fp32 inside
    got = block(x, encoder_hidden_states=context)
    g_got = torch.autograd.grad((got ** 2).sum(), params)
    assert torch.allclose(got, want, atol=1e-12)
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("shape", [(2, 5, 3, 2, 14), (1, 1, 2, 6), (2, 4, 7, 2050), (1, 3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_geglu_token_shift_triton_matches_reference(shape, dtype):
    triton_glu = pytest.importorskip("svgen.kernels.triton_glu")
    from svgen.kernels.reference import geglu_backward_reference, geglu_reference, time_shift_reference, \
        time_unshift_reference

    g = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=g).to(DEV, dtype)
    dy = torch.randn(*shape[:-1], shape[-1] // 2, generator=g).to(DEV, dtype)
    y = triton_glu.geglu_forward_triton(x, time_shift=True)
    dx = triton_glu.geglu_backward_triton(dy, x, time_shift=True)
    want_y = time_shift_reference(geglu_reference(x.float()))
    want_dx = geglu_backward_reference(time_unshift_reference(dy.float()), x.float())
    if shape[1] > 1 and shape[-1] >= 4:  # the shifted half of frame 0 is zero, frame 1 carries frame 0's
        half = y.shape[-1] - y.shape[-1] // 2
        assert not y[:, 0, ..., half:].any() and y[:, 1, ..., half:].abs().sum() > 0
    for name, got, want in (("y", y, want_y), ("dx", dx, want_dx)):
        err = (got.float() - want).abs().max() / want.abs().max().clamp_min(1)
        assert err <= TOL[dtype], f"{name}: {err:.2e}"


def test_geglu_token_shift_operator_is_the_in_place_shift_and_one_op_each_way():
    from svgen.kernels import geglu_time_shift

    x = torch.randn(2, 5, 3, 2, 14, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 5, 3, 2, 7, dtype=torch.float64)
    want = geglu_time_shift(x, kernel="reference")  # GEGLU, then the half shifted in place
    got = geglu_time_shift(x, kernel="triton")
    assert torch.allclose(got, want, atol=1e-12)
    g_want, g_got = (torch.autograd.grad((y * dy).sum(), x)[0] for y in (want, got))
    assert torch.allclose(g_got, g_want, atol=1e-6)  # the GEGLU backward keeps fp32 inside
    xm = torch.empty(2, 4, 3, 3, 10, device="meta", requires_grad=True)
    with _Ops() as ops:
        y = geglu_time_shift(xm * 1, kernel="triton")
        y.backward(torch.empty_like(y))
    assert [n for n in ops.seen if n not in ("ones_like", "empty_like", "detach", "mul")] == \
        ["geglu_shift", "geglu_shift_backward"]


def test_motion_module_adds_its_skip_without_a_copy_and_bit_for_bit():
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    from svgen.models.fusion import FusedAnimateDiffTransformer3D, fuse_glue

    torch.manual_seed(0)
    motion = AnimateDiffTransformer3D(num_attention_heads=2, attention_head_dim=4, in_channels=8, norm_num_groups=4,
                                      positional_embeddings="sinusoidal", num_positional_embeddings=8,
                                      double_self_attention=True)
    with torch.no_grad():
        motion.proj_out.weight.normal_()  # not the zero init: the blocks show in the output
    x = torch.randn(2 * 5, 8, 3, 4, requires_grad=True)
    want = motion(x, num_frames=5)
    (g_want,) = torch.autograd.grad((want ** 2).sum(), x)
    fuse_glue([motion], "reference")
    assert type(motion) is FusedAnimateDiffTransformer3D
    with _Ops() as ops:
        got = motion(x, num_frames=5)
    (g_got,) = torch.autograd.grad((got ** 2).sum(), x)
    assert torch.equal(got, want) and torch.equal(g_got, g_want) and got.is_contiguous()
    assert ops.seen.count("clone") == 2  # the norm's contiguous input and the tokens, no third for the output


def test_proxy_puts_the_fused_operators_in_the_category_they_replace(monkeypatch):
    """benchmarks/profile_step.py's categories: svgen's fused operators are normalisation and
    activation (geglu once fell to element-wise through the anchored 'ge' comparison)."""
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from profile_step import category

    assert [category(n) for n in ("geglu", "geglu_shift_backward", "gelu", "silu")] == ["activation"] * 4
    assert [category(n) for n in ("row_norm", "row_norm_backward", "group_norm_silu", "native_layer_norm")] == \
        ["normalisation"] * 4
    assert [category(n) for n in ("add", "ge", "mul")] == ["element-wise"] * 3
    assert category("clone") == "copy/cast" and category("cat") == "layout (cat/stack/pad/index)"
