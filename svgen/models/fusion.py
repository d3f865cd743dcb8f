"""Less glue in the training step's frozen bases and added modules (issue 23), maths unchanged.

- Every GEGLU feed-forward on one implementation (``model.glue_kernel``): the bases' transformer
  blocks, the AnimateDiff motion modules and the CMC-PE blocks use diffusers' ``GEGLU`` (Linear,
  then h * GELU(gate)); the video encoder's token-shift feed-forward has its own. They all go
  through ``svgen.kernels.geglu``: on CUDA one fused Triton kernel forward and one backward
  instead of PyTorch's GELU, multiplies and concatenation.
- Every resnet's GroupNorm + SiLU likewise through ``svgen.kernels.group_norm_silu`` (the bases'
  ``ResnetBlock2D`` in its plain form, and the encoders'), so the normalised tensor is never
  written and read back.
- Every transformer block's residual stream (``BasicTransformerBlock``: the bases' spatial
  transformers and the AnimateDiff motion modules) through ``svgen.kernels.add_layer_norm`` when
  ``kernel`` is 'triton': each residual addition fused with the layer norm that reads its result
  (and with the motion modules' sinusoidal position embedding, added inside the first two norms),
  one operator forward and one backward whose backward takes the stream's gradient in, so the
  autograd engine no longer sums the skip and the norm paths in a separate pass. Any other block
  form (ada norms, GLIGEN, chunked feed-forward) runs diffusers' own forward.
- diffusers divides every attention output by ``rescale_output_factor`` and every resnet output
  by ``output_scale_factor``, both 1.0 in SD-1.5, AnimateDiff and AudioLDM: a full read and write
  of the activation forward and again backward, for nothing. A factor of exactly 1 becomes
  :data:`UNIT`, whose division returns the tensor itself (bit-identical: x / 1.0 == x). Regions
  that torch.compile traces get 1.0 back (:func:`plain_scales`): the compiler fuses the division
  into its neighbours, and the object would break its graph.

Parameters and state_dict keys are unchanged. The motion modules' group norm also gets a
contiguous input (:class:`ContiguousGroupNorm`), so that torch.compile can trace them on CPU, and
their output is added to the skip without a contiguous copy first
(:class:`FusedAnimateDiffTransformer3D`, bit for bit).
"""

from __future__ import annotations

import torch
from diffusers.models.activations import GEGLU
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

from svgen.kernels import add_layer_norm, geglu, group_norm_silu, resolve_kernel


class FusedGEGLU(GEGLU):
    """diffusers' GEGLU with its activation on ``svgen.kernels.geglu`` (``kernel`` picks it)."""

    kernel: str = "reference"

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return geglu(self.proj(hidden_states), kernel=self.kernel)


class FusedResnetBlock2D(ResnetBlock2D):
    """diffusers' ResnetBlock2D with both GroupNorm + SiLU pairs on ``svgen.kernels.group_norm_silu``
    when the block has the plain form every base here uses (no up/down-sampling, the time
    embedding added before norm2, SiLU); any other form runs diffusers' own forward."""

    kernel: str = "reference"

    def _plain(self) -> bool:
        return (self.upsample is None and self.downsample is None and self.time_embedding_norm == "default"
                and isinstance(self.nonlinearity, torch.nn.SiLU) and self.norm1.affine and self.norm2.affine)

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or not self._plain():
            return super().forward(input_tensor, temb, *args, **kwargs)
        h = self.conv1(group_norm_silu(input_tensor, self.norm1, kernel=self.kernel))
        if self.time_emb_proj is not None and temb is not None:
            t = temb if self.skip_time_act else self.nonlinearity(temb)
            h = h + self.time_emb_proj(t)[:, :, None, None]
        h = self.conv2(self.dropout(group_norm_silu(h, self.norm2, kernel=self.kernel)))
        skip = input_tensor
        if self.conv_shortcut is not None:
            skip = self.conv_shortcut(input_tensor.contiguous() if self.training else input_tensor)
        return (skip + h) / self.output_scale_factor


class FusedBasicTransformerBlock(BasicTransformerBlock):
    """diffusers' BasicTransformerBlock with its residual additions fused into the next layer
    norm (``svgen.kernels.add_layer_norm``) when ``kernel`` resolves to 'triton' and the block has
    the plain pre-norm form every base here uses; diffusers' own forward otherwise (bit for bit)."""

    kernel: str = "reference"

    def _plain(self) -> bool:
        norms = [self.norm1, self.norm3] + ([self.norm2] if self.attn2 is not None else [])
        return (self.norm_type == "layer_norm" and not self.only_cross_attention and self._chunk_size is None
                and not hasattr(self, "fuser") and all(type(n) is torch.nn.LayerNorm for n in norms)
                and (self.pos_embed is None or type(self.pos_embed) is SinusoidalPositionalEmbedding))

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                timestep=None, cross_attention_kwargs: dict | None = None, class_labels=None,
                added_cond_kwargs=None) -> torch.Tensor:
        kw = dict(cross_attention_kwargs or {})
        if (resolve_kernel(self.kernel, hidden_states.device) != "triton" or hidden_states.ndim != 3
                or "gligen" in kw or not self._plain()):
            return super().forward(hidden_states, attention_mask=attention_mask,
                                   encoder_hidden_states=encoder_hidden_states,
                                   encoder_attention_mask=encoder_attention_mask, timestep=timestep,
                                   cross_attention_kwargs=cross_attention_kwargs, class_labels=class_labels,
                                   added_cond_kwargs=added_cond_kwargs)
        kw.pop("scale", None)  # deprecated and ignored by diffusers' forward too
        pe = self.pos_embed.pe[0, :hidden_states.shape[1]] if self.pos_embed is not None else None
        h, y = add_layer_norm(hidden_states, None, self.norm1, pe, kernel="triton")
        a = self.attn1(y, encoder_hidden_states=None, attention_mask=attention_mask, **kw)
        if self.attn2 is not None:
            h, y = add_layer_norm(h, a, self.norm2, pe, kernel="triton")
            a = self.attn2(y, encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask, **kw)
        h, y = add_layer_norm(h, a, self.norm3, None, kernel="triton")
        return h + self.ff(y)


class FusedAnimateDiffTransformer3D(AnimateDiffTransformer3D):
    """diffusers' motion module with its output added to the skip in the frame layout directly:
    diffusers makes the permuted projection contiguous and then adds the skip (a full copy of the
    activation forward, for nothing); here the addition reads the permuted view. Bit for bit the
    same values; the blocks and norms are the module's own."""

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                timestep=None, class_labels=None, num_frames: int = 1, cross_attention_kwargs: dict | None = None
                ) -> torch.Tensor:
        batch_frames, channel, height, width = hidden_states.shape
        batch = batch_frames // num_frames
        residual = hidden_states
        h = hidden_states.reshape(batch, num_frames, channel, height, width).permute(0, 2, 1, 3, 4)
        h = self.norm(h)
        h = h.permute(0, 3, 4, 2, 1).reshape(batch * height * width, num_frames, channel)
        h = self.proj_in(input=h)
        for block in self.transformer_blocks:
            h = block(hidden_states=h, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                      cross_attention_kwargs=cross_attention_kwargs, class_labels=class_labels)
        h = self.proj_out(input=h)
        # The skip first: the sum takes its (contiguous) layout, so the view below is free.
        out = residual.reshape(batch, num_frames, channel, height, width) + \
            h.reshape(batch, height, width, num_frames, channel).permute(0, 3, 4, 1, 2)
        return out.reshape(batch_frames, channel, height, width)


class ContiguousGroupNorm(torch.nn.GroupNorm):
    """GroupNorm of a contiguous copy of its input. AnimateDiff's motion modules normalise a
    permuted (B, C, F, H, W) view; eager PyTorch copies it to contiguous inside group_norm, but a
    traced graph (aot_autograd: torch.compile's inductor and aot_eager backends) hands the view
    to the CPU kernel, which refuses it. The same copy either way: eager results are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous())


class UnitScale:
    """A scale factor of exactly 1 that dividing by skips: ``tensor / UNIT`` is ``tensor``."""

    def __rtruediv__(self, other):
        return other

    def __float__(self) -> float:
        return 1.0

    def __eq__(self, other) -> bool:
        return other == 1.0 or isinstance(other, UnitScale)

    def __hash__(self) -> int:
        return hash(1.0)

    def __repr__(self) -> str:
        return "UnitScale(1.0)"


UNIT = UnitScale()
_UNIT_ATTRS = ("rescale_output_factor", "output_scale_factor")


# diffusers' module -> its fused subclass (same parameters, a ``kernel`` attribute), counted as.
_SWAPS = ((GEGLU, FusedGEGLU, "geglu"), (ResnetBlock2D, FusedResnetBlock2D, "resnets"),
          (BasicTransformerBlock, FusedBasicTransformerBlock, "transformer_blocks"))


def fuse_glue(modules: list[torch.nn.Module], kernel: str) -> dict[str, int]:
    """Point every GEGLU, resnet GroupNorm + SiLU, transformer block and svgen module under
    ``modules`` at ``kernel``, give the motion modules their copy-free skip, and make every unit
    output scale :data:`UNIT`; returns how many of each were changed."""
    counts = {"geglu": 0, "resnets": 0, "transformer_blocks": 0, "motion_norms": 0, "modules": 0, "unit_scales": 0}
    for root in modules:
        for m in root.modules():
            swap = next(((fused, name) for base, fused, name in _SWAPS if type(m) in (base, fused)), None)
            if swap is not None:
                m.__class__ = swap[0]
                m.kernel = kernel
                counts[swap[1]] += 1
            elif type(m) in (AnimateDiffTransformer3D, FusedAnimateDiffTransformer3D):
                m.__class__ = FusedAnimateDiffTransformer3D
                if type(m.norm) is torch.nn.GroupNorm:
                    m.norm.__class__ = ContiguousGroupNorm
                counts["motion_norms"] += 1
            elif hasattr(type(m), "glue_kernel"):  # svgen's own modules (encoders.py)
                m.glue_kernel = kernel
                counts["modules"] += 1
            for attr in _UNIT_ATTRS:
                if isinstance(getattr(m, attr, None), (int, float)) and getattr(m, attr) == 1.0:
                    setattr(m, attr, UNIT)
                    counts["unit_scales"] += 1
    return counts


def plain_scales(module: torch.nn.Module) -> int:
    """Give every :data:`UNIT` scale under ``module`` its float 1.0 back (before torch.compile
    traces it: dynamo cannot put the object in a graph); returns how many."""
    count = 0
    for m in module.modules():
        for attr in _UNIT_ATTRS:
            if isinstance(getattr(m, attr, None), UnitScale):
                setattr(m, attr, 1.0)
                count += 1
    return count
