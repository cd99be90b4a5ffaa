"""values.schema.json types every value and rejects unknown keys — checked through Helm (the
values validation an install runs) and with jsonschema."""

from __future__ import annotations

import json

import helm_python as helm
import jsonschema
import pytest
from helm_python.errors import HelmError

from chart import CHART, NAMESPACE, RELEASE, VALUE_SETS, load_yaml

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def helm_rejects(values) -> str:
    """The error Helm's own values validation gives (as `helm install` would), or ''."""
    with helm.Chart.load(CHART) as chart:
        try:
            chart.validate_schema(values)
        except HelmError as e:
            return str(e)
    return ""


BAD = {
    "unknown top-level key": {"replicaCount": 3},
    "unknown nested key": {"api": {"autoscaling": {"enabld": True}}},
    "unknown key in a service": {"services": {"payment": {"faults": {"declinerate": 0.5}}}},
    "unknown service": {"services": {"shipping": {}}},
    "unknown key in a per-service override": {"services": {"order": {"worker": {"replica": 2}}}},
    "string for an integer": {"api": {"replicas": "two"}},
    "string for a boolean": {"networkPolicy": {"enabled": "yes"}},
    "number for a string": {"logLevel": 3},
    "object for a list": {"api": {"tolerations": {"key": "x"}}},
    "value outside an enum": {"logFormat": "xml"},
    "startup fault settings (now flags switched at run time)": {"services": {"payment": {"faults": {"declineRate": 0.5}}}},
    "bad duration": {"worker": {"pollInterval": "soon"}},
    "bad KEDA trigger": {"worker": {"keda": {"trigger": "rabbitmq"}}},
    "saga mode outside its enum": {"saga": {"mode": "hybrid"}},
    "bad step timeout": {"saga": {"stepTimeout": "a while"}},
    "unknown key in saga": {"saga": {"timeout": "30s"}},
    "delivery outside its enum": {"delivery": "both"},
    "not a postgres URL": {"services": {"stock": {"database": {"roles": {"runtime": {"url": "mysql://x/stock"}}}}}},
    "one user for every service (before roles)": {"database": {"username": "conveyor", "password": "x"}},
    "a service-wide URL (before roles)": {"services": {"stock": {"database": {"url": "postgres://x/stock"}}}},
    "unknown database role": {"services": {"stock": {"database": {"roles": {"admin": {"username": "postgres"}}}}}},
    "role name that needs quoting": {"services": {"stock": {"database": {"roles": {"runtime": {"username": "Stock-Runtime"}}}}}},
    "non-OTEL variable in otel.env": {"otel": {"env": {"PATH": "/bin"}}},
    "bad label value type": {"commonLabels": {"team": {"a": 1}}},
}


@pytest.mark.parametrize("what", list(BAD))
def test_helm_rejects(what):
    error = helm_rejects(BAD[what])
    assert error, f"{what}: accepted {BAD[what]}"


@pytest.mark.parametrize("what", list(BAD))
def test_jsonschema_rejects(what):
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(BAD[what])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(merged, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_install_refuses_an_unknown_key():
    with helm.Chart.load(CHART) as chart:
        config = helm.Config(namespace=NAMESPACE, storage_driver="memory")
        try:
            with pytest.raises(HelmError) as err:
                config.install(chart, RELEASE, {"api": {"replicaz": 1}}, dry_run="client", namespace=NAMESPACE)
        finally:
            config.close()
    assert "replicaz" in str(err.value)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_values_set_is_valid(name):
    assert helm_rejects(VALUE_SETS[name]) == ""
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(VALUE_SETS[name])
    jsonschema.validate(merged, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_schema_is_a_valid_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def _objects(node, path="$"):
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for key, value in node.items():
            yield from _objects(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _objects(value, f"{path}[{i}]")


def test_every_object_with_known_keys_rejects_others():
    for path, node in _objects(SCHEMA):
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"


def test_every_default_value_is_declared_and_documented():
    """values.yaml and the schema describe the same keys."""
    defaults = load_yaml(CHART / "values.yaml")

    def walk(values, schema, path):
        if "$ref" in schema:
            schema = SCHEMA["$defs"][schema["$ref"].split("/")[-1]]
        if not isinstance(values, dict) or "properties" not in schema:
            return
        for key, value in values.items():
            assert key in schema["properties"], f"{path}.{key} is not in values.schema.json"
            walk(value, schema["properties"][key], f"{path}.{key}")

    walk(defaults, SCHEMA, "")
