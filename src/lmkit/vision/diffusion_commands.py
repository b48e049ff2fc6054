"""CLI: `lmkit diffusion train` (class-conditional diffusion on the scikit-learn digits, in pixel
space or, with `--latent`, in the latent space of a VAE trained first) and `lmkit diffusion
sample` (a PNG grid of generated digits, with classifier-free guidance)."""

from __future__ import annotations

import click

from lmkit.cli_grammar import progress_flags


@click.group("diffusion")
def diffusion_group() -> None:
    """Image generation by diffusion (DDPM/DDIM, a small UNet, classifier-free guidance)."""


@diffusion_group.command("train")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="model directory to write")
@click.option("--steps", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--image-size", type=click.IntRange(8), default=8, show_default=True, help="8, or larger (upsampled)")
@click.option("--base-channels", type=click.IntRange(8), default=16, show_default=True)
@click.option("--schedule", "beta_schedule", type=click.Choice(["linear", "scaled_linear", "squaredcos_cap_v2"]),
              default="linear", show_default=True)
@click.option("--prediction", type=click.Choice(["epsilon", "v_prediction", "sample"]), default="epsilon", show_default=True)
@click.option("--cond-drop", type=float, default=0.1, show_default=True, help="probability of training unconditionally")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--latent", is_flag=True,
              help="latent diffusion: train a VAE first (4x downsampling) and diffuse in its latent space")
@click.option("--vae-steps", type=click.IntRange(1), default=None, help="VAE training steps (default: --steps)")
@click.option("--latent-channels", type=click.IntRange(1), default=4, show_default=True)
@click.option("--kl-weight", type=click.FloatRange(0), default=1e-3, show_default=True,
              help="beta, the weight of the VAE's KL term")
@click.option("--samples", "grid_path", type=click.Path(dir_okay=False), default=None,
              help="also write a 10x10 grid of samples (one row per digit) to this PNG")
@progress_flags
def train_cmd(out_dir, steps, batch_size, lr, image_size, base_channels, beta_schedule, prediction, cond_drop, seed,
              latent, vae_steps, latent_channels, kl_weight, grid_path) -> None:
    """Train a class-conditional diffusion model on the scikit-learn digits into OUT."""
    import torch

    from lmkit.vision.diffusion_checkpoint import save_diffusion
    from lmkit.vision.diffusion_training import DiffusionTrainConfig, train_diffusion
    from lmkit.vision.digits import load_digit_images
    from lmkit.vision.noise_schedule import NoiseSchedule
    from lmkit.vision.unet import UNet, UNetConfig

    torch.manual_seed(seed)
    images, labels = load_digit_images(image_size)
    space = None
    if latent:
        if image_size % 4:
            raise click.BadParameter(f"--latent needs an --image-size divisible by 4, got {image_size}")
        space = _train_latent_space(images, vae_steps or steps, batch_size, latent_channels, kl_weight, seed)
        images = space.encode(images)  # the UNet's data: scaled latents
    schedule = NoiseSchedule(1000, beta_schedule, prediction_type=prediction)
    levels = 2 if images.shape[-1] < 16 else 3
    config = UNetConfig(in_channels=images.shape[1], out_channels=images.shape[1], num_classes=10,
                        base_channels=base_channels, channel_mults=(1, 2, 2)[:levels],
                        attention_levels=(False, True, True)[:levels])
    model = train_diffusion(UNet(config), schedule, images, labels,
                            DiffusionTrainConfig(steps=steps, batch_size=batch_size, lr=lr, cond_drop_prob=cond_drop,
                                                 seed=seed))
    save_diffusion(out_dir, model, schedule, image_size, latent_space=space)
    click.echo(f"wrote {out_dir}")
    if grid_path:
        _write_grid(model, schedule, image_size, grid_path, list(range(10)), 10, 100, 2.0, "ddpm", 0.0, seed, space)


def _train_latent_space(images, steps, batch_size, latent_channels, kl_weight, seed):
    """A VAE (4x downsampling) trained on `images`, with its scaling factor measured on them."""
    from lmkit.vision.latent_diffusion import LatentSpace, scaling_factor_of
    from lmkit.vision.vae import VAE, VAEConfig, VAETrainConfig, train_vae

    vae = train_vae(VAE(VAEConfig(in_channels=images.shape[1], latent_channels=latent_channels,
                                  channels=(16, 32, 32))), images,
                    VAETrainConfig(steps=steps, batch_size=batch_size, beta=kl_weight, seed=seed))
    space = LatentSpace(vae, scaling_factor_of(vae, images))
    click.echo(f"VAE trained; latents {tuple(space.latent_shape(images.shape[-1]))}, "
               f"scaling factor {space.scaling_factor:.4f}")
    return space


def _write_grid(model, schedule, image_size, path, digits, per_digit, num_steps, guidance, sampler_name, eta, seed,
                space=None):
    import torch

    from lmkit.vision.ddim import DDIMSampler
    from lmkit.vision.ddpm import DDPMSampler
    from lmkit.vision.diffusion_sampling import sample_images
    from lmkit.vision.image_grid import save_image_grid
    from lmkit.vision.latent_diffusion import sample_latent_images

    if sampler_name == "ddim":
        sampler = DDIMSampler(schedule, timestep_spacing="trailing")
    else:
        sampler = DDPMSampler(schedule)
    sampler.set_timesteps(num_steps)
    labels = torch.tensor(digits).repeat_interleave(per_digit)
    generator = torch.Generator().manual_seed(seed)
    if space is not None:
        images = sample_latent_images(model, space, sampler, len(labels), image_size, labels, guidance_scale=guidance,
                                      eta=eta, generator=generator)
    else:
        images = sample_images(model, sampler, (len(labels), model.config.in_channels, image_size, image_size),
                               labels, guidance_scale=guidance, eta=eta, generator=generator)
    save_image_grid(images, path, nrow=per_digit)
    click.echo(f"wrote {path}")


@diffusion_group.command("sample")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "grid_path", required=True, type=click.Path(dir_okay=False), help="PNG grid to write")
@click.option("--digits", default="0,1,2,3,4,5,6,7,8,9", show_default=True, help="comma-separated digits, one row each")
@click.option("--per-digit", type=click.IntRange(1), default=10, show_default=True)
@click.option("--steps", "num_steps", type=click.IntRange(1), default=100, show_default=True, help="sampling steps")
@click.option("--guidance", type=float, default=2.0, show_default=True, help="classifier-free guidance scale (1 = none)")
@click.option("--sampler", "sampler_name", type=click.Choice(["ddim", "ddpm"]), default="ddpm", show_default=True)
@click.option("--eta", type=float, default=0.0, show_default=True, help="DDIM noise (0 = deterministic)")
@click.option("--seed", type=int, default=0, show_default=True)
@progress_flags
def sample_cmd(model_dir, grid_path, digits, per_digit, num_steps, guidance, sampler_name, eta, seed) -> None:
    """Generate digits with the model in MODEL_DIR and save them as a PNG grid."""
    from lmkit.vision.diffusion_checkpoint import load_diffusion, load_latent_space

    try:
        wanted = [int(d) for d in digits.split(",") if d.strip()]
    except ValueError:
        raise click.BadParameter(f"--digits must be comma-separated integers, got {digits!r}") from None
    model, schedule, image_size = load_diffusion(model_dir)
    bad = [d for d in wanted if not 0 <= d < (model.config.num_classes or 0)]
    if bad or not wanted:
        raise click.BadParameter(f"digits must be in 0..{(model.config.num_classes or 1) - 1}, got {digits!r}")
    _write_grid(model, schedule, image_size, grid_path, wanted, per_digit, num_steps, guidance, sampler_name, eta, seed,
                load_latent_space(model_dir))


COMMANDS = [diffusion_group]
