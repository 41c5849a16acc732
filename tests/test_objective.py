"""The training objective (train/objective.py) and the losses: flow matching as diffusers' SD3/Flux scripts and
scheduler define it, the timestep densities, kohya's scheduled Huber, and the options that choose them."""

import math

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling

from stylelora.errors import ConfigError
from stylelora.files import read_safetensors
from stylelora.train.config import TrainConfig, validate
from stylelora.train.loop import total_steps, train
from stylelora.train.loss import ddpm_loss, huber_thresholds, per_sample_error
from stylelora.train.objective import DDPM, FlowMatching, Sampling, flux_mu, objective_for

QUIET = dict(progress_bar=False, log=lambda message: None)


def test_flow_matching_noises_as_the_schedulers_scale_noise_and_targets_noise_minus_image():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3's
    objective = FlowMatching(scheduler, Sampling("logit-normal"))
    latents, noise = torch.randn(6, 16, 8, 8), torch.randn(6, 16, 8, 8)
    timesteps = objective.draw(6, torch.Generator().manual_seed(3))
    noised = objective.noised(latents, noise, timesteps)
    assert torch.allclose(noised.noisy, scheduler.scale_noise(latents, timesteps, noise), atol=1e-6)
    assert torch.equal(noised.target, noise - latents)


def test_flow_timesteps_are_the_ones_diffusers_sd3_script_draws():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    for kind, scheme in (("logit-normal", "logit_normal"), ("mode", "mode"), ("uniform", "none")):
        ours = FlowMatching(scheduler, Sampling(kind)).draw(64, torch.Generator().manual_seed(7))
        # train_dreambooth_lora_sd3.py: u from the density, indices = (u * N).long(), timesteps[indices]
        u = compute_density_for_timestep_sampling(scheme, 64, 0.0, 1.0, 1.29, generator=torch.Generator().manual_seed(7))
        theirs = scheduler.timesteps[(u * 1000).long()]
        assert (ours != theirs).sum() <= 1, kind  # a u exactly on a step boundary may floor the other way


def test_flux_shift_follows_the_image_size_as_fluxpipeline_computes_it():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    for tokens in (256, 1024, 4096):
        assert flux_mu(tokens, scheduler.config) == pytest.approx(calculate_shift(tokens, 256, 4096, 0.5, 1.15))
    objective = FlowMatching(scheduler, Sampling("uniform"))
    small = objective.draw(4000, torch.Generator().manual_seed(0), latent_size=(32, 32))  # 256 tokens
    large = objective.draw(4000, torch.Generator().manual_seed(0), latent_size=(128, 128))  # 4096 tokens
    u = compute_density_for_timestep_sampling("none", 4000, generator=torch.Generator().manual_seed(0))
    expected = scheduler.time_shift(flux_mu(4096, scheduler.config), 1.0, 1 - u) * 1000
    assert torch.allclose(large, expected, atol=1e-3)
    assert large.mean() > small.mean()  # larger images are trained at more noise, as Flux shifts them


def test_ddpm_uniform_draws_what_it_always_drew_and_style_leans_to_high_noise():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    uniform = DDPM(scheduler, sampling=Sampling("uniform")).draw(8, torch.Generator().manual_seed(1))
    assert torch.equal(uniform, torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(1)))
    style = DDPM(scheduler, sampling=Sampling("style")).draw(20000, torch.Generator().manual_seed(2)).float()
    content = DDPM(scheduler, sampling=Sampling("content")).draw(20000, torch.Generator().manual_seed(2)).float()
    assert 0 <= style.min() and style.max() <= 999 and 0 <= content.min()
    # 1 - u^3 has mean 3/4 and u^3 mean 1/4 of the schedule (ai-toolkit's content_or_style)
    assert style.mean() / 1000 == pytest.approx(0.75, abs=0.01) and content.mean() / 1000 == pytest.approx(0.25, abs=0.01)


def test_auto_sampling_is_uniform_for_ddpm_and_logit_normal_for_flow_and_min_snr_is_ddpm_only():
    assert objective_for(DDPMScheduler(), "epsilon", Sampling("auto")).sampling.kind == "uniform"
    assert objective_for(FlowMatchEulerDiscreteScheduler(), "epsilon", Sampling("auto")).sampling.kind == "logit-normal"
    with pytest.raises(ConfigError, match="--min-snr-gamma"):
        objective_for(FlowMatchEulerDiscreteScheduler(), "epsilon", Sampling("auto"), min_snr_gamma=5.0)


def test_the_mini_trains_with_its_own_recipe_where_the_options_are_unset(image_folder, tmp_path):
    mini, other = TrainConfig(data=image_folder, base="mini"), TrainConfig(data=image_folder, base="org/model")
    assert (mini.effective_learning_rate, mini.effective_timestep_sampling, total_steps(mini, 36, 1)) == \
        (3e-3, "logit-normal", 400)
    assert (other.effective_learning_rate, other.effective_timestep_sampling, total_steps(other, 36, 1)) == \
        (1e-4, "auto", 800)  # auto: the objective decides, uniform for DDPM, logit-normal for flow matching
    runs = {sampling: train(TrainConfig(data=image_folder, out=tmp_path / sampling, base="mini", max_steps=2,
                                        batch_size=2, timestep_sampling=sampling), **QUIET)
            for sampling in ("auto", "logit-normal", "uniform")}
    assert runs["auto"].loss == runs["logit-normal"].loss != runs["uniform"].loss
    assert read_safetensors(runs["auto"].adapter_path).metadata["ss_timestep_sampling"] == "logit-normal"


def test_scheduled_huber_is_kohyas():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    t = torch.tensor([0, 250, 999])
    alphas = scheduler.alphas_cumprod[t]
    kohya_sigmas = ((1.0 - alphas) / alphas) ** 0.5  # train_util.get_huber_threshold_if_needed, 'snr'
    ddpm = DDPM(scheduler)
    snr = huber_thresholds("snr", 0.1, t, 1000, ddpm.noise_to_signal(t))
    assert torch.allclose(snr, (1 - 0.1) / (1 + kohya_sigmas) ** 2 + 0.1)
    exponential = huber_thresholds("exponential", 0.1, t, 1000, ddpm.noise_to_signal(t))
    assert torch.allclose(exponential, torch.exp(-(-math.log(0.1) / 1000) * t.float()))
    assert torch.equal(huber_thresholds("constant", 0.1, t, 1000, ddpm.noise_to_signal(t)), torch.full((3,), 0.1))
    a, b, c = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0.1, 0.5, 1.0])
    huber = 2 * c.view(-1, 1, 1, 1) * (torch.sqrt((a - b) ** 2 + c.view(-1, 1, 1, 1) ** 2) - c.view(-1, 1, 1, 1))
    assert torch.allclose(per_sample_error(a, b, "huber", c), huber.mean(dim=(1, 2, 3)))
    assert torch.allclose(per_sample_error(a, b, "smooth-l1", c), (huber / c.view(-1, 1, 1, 1)).mean(dim=(1, 2, 3)))
    assert torch.allclose(ddpm_loss(a, b, kind="huber", thresholds=c), huber.mean())


@pytest.mark.parametrize("overrides, flag", [
    (dict(huber_c=0.2), "--huber-c"),
    (dict(loss="huber", huber_c=1.5), "--huber-c"),
    (dict(huber_schedule="snr"), "--huber-schedule"),
    (dict(timestep_sampling="style", logit_mean=1.0), "--logit-mean"),
    (dict(timestep_sampling="uniform", mode_scale=1.0), "--mode-scale"),
    (dict(logit_std=0.0), "--logit-std"),
])
def test_objective_options_that_do_not_go_together_are_refused_naming_the_flag(train_config, overrides, flag):
    with pytest.raises(ConfigError) as caught:
        validate(train_config(**overrides))
    assert str(caught.value).startswith(flag) and "\n" not in str(caught.value)


def test_style_sampling_and_huber_train_resume_exactly_and_say_so_in_the_file(train_config, tmp_path):
    from stylelora.train.loop import TrainingInterrupted

    options = dict(max_steps=4, save_every=2, timestep_sampling="style", loss="smooth-l1", huber_schedule="exponential")
    straight = train(train_config(out=tmp_path / "straight", **options), **QUIET)
    stopped = train_config(out=tmp_path / "resumed", **options)
    done: list[int] = []
    with pytest.raises(TrainingInterrupted):
        train(stopped, on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 2, **QUIET)
    stopped.resume = True
    resumed = train(stopped, **QUIET)
    a, b = read_safetensors(straight.adapter_path), read_safetensors(resumed.adapter_path)
    assert max((a.tensors[k] - b.tensors[k]).abs().max().item() for k in a.tensors) <= 1e-6
    assert (a.metadata["ss_loss_type"], a.metadata["ss_huber_schedule"], a.metadata["ss_timestep_sampling"]) == \
        ("smooth_l1", "exponential", "style")
    plain = train(train_config(out=tmp_path / "plain", max_steps=4), **QUIET)
    assert plain.loss != straight.loss  # the options reach the step
