"""Training and inference throughput: scarce's loop against a minimal plain PyTorch + timm loop.

Both loops train the same model (EfficientNet-Lite0, ImageNet weights, one logit) on the same
in-memory uint8 images with the same batch size, image size, thread count and augmentation
(per-image rotation ±10°, flip, 4-px shift as one affine resampling), alternating in one process;
the table shows the median of several repetitions and the ratio scarce / plain. scarce runs its
model in the channels_last memory format; a third loop, plain + channels_last, shows how much of
the difference that one change makes. It also counts
the FLOPs of one training step (3 x forward) and compares the achieved rate with a 2048 x 2048 fp32 matmul
measured in the same run.

    python benchmarks/throughput.py --threads 1 --repeats 5 --json runs/throughput.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scarce.data.augment import IMAGENET_MEAN, IMAGENET_STD
from scarce.data.dataset import load_dataset, resize
from scarce.evaluation.inference import predict_logits
from scarce.models.backbones import create_model
from scarce.training.loop import fit
from scarce.training.recipes import get_recipe


def plain_train_epoch(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                      optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    """The loop a user would write by hand: shuffle, augment, normalise, forward, backward, step."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    model.train()
    for index in torch.randperm(len(images), generator=generator).split(batch_size):
        x = images[index].float() / 255
        b, _, h, w = x.shape
        angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(10)
        flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
        shift = torch.randint(-4, 5, (2, b), generator=generator).float()
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos * flip, -sin, shift[0] * 2 / w], 1),
                             torch.stack([sin * flip, cos, shift[1] * 2 / h], 1)], 1)
        x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
        loss = F.binary_cross_entropy_with_logits(model((x - mean) / std)[:, 0], labels[index].float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of a square matmul (best of ``repeats``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def train_step_flops(model, batch: torch.Tensor) -> int:
    """FLOPs of one training step: 3 x the forward FLOPs counted by PyTorch's FlopCounterMode.

    The backward pass costs about twice the forward. (The counter's own figure for
    ``convolution_backward`` ignores the groups of depthwise convolutions and overstates
    EfficientNet's backward about 40-fold, so it is not used.)
    """
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(batch)
    return 3 * counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="pneumonia_kaggle_64.npz")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=512, help="training images per timed epoch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dataset = resize(load_dataset(args.data), args.size)
    train = dataset.splits["train"].take(np.arange(args.images))
    tiny_val = dataset.splits["val"].take(np.arange(16))  # scarce validates each epoch; keep it small
    test_images = dataset.splits["test"].images[:1024]
    labels = torch.as_tensor(train.labels)
    recipe = get_recipe("fine-tune-all")  # every layer trains in both loops

    scarce_train, plain_train, plain_cl_train, scarce_infer, plain_infer = [], [], [], [], []
    for repeat in range(args.repeats):
        torch.manual_seed(repeat)
        model = create_model("efficientnet_lite0", "imagenet", 1)
        start = time.perf_counter()
        fit(model, train, tiny_val, "binary", recipe, 1, args.batch_size, seed=repeat, progress=False)
        scarce_train.append(args.images / (time.perf_counter() - start))

        torch.manual_seed(repeat)
        model = create_model("efficientnet_lite0", "imagenet", 1)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        start = time.perf_counter()
        plain_train_epoch(model, train.images, labels, args.batch_size, optimizer,
                          torch.Generator().manual_seed(repeat))
        # the same validation pass scarce does after its epoch
        predict_logits(model, tiny_val.images)
        plain_train.append(args.images / (time.perf_counter() - start))

        # the same plain loop with the one layout change scarce makes (for transparency)
        torch.manual_seed(repeat)
        model_cl = create_model("efficientnet_lite0", "imagenet", 1).to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model_cl.parameters(), lr=1e-3)
        start = time.perf_counter()
        plain_train_epoch(model_cl, train.images, labels, args.batch_size, optimizer,
                          torch.Generator().manual_seed(repeat))
        predict_logits(model_cl, tiny_val.images)
        plain_cl_train.append(args.images / (time.perf_counter() - start))

        start = time.perf_counter()
        predict_logits(model, test_images, batch_size=256)
        scarce_infer.append(len(test_images) / (time.perf_counter() - start))
        model.to(memory_format=torch.contiguous_format)  # predict_logits moved it to channels_last
        start = time.perf_counter()
        model.eval()
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            for batch in test_images.split(256):
                model((batch.float() / 255 - mean) / std)
        plain_infer.append(len(test_images) / (time.perf_counter() - start))

    model = create_model("efficientnet_lite0", "imagenet", 1).train()
    flops = train_step_flops(model, torch.randn(args.batch_size, 3, args.size, args.size))
    peak = matmul_peak()
    median = statistics.median
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": args.threads, "torch": torch.__version__},
        "settings": vars(args),
        "train_images_per_s": {"scarce": median(scarce_train), "plain": median(plain_train),
                               "ratio": median(s / p for s, p in zip(scarce_train, plain_train))},
        "plain_channels_last_train_images_per_s": median(plain_cl_train),
        "ratio_to_plain_channels_last": median(s / p for s, p in zip(scarce_train, plain_cl_train)),
        "inference_images_per_s": {"scarce": median(scarce_infer), "plain": median(plain_infer),
                                   "ratio": median(s / p for s, p in zip(scarce_infer, plain_infer))},
        "train_step_gflop": flops / 1e9,
        "achieved_train_gflop_per_s": flops / args.batch_size * median(scarce_train) / 1e9,
        "matmul_peak_gflop_per_s": peak,
        "raw": {"scarce_train": scarce_train, "plain_train": plain_train, "plain_channels_last_train": plain_cl_train,
                "scarce_inference": scarce_infer, "plain_inference": plain_infer},
    }
    result["fraction_of_peak"] = result["achieved_train_gflop_per_s"] / peak
    print(f"EfficientNet-Lite0, {args.size} px, batch {args.batch_size}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"{'':24}{'scarce':>10}{'plain':>10}{'ratio':>8}")
    for name, key in (("train images/s", "train_images_per_s"), ("inference images/s", "inference_images_per_s")):
        row = result[key]
        print(f"{name:24}{row['scarce']:>10.1f}{row['plain']:>10.1f}{row['ratio']:>8.2f}")
    print(f"{'plain + channels_last':24}{'':>10}{result['plain_channels_last_train_images_per_s']:>10.1f}"
          f"{result['ratio_to_plain_channels_last']:>8.2f}  (train; scarce / this)")
    print(f"training step: {result['train_step_gflop']:.2f} GFLOP per batch; achieved "
          f"{result['achieved_train_gflop_per_s']:.1f} GFLOP/s = {100 * result['fraction_of_peak']:.0f}% of the "
          f"{peak:.0f} GFLOP/s matmul peak measured now")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
