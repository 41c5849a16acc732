import torch
import torch.nn.functional as F

from stylelora.train.loss import ddpm_loss, min_snr_weights, noise_target, offset_noise

ALPHAS = torch.linspace(0.999, 0.01, 1000)


def test_epsilon_target_is_the_noise():
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(noise_target("epsilon", latents, noise, torch.tensor([0, 999]), ALPHAS), noise)


def test_v_target_matches_the_definition():
    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    a = ALPHAS[t].view(-1, 1, 1, 1)
    expected = a.sqrt() * noise - (1 - a).sqrt() * latents
    assert torch.allclose(noise_target("v_prediction", latents, noise, t, ALPHAS), expected, atol=1e-6)


def test_unknown_prediction_type_is_refused():
    try:
        noise_target("sample", torch.zeros(1), torch.zeros(1), torch.tensor([0]), ALPHAS)
    except ValueError as error:
        assert "sample" in str(error)
    else:
        raise AssertionError("no error")


def test_unweighted_loss_is_plain_mse():
    a, b = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    assert torch.allclose(ddpm_loss(a, b), F.mse_loss(a, b))


def test_min_snr_caps_low_noise_steps_only():
    t = torch.tensor([0, 999])
    w = min_snr_weights(t, ALPHAS, gamma=5.0, prediction_type="epsilon")
    snr = ALPHAS[t] / (1 - ALPHAS[t])
    assert w[0] < 1 and torch.isclose(w[0], 5.0 / snr[0])
    assert torch.isclose(w[1], torch.tensor(1.0))


def test_noise_offset_shifts_each_channel_by_a_constant():
    noise = torch.zeros(2, 4, 8, 8)
    shifted = offset_noise(noise, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(shifted, shifted[:, :, :1, :1].expand_as(shifted))
    assert shifted.abs().sum() > 0
    assert offset_noise(noise, 0.0) is noise
