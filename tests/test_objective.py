"""The training step of docs/method.md: shared t, independent encoder timesteps, caption dropout,
no-grad x0_hat pass with per-sample zeroing, per-modality weights, epsilon/v targets."""

import dataclasses

import pytest
import torch

from svgen.config import LossConfig
from svgen.data.latents import LatentBatch


class Spy(torch.nn.Module):
    """Wraps the real joint model and records what each call received."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x):
        self.calls.append((dataclasses.replace(x), torch.is_grad_enabled()))
        return self.model(x)


def _batch(system, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    text_a, text_v = system.encode_text([f"caption {i}" for i in range(b)])
    return LatentBatch(torch.randn(b, 8, 32, 16, generator=g), torch.randn(b, 4, 8, 8, 8, generator=g), text_a, text_v)


def _loss(system, cfg, batch, seed=0):
    spy = Spy(system.model)
    g = torch.Generator().manual_seed(seed)
    loss, metrics = system.loss(batch, cfg, generator=g, model=spy)
    return spy.calls, loss, {k: float(v) for k, v in metrics.items()}


@pytest.fixture(scope="module")
def system(system_factory):
    return system_factory()


def test_two_passes_shared_t_independent_s(system):
    calls, loss, m = _loss(system, LossConfig(x0_zero_prob=0.0), _batch(system))
    assert len(calls) == 2
    (first, grad1), (second, grad2) = calls
    assert not grad1 and grad2  # the x0_hat pass runs without grad, the training pass with
    assert torch.equal(second.t_a, second.t_v)  # one shared t for both main branches
    assert not torch.equal(second.s_a, second.s_v)  # independent encoder timesteps
    # First pass: encoder inputs [zc ; 0]; second: [zc ; x0_hat] with the same zc.
    ca = first.enc_a.shape[1] // 2
    assert torch.count_nonzero(first.enc_a[:, ca:]) == 0
    assert torch.equal(first.enc_a[:, :ca], second.enc_a[:, :ca])
    assert torch.count_nonzero(second.enc_a[:, ca:]) > 0
    assert torch.isfinite(loss) and m["loss"] == pytest.approx(m["loss_audio"] + m["loss_video"], rel=1e-5)


def test_all_zeroed_x0_skips_the_no_grad_pass(system):
    calls, _, _ = _loss(system, LossConfig(x0_zero_prob=1.0), _batch(system))
    assert len(calls) == 1
    x = calls[0][0]
    assert torch.count_nonzero(x.enc_a[:, 8:]) == 0 and torch.count_nonzero(x.enc_v[:, 4:]) == 0


def test_x0_zeroing_is_per_sample(system):
    calls, _, _ = _loss(system, LossConfig(x0_zero_prob=0.5), _batch(system, b=16), seed=3)
    x = calls[-1][0]
    zeroed = [(x.enc_a[i, 8:] == 0).all().item() for i in range(16)]
    assert 0 < sum(zeroed) < 16


def test_caption_dropout(system):
    batch = _batch(system)
    calls, _, _ = _loss(system, LossConfig(caption_dropout=1.0, x0_zero_prob=1.0), batch)
    x = calls[0][0]
    assert torch.equal(x.text_a, system.empty_a.expand_as(batch.text_a))
    assert torch.equal(x.text_v, system.empty_v.expand_as(batch.text_v))
    calls, _, _ = _loss(system, LossConfig(caption_dropout=0.0, x0_zero_prob=1.0), batch)
    assert torch.equal(calls[0][0].text_a, batch.text_a)


def test_loss_weights(system):
    batch = _batch(system)
    _, _, m = _loss(system, LossConfig(audio_weight=2.0, video_weight=0.0), batch)
    assert m["loss"] == pytest.approx(2.0 * m["loss_audio"], rel=1e-5)


def test_noisy_inputs_follow_each_schedule(system):
    """The UNet input is add_noise(x, eps, t) with each base's own alphas (audio != video)."""
    a, v = system.sched_a.alphas_cumprod, system.sched_v.alphas_cumprod
    assert not torch.allclose(a, v)
    x0 = torch.ones(1, 2)
    eps = torch.zeros(1, 2)
    t = torch.tensor([500])
    assert system.sched_a.add_noise(x0, eps, t)[0, 0].item() == pytest.approx(a[500].sqrt().item(), rel=1e-6)
    assert system.sched_v.add_noise(x0, eps, t)[0, 0].item() == pytest.approx(v[500].sqrt().item(), rel=1e-6)


def test_v_prediction_target(system_factory):
    system = system_factory("model.audio.schedule.prediction_type=v_prediction")
    x0, eps, t = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([10, 900])
    a = system.sched_a.alphas_cumprod[t].float()[:, None]
    torch.testing.assert_close(system.sched_a.target(x0, eps, t), a.sqrt() * eps - (1 - a).sqrt() * x0)
    z = system.sched_a.add_noise(x0, eps, t)
    torch.testing.assert_close(system.sched_a.predict_x0(z, system.sched_a.target(x0, eps, t), t), x0, atol=1e-5, rtol=1e-5)
