"""Report written: a study's analysis as one self-contained HTML page, a CSV of cells and a Markdown summary.

Everything here is presentation; the numbers come from ``scarce.analysis.analyze``. Every
string that a user could have chosen (recipe, dataset and class names, spec values) passes
through ``html.escape`` before it reaches the page, and the plot is embedded as a base64 PNG so
the page needs nothing beside it.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

import numpy as np
from matplotlib import rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from ..artifacts import write_text
from .analysis import predict_curve

FIRST_COLUMNS = ("recipe", "n", "seed", "status", "test_auc")


DETERMINISM = (
    "Reproducibility: scarce computes on the CPU, where the same spec and seeds give the same numbers "
    "and weights with these versions (tested). On a GPU that would not be guaranteed: "
    "torch.use_deterministic_algorithms is off by default and scarce does not turn it on, so cuDNN may "
    "pick a different or a nondeterministic convolution algorithm per run, and CUDA backward passes that "
    "accumulate with atomic additions (convolutions, adaptive average pooling, bilinear interpolate, "
    "grid_sample, index_add, scatter_add) sum in varying order; PyTorch also does not promise identical "
    "results across releases, platforms, or CPU and GPU.")


def write_report(out_dir: Path, spec: dict, results: list[dict], analysis: dict, versions: dict) -> dict[str, Path]:
    """Write report.html, results.csv and summary.md into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"html": out_dir / "report.html", "csv": out_dir / "results.csv", "markdown": out_dir / "summary.md"}
    write_text(paths["csv"], results_csv(results))
    write_text(paths["markdown"], summary_markdown(spec, analysis))
    write_text(paths["html"], report_html(spec, analysis, versions))
    return paths


def learning_curve_png(analysis: dict, target: float | None = None) -> bytes:
    """Mean test AUC vs N (log axis) per recipe, 95% CI band, fitted power law dashed, target line."""
    target = analysis.get("target") if target is None else target
    figure = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(figure)  # Agg, without pyplot's global state
    axes = figure.add_subplot()
    rows = [row for row in analysis.get("summary", []) if row.get("mean") is not None]
    measured = sorted({row["n"] for row in rows})
    cycle = rcParams["axes.prop_cycle"].by_key()["color"]
    for index, recipe in enumerate(dict.fromkeys(row["recipe"] for row in rows)):
        colour = cycle[index % len(cycle)]
        mine = sorted((row for row in rows if row["recipe"] == recipe), key=lambda row: row["n"])
        ns = [row["n"] for row in mine]
        means = [row["mean"] for row in mine]
        lows = [row["mean"] if row["ci_low"] is None else row["ci_low"] for row in mine]
        highs = [row["mean"] if row["ci_high"] is None else row["ci_high"] for row in mine]
        axes.plot(ns, means, marker="o", color=colour, label=recipe)
        axes.fill_between(ns, lows, highs, color=colour, alpha=0.2, linewidth=0)
        fit = analysis.get("fits", {}).get(recipe)
        if fit and fit.get("ok"):
            # Drawn to 2× the largest N: the doubling the recommendation talks about.
            grid = np.geomspace(min(ns), 2 * max(ns), 200)
            axes.plot(grid, predict_curve(fit, grid), linestyle="--", color=colour, alpha=0.8,
                      label=f"{recipe} fit")
    if target is not None:
        axes.axhline(target, color="black", linestyle=":", label=f"target {target:.3f}")
    if rows:
        axes.set_xscale("log")
        axes.set_xticks(measured)
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.legend(loc="lower right", fontsize="small")
    else:
        axes.text(0.5, 0.5, "no finished cells yet", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("training images N")
    axes.set_ylabel("test AUC")
    axes.set_title("Learning curves (mean over seeds, 95% CI band, dashed: power-law fit)")
    axes.grid(True, which="major", alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def results_csv(results: list[dict]) -> str:
    """One row per cell: recipe, n, seed, status, test_auc, then every other scalar key present."""
    columns = list(FIRST_COLUMNS)
    for cell in results:
        columns += [key for key, value in cell.items() if key not in columns and _is_scalar(value)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for cell in results:
        writer.writerow({key: _csv_value(cell.get(key)) for key in columns})
    return buffer.getvalue()


def _is_scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, np.generic))


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, np.generic):
        return value.item()
    return value if _is_scalar(value) else ""


def summary_markdown(spec: dict, analysis: dict) -> str:
    """Recommendation, summary table, distinguishable differences and the extrapolation."""
    lines = [f"# Study summary: {_title(spec)}", "", "## Recommendation", "",
             analysis.get("recommendation", {}).get("text", ""), "", "## Test AUC by recipe and N", "",
             "| recipe | N | seeds | mean | 95% CI | diverged |", "|---|---|---|---|---|---|"]
    for row in analysis.get("summary", []):
        lines.append(f"| {_md(row['recipe'])} | {row['n']} | {row['seeds']} | {_number(row['mean'])} "
                     f"| {_interval(row['ci_low'], row['ci_high'])} | {row['diverged']} |")
    problems = analysis.get("problem_cells", [])
    if problems:
        lines += ["", "## Cells left out of the means", ""]
        lines += [f"- {_md(c.get('recipe'))} N={c.get('n')} seed={c.get('seed')}: {_md(c.get('status'))}"
                  + (f" ({_md(c['error'])})" if c.get("error") else "") for c in problems]
    lines += ["", "## Distinguishable differences", ""]
    # Each pair appears twice (A−B and B−A); the positive direction reads best.
    shown = [p for p in one_direction(analysis.get("pairs", [])) if p["distinguishable"]]
    lines += [f"- {_md(p['statement'])}" for p in shown] or ["- none: no pair of recipes is distinguishable "
                                                             "at any N with these seeds"]
    lines += ["", "## Sample size for the target", ""]
    needed = analysis.get("samples_needed", {})
    if not needed:
        lines.append("No target AUC was given.")
    for recipe, row in needed.items():
        lines.append(f"- {_md(recipe)}: {_md(_needed_text(row))}")
    return "\n".join(lines) + "\n"


def _md(text) -> str:
    """Markdown table cells: keep a '|' in a name from splitting the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.warning { color: #9a3b00; }
.recommendation { background: #eef6ee; border-left: 4px solid #3a7d3a; padding: 0.6em 1em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
img { max-width: 100%; }
"""


def report_html(spec: dict, analysis: dict, versions: dict) -> str:
    """The whole report as one HTML document with no external resources."""
    png = base64.b64encode(learning_curve_png(analysis)).decode("ascii")
    title = f"scarce study report: {_title(spec)}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{_e(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>{_e(_cell_counts(analysis))}</p>",
        "<h2>Recommendation</h2>",
        f'<p class="recommendation" id="recommendation">{_e(analysis.get("recommendation", {}).get("text", ""))}</p>',
        "<h2>Learning curves</h2>",
        f'<img alt="learning curve" src="data:image/png;base64,{png}">',
        "<h2>Test AUC by recipe and N</h2>", _summary_table(analysis),
        "<h2>Paired comparisons</h2>", _pairs_table(analysis),
        "<h2>Training images needed for the target</h2>", _needed_table(analysis),
        "<h2>Cells left out of the means</h2>", _problem_table(analysis),
        "<h2>Study specification</h2>",
        f"<pre>{_e(json.dumps(spec, indent=2, default=str))}</pre>",
        "<h2>Versions</h2>", _table(["package", "version"], [[key, value] for key, value in versions.items()]),
        f'<p id="determinism">{_e(DETERMINISM)}</p>',
        "</body>", "</html>",
    ]
    return "\n".join(parts) + "\n"


def _summary_table(analysis: dict) -> str:
    """Recipe rows × N columns: mean [95% CI] (seeds), with pooled test-image intervals when present."""
    summary = analysis.get("summary", [])
    if not summary:
        return "<p>No cells.</p>"
    pooled = {(row["recipe"], row["n"]): row for row in analysis.get("pooled_bootstrap", [])}
    ns = sorted({row["n"] for row in summary})
    by_cell = {(row["recipe"], row["n"]): row for row in summary}
    rows = []
    for recipe in dict.fromkeys(row["recipe"] for row in summary):
        cells = [recipe]  # escaped by _table; the N columns are HTML built by _summary_cell
        for n in ns:
            row = by_cell.get((recipe, n))
            cells.append("" if row is None else _summary_cell(row, pooled.get((recipe, n))))
        rows.append(cells)
    note = ("<p>Mean test AUC over seeds [95% t-interval across seeds] (number of seeds). "
            "Where probabilities were stored, “test images” is the pooled bootstrap interval over "
            "test images of the seed-averaged AUC.</p>")
    return note + _table(["recipe"] + [f"N={n}" for n in ns], rows, numeric_from=1,
                         raw_columns=set(range(1, len(ns) + 1)))


def _summary_cell(row: dict, pooled: dict | None) -> str:
    """HTML: one escaped line each for seeds, pooled interval and bad cells."""
    if row["mean"] is None:
        lines = ["no finished seed"]
    else:
        lines = [f"{row['mean']:.3f} {_interval(row['ci_low'], row['ci_high'], brackets=True)} ({row['seeds']})"]
    if pooled and pooled.get("low") is not None:
        lines.append(f"test images {_interval(pooled['low'], pooled['high'], brackets=True)}")
    bad = [f"{row[status]} {status}" for status in ("diverged", "failed", "undefined") if row.get(status)]
    if bad:
        lines.append(", ".join(bad))
    return "<br>".join(_e(line) for line in lines)


def one_direction(pairs: list[dict]) -> list[dict]:
    """Each comparison once (A − B and B − A say the same), the direction with A ahead."""
    kept, seen = [], set()
    for pair in sorted(pairs, key=lambda p: -p["mean_diff"]):
        key = (pair["n"], frozenset((pair["recipe_a"], pair["recipe_b"])))
        if key not in seen:
            seen.add(key)
            kept.append(pair)
    return sorted(kept, key=lambda p: p["n"])


def _pairs_table(analysis: dict) -> str:
    pairs = one_direction(analysis.get("pairs", []))
    if not pairs:
        return "<p>No pair of recipes shares at least 2 finished seeds at any N.</p>"
    rows = [[p["n"], p["recipe_a"], p["recipe_b"], p["pairs"], f"{p['mean_diff']:+.3f}",
             _interval(p["ci_low"], p["ci_high"], signed=True), "yes" if p["distinguishable"] else "no",
             p["statement"]] for p in pairs]
    return ("<p>Differences A − B over the seeds both recipes finished (same training images per seed). "
            "Distinguishable: the 95% t-interval of the differences excludes 0 "
            "(no correction for the number of comparisons).</p>"
            + _table(["N", "A", "B", "paired seeds", "mean A − B", "95% CI", "distinguishable", "statement"], rows))


def _needed_table(analysis: dict) -> str:
    needed = analysis.get("samples_needed", {})
    fits = analysis.get("fits", {})
    fit_rows = [[recipe, _number(f["a"]), _number(f["b"]), _number(f["c"]), _number(f["rmse"], 4),
                 "" if f["ok"] else f["reason"]] for recipe, f in fits.items()]
    text = ("<p>Fitted learning curves AUC(N) = a − b·N<sup>−c</sup> on seed-level points "
            "(a is the asymptote).</p>"
            + _table(["recipe", "a", "b", "c", "rmse", "not fitted because"], fit_rows))
    if not needed:
        return text + "<p>No target AUC was given.</p>"
    rows = [[recipe, _number(row.get("n_needed"), 0), _interval(row.get("ci_low"), row.get("ci_high"), digits=0),
             _number(row.get("extrapolation_factor"), 1),
             _warning(row.get("warning") or row.get("reason") or "")] for recipe, row in needed.items()]
    target = analysis.get("target")
    return text + (f"<p>Training images N at which each fitted curve reaches the target AUC {_e(_number(target))}, "
                   f"with a 95% bootstrap interval (seeds resampled within each N).</p>"
                   + _table(["recipe", "N needed", "95% interval", "× largest measured N", "warning"], rows,
                            raw_columns={4}))


def _warning(text: str) -> str:
    return f'<span class="warning">{_e(text)}</span>' if text else ""


def _problem_table(analysis: dict) -> str:
    cells = analysis.get("problem_cells", [])
    if not cells:
        return "<p>None.</p>"
    detail_keys = [key for key in dict.fromkeys(key for c in cells for key in c)
                   if key not in FIRST_COLUMNS and all(_is_scalar(c.get(key)) for c in cells)]
    header = ["recipe", "N", "seed", "status"] + detail_keys
    rows = [[c.get("recipe"), c.get("n"), c.get("seed"), c.get("status")] + [c.get(k) for k in detail_keys]
            for c in cells]
    return _table(header, rows)


def _table(header: list, rows: list[list], numeric_from: int | None = None, raw_columns: set[int] = frozenset()) -> str:
    """An HTML table; every cell escaped except ``raw_columns`` (already-escaped HTML built here)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for index, value in enumerate(row):
            content = value if index in raw_columns else _e("" if value is None else value)
            number_class = ' class="number"' if numeric_from is not None and index >= numeric_from else ""
            cells.append(f"<td{number_class}>{content}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _title(spec: dict) -> str:
    name = spec.get("name") or spec.get("study") or "study"
    data = spec.get("data") or spec.get("dataset")
    return f"{name} ({data})" if data and not isinstance(data, dict) else str(name)


def _cell_counts(analysis: dict) -> str:
    counts = analysis.get("counts", {})
    return "Cells: " + ", ".join(f"{count} {status}" for status, count in counts.items()) if counts else "No cells."


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:,.{digits}f}"


def _interval(low, high, digits: int = 3, brackets: bool = False, signed: bool = False) -> str:
    if low is None and high is None:
        return "—"
    sign = "+" if signed else ""
    text = (f"{'—' if low is None else format(low, f'{sign},.{digits}f')} to "
            f"{'∞' if high is None else format(high, f'{sign},.{digits}f')}")
    return f"[{text}]" if brackets else text


def _needed_text(row: dict) -> str:
    if not row.get("ok"):
        return f"not estimated ({row.get('reason')})"
    if not row.get("reachable"):
        return f"unreachable: {row.get('warning')}"
    text = (f"N ≈ {row['n_needed']:,.0f} (95% interval {_interval(row.get('ci_low'), row.get('ci_high'), digits=0)}, "
            f"{row['extrapolation_factor']:.1f}× the largest measured N)")
    return text + (f"; warning: {row['warning']}" if row.get("warning") else "")
