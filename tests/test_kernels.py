"""The fused CMC-PE op: Triton (interpreted on CPU, native on CUDA) and torch.compile against the
PyTorch reference, forward and backward, over odd shapes, dtypes, resample modes and layouts."""

import pytest
import torch
import torch.nn.functional as F

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
