"""pytest setup: helm/tests is on sys.path (chart.py), and a closing summary of what was
rendered and validated."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Filled by the tests: what was rendered and validated, printed at the end of the run.
STATS: dict[str, Counter] = {"documents": Counter(), "validated": Counter()}


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    docs = STATS["documents"]
    validated = STATS["validated"]
    if not docs and not validated:
        return
    tr = terminalreporter
    tr.section("helm chart: rendered and validated")
    for (values, kube), n in sorted(docs.items()):
        tr.write_line(f"  {values:<28} Kubernetes {kube}: {n} manifests")
    for key, n in sorted(validated.items()):
        tr.write_line(f"  validated {n:>5} manifests: {key}")
    tr.write_line(f"  total: {sum(docs.values())} manifests rendered, {sum(validated.values())} validations")
