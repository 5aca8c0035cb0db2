"""Study report: the three files, escaping of user-chosen names, and the page as a real browser renders it."""

import base64
import csv
import io
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg
from sklearn.metrics import roc_auc_score

from scarce.study.analysis import analyze
from scarce.study.report import learning_curve_png, write_report

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = "<script>alert(1)</script>"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MATPLOTLIB_BLUE = np.array([31, 119, 180]) / 255  # the first colour of matplotlib's default cycle


def synthetic_study(recipes=("gradual-unfreezing", "regular"), ns=(50, 100, 200, 400), seeds=(0, 1, 2)):
    """Cells whose probabilities separate the classes better with more data and for the first recipe."""
    labels = np.arange(120) % 2
    results = []
    for r_index, recipe in enumerate(recipes):
        for n in ns:
            for seed in seeds:
                rng = np.random.default_rng(1000 * r_index + 10 * n + seed)
                separation = 3.0 * (1 - 0.9 * (n / 50) ** -0.5) - 0.4 * r_index
                probs = 1 / (1 + np.exp(-(separation * (labels - 0.5) + rng.normal(0, 1, len(labels)))))
                results.append({"recipe": recipe, "n": n, "seed": seed, "status": "done",
                                 "test_auc": float(roc_auc_score(labels, probs)), "probs": probs,
                                 "best_epoch": int(rng.integers(1, 10)), "train_seconds": 12.5})
    results.append({"recipe": recipes[0], "n": ns[-1], "seed": len(seeds), "status": "diverged",
                    "test_auc": None, "error": "loss became NaN at epoch 2"})
    results.append({"recipe": recipes[-1], "n": ns[-1], "seed": len(seeds), "status": "failed",
                    "test_auc": None, "error": "out of memory"})
    results.append({"recipe": recipes[-1], "n": ns[-1], "seed": len(seeds) + 1, "status": "pending",
                    "test_auc": None})
    return labels, results


def study_report(out_dir, recipes=("gradual-unfreezing", "regular"), dataset="pneumonia_kaggle_64.npz"):
    labels, results = synthetic_study(recipes)
    analysis = analyze(results, labels=labels, target=0.9, bootstrap_resamples=50, extrapolation_resamples=30)
    spec = {"name": "transfer policies", "data": dataset, "recipes": list(recipes), "n": [50, 100, 200, 400],
            "seeds": [0, 1, 2], "classes": ["normal", HOSTILE]}
    versions = {"python": "3.11", "scarce": "0.1.0", "torch": "2.14.1"}
    return write_report(out_dir, spec, results, analysis, versions), results


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One report for the tests that only read it (the analysis behind it takes a couple of seconds)."""
    return study_report(tmp_path_factory.mktemp("study") / "report")


def test_write_report_writes_three_files_atomically(report):
    paths, _ = report
    assert {name: path.name for name, path in paths.items()} == {
        "html": "report.html", "csv": "results.csv", "markdown": "summary.md"}
    assert all(path.is_file() and path.stat().st_size > 0 for path in paths.values())
    assert sorted(p.name for p in paths["html"].parent.iterdir()) == ["report.html", "results.csv", "summary.md"]


def test_results_csv_has_one_row_per_cell_and_every_scalar_column(report):
    paths, results = report
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert len(rows) == len(results)
    assert list(rows[0])[:5] == ["recipe", "n", "seed", "status", "test_auc"]
    assert {"best_epoch", "train_seconds", "error"} <= set(rows[0]) and "probs" not in rows[0]
    assert rows[0]["test_auc"] == repr(results[0]["test_auc"])
    diverged = next(row for row in rows if row["status"] == "diverged")
    assert diverged["test_auc"] == "" and diverged["error"] == "loss became NaN at epoch 2"


def test_summary_markdown_has_recommendation_table_differences_and_extrapolation(report):
    paths, _ = report
    text = paths["markdown"].read_text()
    assert text.startswith("# Study summary: transfer policies (pneumonia_kaggle_64.npz)")
    assert "## Recommendation" in text and "use gradual-unfreezing" in text
    assert "| gradual-unfreezing | 400 | 3 |" in text
    assert "gradual-unfreezing is higher than regular" in text
    assert "## Sample size for the target" in text and "- regular:" in text


def test_report_html_is_self_contained_with_all_sections(report):
    paths, _ = report
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>")
    # Nothing fetched from elsewhere: the only URL-bearing attribute is the embedded plot.
    assert re.findall(r'(?:src|href)="([^"]*)"', page) == [re.search(r'src="(data:image/png;base64,[^"]*)"', page)[1]]
    for heading in ("Recommendation", "Learning curves", "Test AUC by recipe and N", "Paired comparisons",
                    "Training images needed for the target", "Cells left out of the means", "Study specification",
                    "Versions"):
        assert f"<h2>{heading}</h2>" in page
    assert "loss became NaN at epoch 2" in page and "out of memory" in page
    assert "gradual-unfreezing is higher than regular" in page
    assert "torch" in page and "2.14.1" in page


def test_user_chosen_names_are_escaped_everywhere_in_the_page(tmp_path):
    paths, _ = study_report(tmp_path, recipes=(HOSTILE, "regular"), dataset=HOSTILE)
    page = paths["html"].read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("&lt;script&gt;") >= 5  # title, tables, statements, spec, recommendation


def test_learning_curve_png_is_a_png_with_and_without_data():
    _, results = synthetic_study()
    analysis = analyze(results, target=0.9, extrapolation_resamples=10)
    assert png_size(learning_curve_png(analysis)) == (800, 500)
    assert png_size(learning_curve_png(analyze([]), target=0.8)) == (800, 500)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: install it with "
                    "`apt-get update && apt-get install -y chromium` to run the browser test")
def test_a_headless_browser_renders_the_report(report, tmp_path):
    paths, _ = report
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", "--window-size=1200,2000", "--run-all-compositor-stages-before-draw",
             "--virtual-time-budget=5000"]
    url = paths["html"].resolve().as_uri()
    screenshot = tmp_path / "report.png"
    shot = subprocess.run(flags + [f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={screenshot}", url],
                          capture_output=True, text=True, timeout=60)
    assert screenshot.is_file(), f"chromium wrote no screenshot (exit {shot.returncode}): {shot.stderr[-2000:]}"
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copyfile(screenshot, artifacts / "study_report_screenshot.png")

    # The page rendered: the screenshot has the window's size, is not blank, and shows the plot's blue line.
    assert png_size(screenshot.read_bytes()) == (1200, 2000)
    pixels = mpimg.imread(screenshot)[:, :, :3]
    assert pixels.std() > 0.05
    blue = np.all(np.abs(pixels - MATPLOTLIB_BLUE) < 0.04, axis=2).sum()
    assert blue > 300, f"only {blue} pixels of the first recipe's line colour: the plot did not render"

    dom = subprocess.run(flags + [f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    image = re.search(r'<img[^>]*alt="learning curve"[^>]*>', dom.stdout)
    assert image, "no learning-curve <img> in the rendered DOM"
    source = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', image[0])
    assert source, "the learning-curve <img> has no embedded PNG source"
    width, height = png_size(base64.b64decode(source[1], validate=True))
    assert (width, height) == (800, 500)
    assert dom.stdout.count("<table") == 6  # summary, pairs, fits, samples needed, problem cells, versions
