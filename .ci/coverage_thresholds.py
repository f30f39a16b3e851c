"""Check the coverage the test run measured (the .coverage file pytest-cov leaves) against the
project's thresholds, and print each figure.

Coverage here is coverage.py's with branch measurement on (statements and branches together,
as pytest's report at the end of the run shows it); the share of branches alone is printed
beside it. Exits 1 if a threshold is missed, 2 if there is no measurement to check.

    python .ci/coverage_thresholds.py            # after `pytest` in the repository root
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import coverage
from coverage.exceptions import NoDataError

ROOT = Path(__file__).resolve().parent.parent
#: The broker's decision modules (sans-IO): each at least this much.
DECISION_MODULES = [f"runner/broker/{name}.py"
                    for name in ("jobs", "scheduler", "sync", "retry", "liveness", "schedules", "ticks")]
DECISION_MINIMUM = 95.0
#: runner/ and workers/ as a whole.
OVERALL = ["runner/*", "workers/*"]
OVERALL_MINIMUM = 90.0


def measured(cov: coverage.Coverage, include: list[str]) -> tuple[float, int, int]:
    """(coverage.py's percentage, branches, branches taken) over the files ``include`` matches."""
    percent = cov.report(include=[str(ROOT / pattern) for pattern in include], file=io.StringIO())
    branches = taken = 0
    for path in cov.get_data().measured_files():
        if any(Path(path).match(str(ROOT / pattern)) for pattern in include):
            numbers = cov._analyze(path).numbers  # noqa: SLF001 - the only way to the branch counts
            branches += numbers.n_branches
            taken += numbers.n_branches - numbers.n_missing_branches
    return percent, branches, taken


def main() -> int:
    cov = coverage.Coverage(data_file=str(ROOT / ".coverage"), config_file=str(ROOT / "setup.cfg"))
    cov.load()
    checks = [(module, [module], DECISION_MINIMUM) for module in DECISION_MODULES]
    checks.append(("runner/ and workers/", OVERALL, OVERALL_MINIMUM))
    missed = []
    for name, include, minimum in checks:
        try:
            percent, branches, taken = measured(cov, include)
        except NoDataError:
            print(f"coverage: no measurement of {name}: run pytest (with coverage on) first", file=sys.stderr)
            return 2
        verdict = "ok" if percent >= minimum else "BELOW"
        print(f"coverage {name:<28} {percent:5.1f}% (need {minimum:g}%; branches {taken}/{branches}) {verdict}")
        if percent < minimum:
            missed.append(name)
    if missed:
        print(f"coverage below its threshold: {', '.join(missed)} (pytest's report lists the lines not covered)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
