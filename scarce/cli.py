"""The ``scarce`` command line: argument parsing and the error boundary, nothing else.

Every user error becomes one sentence on stderr and exit code 2; a diverged training exits 3.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import warnings
from pathlib import Path

from .errors import EXIT_USER_ERROR, ScarceError

EXIT_DIVERGED = 3


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="scarce", description="Train image classifiers from scarce labelled data.")
    parser.add_argument("--version", action="version", version=f"scarce {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train and evaluate one model")
    _add_run_settings(train, RUN_FLAGS)
    data = commands.add_parser("data", help="look at a dataset before training on it")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    inspect = data_commands.add_parser("inspect", help="task, classes, counts per split, patients, leakage")
    inspect.add_argument("data", help="a .npz file, MedMNIST name, folder per class or CSV/TSV table")
    _add_data_arguments(inspect)

    lr_find = commands.add_parser("lr-find", help="sweep the learning rate, plot the loss, suggest a rate")
    _add_run_settings(lr_find, [f for f in RUN_FLAGS if f not in ("--tta", "--epochs", "--overwrite", "--replace",
                                                                    "--out")])
    lr_find.add_argument("--out", help="output folder (default runs/lr-find)")

    study = commands.add_parser("study", help="recipes × training-set sizes × seeds, resumable")
    study_commands = study.add_subparsers(dest="study_command", required=True)
    study_run = study_commands.add_parser("run", help="run or resume a study (the same command resumes)")
    study_run.add_argument("spec", help="study spec (TOML), see examples/")
    study_run.add_argument("--out", required=True, help="study folder (study.db, cells/, report.html)")
    study_run.add_argument("--executor", default="local", choices=["local", "ray"],
                           help="local worker processes or a ray cluster (default local)")
    study_run.add_argument("--workers", type=int, default=1, help="local executor: worker processes (default 1)")
    study_run.add_argument("--address", help="ray executor: cluster address (e.g. auto); default a local cluster")
    study_run.add_argument("--cpus-per-cell", dest="cpus_per_cell", type=float, default=1.0,
                           help="ray executor: CPUs each cell asks for (default 1)")
    study_run.add_argument("--gpus-per-cell", dest="gpus_per_cell", type=float, default=0.0,
                           help="ray executor: GPUs each cell asks for (default 0)")
    study_run.add_argument("--redo-changed", dest="redo_changed", action="store_true",
                           help="run finished cells anew when the spec changed them (default: refuse)")
    study_run.add_argument("--no-progress", dest="progress", action="store_false",
                           help="no progress bar (default: shown)")
    for name, text in (("status", "cells done, pending, failed"), ("report", "rebuild report.html, results.csv, summary.md")):
        command = study_commands.add_parser(name, help=text)
        command.add_argument("out", help="study folder")

    pretrain = commands.add_parser(
        "pretrain", help="train an upstream model on related images; save its backbone",
        description="Defaults: the whole train split, recipe fine-tune-all, 3 epochs, no test-time augmentation, "
                    "64 px, starting from ImageNet (docs/transfer.md).")
    pretrain.add_argument("--data", required=True, help="the upstream source (any source --data of train takes)")
    pretrain.add_argument("--out", required=True, help="folder for backbone.safetensors, manifest.json and the run's files")
    pretrain.add_argument("--exclude-label", dest="exclude_labels", action="append", default=[], metavar="NAME",
                          help="hold this label out of the upstream task (repeatable)")
    _add_run_settings(pretrain, ["--data-dir", "--data-option", "--allow-leakage", "--n", "--seed", "--size", "--epochs",
                                 "--batch-size", "--backbone", "--pretrained", "--recipe", "--threads", "--overwrite",
                                 "--no-progress"])

    _add_use_commands(commands)
    commands.add_parser("recipes", help="list the training recipes")
    return parser


# The flags of a run's settings, shared by train, lr-find and pretrain (each adds those it takes, in this order).
_RUN_FLAGS = {
    "--config": lambda p: p.add_argument("--config", help="TOML file with any of the settings below"),
    "--data": lambda p: p.add_argument("--data", help="a .npz file, MedMNIST name, folder per class or CSV/TSV table "
                 "(relative paths are also looked up in the data directory)"),
    "--allow-leakage": lambda p: p.add_argument("--allow-leakage", dest="allow_leakage", action="store_true", default=None,
                 help="train even if a patient or an identical image is in two splits (recorded)"),
    "--replace": lambda p: p.add_argument("--replace", action="store_true", default=None,
                 help="sample the training subset with replacement when a class has too few images"),
    "--out": lambda p: p.add_argument("--out", help="output folder (default runs/train)"),
    "--n": lambda p: p.add_argument("--n", type=int, help="training images, class-balanced (default: all)"),
    "--seed": lambda p: p.add_argument("--seed", type=int, help="the run's random seed (default 0)"),
    "--size": lambda p: p.add_argument("--size", type=int, help="image side in pixels (default 64)"),
    "--epochs": lambda p: p.add_argument("--epochs", type=int, help="training epochs (default 10)"),
    "--batch-size": lambda p: p.add_argument("--batch-size", dest="batch_size", type=int,
                 help="images per step for recipes without their own (default 16); the default recipe "
                 "small-data uses 8: change it with batch_size in [recipe_options]"),
    "--backbone": lambda p: p.add_argument("--backbone", help="timm model name (default efficientnet_lite0)"),
    "--pretrained": lambda p: p.add_argument("--pretrained", help="imagenet (default), scratch, or an upstream model from "
                 "`scarce pretrain` (its folder or .safetensors file)"),
    "--recipe": lambda p: p.add_argument("--recipe", help="training recipe (see `scarce recipes`)"),
    "--tta": lambda p: p.add_argument("--tta", type=int, help="augmented test-time passes besides the clean one (default 4)"),
    "--threads": lambda p: p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own)"),
    "--overwrite": lambda p: p.add_argument("--overwrite", action="store_true", default=None, help="replace a finished run in --out"),
    "--no-progress": lambda p: p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                 help="no progress bar (default: shown)"),
}
RUN_FLAGS = ["--config", "--data", "--data-dir", "--data-option"] + [f for f in _RUN_FLAGS if f not in ("--config", "--data")]


def _add_run_settings(parser: argparse.ArgumentParser, flags: list[str]) -> None:
    for flag in flags:
        if flag == "--data-dir":
            _add_data_arguments(parser)
        elif flag != "--data-option":
            _RUN_FLAGS[flag](parser)


def _add_use_commands(commands) -> None:
    """predict, evaluate, export and model-card: using a trained model folder (docs/using_models.md)."""
    predict = commands.add_parser("predict", help="probabilities and decisions for images, as a CSV")
    evaluate = commands.add_parser("evaluate", help="external validation on labelled images: AUC, calibration, "
                                                    "confusion at the stored thresholds")
    for command in (predict, evaluate):
        command.add_argument("--model", required=True, help="the --out folder of a finished scarce train")
        command.add_argument("--data", required=True, help="any source train reads, an image file or a folder "
                                                           "of unlabelled images")
        _add_data_arguments(command)
        command.add_argument("--split", help="train, val, test or all (default: test when the source has its "
                                             "own splits, else all)")
        command.add_argument("--tta", type=int, help="augmented test-time passes (default: the run's)")
        command.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own)")
    predict.add_argument("--out", default="predictions.csv", help="CSV file (default predictions.csv)")
    predict.add_argument("--threshold", help="youden (default), 0.5 or sensitivity90: stored with the model")
    predict.add_argument("--explain", action="store_true",
                         help="also write a Grad-CAM PNG per image to <out stem>_gradcam/")
    evaluate.add_argument("--out", default="runs/evaluate",
                          help="folder for evaluation.json, evaluation.html, predictions.csv (default runs/evaluate)")
    export = commands.add_parser("export", help="the model as ONNX, with its preprocessing spec as JSON")
    export.add_argument("--model", required=True, help="the --out folder of a finished scarce train")
    export.add_argument("--format", default="onnx", help="onnx (default; the only format)")
    export.add_argument("--out", help="file to write (default MODEL/model.onnx)")
    card = commands.add_parser("model-card", help="rebuild MODEL_CARD.md in a model folder")
    card.add_argument("--model", required=True, help="the --out folder of a finished scarce train")


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", dest="data_dir", help="data directory (default: $SCARCE_DATA_DIR)")
    parser.add_argument("--data-option", dest="data_options", action="append", metavar="KEY=VALUE",
                        type=_key_value, help="a data-source option, e.g. label_column=finding (repeatable; "
                        "see docs/data.md)")


def _value(number: float | None) -> str:
    """A metric to four decimals, or 'undefined' (an AUC on a split with one class)."""
    return "undefined (one class only)" if number is None or number != number else f"{number:.4f}"


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
    from .data.dataset import load_dataset
    from .data.leakage import check_leakage, describe

    dataset = load_dataset(args.data, args.data_dir, **dict(args.data_options or []))
    print(describe(dataset, check_leakage(dataset)))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .config import make_config

    config = make_config(args.config, **_settings(args))  # bad settings fail before torch is imported
    from .runs.run import train

    result = train(config)
    m = result.metrics
    fitted = (f"best epoch {m['best_epoch']}/{m['epochs_run']}" if m["best_epoch"] is not None  # radiomics: no epochs
              else f"{m['cv_folds']}-fold cross-validated C {m['regularisation_C']}")
    if m.get("epoch_ensemble"):
        fitted += f" (an ensemble of epochs {', '.join(str(e) for e in m['kept_epochs'])})"
    print(f"recipe {m['recipe']}, n_train {m['n_train']}, seed {m['seed']}, {fitted}, "
          f"{m['train_seconds']:.0f} s training")
    interval = f" (95% CI {m['test_auc_ci'][0]:.4f}-{m['test_auc_ci'][1]:.4f})" if m["test_auc_ci"] else ""
    print(f"test AUC {_value(m['test_auc'])}{interval}, accuracy {m['test_accuracy']:.4f}"
          + (f", sensitivity {_value(m['test_sensitivity'])}, specificity {_value(m['test_specificity'])}"
             if "test_sensitivity" in m else ""))
    written = [name for name in ("metrics.json", "model.safetensors", "run.json", "history.csv", "test_probabilities.npy",
                                   "thresholds.json", "MODEL_CARD.md")
               if (result.out / name).exists()]
    print(f"wrote {result.out}/{', '.join(written)}")
    return 0


def run_lr_find(args: argparse.Namespace) -> int:
    from .config import make_config

    settings = _settings(args)
    settings["out"] = settings.get("out") or "runs/lr-find"
    config = make_config(args.config, **settings)  # bad settings fail before torch is imported
    from .runs.run import find_lr

    result = find_lr(config)
    print(f"suggested learning rate {result['suggested_lr']:.3g} ({result['rule']}); "
          f"swept {len(result['lrs'])} steps from {result['lrs'][0]:.1e} to {result['lrs'][-1]:.1e}")
    print(f"wrote {settings['out']}/lr_find.png, lr_find.json; use it with [recipe_options] lr = ...")
    return 0


def run_study_command(args: argparse.Namespace) -> int:
    from .study import runner as study

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


def _use_settings(args: argparse.Namespace) -> dict:
    """Threads set, and the data arguments of predict and evaluate."""
    if args.threads is not None:
        if args.threads < 1:
            raise ScarceError(f"--threads must be at least 1, not {args.threads}.")
        import torch

        torch.set_num_threads(args.threads)
    return {"split": args.split, "data_dir": args.data_dir, "options": dict(args.data_options or []),
            "tta": args.tta}


def run_predict(args: argparse.Namespace) -> int:
    from .use.predict import predict_source

    result = predict_source(args.model, args.data, args.out, threshold=args.threshold, explain=args.explain,
                            **_use_settings(args))
    values = "" if result.values is None else " = " + ", ".join(f"{v:.4g}" for v in result.values)
    print(f"{result.rows} images, 1 clean + {result.tta} augmented passes, decision: {result.threshold}{values}")
    print(f"wrote {result.csv}" + (f" and Grad-CAM heatmaps in {result.heatmaps}/" if result.heatmaps else ""))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .use.external import evaluate_model

    result = evaluate_model(args.model, args.data, args.out, **_use_settings(args))
    ci = result["auc_ci"]
    interval = f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else ""
    auc = _value(result["auc"])
    print(f"{result['data']['n']} images: AUC {auc}{interval}, expected calibration error "
          f"{result['calibration']['ece']:.4f}")
    if result["data"]["same_source_as_training"]:
        print("note: this data has the training data's fingerprint (an internal test, not an external one)")
    print(f"wrote {args.out}/evaluation.json, evaluation.html, predictions.csv")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .use.export import export_model

    onnx_file, spec_file, spec = export_model(args.model, args.format, args.out)
    parity = spec["parity"]
    checked = (f"; onnxruntime matches PyTorch within {parity['max_abs_diff_probabilities']:.1e}"
               if parity["checked"] else "")
    print(f"wrote {onnx_file} and {spec_file}{checked}")
    return 0


def run_model_card(args: argparse.Namespace) -> int:
    from .runs.model_card import write_model_card

    print(f"wrote {write_model_card(args.model)}")
    return 0


def run_recipes(args: argparse.Namespace) -> int:
    from .training.recipes import DEFAULT_RECIPE, RECIPES

    for name, recipe in RECIPES.items():
        print(f"{name}{' (default)' if name == DEFAULT_RECIPE else ''}: {recipe.description}")
    return 0


def run_pretrain(args: argparse.Namespace) -> int:
    from .runs.pretrain import pretrain

    settings = _settings(args)
    manifest = pretrain(exclude_labels=settings.pop("exclude_labels"), **settings)
    source, training, val, test = manifest["source"], manifest["training"], manifest["val"], manifest["test"]
    excluded = f" without {', '.join(source['excluded_labels'])}" if source["excluded_labels"] else ""
    print(f"upstream {source['name']}{excluded}: {source['task']}, {len(source['classes'])} classes, "
          f"n_train {training['n_train']}, recipe {training['recipe']}, best epoch {training['best_epoch']}"
          f"/{training['epochs_run']}, {training['train_seconds']:.0f} s training")
    print(f"val AUC {_value(val['auc'])}, val loss {val['loss']:.4f}; test AUC {_value(test['auc'])}, "
          f"accuracy {test['accuracy']:.4f}")
    print(f"wrote {args.out}/backbone.safetensors, manifest.json; use it with --pretrained {args.out}")
    return 0


HANDLERS = {"data": run_data, "study": run_study_command, "train": run_train, "lr-find": run_lr_find,
            "pretrain": run_pretrain, "recipes": run_recipes, "predict": run_predict, "evaluate": run_evaluate,
            "export": run_export, "model-card": run_model_card}


def _one_line_warnings(default):
    """A ``warnings.showwarning`` that prints scarce's own warnings as one line, like its errors, and
    hands other packages' warnings to ``default``."""
    package = Path(__file__).resolve().parent

    def show(message, category, filename, lineno, file=None, line=None):
        if package in Path(filename).resolve().parents:
            print(f"scarce: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    return show


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .training.history import TrainingDiverged

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
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
