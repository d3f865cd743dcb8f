"""The joint model: zero-init identity, trainable-parameter accounting, frozen weights."""

import pytest
import torch

from svgen.data.latents import LatentBatch
from svgen.models.joint import JointInputs
from svgen.config import load_config
from svgen.train.engine import make_optimizer

from .conftest import TINY, local_steps


def _inputs(system, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(b, 8, 32, 16, generator=g)
    z_v = torch.randn(b, 4, 8, 8, 8, generator=g)
    t = torch.tensor([17, 640])[:b]
    text_a, text_v = system.encode_text(["a red square flashes", "a click"][:b])
    enc_a = torch.randn(b, 16, 32, 16, generator=g)
    enc_v = torch.randn(b, 8, 8, 8, 8, generator=g)
    return JointInputs(z_a=z_a, z_v=z_v, t_a=t, t_v=t, text_a=text_a, text_v=text_v, enc_a=enc_a, enc_v=enc_v,
                       s_a=torch.tensor([900, 3])[:b], s_v=torch.tensor([50, 999])[:b])


@pytest.mark.parametrize("mode", ["cmcpe", "xattn_pooled", "xattn_seq"])
def test_untrained_joint_model_equals_the_independent_bases(system_factory, mode):
    system = system_factory(f"model.cmcpe.mode={mode}")
    x = _inputs(system)
    out_a, out_v = system.model(x)
    ref_a = system.audio.unet(x.z_a, x.t_a, None, class_labels=x.text_a).sample
    ref_v = system.video.unet(x.z_v, x.t_v, x.text_v.repeat_interleave(x.z_v.shape[2], 0)).sample
    assert torch.equal(out_a, ref_a)
    assert torch.equal(out_v, ref_v)
    # ...and the added modules do act once proj_out is non-zero, in both directions.
    for blocks in (system.model.blocks_a, system.model.blocks_v):
        for block in blocks.values():
            torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    out_a2, out_v2 = system.model(x)
    assert (out_a2 - ref_a).abs().max() > 1e-4 and (out_v2 - ref_v).abs().max() > 1e-4


def test_cross_modal_path_carries_the_other_modality(system_factory):
    """With non-zero proj_out, changing only one modality's encoder input changes the *other*
    modality's output, and leaves its own output bit for bit (its encoder feeds only the other side)."""
    system = system_factory()
    for blocks in (system.model.blocks_a, system.model.blocks_v):
        for block in blocks.values():
            torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    x = _inputs(system)
    out_a, out_v = system.model(x)
    x.enc_v = x.enc_v + 1.0
    out_a2, out_v2 = system.model(x)
    assert (out_a2 - out_a).abs().max() > 1e-5
    assert torch.equal(out_v2, out_v)
    x = _inputs(system)
    x.enc_a = x.enc_a + 1.0
    out_a3, out_v3 = system.model(x)
    assert (out_v3 - out_v).abs().max() > 1e-5
    assert torch.equal(out_a3, out_a)


def test_blocks_sit_at_the_configured_points(system_factory):
    system = system_factory("model.cmcpe.down_blocks=[1]", "model.cmcpe.up_blocks=[2, 3]")
    assert sorted(system.model.blocks_a) == ["down1", "up2", "up3"]
    assert sorted(system.model.blocks_v) == ["down1", "up2", "up3"]
    with pytest.raises(ValueError, match="out of range"):
        system_factory("model.cmcpe.down_blocks=[4]")


def test_optimizer_sees_only_added_modules(system_factory):
    system = system_factory("model.train_motion_modules=false")  # both UNets wholly frozen
    model = system.model
    added = {id(p) for m in model.added_modules() for p in m.parameters()}
    opt = make_optimizer(system.model, load_config(TINY).train.optim)
    seen = {id(p) for g in opt.param_groups for p in g["params"]}
    assert seen == added
    counts = model.parameter_counts()
    assert counts["trainable"] == sum(p.numel() for m in model.added_modules() for p in m.parameters())
    assert counts["frozen"] == sum(p.numel() for p in model.audio_unet.parameters()) + \
        sum(p.numel() for p in model.video_unet.parameters())
    # Only trained weights are registered: a checkpoint of the module holds no base weights.
    assert not any(k.startswith(("audio_unet", "video_unet")) for k in model.state_dict())


def test_motion_modules_switch(system_factory):
    system = system_factory("model.train_motion_modules=true")
    names = system.model.named_trainable_parameters()
    motion = [n for n in names if n.startswith("motion_modules")]
    assert motion, "motion modules should be trainable when switched on"
    unet_motion = [p for n, p in system.video.unet.named_parameters() if "motion_modules" in n]
    assert {id(p) for p in unet_motion} == {id(names[n]) for n in motion}  # the UNet's own modules
    frozen = system.model.frozen_parameters()
    assert not any("motion_modules" in n for n in frozen)
    assert any(n.startswith("audio_unet") for n in frozen) and any(n.startswith("video_unet") for n in frozen)
    system.model.train()
    assert not system.model.audio_unet.training


@pytest.mark.parametrize("motion", [False, True])
def test_frozen_weights_bitwise_unchanged_after_training(system_factory, motion):
    system = system_factory(f"model.train_motion_modules={str(motion).lower()}")
    model = system.model
    frozen = {n: p.detach().clone() for n, p in model.frozen_parameters().items()}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    g = torch.Generator().manual_seed(1)
    batch = LatentBatch(torch.randn(2, 8, 32, 16, generator=g), torch.randn(2, 4, 8, 8, 8, generator=g),
                        *system.encode_text(["x", "y"]))
    local_steps(system, batch, steps=3)
    assert len(frozen) > 50
    for n, p in model.frozen_parameters().items():
        assert torch.equal(p, frozen[n]), f"frozen weight {n} changed"
    changed = [n for n, p in model.named_parameters() if n in trained and not torch.equal(p, trained[n])]
    assert len(changed) > len(trained) // 2
    if motion:
        assert any("motion_modules" in n for n in changed)


def test_activation_checkpointing_gives_the_same_gradients_and_keeps_less(system_factory):
    """Recomputed in backward: the bases' blocks (diffusers), the motion modules and the
    cross-modal blocks. Same gradients; far fewer activations kept for backward."""
    from svgen.config import LossConfig
    from svgen.train.engine import enable_activation_checkpointing, recomputation_off
    from svgen.train.perf import peak_live_bytes

    grads, kept = [], []
    for checkpointing in (False, True):
        system = system_factory("model.train_motion_modules=true", seed=0)
        model = system.model
        for blocks in (model.blocks_a, model.blocks_v):
            for block in blocks.values():
                torch.nn.init.normal_(block.proj_out.weight, std=0.05)
        if checkpointing:
            wrapped = enable_activation_checkpointing(model)
            assert model.audio_unet.is_gradient_checkpointing and model.video_unet.is_gradient_checkpointing
            assert {"video_unet.down_blocks.0.motion_modules.0", "video_unet.up_blocks.1.motion_modules.0",
                    "encoder_v"} <= set(wrapped)
            assert any(w.startswith("blocks_v.") for w in wrapped)
        g = torch.Generator().manual_seed(0)
        batch = LatentBatch(torch.randn(1, 8, 32, 16, generator=g), torch.randn(1, 4, 8, 8, 8, generator=g),
                            *system.encode_text(["x"]))

        def step():
            loss, _ = system.loss(batch, LossConfig(x0_zero_prob=0.0), generator=torch.Generator().manual_seed(1))
            loss.backward()

        kept.append(peak_live_bytes(step))
        grads.append({n: p.grad.clone() for n, p in model.named_trainable_parameters().items()})
        if checkpointing:  # switched off for a while (FLOP counting), then back
            with recomputation_off(model):
                assert peak_live_bytes(step) == kept[0]
            assert model.video_unet.is_gradient_checkpointing
    assert any("motion_modules" in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6)
    # At these tiny sizes the fixed costs weigh more: about 0.50 here, 0.23 at the paper's sizes
    # (benchmarks/activation_memory.py).
    assert kept[1] < 0.6 * kept[0], kept


def test_activation_checkpointing_under_zero3_leaves_trained_modules_alone(system_factory):
    """ZeRO-3 gathers trained weights in hooks that must run once: only the frozen parts recompute
    (diffusers' resnets and transformers); trained motion modules and added modules do not."""
    from svgen.train.engine import enable_activation_checkpointing

    model = system_factory("model.train_motion_modules=true").model
    assert enable_activation_checkpointing(model, trained=False) == []
    assert model.video_unet.is_gradient_checkpointing and model.audio_unet.is_gradient_checkpointing
    frozen_motion = system_factory("model.train_motion_modules=false").model
    wrapped = enable_activation_checkpointing(frozen_motion, trained=False)
    assert wrapped and all(".motion_modules." in w for w in wrapped)
