"""A trained diffusion model on disk: `diffusion_config.json` (UNet sizes, noise schedule,
image shape) and `model.safetensors` (the EMA weights); a latent diffusion model adds
`vae.safetensors` and the config's `latent` entry (VAE sizes and the scaling factor)."""

from __future__ import annotations

import json
from pathlib import Path

from lmkit.atomic import atomic_path, atomic_write_text
from lmkit.errors import CheckpointError
from lmkit.vision.latent_diffusion import LatentSpace
from lmkit.vision.noise_schedule import NoiseSchedule
from lmkit.vision.unet import UNet, UNetConfig
from lmkit.vision.vae import VAE, VAEConfig

CONFIG_NAME = "diffusion_config.json"
WEIGHTS_NAME = "model.safetensors"
VAE_WEIGHTS_NAME = "vae.safetensors"


def _save_weights(module, path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp))


def save_diffusion(path: str | Path, model: UNet, schedule: NoiseSchedule, image_size: int,
                   latent_space: LatentSpace | None = None) -> Path:
    """Write the model directory `path` (created if needed); with `latent_space`, the UNet
    works on its latents and the VAE is saved beside it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _save_weights(model, path / WEIGHTS_NAME)
    config = {"unet": json.loads(model.config.to_json()), "schedule": schedule.to_dict(), "image_size": image_size}
    if latent_space is not None:
        _save_weights(latent_space.vae, path / VAE_WEIGHTS_NAME)
        config["latent"] = {"vae": json.loads(latent_space.vae.config.to_json()),
                            "scaling_factor": latent_space.scaling_factor}
    atomic_write_text(path / CONFIG_NAME, json.dumps(config, indent=2))
    return path


def load_diffusion(path: str | Path) -> tuple[UNet, NoiseSchedule, int]:
    """(model, schedule, image_size) from a directory written by `save_diffusion`."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{path} is not a diffusion model directory (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
                              f"train one with `lmkit diffusion train`")
    config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    model = UNet(UNetConfig(**config["unet"]))
    try:
        model.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
    except RuntimeError as exc:
        raise CheckpointError(f"{path / WEIGHTS_NAME} does not fit {CONFIG_NAME}: {exc}") from exc
    return model.eval(), NoiseSchedule(**config["schedule"]), int(config["image_size"])


def load_latent_space(path: str | Path) -> LatentSpace | None:
    """The VAE and scaling factor of a latent diffusion model directory; None for a pixel-space one."""
    from safetensors.torch import load_file

    path = Path(path)
    config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    if "latent" not in config:
        return None
    if not (path / VAE_WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{path} is a latent diffusion model but has no {VAE_WEIGHTS_NAME}")
    vae = VAE(VAEConfig(**config["latent"]["vae"]))
    try:
        vae.load_state_dict(load_file(str(path / VAE_WEIGHTS_NAME)))
    except RuntimeError as exc:
        raise CheckpointError(f"{path / VAE_WEIGHTS_NAME} does not fit {CONFIG_NAME}: {exc}") from exc
    return LatentSpace(vae.eval(), float(config["latent"]["scaling_factor"]))
