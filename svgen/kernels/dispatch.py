"""Pick the implementation of the CMC-PE hot path by config and device; log the choice once."""

from __future__ import annotations

import logging

import torch

from svgen.kernels.reference import geglu_reference, norm_add_embedding_reference

log = logging.getLogger(__name__)
_compiled = None
_logged: set[str] = set()


def triton_importable() -> bool:
    """Whether the Triton kernel module loads (the optional ``triton`` extra is installed)."""
    try:
        import svgen.kernels.triton_cmcpe  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_kernel(requested: str, device: torch.device) -> str:
    """'auto' -> 'triton' on CUDA when Triton is importable, else 'reference'; inside a region
    that torch.compile is tracing, 'auto' and 'compile' take the reference, which the compiler
    fuses with the operations around it (an opaque kernel would split the region)."""
    if requested not in ("auto", "reference", "compile", "triton"):
        raise ValueError(f"unknown kernel {requested!r}; use auto, reference, compile or triton")
    if requested in ("auto", "compile") and torch.compiler.is_compiling():
        return "reference"
    if requested != "auto":
        return requested
    return "triton" if device.type == "cuda" and triton_importable() else "reference"


def norm_add_embedding(x: torch.Tensor, emb: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *,
                       eps: float = 1e-5, mode: str = "nearest", kernel: str = "auto"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, a) = (LN(x), LN(x) + resample(emb)); see ``reference.norm_add_embedding_reference``."""
    global _compiled
    impl = resolve_kernel(kernel, x.device)
    if impl not in _logged and not torch.compiler.is_compiling():
        log.info("CMC-PE hot path: %s (requested %s, device %s)", impl, kernel, x.device.type)
        _logged.add(impl)
    if impl == "reference":
        return norm_add_embedding_reference(x, emb, weight, bias, eps=eps, mode=mode)
    if impl == "compile":
        if _compiled is None:
            _compiled = torch.compile(norm_add_embedding_reference, dynamic=True)
        return _compiled(x, emb, weight, bias, eps=eps, mode=mode)
    from svgen.kernels.triton_cmcpe import norm_add_embedding_triton

    return norm_add_embedding_triton(x, emb, weight, bias, eps=eps, mode=mode)


def geglu(x: torch.Tensor, *, kernel: str = "auto") -> torch.Tensor:
    """h * GELU(gate) for x = [h ; gate] (..., 2I) -> (..., I): one fused operator
    (``torch.ops.svgen.geglu``: Triton on CUDA) for 'triton', PyTorch's GELU and multiply for
    'reference' (and inside a compiled region, where the compiler fuses them itself)."""
    impl = resolve_kernel(kernel, x.device)
    if impl == "triton":
        from svgen.kernels.ops import geglu_op

        return geglu_op(x)
    return geglu_reference(x)


def geglu_time_shift(x: torch.Tensor, *, kernel: str = "auto") -> torch.Tensor:
    """GEGLU of x (B, T, ..., 2I), then the output's last I // 2 channels moved one frame forward
    in time (frame k gets frame k-1, zeros first): the video encoder's token shift. One fused
    operator (``torch.ops.svgen.geglu_shift``) for 'triton'; otherwise GEGLU and the shift in place
    on its product (one copy of that half)."""
    if resolve_kernel(kernel, x.device) == "triton":
        from svgen.kernels.ops import geglu_shift_op

        return geglu_shift_op(x)
    h = geglu_reference(x)
    half = h.shape[-1] - h.shape[-1] // 2
    shift = h[..., half:]
    shift[:, 1:] = shift[:, :-1].clone()
    shift[:, 0] = 0
    return h


def group_norm_silu(x: torch.Tensor, norm: torch.nn.GroupNorm, *, kernel: str = "auto") -> torch.Tensor:
    """SiLU(norm(x)) for an affine GroupNorm ``norm``: one fused operator
    (``torch.ops.svgen.group_norm_silu``: Triton on CUDA) for 'triton', PyTorch's group norm and
    SiLU (in the input's dtype, as eager code runs them) otherwise."""
    impl = resolve_kernel(kernel, x.device)
    if impl == "triton" and norm.affine:
        from svgen.kernels.ops import group_norm_silu_op

        return group_norm_silu_op(x, norm.weight, norm.bias, norm.num_groups, norm.eps)[0]
    return torch.nn.functional.silu(norm(x))


def add_layer_norm(x: torch.Tensor, r: torch.Tensor | None, norm: torch.nn.LayerNorm, pe: torch.Tensor | None = None,
                   *, kernel: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(s, y) = (x + r, norm(x + r) + pe) for a LayerNorm ``norm`` over the last dim (s is x
    without r; pe (T, C) broadcast over the rows' time axis, -2): one fused operator
    (``torch.ops.svgen.row_norm``: Triton on CUDA, its backward absorbing the stream's gradient)
    for 'triton', PyTorch's add, layer norm and add otherwise."""
    if resolve_kernel(kernel, x.device) == "triton":
        from svgen.kernels.ops import row_norm_op

        s, y, _, _ = row_norm_op(x, r, norm.weight, norm.bias, pe, norm.eps, False)
        return (s if r is not None else x), y
    s = x + r if r is not None else x
    y = norm(s)
    return s, (y + pe if pe is not None else y)


def gain_norm(x: torch.Tensor, gain: torch.Tensor, *, eps: float, dim: int = -1, kernel: str = "auto") -> torch.Tensor:
    """(x - mean) * rsqrt(max(var, eps)) * gain over ``dim`` (the encoders' GainNorm): one fused
    operator (``torch.ops.svgen.row_norm``, fp32 maths) for 'triton' over the last dim, PyTorch's
    ops in the input's dtype otherwise."""
    if resolve_kernel(kernel, x.device) == "triton" and dim in (-1, x.ndim - 1):
        from svgen.kernels.ops import row_norm_op

        return row_norm_op(x, None, gain, None, None, eps, True)[1]
    var, mean = torch.var_mean(x, dim=dim, unbiased=False, keepdim=True)
    shape = [1] * x.ndim
    shape[dim] = -1
    # The small factors first: one pass over x for the scaling, not two (issue 23).
    return (x - mean) * (var.clamp(min=eps).rsqrt() * gain.reshape(shape))
