"""A small class-conditional DCGAN (Radford et al. 2016; conditioning as in Mirza & Osindero),
the notes' contrast with diffusion: one generator pass per image instead of many denoising
steps, trained adversarially instead of by regression, and prone to mode collapse.

Generator: [z; label embedding] -> linear -> 2x2 maps -> transposed convs (BatchNorm, ReLU)
doubling the size up to the image -> tanh. Discriminator: the image with the label as extra
one-hot channels -> strided convs (LeakyReLU) -> one logit. Non-saturating loss, Adam(2e-4, 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.errors import ConfigError
from lmkit.progress import Progress


@dataclass
class GANConfig:
    image_size: int = 8
    channels: int = 1
    num_classes: int = 10
    z_dim: int = 32
    width: int = 64
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 4 or self.image_size & (self.image_size - 1):
            raise ConfigError(f"image_size must be a power of two >= 4, got {self.image_size}")


class Generator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.label_embedding = nn.Embedding(cfg.num_classes, cfg.z_dim)
        self.fc = nn.Linear(2 * cfg.z_dim, cfg.width * 4)
        layers: list[nn.Module] = []
        ch = cfg.width
        for i in range(int(math.log2(cfg.image_size)) - 1):
            last = i == int(math.log2(cfg.image_size)) - 2
            out = cfg.channels if last else max(ch // 2, 16)
            layers.append(nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1))
            if not last:
                layers += [nn.BatchNorm2d(out), nn.ReLU()]
            ch = out
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc(torch.cat([z, self.label_embedding(labels)], dim=1)))
        return torch.tanh(self.net(h.view(-1, self.cfg.width, 2, 2)))


class Discriminator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        ch, size = cfg.channels + cfg.num_classes, cfg.image_size
        out = max(cfg.width // 2, 16)
        while size > 2:
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            ch, out, size = out, out * 2, size // 2
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(ch * 4, 1)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(labels, self.cfg.num_classes).float()[:, :, None, None]
        onehot = onehot.expand(-1, -1, images.shape[2], images.shape[3])
        return self.head(self.net(torch.cat([images, onehot], dim=1)).flatten(1)).squeeze(1)


def train_gan(images: torch.Tensor, labels: torch.Tensor, cfg: GANConfig,
              progress: bool | str | None = None) -> Generator:
    """Train a conditional DCGAN on images (N, C, S, S) in [-1, 1]; return the generator (eval mode)."""
    torch.manual_seed(cfg.seed)
    g, d = Generator(cfg), Discriminator(cfg)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    bar = Progress(total=cfg.steps, desc="gan", unit="step", progress=progress)
    for step in bar.track(range(cfg.steps)):
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,))
        real, y = images[idx], labels[idx]
        fake = g(torch.randn(cfg.batch_size, cfg.z_dim), y)
        ones, zeros = torch.ones(cfg.batch_size), torch.zeros(cfg.batch_size)
        loss_d = (F.binary_cross_entropy_with_logits(d(real, y), ones)
                  + F.binary_cross_entropy_with_logits(d(fake.detach(), y), zeros))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        loss_g = F.binary_cross_entropy_with_logits(d(fake, y), ones)  # non-saturating
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if step % 50 == 0:
            bar.set_postfix(loss_d=f"{loss_d.item():.3f}", loss_g=f"{loss_g.item():.3f}")
    return g.eval()


@torch.no_grad()
def sample_gan(generator: Generator, labels: torch.Tensor, generator_rng: torch.Generator | None = None) -> torch.Tensor:
    """One image per label, in [-1, 1]."""
    z = torch.randn(labels.shape[0], generator.cfg.z_dim, generator=generator_rng)
    return generator(z, labels)
