"""The run's table (console and markdown), its JSON file, and the results section of docs/benchmarks.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from benchmarks.machine import one_line
from benchmarks.measure import summary
from benchmarks.settings import Sizes
from benchmarks.targets import Row, rows

START_MARK = "<!-- benchmark-results:start -->"
END_MARK = "<!-- benchmark-results:end -->"
#: A run with ``--observed`` (metrics scraped, a dashboard read) goes between these, beside the plain one.
OBSERVED_MARKS = ("<!-- benchmark-results-observed:start -->", "<!-- benchmark-results-observed:end -->")
HEADER = ("case", "runner median (min-max)", "reference median (min-max)", "ratio", "target", "met?")
LOG_EXCERPT = 40  # log lines kept per process in the JSON


def evaluate(results: dict[str, Any], sizes: Sizes) -> list[dict[str, Any]]:
    """Every row of the table whose case ran: summaries, ratio, target and whether it was met."""
    cases = results["cases"]
    return [_evaluate_row(row, cases) for row in rows(sizes) if row.case in cases]


def _evaluate_row(row: Row, cases: dict[str, Any]) -> dict[str, Any]:
    runs = cases[row.case]["runs"]
    values, errors = _values(runs, row.metric)
    line: dict[str, Any] = {"label": row.label, "unit": row.unit, "metric": f"{row.case}/{row.metric}",
                            "runner": summary(values) if values else None, "errors": errors,
                            "reference_name": row.reference_name, "reference": None, "ratio": None,
                            "target": row.target.text if row.target else None, "met": None}
    if row.reference:
        case, _, path = row.reference.rpartition("/")
        reference_values, _ = _values(cases.get(case or row.case, {}).get("runs", []), path)
        line["reference"] = summary(reference_values) if reference_values else None
    if line["runner"] and line["reference"] and line["reference"]["median"]:
        line["ratio"] = line["runner"]["median"] / line["reference"]["median"]
    if row.target:
        reference = line["reference"]["median"] if line["reference"] else None
        if line["runner"] and (reference is not None or not row.reference):
            line["met"] = row.target.check(line["runner"]["median"], reference)
        elif errors:
            line["met"] = False  # it failed: a missed target
    return line


def _values(runs: list[dict[str, Any]], path: str) -> tuple[list[float], list[str]]:
    """The metric ``side.key`` of each run that has it, and the errors of the runs that do not."""
    side, key = path.split(".", 1)
    values, errors = [], []
    for run in runs:
        measured = run.get(side, {})
        if key in measured and "error" not in measured:
            values.append(measured[key])
        elif "error" in measured:
            errors.append(measured["error"])
    return values, errors


# --- the table ------------------------------------------------------------------------------


def table_cells(lines: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [_cells(line) for line in lines]


def _cells(line: dict[str, Any]) -> tuple[str, ...]:
    unit = line["unit"]
    runner = _spread(line["runner"], unit) if line["runner"] else f"failed: {line['errors'][0][:60]}" if line["errors"] else "not run"
    reference = "-"
    if line["reference"]:
        suffix = "" if line["reference_name"] == "PPE" else f" ({line['reference_name']})"
        reference = _spread(line["reference"], unit) + suffix
    ratio = "-" if line["ratio"] is None else f"{line['ratio']:.2f}x" if line["ratio"] >= 0.1 else f"{line['ratio']:.3f}x"
    met = {True: "yes", False: "NO", None: "-" if not line["target"] else "n/a"}[line["met"]]
    return (f"{line['label']}, {unit}", runner, reference, ratio, line["target"] or "-", met)


def _spread(values: dict[str, float], unit: str) -> str:
    median, low, high = (_number(values[key], unit) for key in ("median", "min", "max"))
    return median if low == high else f"{median} ({low}-{high})"


def _number(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:,.2f}"
    return f"{value:,.1f}" if abs(value) < 10 else f"{value:,.0f}"


def text_table(lines: list[dict[str, Any]]) -> str:
    """The table for a terminal: aligned columns."""
    table = [HEADER, *table_cells(lines)]
    widths = [max(len(row[column]) for row in table) for column in range(len(HEADER))]
    rendered = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)


def markdown_table(lines: list[dict[str, Any]]) -> str:
    table = [HEADER, *table_cells(lines)]
    rendered = ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table]
    rendered.insert(1, "|" + "---|" * len(HEADER))
    return "\n".join(rendered)


# --- files ------------------------------------------------------------------------------------


def save_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")


def docs_section(results: dict[str, Any], lines: list[dict[str, Any]], json_name: str) -> str:
    """The generated part of docs/benchmarks.md: when, on what, the table, what went wrong."""
    sizes = results["sizes"]
    missed = [line["label"].strip() for line in lines if line["met"] is False]
    parts = [
        (f"Run {results['started']} ({results['mode']} mode{', observed' if results.get('observed') else ''}, "
         f"{sizes['runs']} runs a case, "
         f"{results['seconds']:.0f} s in all), saved as `benchmarks/results/{json_name}`."),
        "",
        (f"Machine: {one_line(results['machine'])}. Load average (1, 5, 15 min) at the start: "
         f"{_loads(results['machine']['load_average'])}; at the end: {_loads(results.get('load_average_end'))}."),
        f"Code: commit `{(results['machine']['git_commit'] or 'unknown')[:12]}`"
        + (f", with uncommitted changes to {', '.join(results['machine']['git_changed'])}."
           if results["machine"]["git_changed"] else "."),
        "",
        markdown_table(lines),
        "",
        f"Targets missed: {', '.join(missed)}." if missed else "Every target checked was met.",
    ]
    errors = [f"- {line['label'].strip()}: {error}" for line in lines for error in dict.fromkeys(line["errors"])]
    if errors:
        parts += ["", "Runs that failed:", "", *errors]
    if results.get("observed"):
        parts += ["", observed_line(results.get("observers", {}))]
    noisy = {name: log for name, log in results.get("logs", {}).items() if log["lines"]}
    if noisy:
        parts += ["", "Broker and worker logs (WARNING and above) had lines: "
                  + ", ".join(f"{name} {log['lines']}" for name, log in noisy.items()) + " (excerpts in the JSON)."]
    return "\n".join(parts)


def observed_line(observers: dict[str, dict | None]) -> str:
    """What watched the run: reads of each broker's /metrics and of its dashboard's /api/state."""
    def reads(name: str, side: str) -> str:
        summary = (observers[name] or {}).get(side)
        if summary is None:
            return f"{name}: no reader summary ({(observers[name] or {}).get('error', 'not started')})"
        failed = f", {summary['failed']} failed ({summary['last_error']})" if summary["failed"] else ""
        return f"{name} {summary['reads']}{failed}"

    return ("Observed: every broker served `--metrics-port` with a `runner dashboard` connected; reads of "
            "/metrics, one a second: " + ", ".join(reads(name, "metrics") for name in observers)
            + "; of the dashboard's /api/state, one a second: " + ", ".join(reads(name, "dashboard") for name in observers)
            + ".")


def _loads(loads: list[float] | None) -> str:
    return ", ".join(f"{load:.2f}" for load in loads) if loads else "unknown"


def write_docs(path: Path, section: str, observed: bool = False) -> None:
    """Replace what lies between the markers (added at the end when missing); the rest is kept.

    ``observed``: the markers of the observed run's section, so each kind keeps its own table."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = OBSERVED_MARKS if observed else (START_MARK, END_MARK)
    block = f"{start}\n{section}\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.DOTALL)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def summarise_logs(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Each process's log: how many lines (all are WARNING or above, or tracebacks) and an excerpt."""
    logs = {}
    for path in paths:
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        excerpt = lines if len(lines) <= LOG_EXCERPT else [*lines[:LOG_EXCERPT - 10], "...", *lines[-10:]]
        logs[path.stem] = {"lines": len(lines), "excerpt": excerpt}
    return logs
