"""Augmentation: per-image randomness, and the shift is exactly a random crop with zero padding."""

import torch
import torch.nn.functional as F

from scarce.data.augment import Augmentation, augment, normalize, to_float


def _batch(n=8, size=32):
    generator = torch.Generator().manual_seed(0)
    return to_float(torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8))


def test_random_crops_differ_between_images_and_between_calls():
    image = _batch(1).expand(16, -1, -1, -1)  # the same image 16 times
    crop_only = Augmentation(rotation=0, flip=False, shift=4)
    out = augment(image, crop_only, torch.Generator().manual_seed(1))
    distinct = {tuple(out[i].flatten()[:200].tolist()) for i in range(16)}
    assert len(distinct) > 8  # not the same (e.g. top-left) crop every time
    again = augment(image, crop_only, torch.Generator().manual_seed(2))
    assert not torch.equal(out, again)


def test_shift_equals_a_crop_of_the_zero_padded_image():
    images = _batch(32)
    crop_only = Augmentation(rotation=0, flip=False, shift=4)
    out = augment(images, crop_only, torch.Generator().manual_seed(3))
    padded = F.pad(images, (4, 4, 4, 4))
    offsets = set()
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(9) for dx in range(9)
                   if torch.allclose(out[i], padded[i, :, dy:dy + 32, dx:dx + 32], atol=1e-5)]
        assert len(matches) == 1, i
        offsets.add(matches[0])
    assert len(offsets) > 10  # offsets spread over the 9 x 9 possibilities, corners included or not


def test_flip_and_rotation_are_applied_per_image():
    images = _batch(1).expand(64, -1, -1, -1)
    flip_only = Augmentation(rotation=0, flip=True, shift=0)
    out = augment(images, flip_only, torch.Generator().manual_seed(4))
    flipped = sum(torch.allclose(o, images[0].flip(-1), atol=1e-5) for o in out)
    kept = sum(torch.allclose(o, images[0], atol=1e-5) for o in out)
    assert flipped + kept == 64 and 16 < flipped < 48
    rotate_only = Augmentation(rotation=10, flip=False, shift=0)
    rotated = augment(images, rotate_only, torch.Generator().manual_seed(5))
    assert len({round(float(r.sum()), 3) for r in rotated}) > 50


def test_normalize_uses_imagenet_statistics():
    grey = torch.full((1, 3, 2, 2), 0.485)
    assert torch.allclose(normalize(grey)[0, 0], torch.zeros(2, 2), atol=1e-6)


def test_the_optional_parts_leave_the_default_views_unchanged_and_act_when_on():
    images = _batch(16)
    default = augment(images, Augmentation(), torch.Generator().manual_seed(7))
    explicit_off = augment(images, Augmentation(zoom=0.0, brightness=0.0, contrast=0.0, erase=0.0),
                           torch.Generator().manual_seed(7))
    assert torch.equal(default, explicit_off)


def test_zoom_magnifies_around_the_centre():
    """A centred 8x8 square under zoom 0.3: its area is scaled by factor² with factor in 0.7..1.3."""
    square = torch.zeros(1, 3, 32, 32)
    square[..., 12:20, 12:20] = 1.0
    plain = Augmentation(rotation=0, flip=False, shift=0)
    zoomed = augment(square.expand(64, -1, -1, -1), Augmentation(rotation=0, flip=False, shift=0, zoom=0.3),
                     torch.Generator().manual_seed(8))
    areas = zoomed[:, 0].gt(0.5).sum(dim=(1, 2)).float()
    base = augment(square, plain)[0, 0].gt(0.5).sum().item()
    assert base == 64
    assert areas.min() < 64 < areas.max()  # some views shrink the square, some enlarge it
    assert 0.7 ** 2 * 64 - 8 <= areas.min() and areas.max() <= 1.3 ** 2 * 64 + 8


def test_brightness_and_contrast_change_each_image_differently_and_stay_in_range():
    images = _batch(1).expand(32, -1, -1, -1)
    policy = Augmentation(rotation=0, flip=False, shift=0, brightness=0.2, contrast=0.3)
    out = augment(images, policy, torch.Generator().manual_seed(9))
    assert out.min() >= 0 and out.max() <= 1
    means = out.mean(dim=(1, 2, 3))
    stds = out.std(dim=(1, 2, 3))
    assert means.max() - means.min() > 0.1 and stds.max() / stds.min() > 1.2


def test_erasing_blacks_out_one_rectangle_in_about_the_chosen_share_of_images():
    """erase=0.5 on bright images without geometry: about half of them get exactly one black
    axis-aligned rectangle of 2-33 % of the area (allowing for rounding of its sides)."""
    images = torch.full((400, 3, 32, 32), 0.8)
    out = augment(images, Augmentation(rotation=0, flip=False, shift=0, erase=0.5), torch.Generator().manual_seed(10))
    black = (out == 0).all(dim=1)  # B x H x W
    erased = black.flatten(1).any(dim=1)
    assert 150 < erased.sum() < 250
    assert torch.equal(out[~erased], images[~erased])
    for mask in black[erased]:
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == height * width == len(rows) * len(cols)  # one solid rectangle
        assert 0.01 * 1024 <= mask.sum() <= 0.40 * 1024
    sizes = black[erased].flatten(1).sum(dim=1).float()
    assert sizes.max() / sizes.min() > 4  # the area is drawn, not fixed
