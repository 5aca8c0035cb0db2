"""External validation: a trained model on a labelled set it has not seen (``scarce evaluate``).

AUC with a bootstrap interval (``metrics.task_metrics``, the same numbers ``scarce train`` reports
for its test split), calibration (reliability curve and expected calibration error) and confusion
counts at the thresholds stored with the model. Written as ``evaluation.json``, a self-contained
``evaluation.html`` (every user string escaped, the plot embedded as base64 PNG) and the
per-image ``predictions.csv``.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .. import artifacts
from ..errors import ScarceError
from ..evaluation.decisions import (
    THRESHOLD_NAMES,
    calibration,
    confusion,
    decide,
    multiclass_confusion,
    output_columns,
    thresholded_outputs,
)
from ..evaluation.metrics import task_metrics
from .predict import Images, TrainedModel, load_images, load_model_folder, model_labels, predict_images, predictions_csv

BINS = 10


def evaluate_model(model: str | Path, data: str | Path, out: str | Path, split: str | None = None,
                   data_dir: str | None = None, options: dict | None = None, tta: int | None = None,
                   bins: int = BINS) -> dict:
    """Evaluate the model folder ``model`` on labelled ``data``; write the results into folder ``out``."""
    trained = load_model_folder(model)
    images = load_images(data, trained.size, split, data_dir, options)
    if images.labels is None:
        raise ScarceError(f"{data} holds unlabelled images; scarce evaluate needs labels (a folder per class, "
                          f"a table with a label column or an .npz); use scarce predict for unlabelled images.")
    labels = model_labels(trained, images)
    out = artifacts.prepare_output(Path(out), overwrite=True, marker="evaluation.json")
    tta = trained.tta if tta is None else tta
    probs = predict_images(trained, images, tta)
    result = evaluation(trained, images, labels, probs, tta, bins)
    name, values = trained.threshold(None)
    artifacts.write_text(out / "predictions.csv", predictions_csv(trained, images, probs, name, values, labels))
    artifacts.write_text(out / "evaluation.html", report_html(result, reliability_png(result["calibration"])))
    artifacts.write_json(out / "evaluation.json", result)  # last: its presence marks a finished evaluation
    return result


def evaluation(trained: TrainedModel, images: Images, labels: np.ndarray, probs: np.ndarray, tta: int,
               bins: int = BINS) -> dict:
    """The numbers of an evaluation, as written to evaluation.json."""
    task, classes = trained.task, trained.classes
    metrics = task_metrics(task, labels, probs, seed=trained.seed)  # the seed scarce train used: same CI
    training = _read_metrics(trained.folder)
    run_data = trained.run.get("data", {})
    same_data = images.fingerprint is not None and images.fingerprint == run_data.get("fingerprint")
    counts = (labels.sum(axis=0) if task == "multilabel" else np.bincount(labels, minlength=len(classes)))
    return {
        "model": str(trained.folder),
        "data": {"source": images.source, "split": images.split, "n": len(images),
                 "counts": {name: int(c) for name, c in zip(classes, counts)}, "fingerprint": images.fingerprint,
                 "same_source_as_training": same_data},
        "task": task,
        "classes": classes,
        "tta_passes": {"clean": 1, "augmented": tta},
        "seed": trained.seed,
        "auc": metrics["auc"],
        "auc_ci": metrics["auc_ci"],
        **{key: metrics[key] for key in ("per_class_auc", "per_label_auc") if key in metrics},
        "calibration": calibration(task, labels, probs, bins),
        "decisions": decisions(trained, labels, probs),
        "training": {"test_auc": training.get("test_auc"), "test_auc_ci": training.get("test_auc_ci"),
                     "data": run_data.get("source"), "data_fingerprint": run_data.get("fingerprint")},
    }


def _read_metrics(folder: Path) -> dict:
    try:
        return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def decisions(trained: TrainedModel, labels: np.ndarray, probs: np.ndarray) -> dict:
    """Confusion at every stored threshold (per thresholded output), or the argmax confusion matrix."""
    task, classes = trained.task, trained.classes
    if task == "multiclass":
        return {"argmax": {"rows": "true class", "columns": "predicted class",
                           "matrix": multiclass_confusion(labels, decide(task, probs), len(classes))}}
    names = THRESHOLD_NAMES if trained.thresholds is not None else ("0.5",)
    label_columns, score_columns = output_columns(task, labels, probs)
    result = {}
    for name in names:
        _, values = trained.threshold(name)
        result[name] = {output: confusion(label_columns[:, k], score_columns[:, k], values[k])
                        for k, output in enumerate(thresholded_outputs(task, classes))}
    return result


def reliability_png(calibration_result: dict) -> bytes:
    """Observed frequency against mean predicted probability per bin, with the diagonal and bin counts."""
    figure = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(figure)  # Agg, without pyplot's global state
    axes = figure.add_subplot()
    rows = [row for row in calibration_result["curve"] if row["n"]]
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axes.plot([r["mean_predicted"] for r in rows], [r["observed"] for r in rows], marker="o", label="model")
    for r in rows:
        axes.annotate(str(r["n"]), (r["mean_predicted"], r["observed"]), textcoords="offset points",
                      xytext=(4, -10), fontsize=7, color="dimgrey")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed frequency",
             title=f"Reliability ({calibration_result['bins']} bins), ECE {calibration_result['ece']:.3f}")
    axes.legend(loc="upper left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 900px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
.warning { color: #9a3b00; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _number(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: list, rows: list[list]) -> str:
    lines = ["<table>"] + (["<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"] if header else [])
    lines += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows]
    return "\n".join(lines + ["</table>"])


def report_html(result: dict, png: bytes) -> str:
    """The evaluation as one HTML page with no external resources."""
    data, cal = result["data"], result["calibration"]
    ci = result["auc_ci"]
    auc_text = (f"{_number(result['auc'])} (95% CI {_number(ci[0])}–{_number(ci[1])}; bootstrap over images, "
                f"2,000 resamples)" if ci else _number(result["auc"]))
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             "<title>scarce evaluation</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
             "<h1>scarce evaluation</h1>",
             _table([], [["model", result["model"]], ["data", data["source"]], ["split", data["split"]],
                               ["images", data["n"]], ["task", result["task"]],
                               ["classes", ", ".join(result["classes"])],
                               ["test-time augmentation",
                                f"1 clean + {result['tta_passes']['augmented']} augmented passes"]])]
    if data["same_source_as_training"]:
        parts.append('<p class="warning">This data has the fingerprint of the data the model was trained from: '
                     'an internal test, not an external validation.</p>')
    parts += ["<h2>Discrimination</h2>", f"<p>AUC {_e(auc_text)}</p>"]
    for key, title in (("per_class_auc", "class"), ("per_label_auc", "label")):
        if key in result:
            parts.append(_table([title, "AUC"], [[c, _number(v)] for c, v in zip(result["classes"], result[key])]))
    training = result["training"]
    if training.get("test_auc") is not None:
        parts.append(f"<p>At training, on {_e(training.get('data'))} (its test split): AUC "
                     f"{_e(_number(training['test_auc']))}.</p>")
    png64 = base64.b64encode(png).decode("ascii")
    parts += ["<h2>Calibration</h2>",
              f"<p>Expected calibration error {_e(_number(cal['ece']))} over {cal['bins']} equal-width bins "
              f"of {_e(cal['of'])}.</p>",
              f'<img alt="reliability curve" src="data:image/png;base64,{png64}">',
              _table(["bin", "images", "mean predicted", "observed"],
                     [[f"{r['low']:.1f}–{r['high']:.1f}", r["n"], _number(r["mean_predicted"], 3),
                       _number(r["observed"], 3)] for r in cal["curve"]]),
              "<h2>Decisions</h2>"]
    for name, entry in result["decisions"].items():
        if name == "argmax":
            parts.append("<p>Most probable class; rows are true classes, columns predicted.</p>")
            parts.append(_table(["true \\ predicted", *result["classes"]],
                                [[c, *row] for c, row in zip(result["classes"], entry["matrix"])]))
            continue
        parts.append(f"<h3>threshold {_e(name)}</h3>")
        parts.append(_table(["output", "threshold", "TP", "FP", "TN", "FN", "sensitivity", "specificity", "accuracy"],
                            [[output, _number(c["threshold"]), c["tp"], c["fp"], c["tn"], c["fn"],
                              _number(c["sensitivity"]), _number(c["specificity"]), _number(c["accuracy"])]
                             for output, c in entry.items()]))
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
