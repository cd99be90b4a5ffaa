"""`helm lint --strict` (Helm's own linter, with the chart's values schema) passes for every
values set, for the oldest and the newest supported Kubernetes version."""

from __future__ import annotations

import helm_python as helm
import pytest

from chart import CHART, KUBE_VERSIONS, VALUE_SETS

ERROR, WARNING = 3, 2


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint_strict(name, kube):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, kube_version=f"v{kube}")
    assert report["total_charts_linted"] == 1
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert not problems and not report["errors"], f"{problems} {report['errors']}"


def test_lint_finds_a_broken_values_file():
    """The linter is really run: a wrongly typed value is an error."""
    report = helm.lint(CHART, {"api": {"replicas": "two"}}, strict=True)
    assert any(m["severity"] == ERROR for m in report["messages"]) or report["errors"]


def test_chart_metadata():
    with helm.Chart.load(CHART) as chart:
        meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "conveyor"
    assert meta["kubeVersion"] == ">=1.29.0-0"
    assert meta.get("appVersion")
