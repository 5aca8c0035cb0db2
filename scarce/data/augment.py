"""Batched, truly random augmentation and input normalisation on uint8 image tensors.

One affine resampling per batch applies, per image, a rotation in ±``rotation`` degrees, a
horizontal flip with probability 0.5 and an integer shift of up to ``shift`` pixels with black
fill: the shift is exactly a random crop after ``shift`` pixels of zero padding. Doing it as
one ``grid_sample`` call keeps per-image Python out of the training loop. Optional (off by
default): a zoom by a factor in 1 ± ``zoom``, and, before the resampling, a contrast factor in
1 ± ``contrast`` around each image's mean and a brightness offset in ± ``brightness``, and, after
it, random erasing: with probability ``erase`` per image, a black rectangle (torchvision's
``RandomErasing`` defaults for its area and aspect ratio, drawn for the whole batch at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Mean/std the ImageNet weights were trained with; used for every model so inputs look alike.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augmentation:
    rotation: float = 10.0  # degrees, uniform in [-rotation, rotation]
    flip: bool = True  # horizontal flip with probability 0.5
    shift: int = 4  # pixels; random crop with this much zero padding
    zoom: float = 0.0  # scale factor uniform in [1 - zoom, 1 + zoom]
    brightness: float = 0.0  # offset uniform in [-brightness, brightness] (images are 0..1)
    contrast: float = 0.0  # factor uniform in [1 - contrast, 1 + contrast] around the image mean
    erase: float = 0.0  # probability per image of one erased (black) rectangle

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return augment(images, self, generator)


def augment(images: torch.Tensor, policy: Augmentation, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augmented copies of float images (B x C x H x W, values 0..1), each drawn independently."""
    batch, _, height, width = images.shape
    uniform = lambda: torch.rand(batch, generator=generator) * 2 - 1  # noqa: E731
    angle = uniform() * math.radians(policy.rotation)
    flip = torch.ones(batch)
    if policy.flip:
        flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    shift_x = torch.randint(-policy.shift, policy.shift + 1, (batch,), generator=generator).float()
    shift_y = torch.randint(-policy.shift, policy.shift + 1, (batch,), generator=generator).float()
    cos, sin = torch.cos(angle), torch.sin(angle)
    # The optional parts draw their random numbers after the others, and only when switched on,
    # so the default policy's views do not change.
    if policy.zoom:
        scale = 1 + uniform() * policy.zoom  # output pixel → input pixel: zoom in when scale > 1
        cos, sin = cos / scale, sin / scale
    if policy.contrast or policy.brightness:
        view = (batch, 1, 1, 1)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = (images - mean) * (1 + uniform().view(view) * policy.contrast) + mean
        images = (images + uniform().view(view) * policy.brightness).clamp(0, 1)
    # affine_grid maps output to input coordinates in [-1, 1]; a pixel is 2/size of that range.
    theta = torch.stack([
        torch.stack([cos * flip, -sin, shift_x * 2 / width], dim=1),
        torch.stack([sin * flip, cos, shift_y * 2 / height], dim=1),
    ], dim=1).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if policy.erase:
        images = erase_rectangles(images, policy.erase, generator)
    return images


def erase_rectangles(images: torch.Tensor, probability: float, generator: torch.Generator | None = None,
                     scale: tuple[float, float] = (0.02, 0.33), ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Each image, with ``probability``, gets one black rectangle covering a uniform ``scale``
    fraction of its area with a log-uniform aspect ``ratio`` (height/width), at a uniform place."""
    batch, _, height, width = images.shape
    area = (scale[0] + torch.rand(batch, generator=generator) * (scale[1] - scale[0])) * height * width
    log_ratio = math.log(ratio[0]) + torch.rand(batch, generator=generator) * (math.log(ratio[1]) - math.log(ratio[0]))
    aspect = torch.exp(log_ratio)
    box_h = torch.sqrt(area * aspect).round().clamp(1, height)
    box_w = torch.sqrt(area / aspect).round().clamp(1, width)
    top = (torch.rand(batch, generator=generator) * (height - box_h + 1)).floor()
    left = (torch.rand(batch, generator=generator) * (width - box_w + 1)).floor()
    chosen = torch.rand(batch, generator=generator) < probability
    rows, cols = torch.arange(height).view(1, -1), torch.arange(width).view(1, -1)
    in_rows = (rows >= top.view(-1, 1)) & (rows < (top + box_h).view(-1, 1))  # B x H
    in_cols = (cols >= left.view(-1, 1)) & (cols < (left + box_w).view(-1, 1))  # B x W
    mask = (in_rows.unsqueeze(2) & in_cols.unsqueeze(1) & chosen.view(-1, 1, 1)).unsqueeze(1)
    return images.masked_fill(mask, 0.0)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 to float 0..1."""
    return images.float().div_(255)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of float 0..1 images."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std
