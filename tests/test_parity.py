"""Reference parity (issue 11): sizes, encoder and CMC-PE internals, audio padding, EMA warm-up.

The reference numbers are the authors' code's (docs/method.md): video encoder 100,299,695 and audio
encoder 21,037,472 parameters; CMC-PE blocks 55,746,560 at C=1280, 38,330,880 at 960, 23,379,456
at 576; AnimateDiff v1-5-2 motion modules 453,209,280.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from svgen.data.latents import LatentBatch
from svgen.models.cmcpe import CMCPEBlock, CrossAttentionBlock
from svgen.models.count import count, main as count_main, meta_joint_model
from svgen.models.encoders import EnvironmentEncoder, SpatioTemporalBlock
from svgen.models.joint import JointInputs
from svgen.config import LossConfig, load_config
from svgen.train.ema import EMA, warmup_decay

from .conftest import ROOT

GH = ROOT / "configs" / "greatesthits.yaml"


def test_count_cli_prints_the_reference_sizes(capsys):
    assert count_main(["--config", str(GH), "--json"]) == 0
    rows = {r["group"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["audio environment encoder"]["trainable"] == 21_037_472
    assert rows["video environment encoder"]["trainable"] == 100_299_695
    assert rows["video motion modules"]["trainable"] == 453_209_280
    blocks = {g: r["trainable"] for g, r in rows.items() if "cmcpe block" in g}
    assert sorted(blocks.values()) == sorted([55_746_560] * 4 + [38_330_880] * 2 + [23_379_456] * 2)
    assert sum(blocks.values()) == 346_406_912
    assert rows["total"]["trainable"] == 920_953_359          # about 921 M
    assert rows["audio UNet (frozen)"]["frozen"] > 4e8 and rows["video spatial UNet (frozen)"]["frozen"] > 8e8
    # Frozen motion modules move to the frozen column, nothing else changes.
    cfg = load_config(GH, ["model.train_motion_modules=false"])
    total = count(meta_joint_model(cfg)[0])[-1]
    assert total.trainable == 920_953_359 - 453_209_280


def _conv(cin, cout, k):
    return cin * cout * k * k + cout


def _resblock(cin, cout, temb):
    return 2 * cin + _conv(cin, cout, 3) + temb * cout + cout + 2 * cout + _conv(cout, cout, 3) + \
        (cin * cout + cout if cin != cout else 0)


def _st_block(d):
    attn = d + d * 2 * d + d * 4 * d + 2 * d * d                 # gain, to_q, to_kv, to_out (no biases)
    rel = 2 * (d // 2) + (d // 2) ** 2 + d // 2 + (d // 2) * 8 + 8  # SiLU MLP 1 -> d/2 -> d/2 -> 8 heads
    inner = int(d * 4 * 2 / 3)
    ff = d * 2 * inner + inner + inner * d                    # GEGLU in, channel-norm gain, out
    shift = 2 * d + _conv(d, d, 3)                            # GN + zero conv
    return attn + rel + ff + shift


@pytest.mark.parametrize("video,m,temb,expected", [(True, 320, 1280, 100_299_695), (False, 192, 768, 21_037_472)])
def test_encoders_match_the_reference_layer_by_layer(video, m, temb, expected):
    """Each layer of the reference encoder (widths from the UNet's first width m), counted from
    its definition, against svgen's module of the same role."""
    with torch.device("meta"):
        enc = EnvironmentEncoder(8 if video else 16, m, 1280, temb, video=video)
    n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    layers = {
        "conv_in": (n(enc.conv_in), _conv(8 if video else 16, m // 2, 3)),
        "res1": (n(enc.res1), _resblock(m // 2, 2 * m, temb)),
        "down": (n(enc.down), _conv(2 * m, 2 * m, 3)),
        "res2": (n(enc.res2), _resblock(2 * m, 4 * m, temb)),
        "out": (n(enc.norm_out) + n(enc.conv_out), 2 * 4 * m + _conv(4 * m, 1280, 3)),
    }
    if video:
        layers["st1"] = (n(enc.st1), _st_block(2 * m))
        layers["st2"] = (n(enc.st2), _st_block(4 * m))
    for name, (ours, reference) in layers.items():
        assert ours == reference, f"{name}: svgen {ours:,} vs reference {reference:,}"
    assert n(enc) == sum(r for _, r in layers.values()) == expected


def test_encoder_starts_at_its_skip_paths_and_uses_the_frozen_time_embedding(system_factory):
    system = system_factory()
    enc = system.model.encoder_v
    for zero in (enc.res1.conv2, enc.res2.conv2, enc.st1.shift_conv, enc.st2.shift_conv, enc.st1.attn.to_out):
        assert all(torch.count_nonzero(p) == 0 for p in zero.parameters())
    # No timestep embedding of its own: the frozen UNet's, evaluated at the encoder's timestep.
    assert not any("time" in name for name, _ in enc.named_parameters())
    unet = system.video.unet
    s = torch.tensor([7, 900])
    ref = unet.time_embedding(unet.time_proj(s).to(unet.dtype))
    torch.testing.assert_close(system.model.video_runner.time_embed(s, 2, torch.device("cpu")), ref, rtol=0, atol=0)
    # Once trained (non-zero ResBlock output convs) the encoder's timestep shapes its output. (At
    # the tiny width every GroupNorm group is one channel, which cancels a per-channel timestep
    # shift exactly; the real widths have 20-40 channels per group. So: a wider encoder here.)
    runner = system.model.video_runner
    torch.manual_seed(0)
    wide = EnvironmentEncoder(8, 64, 32, runner.time_embed_dim, video=True)
    torch.nn.init.normal_(wide.res1.conv2.weight, std=0.05)
    x = torch.randn(2, 8, 8, 8, 8)
    p1 = wide(x, runner.time_embed(torch.tensor([10, 10]), 2, x.device))
    p2 = wide(x, runner.time_embed(torch.tensor([900, 900]), 2, x.device))
    assert p1.shape == (2, 32, 8) and (p1 - p2).abs().max() > 1e-4


def test_spatio_temporal_block_carries_timing_across_frames():
    torch.manual_seed(0)
    block = SpatioTemporalBlock(32, heads=8, fps=8.0)
    x = torch.randn(1, 32, 8, 4, 4)
    y = x.clone()
    y[:, :, 5] += torch.randn(1, 32, 4, 4)
    # At initialisation (zero attention output, zero shift conv) only the token shift moves
    # information, one frame forward: frame 6 sees the change, frames before 5 do not.
    out_x, out_y = block(x), block(y)
    assert (out_y[:, :, 6] - out_x[:, :, 6]).abs().max() > 1e-4
    assert torch.equal(out_y[:, :, :5], out_x[:, :, :5])
    # Trained (non-zero) attention and frame shift: every frame can see every other.
    for p in (*block.attn.to_out.parameters(), *block.shift_conv.parameters()):
        torch.nn.init.normal_(p, std=0.05)
    assert (block(y)[:, :, 2] - block(x)[:, :, 2]).abs().max() > 1e-4


def test_cmcpe_block_is_the_reference_computation():
    """u = LN1(proj_in(GN(h))) with clip-wide GN; u = u + Attn(u + e~); u = LN2(u); u = u + Attn(u);
    u = LN3(u); u = u + FF(u); h + proj_out(u) -- for video (attention per frame)."""
    torch.manual_seed(0)
    b, c, t, s, ctx, to = 2, 32, 6, 5, 16, 3
    block = CMCPEBlock(c, ctx, head_dim=8, per_frame=True)
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    assert block.cond_attn.heads == c // 8 and block.layers[0].attn.heads == c // 8
    h, p = torch.randn(b, c, t, s), torch.randn(b, ctx, to)
    x = block.proj_in(F.group_norm(h, block.norm_in.num_groups, block.norm_in.weight,
                                   block.norm_in.bias, block.norm_in.eps).permute(0, 2, 3, 1))
    e = block.embed_norm(block.embed(p.transpose(1, 2)).transpose(1, 2)).transpose(1, 2)   # (B, T_o, C)
    e = e[:, (torch.arange(t) * to) // t][:, :, None, :]                                 # nearest in time
    u = block.norm_u(x)
    seq = lambda z: z.reshape(b * t, s, c)  # noqa: E731
    layer = block.layers[0]
    v = seq(u) + block.cond_attn(seq(u + e))
    v = layer.norm1(v)
    v = v + layer.attn(v)
    v = layer.norm2(v)
    v = v + layer.ff(v)
    ref = h + block.proj_out(v).reshape(b, t, s, c).permute(0, 3, 1, 2)
    torch.testing.assert_close(block(h, p), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [CMCPEBlock, CrossAttentionBlock])
def test_video_groupnorm_spans_the_whole_clip(cls):
    torch.manual_seed(0)
    block = cls(32, 16, head_dim=8, per_frame=True)
    h = torch.randn(1, 32, 6, 5)
    h2 = h.clone()
    h2[:, :, 3] *= 3.0
    # Frame 0 did not change, yet its normalised tokens do: the statistics cover every frame.
    assert (block._tokens_in(h2)[:, 0] - block._tokens_in(h)[:, 0]).abs().max() > 1e-4


def test_head_width_sets_the_heads(system_factory):
    system = system_factory("model.cmcpe.head_dim=16")
    for block in (*system.model.blocks_a.values(), *system.model.blocks_v.values()):
        assert block.cond_attn.heads == block.proj_in.in_features // 16
    with pytest.raises(ValueError, match="head_dim"):
        system_factory("model.cmcpe.head_dim=12")


def test_audio_padding_never_reaches_the_loss(system_factory):
    """The noisy latent is padded with zeros after noising (25 -> 32 frames for the tiny UNet) and
    the prediction is cropped back: the loss gradient on the padded output frames is zero."""
    system = system_factory()
    seen = {}
    unet = system.audio.unet
    unet.conv_in.register_forward_hook(lambda m, i, o: seen.__setitem__("in", i[0].detach()))

    def keep_out(m, i, o):
        o.retain_grad()
        seen["out"] = o

    unet.conv_out.register_forward_hook(keep_out)
    g = torch.Generator().manual_seed(0)
    batch = LatentBatch(torch.randn(2, 8, 25, 16, generator=g), torch.randn(2, 4, 8, 8, 8, generator=g),
                        *system.encode_text(["x", "y"]))
    loss, _ = system.loss(batch, LossConfig(x0_zero_prob=1.0), generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert seen["in"].shape[2] == 32 and torch.count_nonzero(seen["in"][:, :, 25:]) == 0
    grad = seen["out"].grad
    assert torch.count_nonzero(grad[:, :, 25:]) == 0 and torch.count_nonzero(grad[:, :, :25]) > 0
    five = torch.tensor([5, 5])
    out_a, _ = system.model(JointInputs(z_a=batch.x_a, z_v=batch.x_v, t_a=five, t_v=five, text_a=batch.text_a,
                                        text_v=batch.text_v, enc_a=torch.zeros(2, 16, 25, 16),
                                        enc_v=torch.zeros(2, 8, 8, 8, 8), s_a=five, s_v=five))
    assert out_a.shape == batch.x_a.shape


def test_ema_follows_the_warm_up():
    assert [warmup_decay(n, 0.9999) for n in (1, 2, 3, 10)] == [0.0, 2 / 11, 3 / 12, 10 / 19]
    assert warmup_decay(10**6, 0.9999) == 0.9999
    w = {"a": torch.tensor([0.0])}
    ema = EMA(w, 0.9999)
    for n, value in enumerate([1.0, 2.0, 4.0], start=1):
        expected = ema.shadow["a"] * warmup_decay(n, 0.9999) + value * (1 - warmup_decay(n, 0.9999))
        assert ema.update({"a": torch.tensor([value])}) == warmup_decay(n, 0.9999)
        torch.testing.assert_close(ema.shadow["a"], expected)
    # Resume keeps the count; what is not averaged (motion modules) is exported as trained.
    again = EMA({"a": torch.tensor([0.0])}, 0.5)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 3 and again.decay == 0.9999
    merged = ema.merged({"a": torch.tensor([9.0]), "motion_modules.0.w": torch.tensor([5.0])})
    assert merged["a"] == ema.shadow["a"] and merged["motion_modules.0.w"] == 5.0


def test_greatesthits_trains_the_motion_modules_and_averages_the_added_modules_only():
    cfg = load_config(GH)
    assert cfg.model.train_motion_modules is True and cfg.train.ema_motion_modules is False
    assert cfg.train.ema_decay == 0.9999 and cfg.model.cmcpe.head_dim == 8
    assert cfg.model.video.schedule.timestep_spacing == "linspace"
    assert "Realistic_Vision_V5.1" in cfg.model.video.path


@pytest.mark.parametrize("dtype,eps", [(torch.float32, 1e-5), (torch.bfloat16, 1e-3)])
def test_the_temporal_attention_normalises_over_time_as_the_reference(dtype, eps):
    """The reference's temporal attention (modules_video.py: LayerNorm over dim 1 of the
    (b*h*w, t, c) tokens) standardises each channel across the frames, then scales by a gain of
    shape (c,); 'channel' normalises each token over its channels. Written out by hand."""
    from svgen.models.encoders import TemporalAttention, frame_time_embedding

    torch.manual_seed(0)
    n, t, c = 6, 8, 16
    x = torch.randn(n, t, c) * torch.linspace(0.5, 3.0, c) + torch.linspace(-2, 2, t)[:, None]
    x = x.to(dtype)
    attn = TemporalAttention(c, heads=2, fps=8.0).to(dtype)
    with torch.no_grad():
        attn.norm.g.copy_(torch.linspace(0.5, 1.5, c))
    seen = {}
    attn.norm.register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
    attn(x)
    y = (x + frame_time_embedding(t, 8.0, c, device=x.device, dtype=x.dtype)).float()
    mean = y.mean(dim=1, keepdim=True)                                  # over the frames
    var = ((y - mean) ** 2).mean(dim=1, keepdim=True)                   # biased, as the reference's
    want = (y - mean) / torch.sqrt(torch.clamp(var, min=eps)) * torch.linspace(0.5, 1.5, c)
    torch.testing.assert_close(seen["out"].float(), want, rtol=2e-2 if dtype != torch.float32 else 1e-5,
                               atol=5e-2 if dtype != torch.float32 else 1e-5)
    # The channel norm computes something else on the same weights (same parameter shapes).
    other = TemporalAttention(c, heads=2, fps=8.0, norm="channel").to(dtype)
    other.load_state_dict(attn.state_dict())
    got = {}
    other.norm.register_forward_hook(lambda m, a, out: got.setdefault("out", out))
    other(x)
    assert (got["out"].float() - seen["out"].float()).abs().max() > 0.5


def test_the_default_config_takes_the_reference_temporal_norm(tiny_cfg):
    from svgen.models.encoders import TimeNorm

    cfg = tiny_cfg()
    assert cfg.model.encoder.temporal_norm == "time"
    from svgen.system import build_system

    enc = build_system(cfg).model.encoder_v
    assert isinstance(enc.st1.attn.norm, TimeNorm) and isinstance(enc.st2.attn.norm, TimeNorm)
    chan = build_system(tiny_cfg("model.encoder.temporal_norm=channel")).model.encoder_v
    assert not isinstance(chan.st1.attn.norm, TimeNorm)
    assert chan.state_dict().keys() == enc.state_dict().keys()  # a checkpoint loads either way
