"""Least privilege in the databases (docs/databases.md): one Secret per role, and each process
given only its own role — the migrator Jobs the owner's, APIs and workers the runtime role's,
a worker's relay the relay roles of the services it delivers to."""

from __future__ import annotations

import base64
from urllib.parse import urlsplit

import pytest

from chart import REQUIRED, SERVICES, VALUE_SETS, by_kind, contract, delivery, env_of, merge, publishers, rendered_documents

HOOK = "helm.sh/hook"


def receives(svc):
    return any(svc in s["subscribers"] for s in contract()["services"])


def secret_refs(pod_spec):
    """Names of the Secrets a pod's containers read variables from."""
    refs = set()
    for c in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        for value in env_of(c).values():
            if isinstance(value, dict) and "secretKeyRef" in value:
                refs.add(value["secretKeyRef"]["name"])
    return refs


def test_one_secret_per_role_each_url_naming_its_role():
    docs = rendered_documents(REQUIRED)
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    for svc in SERVICES:
        expected = {"db": f"{svc}_runtime", "db-migrate": f"{svc}_migrator"}
        if receives(svc):
            expected["db-relay"] = f"{svc}_relay"
        else:
            assert f"shop-conveyor-{svc}-db-relay" not in secrets, "nobody delivers to it"
        for suffix, role in expected.items():
            secret = secrets[f"shop-conveyor-{svc}-{suffix}"]
            url = urlsplit(base64.b64decode(secret["data"]["DATABASE_URL"]).decode())
            assert url.username == role, suffix
            is_hook = HOOK in secret["metadata"].get("annotations", {})
            assert is_hook == (suffix == "db-migrate"), f"only the owner's credentials are a hook, gone after the migrators ran: {suffix}"
            assert secret["metadata"]["labels"]["conveyor/database-role"] == role.removeprefix(f"{svc}_")


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_each_process_reads_only_its_own_roles_secrets(name):
    docs = rendered_documents(VALUE_SETS[name])
    roles = {svc: VALUE_SETS[name].get("services", {}).get(svc, {}).get("database", {}).get("roles", {}) for svc in SERVICES}

    def secret(svc, role):
        existing = roles[svc].get(role, {}).get("existingSecret")
        return existing or f"shop-conveyor-{svc}-{ {'runtime': 'db', 'relay': 'db-relay', 'puller': 'db-puller', 'migrator': 'db-migrate'}[role] }"

    subscribers = {s["name"]: s["subscribers"] for s in contract()["services"]}
    # Push: a worker's relay writes its subscribers' inboxes; pull: it reads its publishers' outboxes.
    if delivery(VALUE_SETS[name]) == "pull":
        peers = {svc: {secret(p, "puller") for p in publishers(svc)} for svc in SERVICES}
    else:
        peers = {svc: {secret(sub, "relay") for sub in subscribers[svc]} for svc in SERVICES}
    for d in by_kind(docs, "Deployment") + by_kind(docs, "Job"):
        labels = d["metadata"]["labels"]
        svc, component = labels.get("conveyor/service"), labels["app.kubernetes.io/component"]
        if component not in ("api", "worker", "migrator"):
            continue
        refs = secret_refs(d["spec"]["template"]["spec"])
        expected = {
            "api": {secret(svc, "runtime")},
            "worker": {secret(svc, "runtime")} | peers[svc],
            "migrator": {secret(svc, "migrator")},
        }[component]
        assert refs == expected, f"{d['kind']}/{d['metadata']['name']}"
    for auth in by_kind(docs, "TriggerAuthentication"):
        svc = auth["metadata"]["labels"]["conveyor/service"]
        assert [r["name"] for r in auth["spec"]["secretTargetRef"]] == [secret(svc, "runtime")]


def test_a_new_password_restarts_the_pods_that_use_it():
    def annotations(values, svc, component):
        (d,) = [d for d in by_kind(rendered_documents(merge(REQUIRED, values)), "Deployment")
                if d["metadata"]["labels"].get("conveyor/service") == svc and d["metadata"]["labels"]["app.kubernetes.io/component"] == component]
        return d["spec"]["template"]["metadata"].get("annotations") or {}

    new_relay_password = {"services": {"stock": {"database": {"roles": {"relay": {"password": "new"}}}}}}
    # stock's relay role is used by the workers that deliver to stock, not by stock itself.
    assert annotations({}, "order", "worker") != annotations(new_relay_password, "order", "worker")
    assert annotations({}, "stock", "worker") == annotations(new_relay_password, "stock", "worker")
    assert annotations({}, "stock", "api") == annotations(new_relay_password, "stock", "api")
    new_runtime_password = {"services": {"stock": {"database": {"roles": {"runtime": {"password": "new"}}}}}}
    assert annotations({}, "stock", "api") != annotations(new_runtime_password, "stock", "api")
