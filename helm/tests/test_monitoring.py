"""The dashboards and rules in the chart are the files of grafana/ and prometheus/, read
through symlinks (never a copy), and the ServiceMonitor gives targets the labels they use."""

from __future__ import annotations

import json
import os

import yaml

from chart import CHART, REPO, REQUIRED, SERVICES, by_kind, rendered_documents

DASHBOARDS = REPO / "grafana" / "dashboards"
RULES = REPO / "prometheus" / "rules"


def test_files_are_symlinks_into_grafana_and_prometheus():
    for link, target in [(CHART / "files" / "dashboards", DASHBOARDS), (CHART / "files" / "rules", RULES)]:
        assert link.is_symlink(), f"{link} must be a symlink, not a copy"
        assert not os.path.isabs(os.readlink(link)), "relative, so it works in any clone"
        assert link.resolve() == target.resolve()


def test_dashboards_are_the_files_of_grafana_byte_for_byte():
    docs = rendered_documents(REQUIRED | {"dashboards": {"enabled": True}})
    rendered = {}
    for cm in by_kind(docs, "ConfigMap"):
        if cm["metadata"]["labels"].get("grafana_dashboard") == "1":
            assert cm["metadata"]["annotations"]["grafana_folder"] == "Conveyor"
            ((key, text),) = cm["data"].items()
            rendered[key] = text
    files = sorted(p.name for p in DASHBOARDS.glob("*.json"))
    assert files, "grafana/dashboards has no dashboard"
    assert sorted(rendered) == files
    for name in files:
        original = (DASHBOARDS / name).read_text(encoding="utf-8")
        assert rendered[name] == original, name
        assert json.loads(rendered[name]) == json.loads(original)


def test_dashboard_labels_and_namespace_are_configurable():
    docs = rendered_documents(REQUIRED | {"dashboards": {"enabled": True, "namespace": "monitoring", "label": "dash",
                                              "labelValue": "yes", "folderAnnotation": ""}})
    cms = [c for c in by_kind(docs, "ConfigMap") if "dash" in c["metadata"]["labels"]]
    assert cms and all(c["metadata"]["namespace"] == "monitoring" for c in cms)
    assert all(c["metadata"]["labels"]["dash"] == "yes" for c in cms)
    assert all("grafana_folder" not in c["metadata"]["annotations"] for c in cms)


def test_prometheus_rules_are_the_files_of_prometheus():
    docs = rendered_documents(REQUIRED | {"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}})
    rules = by_kind(docs, "PrometheusRule")
    files = sorted(list(RULES.glob("*.yml")) + list(RULES.glob("*.yaml")))
    assert files, "prometheus/rules has no rule file"
    assert len(rules) == len(files)
    by_source = {r["metadata"]["annotations"]["conveyor/source"]: r for r in rules}
    for path in files:
        rule = by_source[f"prometheus/rules/{path.name}"]
        assert rule["metadata"]["labels"]["release"] == "kps"
        original = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert rule["spec"] == {"groups": original["groups"]}, path.name


def test_service_monitor_matches_kube_prometheus_stack_and_the_rules_labels():
    docs = rendered_documents(REQUIRED | {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}})
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kps"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True
    relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    assert relabel["job"]["replacement"] == "conveyor"  # rules and dashboards select job="conveyor"
    assert relabel["service"]["sourceLabels"] == ["__meta_kubernetes_service_label_conveyor_service"]
    assert relabel["role"]["sourceLabels"] == ["__meta_kubernetes_service_label_app_kubernetes_io_component"]
    # It selects every API and worker Service, and each has the port and the labels relabeled.
    selector = sm["spec"]["selector"]
    services = [s for s in by_kind(docs, "Service")
                if all(s["metadata"]["labels"].get(k) == v for k, v in selector["matchLabels"].items())
                and s["metadata"]["labels"].get("app.kubernetes.io/component") in ("api", "worker")]
    assert len(services) == 2 * len(SERVICES)
    for s in services:
        assert [p["name"] for p in s["spec"]["ports"]] == ["http"]
        assert s["metadata"]["labels"]["conveyor/service"]


def test_packaged_chart_carries_the_files_not_the_links(tmp_path):
    """`helm package` follows the symlinks: the .tgz holds the dashboards and rules themselves."""
    import helm_python as helm

    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load_archive(open(archive, "rb").read()) as chart:
        files = {f["name"] for f in chart.files}
        rendered = chart.render(REQUIRED | {"dashboards": {"enabled": True}, "prometheusRule": {"enabled": True}},
                                name="shop", namespace="conveyor")
    for path in DASHBOARDS.glob("*.json"):
        assert f"files/dashboards/{path.name}" in files
    for path in RULES.glob("*.yml"):
        assert f"files/rules/{path.name}" in files
    assert "kind: PrometheusRule" in rendered["conveyor/templates/prometheusrule.yaml"]
    assert "grafana_dashboard" in rendered["conveyor/templates/dashboards.yaml"]
