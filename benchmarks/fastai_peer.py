"""Peer arm with REAL fastai: does scarce's `fastai-fine-tune` recipe match fastai's own `fine_tune`?

The protocol of ../shared/BENCHMARK.md, with only the training loop handed to fastai: the same
data, training subset (scarce's `prepare_data`, so the identical images per N and seed), model
(scarce's `create_model`, EfficientNet-Lite0, offline ImageNet weights, seeded 1-logit head),
augmentation (scarce's `Augmentation`: 4-px random crop, flip, ±10°) and ImageNet normalisation.
fastai trains it: plain PyTorch DataLoaders wrapped in `fastai.data.core.DataLoaders`, `Learner(
dls, model, loss_func=BCEWithLogitsLossFlat(), splitter=body/head)`, `fine_tune(9, base_lr=2e-3,
freeze_epochs=1)` (10 epochs), batch 16, CPU, and `SaveModelCallback(monitor='valid_loss',
reset_on_fit=False)` keeps the epoch with the lowest loss on the full val split over all 10
epochs. The kept model is scored like every scarce run: `scarce.evaluate.predict` with TTA 4,
ROC AUC on the full test split. Variants: `fastai` (defaults, lr_mult=100: the body peaks at
1e-5) and `fastai-lr_mult1` (`fine_tune(..., lr_mult=1)`). `--groups 3` splits the model into
scarce's early body/late body/head groups instead of fastai's body/head split of a timm model.

    python benchmarks/fastai_peer.py --n 50 100 200 500 --seeds 0 1 2 3 4 --threads 1 --json FILE
    python benchmarks/fastai_peer.py --merge A.json B.json --json FILE   # two halves run side by side

fastai is an optional benchmark dependency, not one of scarce's: `pip install fastai` (or
`pip install -e .[bench-fastai]`) beside the pinned torch 2.14.1; it leaves torch alone.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scarce.config import make_config
from scarce.data.augment import Augmentation, normalize, to_float
from scarce.evaluation.inference import predict
from scarce.evaluation.metrics import auc
from scarce.models.backbones import create_model, layer_groups
from scarce.runs.common import prepare_data
from scarce.study.analysis import summarize

VARIANTS = {"fastai": 100, "fastai-lr_mult1": 1}  # variant -> fine_tune's lr_mult


def loader(split, batch_size: int, train: bool, seed: int) -> torch.utils.data.DataLoader:
    """Batches of (normalised float images, float labels); training batches shuffled and augmented."""
    images, labels = split.images, torch.as_tensor(split.labels, dtype=torch.float32)
    generator, augmentation = torch.Generator().manual_seed(seed), Augmentation()

    def collate(indices):
        index = torch.as_tensor(indices)
        batch = to_float(images[index])
        return normalize(augmentation(batch, generator) if train else batch), labels[index]
    # A last training batch of one image is dropped (BatchNorm cannot train on it); scarce merges it.
    return torch.utils.data.DataLoader(range(len(split)), batch_size=batch_size, shuffle=train,
                                       generator=generator, collate_fn=collate,
                                       drop_last=train and len(split) % batch_size == 1)


def run_cell(args, n: int, seed: int, variant: str) -> dict:
    from fastai.callback.core import Callback
    from fastai.callback.schedule import fine_tune  # noqa: F401  (patches Learner.fine_tune)
    from fastai.callback.tracker import SaveModelCallback
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.losses import BCEWithLogitsLossFlat

    class ValidLosses(Callback):  # valid_loss of every epoch, across both fits of fine_tune
        order = 55  # after the Recorder (50) has logged the epoch

        def __init__(self): self.losses = []
        def after_epoch(self): self.losses.append(float(self.recorder.values[-1][1]))

    clock = time.perf_counter()
    dataset, _, train_split = prepare_data(make_config(data=args.data, n=n, seed=seed, threads=args.threads))
    torch.manual_seed(seed)  # as scarce.run.build_model: the seed decides the new head
    model = create_model("efficientnet_lite0", "imagenet", 1).to(memory_format=torch.channels_last)
    groups = layer_groups(model)
    names = [groups.early + groups.late, groups.head] if args.groups == 2 else [groups.early, groups.late, groups.head]
    parameters = dict(model.named_parameters())
    dls = DataLoaders(loader(train_split, args.batch_size, True, seed),
                      loader(dataset.splits["val"], 256, False, seed))
    with tempfile.TemporaryDirectory() as folder:
        learn = Learner(dls, model, loss_func=BCEWithLogitsLossFlat(), path=folder,
                        splitter=lambda m: [[parameters[k] for k in group] for group in names],
                        cbs=[history := ValidLosses(), saver := SaveModelCallback(monitor="valid_loss", reset_on_fit=False)])
        with learn.no_bar(), learn.no_logging(), contextlib.redirect_stdout(io.StringIO()):
            learn.fine_tune(args.epochs - 1, base_lr=2e-3, freeze_epochs=1, lr_mult=VARIANTS[variant])
    test = dataset.splits["test"]
    probs = predict(learn.model, test.images, dataset.task, tta=args.tta, seed=seed)
    losses = history.losses
    assert saver.best == min(losses), "SaveModelCallback kept another epoch than the lowest valid_loss"
    return {"variant": variant, "n": n, "seed": seed, "status": "done", "test_auc": auc(test.labels, probs),
            "best_epoch": int(np.argmin(losses)) + 1, "valid_losses": [round(v, 5) for v in losses],
            "seconds": round(time.perf_counter() - clock, 1)}


def show(cells: list[dict]) -> None:
    rows = summarize([{**c, "recipe": c["variant"]} for c in cells])
    ns = sorted({r["n"] for r in rows})
    print(f"\n{'variant':18}" + "".join(f"{'N=' + str(n):>24}" for n in ns))
    for variant in dict.fromkeys(r["recipe"] for r in rows):
        line = {r["n"]: r for r in rows if r["recipe"] == variant}
        print(f"{variant:18}" + "".join(
            f"{'—':>24}" if (r := line.get(n)) is None or r["mean"] is None else
            f"{r['mean']:>17.3f} ({r['seeds']})   " if r["ci_low"] is None else
            f"{r['mean']:>9.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" for n in ns))
    print("\nper cell:")
    for c in cells:
        print(f"  {c['variant']:16} N={c['n']:<4} seed={c['seed']}  test AUC {c['test_auc']:.4f}  "
              f"best epoch {c['best_epoch']:>2}  {c['seconds']:.0f} s")


def write_json(path: str, result: dict) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="pneumonia_kaggle_64.npz")
    parser.add_argument("--n", type=int, nargs="+", default=[50, 100, 200, 500])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--groups", type=int, choices=[2, 3], default=2,
                        help="2: body/head, as fastai splits a timm body; 3: scarce's early/late/head")
    parser.add_argument("--epochs", type=int, default=10, help="in all, the first one head only")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tta", type=int, default=4, help="test-time augmentation passes, as scarce")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write every cell here (rewritten after each cell)")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="train nothing: print the table of these earlier outputs (and write them as one to --json)")
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads(Path(path).read_text()) for path in args.merge]
        merged = {"settings": parts[0]["settings"], "cells": [c for part in parts for c in part["cells"]]}
        show(merged["cells"])
        if args.json:
            write_json(args.json, merged)
        return
    try:
        import fastai
        from fastai.torch_core import default_device
    except ImportError:
        print("fastai is not installed: run `pip install fastai` (or `pip install -e .[bench-fastai]`) "
              "in this environment, beside the pinned torch.", file=sys.stderr)
        sys.exit(2)
    default_device(False)  # model, batches and loss on the CPU, as every scarce arm
    torch.set_num_threads(args.threads)
    result = {"settings": {**vars(args), "fastai": fastai.__version__, "torch": torch.__version__}, "cells": []}
    for n in args.n:
        for seed in args.seeds:
            for variant in args.variants:
                cell = run_cell(args, n, seed, variant)
                print(f"{variant} N={n} seed={seed}: test AUC {cell['test_auc']:.4f}, best epoch "
                      f"{cell['best_epoch']}, {cell['seconds']:.0f} s", flush=True)
                result["cells"].append(cell)
                if args.json:
                    write_json(args.json, result)
    show(result["cells"])


if __name__ == "__main__":
    main()
