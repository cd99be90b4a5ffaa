"""Bearer tokens (docs/security.md): every API gets the AUTH_* settings and the identity
provider's keys — at its jwks_uri, or a JWKS mounted read-only from the chart's ConfigMap or
the user's —, the render fails without an issuer or keys, notification-worker alone gets the
token it presents to order-api, and the NetworkPolicies let the APIs reach the provider."""

from __future__ import annotations

import json

import helm_python as helm
import jsonschema
import pytest
from helm_python.errors import HelmError

from chart import (CHART, ISSUER, JWKS, JWKS_URL, NAMESPACE, RELEASE, REQUIRED, SERVICES, VALUE_SETS, by_kind,
                   env_of, merge, render, rendered_documents)
from test_schema import SCHEMA, helm_rejects

JWKS_DIR = "/etc/conveyor/jwks"
TOKEN_DIR = "/var/run/secrets/conveyor/order-api-token"
CONFIGMAP = f"{RELEASE}-conveyor-jwks"
AUTH_VARS = ["AUTH_JWKS", "AUTH_ISSUER", "AUTH_AUDIENCE", "AUTH_LEEWAY", "AUTH_OPERATOR_ROLE"]


def deployments(docs, component):
    return {d["metadata"]["labels"]["conveyor/service"]: d for d in by_kind(docs, "Deployment")
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == component}


def pod(d):
    return d["spec"]["template"]["spec"]


def volumes(d):
    return {v["name"]: v for v in pod(d).get("volumes", [])}


def mounts(d):
    return {m["name"]: m for m in pod(d)["containers"][0].get("volumeMounts", [])}


def render_error(values) -> str:
    """The message a render of `values` fails with, or '' when it renders."""
    try:
        render(json.dumps(values, sort_keys=True))
    except HelmError as e:
        return str(e)
    return ""


def test_every_api_gets_the_auth_settings():
    values = merge(REQUIRED, {"auth": {"audience": "shop-api", "leeway": "1m", "operatorRole": "shop-admin"}})
    docs = rendered_documents(values)
    apis = deployments(docs, "api")
    assert sorted(apis) == sorted(SERVICES)
    for svc, d in apis.items():
        env = env_of(pod(d)["containers"][0])
        assert env["AUTH_JWKS"] == f"{JWKS_DIR}/jwks.json", svc
        assert env["AUTH_ISSUER"] == ISSUER, svc
        assert (env["AUTH_AUDIENCE"], env["AUTH_LEEWAY"], env["AUTH_OPERATOR_ROLE"]) == ("shop-api", "1m", "shop-admin"), svc
    # The binaries' defaults are the chart's defaults.
    env = env_of(pod(deployments(rendered_documents(REQUIRED), "api")["order"])["containers"][0])
    assert (env["AUTH_AUDIENCE"], env["AUTH_LEEWAY"], env["AUTH_OPERATOR_ROLE"]) == ("conveyor", "30s", "operator")
    # Workers and migrators check no tokens.
    for d in by_kind(docs, "Deployment") + by_kind(docs, "Job"):
        if d["metadata"]["labels"]["app.kubernetes.io/component"] != "api":
            assert not set(AUTH_VARS) & set(env_of(pod(d)["containers"][0])), d["metadata"]["name"]
            assert "jwks" not in volumes(d), d["metadata"]["name"]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_api_of_every_values_set_can_find_its_keys(name):
    """AUTH_JWKS is a URL, or a file the pod mounts from a ConfigMap the release or the user has."""
    values = VALUE_SETS[name]
    docs = rendered_documents(values)
    configmaps = {c["metadata"]["name"] for c in by_kind(docs, "ConfigMap")}
    for svc, d in deployments(docs, "api").items():
        env = env_of(pod(d)["containers"][0])
        assert set(AUTH_VARS) <= set(env), svc
        assert env["AUTH_ISSUER"] == values["auth"]["issuer"]
        if env["AUTH_JWKS"].startswith(("http://", "https://")):
            assert env["AUTH_JWKS"] == values["auth"]["jwksUrl"]
            assert "jwks" not in volumes(d)
            continue
        source = volumes(d)["jwks"]["configMap"]
        assert source["name"] in configmaps or source["name"] == values["auth"].get("existingJwksConfigMap")
        assert env["AUTH_JWKS"] == f"{mounts(d)['jwks']['mountPath']}/{source['items'][0]['path']}"


def test_inline_jwks_is_a_configmap_mounted_read_only_into_every_api():
    docs = rendered_documents(REQUIRED)
    (cm,) = [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"] == CONFIGMAP]
    assert cm["metadata"]["labels"]["app.kubernetes.io/component"] == "auth"
    assert cm["data"] == {"jwks.json": JWKS}
    assert json.loads(cm["data"]["jwks.json"])["keys"][0]["kid"] == "test-1"
    for svc, d in deployments(docs, "api").items():
        assert volumes(d)["jwks"]["configMap"] == {"name": CONFIGMAP, "items": [{"key": "jwks.json", "path": "jwks.json"}]}, svc
        assert mounts(d)["jwks"] == {"name": "jwks", "mountPath": JWKS_DIR, "readOnly": True}, svc
        assert "subPath" not in mounts(d)["jwks"]  # a changed ConfigMap reaches the pod


def test_new_inline_keys_restart_the_apis_only():
    def annotations(values):
        return {f"{c}/{s}": pod_annotations for c in ("api", "worker")
                for s, d in deployments(rendered_documents(values), c).items()
                for pod_annotations in [d["spec"]["template"]["metadata"].get("annotations") or {}]}

    rotated = json.dumps({"keys": [json.loads(JWKS)["keys"][0] | {"kid": "test-2"}]})
    before, after = annotations(REQUIRED), annotations(merge(REQUIRED, {"auth": {"jwks": rotated}}))
    for key in before:
        if key.startswith("api/"):
            assert before[key]["checksum/jwks"] != after[key]["checksum/jwks"], key
        else:
            assert before[key] == after[key] and "checksum/jwks" not in before[key], key
    # Keys the chart does not hold leave no checksum.
    for values in (VALUE_SETS["jwks-url-on"], VALUE_SETS["jwks-configmap-on"]):
        assert not [k for k, a in annotations(values).items() if "checksum/jwks" in a]


def test_keys_at_a_url_need_no_configmap():
    docs = rendered_documents(VALUE_SETS["jwks-url-on"])
    assert not [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"] == CONFIGMAP]
    for svc, d in deployments(docs, "api").items():
        assert env_of(pod(d)["containers"][0])["AUTH_JWKS"] == JWKS_URL, svc
        assert "jwks" not in volumes(d) and "jwks" not in mounts(d), svc


def test_keys_in_a_configmap_of_yours():
    docs = rendered_documents(VALUE_SETS["jwks-configmap-on"])
    assert not [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"] == CONFIGMAP]
    for svc, d in deployments(docs, "api").items():
        assert volumes(d)["jwks"]["configMap"] == {"name": "idp-jwks", "items": [{"key": "keys.json", "path": "jwks.json"}]}, svc
        assert mounts(d)["jwks"]["readOnly"] is True
        assert env_of(pod(d)["containers"][0])["AUTH_JWKS"] == f"{JWKS_DIR}/jwks.json"


REFUSED = {
    "no issuer": ({"auth": {"issuer": ""}}, "auth.issuer is required"),
    "no keys": ({"auth": {"jwks": ""}}, "set auth.jwksUrl (its jwks_uri), auth.jwks (a JWKS document) or auth.existingJwksConfigMap"),
    "two sources of keys": ({"auth": {"jwksUrl": JWKS_URL}}, "not auth.jwksUrl and auth.jwks"),
    "not JSON": ({"auth": {"jwks": "keys: []"}}, "auth.jwks is not a JSON Web Key Set"),
    "no key in the set": ({"auth": {"jwks": '{"keys": []}'}}, "auth.jwks is not a JSON Web Key Set"),
    "a private key": ({"auth": {"jwks": json.dumps({"keys": [json.loads(JWKS)["keys"][0] | {"d": "secret"}]})}},
                      'key 0 has the private or symmetric member "d"'),
    "a symmetric key": ({"auth": {"jwks": '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'}}, 'member "k"'),
}


@pytest.mark.parametrize("what", list(REFUSED))
def test_render_fails_clearly(what):
    overrides, message = REFUSED[what]
    error = render_error(merge(REQUIRED, overrides))
    assert message in error, f"{what}: {error or 'rendered'}"


def test_the_defaults_name_no_provider_so_an_install_without_one_fails():
    assert "auth.issuer is required" in render_error({})
    assert "auth.jwksUrl" in render_error({"auth": {"issuer": ISSUER}})
    with helm.Chart.load(CHART) as chart:
        config = helm.Config(namespace=NAMESPACE, storage_driver="memory")
        try:
            with pytest.raises(HelmError) as err:
                config.install(chart, RELEASE, {}, dry_run="client", namespace=NAMESPACE)
        finally:
            config.close()
    assert "auth.issuer is required" in str(err.value)


def test_lookup_token_only_on_notification_worker_and_only_when_set():
    docs = rendered_documents(VALUE_SETS["lookup-token-on"])
    worker = deployments(docs, "worker")["notification"]
    env = env_of(pod(worker)["containers"][0])
    assert env["ORDER_API_TOKEN_FILE"] == f"{TOKEN_DIR}/token"
    secret = volumes(worker)["order-api-token"]["secret"]
    assert secret["secretName"] == "order-api-token"
    assert secret["items"] == [{"key": "token", "path": "token"}]  # that key only, no other of the Secret's
    assert secret["defaultMode"] == 0o440
    assert mounts(worker)["order-api-token"] == {"name": "order-api-token", "mountPath": TOKEN_DIR, "readOnly": True}
    assert "subPath" not in mounts(worker)["order-api-token"]  # a rotated Secret reaches the pod
    # Nobody else holds it, nor any variable about it.
    for d in by_kind(docs, "Deployment") + by_kind(docs, "Job"):
        if d is worker:
            continue
        where = d["metadata"]["name"]
        assert "ORDER_API_TOKEN_FILE" not in env_of(pod(d)["containers"][0]), where
        assert not [v for v in pod(d).get("volumes", []) if v.get("secret", {}).get("secretName") == "order-api-token"], where
    # Unset: no volume, no variable, anywhere.
    for name in ("default", "lookup-token-off", "all-off"):
        docs = rendered_documents(VALUE_SETS[name])
        for d in by_kind(docs, "Deployment") + by_kind(docs, "Job"):
            assert "ORDER_API_TOKEN_FILE" not in env_of(pod(d)["containers"][0]), (name, d["metadata"]["name"])
            assert not [v for v in pod(d).get("volumes", []) if "secret" in v], (name, d["metadata"]["name"])


def test_lookup_token_key_of_your_choice():
    docs = rendered_documents(merge(REQUIRED, {"auth": {"lookupToken": {"existingSecret": "idp-client", "key": "access_token"}}}))
    secret = volumes(deployments(docs, "worker")["notification"])["order-api-token"]["secret"]
    assert (secret["secretName"], secret["items"]) == ("idp-client", [{"key": "access_token", "path": "token"}])


def network_policies(values):
    return {p["metadata"]["name"].removeprefix(f"{RELEASE}-conveyor-"): p["spec"]
            for p in by_kind(rendered_documents(values), "NetworkPolicy")}


def test_network_policy_lets_the_apis_fetch_the_jwks():
    on = merge(VALUE_SETS["network-policy-on"], VALUE_SETS["jwks-url-on"])
    spec = network_policies(on)["api-jwks"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "conveyor", "app.kubernetes.io/instance": RELEASE,
                                                  "app.kubernetes.io/component": "api"}
    assert spec["policyTypes"] == ["Egress"]
    (rule,) = spec["egress"]
    assert "to" not in rule  # networkPolicy.jwksTo empty: any address on the URL's port
    assert rule["ports"] == [{"protocol": "TCP", "port": 443}]
    # jwksTo narrows it; an explicit port in the URL is the one allowed; plain http is port 80.
    peers = [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
    spec = network_policies(merge(on, {"auth": {"jwksUrl": "https://id.example.test:8443/keys"}, "networkPolicy": {"jwksTo": peers}}))["api-jwks"]
    assert spec["egress"] == [{"to": peers, "ports": [{"protocol": "TCP", "port": 8443}]}]
    spec = network_policies(merge(on, {"auth": {"jwksUrl": "http://keycloak.auth.svc/realms/shop/certs"}}))["api-jwks"]
    assert spec["egress"][0]["ports"] == [{"protocol": "TCP", "port": 80}]
    # Keys in a file: nothing to fetch, no such policy.
    assert "api-jwks" not in network_policies(VALUE_SETS["network-policy-on"])
    assert "api-jwks" not in network_policies(merge(VALUE_SETS["network-policy-on"], VALUE_SETS["jwks-configmap-on"]))
    # Without NetworkPolicies, none at all.
    assert not network_policies(VALUE_SETS["jwks-url-on"])


BAD = {
    "unknown auth key": {"auth": {"jwksUri": JWKS_URL}},
    "unknown lookupToken key": {"auth": {"lookupToken": {"secretName": "x"}}},
    "misspelt networkPolicy.jwksTo": {"networkPolicy": {"jwksFrom": []}},
    "JWKS URL not http(s)": {"auth": {"jwksUrl": "file:///etc/jwks.json"}},
    "JWKS as an object": {"auth": {"jwks": {"keys": []}}},
    "bad leeway": {"auth": {"leeway": "a bit"}},
    "empty audience": {"auth": {"audience": ""}},
    "empty operator role": {"auth": {"operatorRole": ""}},
    "bad Secret key": {"auth": {"lookupToken": {"existingSecret": "x", "key": "a/b"}}},
    "bad jwksTo peer": {"networkPolicy": {"jwksTo": [{"cidr": "0.0.0.0/0"}]}},
}


@pytest.mark.parametrize("what", list(BAD))
def test_schema_rejects(what):
    assert helm_rejects(BAD[what]), f"{what}: accepted {BAD[what]}"
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(BAD[what])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(merged, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_examples_name_a_provider():
    prod = VALUE_SETS["example-production"]["auth"]
    assert prod["issuer"] and prod["jwksUrl"] and prod["lookupToken"]["existingSecret"]
    demo = VALUE_SETS["example-demo"]["auth"]
    assert demo["issuer"] and demo["jwksUrl"]


def test_notes_say_calls_need_a_token():
    def notes(values):
        with helm.Chart.load(CHART) as chart:
            return chart.render(values, name=RELEASE, namespace=NAMESPACE)["conveyor/templates/NOTES.txt"]

    text = notes(VALUE_SETS["jwks-url-on"])
    assert "bearer token" in text and ISSUER in text and JWKS_URL in text and 'audience "conveyor"' in text
    assert 'curl -H "Authorization: Bearer $TOKEN"' in text
    assert "renders notifications from the event alone" in text  # no lookup token
    text = notes(VALUE_SETS["lookup-token-on"])
    assert f"ConfigMap {CONFIGMAP}" in text
    assert "from the event alone" not in text
