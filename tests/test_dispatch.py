"""Kernel dispatch by config and device, with Triton present and absent (this file does not need
the triton extra; the kernel tests in test_kernels.py do)."""

import pytest
import torch

from svgen.kernels import dispatch
from svgen.kernels.dispatch import resolve_kernel


@pytest.mark.parametrize("has_triton,on_cuda", [(True, "triton"), (False, "reference")])
def test_auto_picks_triton_on_cuda_only_when_it_loads(monkeypatch, has_triton, on_cuda):
    monkeypatch.setattr(dispatch, "triton_importable", lambda: has_triton)
    assert resolve_kernel("auto", torch.device("cuda")) == on_cuda
    assert resolve_kernel("auto", torch.device("cpu")) == "reference"


def test_explicit_choices_are_kept_and_unknown_ones_refused():
    assert resolve_kernel("compile", torch.device("cpu")) == "compile"
    assert resolve_kernel("reference", torch.device("cuda")) == "reference"
    assert resolve_kernel("triton", torch.device("cpu")) == "triton"
    with pytest.raises(ValueError, match="unknown kernel"):
        resolve_kernel("cuda-magic", torch.device("cpu"))


def test_triton_importable_reports_the_extra():
    try:
        import triton  # noqa: F401
        installed = True
    except ImportError:
        installed = False
    assert dispatch.triton_importable() == installed
