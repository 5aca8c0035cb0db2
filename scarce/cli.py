"""The ``scarce`` command line: argument parsing and the error boundary, nothing else.

Every user error becomes one sentence on stderr and exit code 2; a diverged training exits 3.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys

from .errors import EXIT_USER_ERROR, ScarceError

EXIT_DIVERGED = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scarce", description="Train image classifiers from scarce labelled data.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train and evaluate one model")
    train.add_argument("--config", help="TOML file with any of the settings below")
    train.add_argument("--data", help="a .npz file, MedMNIST name, folder per class or CSV/TSV table "
                                      "(relative paths are also looked up in the data directory)")
    _add_data_arguments(train)
    train.add_argument("--allow-leakage", dest="allow_leakage", action="store_true", default=None,
                       help="train even if a patient or an identical image is in two splits (recorded)")
    train.add_argument("--replace", action="store_true", default=None,
                       help="sample the training subset with replacement when a class has too few images")
    train.add_argument("--out", help="output folder (default runs/train)")
    train.add_argument("--n", type=int, help="training images, class-balanced (default: all)")
    train.add_argument("--seed", type=int)
    train.add_argument("--size", type=int, help="image side in pixels (default 64)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", dest="batch_size", type=int)
    train.add_argument("--backbone", help="timm model name (default efficientnet_lite0)")
    train.add_argument("--pretrained", help="imagenet (default) or scratch")
    train.add_argument("--recipe", help="training recipe (see `scarce recipes`)")
    train.add_argument("--tta", type=int, help="augmented test-time passes besides the clean one (default 4)")
    train.add_argument("--threads", type=int, help="CPU threads for torch")
    train.add_argument("--overwrite", action="store_true", default=None, help="replace a finished run in --out")
    train.add_argument("--no-progress", dest="progress", action="store_false", default=None)

    data = commands.add_parser("data", help="look at a dataset before training on it")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    inspect = data_commands.add_parser("inspect", help="task, classes, counts per split, patients, leakage")
    inspect.add_argument("data", help="a .npz file, MedMNIST name, folder per class or CSV/TSV table")
    _add_data_arguments(inspect)

    lr_find = commands.add_parser("lr-find", help="sweep the learning rate, plot the loss, suggest a rate")
    for action in train._actions:
        if action.dest not in ("help", "tta", "epochs", "overwrite", "replace"):
            lr_find._add_action(action)

    study = commands.add_parser("study", help="recipes × training-set sizes × seeds, resumable")
    study_commands = study.add_subparsers(dest="study_command", required=True)
    study_run = study_commands.add_parser("run", help="run or resume a study (the same command resumes)")
    study_run.add_argument("spec", help="study spec (TOML), see examples/")
    study_run.add_argument("--out", required=True, help="study folder (study.db, cells/, report.html)")
    study_run.add_argument("--executor", default="local", choices=["local", "ray"])
    study_run.add_argument("--workers", type=int, default=1, help="local executor: worker processes")
    study_run.add_argument("--address", help="ray executor: cluster address (e.g. auto); default a local cluster")
    study_run.add_argument("--cpus-per-cell", dest="cpus_per_cell", type=float, default=1.0)
    study_run.add_argument("--gpus-per-cell", dest="gpus_per_cell", type=float, default=0.0)
    study_run.add_argument("--redo-changed", dest="redo_changed", action="store_true",
                           help="run finished cells anew when the spec changed them (default: refuse)")
    study_run.add_argument("--no-progress", dest="progress", action="store_false")
    for name, text in (("status", "cells done, pending, failed"), ("report", "rebuild report.html, results.csv, summary.md")):
        command = study_commands.add_parser(name, help=text)
        command.add_argument("out", help="study folder")

    commands.add_parser("recipes", help="list the training recipes")
    return parser


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", dest="data_dir", help="data directory (default: $SCARCE_DATA_DIR)")
    parser.add_argument("--data-option", dest="data_options", action="append", metavar="KEY=VALUE",
                        type=_key_value, help="a data-source option, e.g. label_column=finding (repeatable; "
                        "see docs/data.md)")


def _key_value(text: str) -> tuple[str, object]:
    """'key=value' with the value read as a TOML value when it is one (numbers, lists), else text."""
    import tomllib

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value


def _settings(args: argparse.Namespace) -> dict:
    settings = {key: value for key, value in vars(args).items() if key not in ("command", "config")}
    if settings.get("data_options") is not None:
        settings["data_options"] = dict(settings["data_options"])
    return settings


def run_data(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .splits import check_leakage, describe

    dataset = load_dataset(args.data, args.data_dir, **dict(args.data_options or []))
    print(describe(dataset, check_leakage(dataset)))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .config import make_config
    from .run import train

    config = make_config(args.config, **_settings(args))
    result = train(config)
    m = result.metrics
    low, high = m["test_auc_ci"] or (float("nan"), float("nan"))
    print(f"recipe {m['recipe']}, n_train {m['n_train']}, seed {m['seed']}, best epoch {m['best_epoch']}"
          f"/{m['epochs_run']}, {m['train_seconds']:.0f} s training")
    print(f"test AUC {m['test_auc']:.4f} (95% CI {low:.4f}-{high:.4f}), accuracy {m['test_accuracy']:.4f}"
          + (f", sensitivity {m['test_sensitivity']:.4f}, specificity {m['test_specificity']:.4f}"
             if m.get("test_sensitivity") is not None else ""))
    print(f"wrote {result.out}/metrics.json, model.safetensors, run.json, history.csv, test_probabilities.npy")
    return 0


def run_lr_find(args: argparse.Namespace) -> int:
    from .config import make_config
    from .run import find_lr

    settings = _settings(args)
    settings["out"] = settings.get("out") or "runs/lr-find"
    result = find_lr(make_config(args.config, **settings))
    print(f"suggested learning rate {result['suggested_lr']:.3g} ({result['rule']}); "
          f"swept {len(result['lrs'])} steps from {result['lrs'][0]:.1e} to {result['lrs'][-1]:.1e}")
    print(f"wrote {settings['out']}/lr_find.png, lr_find.json; use it with [recipe_options] lr = ...")
    return 0


def run_study_command(args: argparse.Namespace) -> int:
    from . import study

    if args.study_command == "status":
        print(study.study_status(args.out))
        return 0
    if args.study_command == "report":
        files = study.rebuild_report(args.out)
        print("wrote " + ", ".join(str(path) for path in files.values()))
        return 0
    if args.workers < 1:
        raise ScarceError(f"--workers must be at least 1, not {args.workers}.")
    counts = study.run_study(args.spec, args.out, args.executor, args.workers, args.address,
                             args.cpus_per_cell, args.gpus_per_cell, args.redo_changed, args.progress)
    print(f"{args.out}: " + ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
          + f"; report in {args.out}/report.html")
    return 0 if set(counts) <= {"done"} else 1


def run_recipes(args: argparse.Namespace) -> int:
    from .recipes import DEFAULT_RECIPE, RECIPES

    for name, recipe in RECIPES.items():
        print(f"{name}{' (default)' if name == DEFAULT_RECIPE else ''}: {recipe.description}")
    return 0


HANDLERS = {"data": run_data, "study": run_study_command, "train": run_train, "lr-find": run_lr_find, "recipes": run_recipes}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .train import TrainingDiverged

    try:
        return HANDLERS[args.command](args)
    except ScarceError as error:
        print(f"scarce: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as error:  # a write failed outside atomic_write (a folder, the decode cache, …)
        from .artifacts import write_error

        friendly = write_error(error.filename or "an output file", error)
        if friendly is None:
            raise
        print(f"scarce: error: {friendly}", file=sys.stderr)
        return EXIT_USER_ERROR
    except sqlite3.OperationalError as error:  # the study database: disk full, read-only, …
        print(f"scarce: error: The study database could not be written ({error}); free space or choose "
              f"another --out, then run the same command again.", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingDiverged as error:
        print(f"scarce: error: {error}; lower the learning rate (recipe option lr).", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        print("scarce: interrupted; finished files are intact, partial ones were not written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
