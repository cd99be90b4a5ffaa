"""Rendering helm/conveyor with real Helm (the Helm v4 Go SDK inside helm-python-sdk) and the
value sets every test runs over."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from helm_python import _native

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent.parent
CHART = REPO / "helm" / "conveyor"
EXAMPLES = REPO / "helm" / "examples"

RELEASE = "shop"
NAMESPACE = "conveyor"

# The Kubernetes versions the chart claims (Chart.yaml kubeVersion: >=1.29.0-0) and the newest
# one kubernetes-validate ships schemas for: every manifest is validated against both.
OLDEST_KUBE = "1.29.0"
NEWEST_KUBE = "1.37.0"
KUBE_VERSIONS = [OLDEST_KUBE, NEWEST_KUBE]

# API groups of the optional CRDs, announced to the render as installed (Capabilities).
CRD_API_VERSIONS = ["keda.sh/v1alpha1", "monitoring.coreos.com/v1"]

# In the order of conveyor_contracts::service::ALL (and of image-contract.yaml).
SERVICES = ["catalog", "order", "stock", "payment", "notification", "coordinator"]

# Each service database's roles (docs/databases.md): relay is push delivery's, puller pull's.
ROLES = ["migrator", "runtime", "relay", "puller"]

WEBHOOK = "http://receiver.mail.svc:8080/hooks/conveyor"

# The identity provider every install must name (docs/security.md): an issuer and its public
# keys, here inline (an Ed25519 public key, RFC 8037's example) or at a jwks_uri.
ISSUER = "https://id.example.test/realms/shop"
JWKS = json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "test-1", "alg": "EdDSA", "use": "sig",
                             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]})
JWKS_URL = "https://id.example.test/realms/shop/protocol/openid-connect/certs"

# What every values set starts from, and what a test rendering values of its own merges in
# (merge(REQUIRED, {...})): without it the chart refuses to render.
REQUIRED: dict[str, Any] = {"auth": {"issuer": ISSUER, "jwks": JWKS}}


def load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def contract() -> dict[str, Any]:
    return load_yaml(CHART / "image-contract.yaml")


def subscribers(svc: str) -> list[str]:
    """The services `svc` publishes to (image-contract.yaml): its relay's SUBSCRIBERS."""
    (entry,) = [s for s in contract()["services"] if s["name"] == svc]
    return entry["subscribers"]


def publishers(svc: str) -> list[str]:
    """The services that publish to `svc`, in the contract's order: its PUBLISHERS when pulled
    (conveyor_contracts::publishers_to)."""
    return [s["name"] for s in contract()["services"] if svc in s["subscribers"]]


def delivery(values: dict[str, Any]) -> str:
    return values.get("delivery", "push")


# Every optional feature, as the values that switch it on, and the values that switch it off.
FEATURES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "api-hpa": ({"api": {"autoscaling": {"enabled": True}}}, {"api": {"autoscaling": {"enabled": False}}}),
    "api-pdb": ({"api": {"pdb": {"enabled": True}}}, {"api": {"pdb": {"enabled": False}}}),
    "worker-hpa": (
        {"worker": {"autoscaling": {"enabled": True}}},
        {"worker": {"autoscaling": {"enabled": False}}},
    ),
    "keda-postgresql": (
        {"worker": {"keda": {"enabled": True, "trigger": "postgresql"}}},
        {"worker": {"keda": {"enabled": False}}},
    ),
    "keda-prometheus": (
        {"worker": {"keda": {"enabled": True, "trigger": "prometheus"}}},
        {"worker": {"keda": {"enabled": False}}},
    ),
    "network-policy": ({"networkPolicy": {"enabled": True}}, {"networkPolicy": {"enabled": False}}),
    "service-monitor": (
        {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
        {"serviceMonitor": {"enabled": False}},
    ),
    "prometheus-rule": (
        {"prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
        {"prometheusRule": {"enabled": False}},
    ),
    "dashboards": ({"dashboards": {"enabled": True}}, {"dashboards": {"enabled": False}}),
    "demo-postgres": ({"postgres": {"enabled": True}}, {"postgres": {"enabled": False}}),
    "postgres-persistence": (
        {"postgres": {"enabled": True, "persistence": {"enabled": True, "storageClass": "standard"}}},
        {"postgres": {"persistence": {"enabled": False}}},
    ),
    "otel-export": (
        {"otel": {"endpoint": "http://otel-collector.observability:4318", "protocol": "http/protobuf",
                  "tracesSampler": "parentbased_traceidratio", "tracesSamplerArg": "0.5",
                  "resourceAttributes": {"deployment.environment": "test"},
                  "env": {"OTEL_EXPORTER_OTLP_TIMEOUT": "5000"}}},
        {"otel": {"endpoint": ""}},
    ),
    "existing-secrets": (
        {"services": {s: {"database": {"roles": {r: {"existingSecret": f"{s}-db-{r}", "existingSecretKey": "url"} for r in ROLES}}}
                      for s in SERVICES}},
        {"services": {s: {"database": {"roles": {r: {"existingSecret": ""} for r in ROLES}}} for s in SERVICES}},
    ),
    "service-account": ({"serviceAccount": {"create": True}}, {"serviceAccount": {"create": False}}),
    "webhook": (
        {"services": {"notification": {"delivery": {"webhookUrl": WEBHOOK}}}},
        {"services": {"notification": {"delivery": {"webhookUrl": ""}}}},
    ),
    # The keys at the provider's jwks_uri, or in a ConfigMap of the user's, instead of inline.
    "jwks-url": ({"auth": {"jwks": "", "jwksUrl": JWKS_URL}}, {"auth": {"jwksUrl": ""}}),
    "jwks-configmap": (
        {"auth": {"jwks": "", "existingJwksConfigMap": "idp-jwks", "existingJwksConfigMapKey": "keys.json"}},
        {"auth": {"existingJwksConfigMap": ""}},
    ),
    "lookup-token": (
        {"auth": {"lookupToken": {"existingSecret": "order-api-token", "key": "token"}}},
        {"auth": {"lookupToken": {"existingSecret": ""}}},
    ),
    # New orders run their saga through the coordinator (order-api's CONVEYOR_SAGA_MODE).
    "saga-orchestration": (
        {"saga": {"mode": "orchestration", "stepTimeout": "10s"}},
        {"saga": {"mode": "choreography"}},
    ),
    # Every worker reads its publishers' outboxes (puller roles) instead of relays pushing.
    "pull-delivery": ({"delivery": "pull"}, {"delivery": "push"}),
}


def merge(base: dict[str, Any], *overs: dict[str, Any]) -> dict[str, Any]:
    """Deep merge (maps merged, everything else replaced), like Helm's -f a.yaml -f b.yaml."""
    out = copy.deepcopy(base)
    for over in overs:
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def value_sets() -> dict[str, dict[str, Any]]:
    """Every values set the chart is rendered with: the defaults, the examples, everything on,
    everything off, and each optional feature switched on and off alone. All but the examples
    (which name a provider of their own) start from REQUIRED."""
    sets: dict[str, dict[str, Any]] = {
        "default": merge(REQUIRED),
        "example-production": load_yaml(EXAMPLES / "values-production.yaml"),
        "example-demo": load_yaml(EXAMPLES / "values-demo.yaml"),
    }
    # KEDA's two triggers exclude each other, and so do the JWKS's sources and the two
    # deliveries: "all on" is rendered once with each trigger, with the keys at a URL, pushed,
    # and once more pulled.
    alternatives = ("keda-prometheus", "jwks-configmap", "pull-delivery")
    all_on = merge(REQUIRED, *[on for name, (on, _) in FEATURES.items() if name not in alternatives])
    sets["all-on"] = all_on
    sets["all-on-keda-prometheus"] = merge(all_on, FEATURES["keda-prometheus"][0])
    sets["all-on-pull-delivery"] = merge(all_on, FEATURES["pull-delivery"][0])
    sets["all-off"] = merge(REQUIRED, *[off for _, (_, off) in FEATURES.items()])
    for name, (on, off) in FEATURES.items():
        sets[f"{name}-on"] = merge(REQUIRED, on)
        sets[f"{name}-off"] = merge(REQUIRED, off)
    # Per-service overrides, including false and 0 (which a naive merge would drop).
    sets["per-service-overrides"] = merge(REQUIRED, {
        "services": {
            "order": {"api": {"autoscaling": {"enabled": False}, "replicas": 0, "service": {"port": 8082}},
                      "worker": {"keda": {"enabled": True, "maxReplicaCount": 3}, "concurrency": 16},
                      "database": {"roles": {"runtime": {"password": "p@ss word+/"}, "migrator": {"password": "owner:pw"}}}},
            "payment": {"worker": {"autoscaling": {"enabled": False}, "replicas": 3}},
            "catalog": {"database": {"roles": {"runtime": {"url": "postgres://catalog:s3cr%40t@db.example:5433/catalog"}}},
                        "migrator": {"backoffLimit": 0}},
            "stock": {"database": {"roles": {"runtime": {"username": "shop_stock"}, "relay": {"username": "shop_stock_inbox"}}}},
        },
        "database": {"host": "db.internal", "params": "connect_timeout=5"},
    })
    return sets


VALUE_SETS = value_sets()


def rendered_documents(values: dict[str, Any], kube_version: str = NEWEST_KUBE) -> list[dict[str, Any]]:
    """The manifests `helm install` would send (hooks included), each with `_source`."""
    docs = []
    for template, text in render(json.dumps(values, sort_keys=True), kube_version).items():
        if not template.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["_source"] = template
                docs.append(doc)
    return docs


@functools.lru_cache(maxsize=None)
def render(values_json: str, kube_version: str = NEWEST_KUBE) -> dict[str, str]:
    """Helm's template engine, offline, as `helm template --kube-version V --api-versions …`.

    helm-python-sdk's Chart.render passes only name/namespace/revision/install; its native
    helm_render takes the Kubernetes version and API versions too, so the call is made here."""
    with helm.Chart.load(CHART) as chart:
        opts = {
            "name": RELEASE,
            "namespace": NAMESPACE,
            "is_install": True,
            "kube_version": f"v{kube_version}",
            "api_versions": CRD_API_VERSIONS,
        }
        out: dict[str, str] = json.loads(
            _native.call_string("helm_render", chart._raw(), values_json, json.dumps(opts))
        )
        return out


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload."""
    out = []
    for d in docs:
        if d.get("kind") in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            out.append((f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
    return out


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value (or valueFrom) of a container's environment."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


