"""Real Helm renders and installs (client-side dry run) the chart with every values set, and
every manifest validates against the Kubernetes JSON schemas (strict) of the oldest and the
newest supported version; KEDA and prometheus-operator objects against models generated from
their CRDs."""

from __future__ import annotations

import json

import helm_python as helm
import kubernetes_validate
import pytest
from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

from chart import CHART, KUBE_VERSIONS, NAMESPACE, RELEASE, SERVICES, VALUE_SETS, rendered_documents, strip
from conftest import STATS

# CRD kinds: models generated from KEDA 2.16's and prometheus-operator 0.80's CRDs.
CRD_MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PrometheusRule,
}

# Manifests already validated, as (JSON, Kubernetes version): value sets share most manifests.
_VALID: set[tuple[str, str]] = set()

CASES = [(name, kube) for name in VALUE_SETS for kube in KUBE_VERSIONS]


def _ids(case):
    return f"{case[0]}@{case[1]}"


def _dropped(original, dumped, path=""):
    """Keys of `original` that a model round trip lost: fields the CRD does not know."""
    lost = []
    if isinstance(original, dict):
        for key, value in original.items():
            if not isinstance(dumped, dict) or key not in dumped:
                lost.append(f"{path}.{key}")
            else:
                lost += _dropped(value, dumped[key], f"{path}.{key}")
    elif isinstance(original, list) and isinstance(dumped, list):
        for i, (a, b) in enumerate(zip(original, dumped)):
            lost += _dropped(a, b, f"{path}[{i}]")
    return lost


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_renders_and_every_manifest_validates(case):
    name, kube = case
    docs = rendered_documents(VALUE_SETS[name], kube)
    assert docs, "nothing rendered"
    STATS["documents"][(name, kube)] = len(docs)
    names = set()
    for doc in docs:
        obj = strip(doc)
        key = (obj["apiVersion"], obj["kind"])
        ident = f"{obj['kind']}/{obj['metadata']['name']} ({doc['_source']})"
        assert (obj["kind"], obj["metadata"]["name"]) not in names, f"{ident} rendered twice"
        names.add((obj["kind"], obj["metadata"]["name"]))
        if key in CRD_MODELS:
            model = CRD_MODELS[key].model_validate(obj)
            dumped = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
            lost = _dropped(obj, dumped)
            assert not lost, f"{ident}: fields unknown to the CRD: {lost}"
            STATS["validated"][f"CRD models (KEDA 2.16, prometheus-operator 0.80) @ {kube}"] += 1
            continue
        seen = (json.dumps(obj, sort_keys=True), kube)
        if seen in _VALID:
            STATS["validated"][f"kubernetes-validate strict @ {kube}"] += 1
            continue
        try:
            kubernetes_validate.validate(obj, kube, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{ident} is invalid for Kubernetes {kube}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{ident}: no Kubernetes {kube} schema for {key}")
        _VALID.add(seen)
        STATS["validated"][f"kubernetes-validate strict @ {kube}"] += 1


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_install_client_dry_run(name):
    """`helm install --dry-run=client`: the install action itself (values schema, kubeVersion,
    manifest parsing and ordering, NOTES) accepts the chart."""
    values = VALUE_SETS[name]
    with helm.Chart.load(CHART) as chart:
        config = helm.Config(namespace=NAMESPACE, storage_driver="memory")
        try:
            release = config.install(chart, RELEASE, values, dry_run="client", namespace=NAMESPACE)
        finally:
            config.close()
    assert release["manifest"].count("\nkind: ") >= 20
    assert "Conveyor" in release["notes"]


def test_notes_tell_how_to_reach_apis_and_dashboards():
    with helm.Chart.load(CHART) as chart:
        notes = chart.render(VALUE_SETS["example-production"], name=RELEASE, namespace=NAMESPACE)[
            "conveyor/templates/NOTES.txt"
        ]
    for svc in SERVICES:
        assert f"http://{RELEASE}-conveyor-{svc}-api.{NAMESPACE}.svc:80" in notes
    assert "port-forward svc/shop-conveyor-order-api" in notes
    assert "grafana_dashboard=1" in notes and 'folder "Conveyor"' in notes
    assert "release" in notes and "kube-prometheus-stack" in notes


def test_render_is_deterministic():
    values = VALUE_SETS["all-on"] | {"postgres": {"enabled": True, "auth": {"password": "fixed"}}}
    a = json.dumps(rendered_documents(values), sort_keys=True)
    from chart import render

    render.cache_clear()
    b = json.dumps(rendered_documents(values), sort_keys=True)
    assert a == b
