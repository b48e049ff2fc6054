"""A trained diffusion model on disk: `diffusion_config.json` (UNet sizes, noise schedule,
image shape) and `model.safetensors` (the EMA weights)."""

from __future__ import annotations

import json
from pathlib import Path

from lmkit.atomic import atomic_path, atomic_write_text
from lmkit.errors import CheckpointError
from lmkit.vision.noise_schedule import NoiseSchedule
from lmkit.vision.unet import UNet, UNetConfig

CONFIG_NAME = "diffusion_config.json"
WEIGHTS_NAME = "model.safetensors"


def save_diffusion(path: str | Path, model: UNet, schedule: NoiseSchedule, image_size: int) -> Path:
    """Write the model directory `path` (created if needed)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / WEIGHTS_NAME) as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    config = {"unet": json.loads(model.config.to_json()), "schedule": schedule.to_dict(), "image_size": image_size}
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
