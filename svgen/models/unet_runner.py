"""Run a diffusers UNet block by block, so the joint model can act between blocks.

Each runner reproduces its class's ``forward`` (diffusers 0.42: ``UNet2DConditionModel`` for
AudioLDM, ``UNetMotionModel`` for AnimateDiff) split into ``begin / down(i) / mid / up(i) / end``.
Between calls the caller may replace ``state.h``; after a down block, the replacement also
becomes that block's last skip tensor (docs/method.md, "Added modules" 3). With no edits the output
equals the plain diffusers forward (tests/test_unet_runner.py).

Each runner also converts its hidden state to and from the common layout (B, C, T, S): time
on axis 2, space (video H*W) or frequency (audio) on axis 3.

Features of those classes that AudioLDM and AnimateDiff do not use (ControlNet/T2I residuals,
GLIGEN, IP-adapter image embeddings, SDXL added conditions) are rejected up front.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from svgen.models.bases import unet_downsample


@dataclass
class RunState:
    """What one UNet forward carries between blocks."""

    h: torch.Tensor
    """Current hidden state in the UNet's own layout."""
    emb: torch.Tensor
    """Timestep (+ class) embedding."""
    context: torch.Tensor | None
    """Cross-attention context (text), already expanded per frame for video."""
    batch: int
    frames: int
    skips: tuple = field(default_factory=tuple)
    forward_upsample_size: bool = False


def unet_blocks(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The blocks a runner calls one by one, by name (down_blocks.i, mid_block, up_blocks.i): the
    units that compiling or activation checkpointing can treat as regions."""
    out = {f"down_blocks.{i}": b for i, b in enumerate(unet.down_blocks)}
    if unet.mid_block is not None:
        out["mid_block"] = unet.mid_block
    out.update({f"up_blocks.{i}": b for i, b in enumerate(unet.up_blocks)})
    return out


class UNetRunner:
    """Block-by-block driver; subclasses fill in the per-class details."""

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet
        cfg = unet.config
        unsupported = {
            "addition_embed_type": getattr(cfg, "addition_embed_type", None),
            "encoder_hid_dim_type": getattr(cfg, "encoder_hid_dim_type", None),
        }
        for key, value in unsupported.items():
            if value is not None:
                raise ValueError(f"{type(unet).__name__} with {key}={value!r} is not supported by "
                                 "svgen's block runner (AudioLDM and AnimateDiff do not use it)")
        if getattr(cfg, "center_input_sample", False):
            raise ValueError("center_input_sample=True is not supported by svgen's block runner")

    @property
    def num_down(self) -> int:
        return len(self.unet.down_blocks)

    @property
    def time_embed_dim(self) -> int:
        """Width of the UNet's timestep embedding (4 x its first block width in SD and AudioLDM)."""
        return self.unet.time_embedding.linear_2.out_features

    @staticmethod
    def _timesteps(timestep, batch: int, device: torch.device) -> torch.Tensor:
        t = timestep
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.int64, device=device)
        elif t.ndim == 0:
            t = t[None].to(device)
        return t.to(device).expand(batch)

    def time_embed(self, timestep, batch: int, device: torch.device) -> torch.Tensor:
        """The UNet's own (frozen) timestep embedding alone: time projection + time-embedding MLP,
        no class or text term. The environment encoders are conditioned on it (docs/method.md)."""
        u = self.unet
        t_emb = u.time_proj(self._timesteps(timestep, batch, device)).to(dtype=u.dtype)
        emb = u.time_embedding(t_emb, None)
        act = getattr(u, "time_embed_act", None)
        return act(emb) if act is not None else emb

    @property
    def num_up(self) -> int:
        return len(self.unet.up_blocks)

    def _upsample_check(self, sample: torch.Tensor) -> bool:
        factor = unet_downsample(self.unet)
        return any(s % factor != 0 for s in sample.shape[-2:])

    def _block_kwargs(self, st: RunState) -> dict:
        return {}

    def down(self, st: RunState, i: int) -> None:
        block = self.unet.down_blocks[i]
        if getattr(block, "has_cross_attention", False):
            st.h, res = block(hidden_states=st.h, temb=st.emb, encoder_hidden_states=st.context,
                              attention_mask=None, cross_attention_kwargs=None,
                              **self._block_kwargs(st), **self._xattn_extra())
        else:
            st.h, res = block(hidden_states=st.h, temb=st.emb, **self._block_kwargs(st))
        st.skips += res

    def _xattn_extra(self) -> dict:
        return {}

    def replace_last_skip(self, st: RunState) -> None:
        """After editing st.h following a down block, make the edit the block's last skip too."""
        st.skips = st.skips[:-1] + (st.h,)

    def mid(self, st: RunState) -> None:
        raise NotImplementedError

    def up(self, st: RunState, i: int) -> None:
        block = self.unet.up_blocks[i]
        n = len(block.resnets)
        res, st.skips = st.skips[-n:], st.skips[:-n]
        upsample_size = None
        if i < self.num_up - 1 and st.forward_upsample_size:
            upsample_size = st.skips[-1].shape[2:]
        if getattr(block, "has_cross_attention", False):
            st.h = block(hidden_states=st.h, temb=st.emb, res_hidden_states_tuple=res,
                         encoder_hidden_states=st.context, upsample_size=upsample_size,
                         attention_mask=None, cross_attention_kwargs=None,
                         **self._block_kwargs(st), **self._xattn_extra())
        else:
            st.h = block(hidden_states=st.h, temb=st.emb, res_hidden_states_tuple=res,
                         upsample_size=upsample_size, **self._block_kwargs(st))

    def _out(self, st: RunState) -> torch.Tensor:
        h = st.h
        if self.unet.conv_norm_out is not None:
            h = self.unet.conv_act(self.unet.conv_norm_out(h))
        return self.unet.conv_out(h)

    def run(self, *args, **kwargs) -> torch.Tensor:
        """The whole forward with no edits (what the equivalence test compares)."""
        st = self.begin(*args, **kwargs)
        for i in range(self.num_down):
            self.down(st, i)
        self.mid(st)
        for i in range(self.num_up):
            self.up(st, i)
        return self.end(st)


class AudioUNetRunner(UNetRunner):
    """AudioLDM's UNet2DConditionModel: latent (B, C, T, F); text enters as a class embedding."""

    def begin(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None,
              encoder_hidden_states: torch.Tensor | None = None) -> RunState:
        u = self.unet
        t_emb = u.get_time_embed(sample=sample, timestep=timestep)
        emb = u.time_embedding(t_emb, None)
        class_emb = u.get_class_embed(sample=sample, class_labels=class_labels)
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if u.config.class_embeddings_concat else emb + class_emb
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        context = u.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states,
                                                  added_cond_kwargs=None)
        h = u.conv_in(sample)
        return RunState(h=h, emb=emb, context=context, batch=sample.shape[0], frames=sample.shape[2],
                        skips=(h,), forward_upsample_size=self._upsample_check(sample))

    def _xattn_extra(self) -> dict:
        return {"encoder_attention_mask": None}

    def mid(self, st: RunState) -> None:
        m = self.unet.mid_block
        if m is None:
            return
        if getattr(m, "has_cross_attention", False):
            st.h = m(st.h, st.emb, encoder_hidden_states=st.context, attention_mask=None,
                     cross_attention_kwargs=None, encoder_attention_mask=None)
        else:
            st.h = m(st.h, st.emb)

    def end(self, st: RunState) -> torch.Tensor:
        return self._out(st)

    @staticmethod
    def to_btcs(h: torch.Tensor, st: RunState) -> torch.Tensor:
        return h  # (B, C, T, F) already

    @staticmethod
    def from_btcs(x: torch.Tensor, st: RunState, like: torch.Tensor) -> torch.Tensor:
        return _same_strides(x.reshape(like.shape), like)


class VideoUNetRunner(UNetRunner):
    """AnimateDiff's UNetMotionModel: latent (B, C, F, H, W), frames folded into the batch."""

    def begin(self, sample: torch.Tensor, timestep: torch.Tensor,
              encoder_hidden_states: torch.Tensor) -> RunState:
        """``encoder_hidden_states``: (B, L, D) text context; repeated per frame here."""
        u = self.unet
        b, _, f = sample.shape[:3]
        t_emb = u.time_proj(self._timesteps(timestep, b, sample.device)).to(dtype=u.dtype)
        emb = u.time_embedding(t_emb, None)
        emb = emb.repeat_interleave(f, dim=0)
        context = encoder_hidden_states.repeat_interleave(f, dim=0)
        h = sample.permute(0, 2, 1, 3, 4).reshape((b * f, -1) + sample.shape[3:])
        h = u.conv_in(h)
        return RunState(h=h, emb=emb, context=context, batch=b, frames=f, skips=(h,),
                        forward_upsample_size=self._upsample_check(sample))

    def _block_kwargs(self, st: RunState) -> dict:
        return {"num_frames": st.frames}

    def mid(self, st: RunState) -> None:
        m = self.unet.mid_block
        if m is None:
            return
        kwargs = {"num_frames": st.frames} if hasattr(m, "motion_modules") else {}
        st.h = m(st.h, st.emb, encoder_hidden_states=st.context, attention_mask=None,
                 cross_attention_kwargs=None, **kwargs)

    def end(self, st: RunState) -> torch.Tensor:
        out = self._out(st)
        return out[None, :].reshape((-1, st.frames) + out.shape[1:]).permute(0, 2, 1, 3, 4)

    @staticmethod
    def to_btcs(h: torch.Tensor, st: RunState) -> torch.Tensor:
        bf, c, hh, ww = h.shape
        return h.reshape(st.batch, st.frames, c, hh * ww).permute(0, 2, 1, 3)

    @staticmethod
    def from_btcs(x: torch.Tensor, st: RunState, like: torch.Tensor) -> torch.Tensor:
        return _same_strides(x.permute(0, 2, 1, 3).reshape(like.shape), like)


def _same_strides(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Give y the strides of ``like`` where both are contiguous.

    Contiguous tensors may differ in the strides of size-1 dims (a 1x1 latent at the lowest
    resolution); convolutions then read them as channels-last and pick another algorithm, which
    breaks bitwise equality with the plain forward. Same memory, same element mapping: no copy.
    """
    y = y.contiguous()
    if like.is_contiguous() and y.stride() != like.stride():
        return y.as_strided(like.shape, like.stride())
    return y
