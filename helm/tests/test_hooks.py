"""The migrators: a Job per service, run as pre-install/pre-upgrade hooks ordered by weight and
deleted when they succeeded, connecting as the migrator role (from a Secret that exists when
they run) and told which roles to grant."""

from __future__ import annotations

import base64

import pytest

from chart import REQUIRED, SERVICES, VALUE_SETS, by_kind, contract, delivery, env_of, merge, publishers, rendered_documents, subscribers

HOOK = "helm.sh/hook"
WEIGHT = "helm.sh/hook-weight"
POLICY = "helm.sh/hook-delete-policy"


def migrator_jobs(docs):
    return {j["metadata"]["labels"]["conveyor/service"]: j for j in by_kind(docs, "Job")}


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_a_migrator_hook_per_service(name):
    docs = rendered_documents(VALUE_SETS[name])
    jobs = migrator_jobs(docs)
    assert sorted(jobs) == sorted(SERVICES)
    binaries = {s["name"]: s["migrator"] for s in contract()["services"]}
    weights = []
    for svc in SERVICES:
        job = jobs[svc]
        ann = job["metadata"]["annotations"]
        assert set(ann[HOOK].split(",")) == {"pre-install", "pre-upgrade"}, svc
        assert set(ann[POLICY].split(",")) == {"before-hook-creation", "hook-succeeded"}, svc
        weights.append(int(ann[WEIGHT]))
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        (container,) = pod["containers"]
        assert container["command"] == [f"{contract()['binDir']}/{binaries[svc]}"]
        env = env_of(container)
        assert "DATABASE_URL" in env
        roles = VALUE_SETS[name].get("services", {}).get(svc, {}).get("database", {}).get("roles", {})
        assert env["RUNTIME_ROLE"] == (roles.get("runtime", {}).get("username") or f"{svc}_runtime")
        # Only the roles of the delivery in use are granted: relay (push) or puller (pull).
        pull = delivery(VALUE_SETS[name]) == "pull"
        assert ("RELAY_ROLES" in env) == (not pull and bool(publishers(svc))), svc
        assert ("PULLER_ROLES" in env) == (pull and bool(subscribers(svc))), svc
        assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "migrator"
    # Ordered by weight, in saga order, one after the other.
    assert weights == sorted(weights) and len(set(weights)) == len(weights)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_migrators_read_a_secret_that_exists_before_them(name):
    """Hooks run before regular resources exist: the Secret a migrator reads is either a hook
    of lower weight (made by the chart) or the user's existingSecret."""
    values = VALUE_SETS[name]
    docs = rendered_documents(values)
    hook_secrets = {
        s["metadata"]["name"]: s
        for s in by_kind(docs, "Secret")
        if "pre-install" in s["metadata"].get("annotations", {}).get(HOOK, "")
    }
    for svc, job in migrator_jobs(docs).items():
        ref = env_of(job["spec"]["template"]["spec"]["containers"][0])["DATABASE_URL"]["secretKeyRef"]
        existing = values.get("services", {}).get(svc, {}).get("database", {}).get("roles", {}).get("migrator", {}).get("existingSecret")
        if existing:
            assert ref["name"] == existing
            continue
        secret = hook_secrets[ref["name"]]
        ann = secret["metadata"]["annotations"]
        assert set(ann[HOOK].split(",")) >= {"pre-install", "pre-upgrade"}
        assert int(ann[WEIGHT]) < int(job["metadata"]["annotations"][WEIGHT])
        assert "hook-succeeded" in ann[POLICY]
        assert ref["key"] in secret["data"]


def test_no_api_or_worker_is_a_hook():
    docs = rendered_documents(VALUE_SETS["all-on"])
    for d in by_kind(docs, "Deployment"):
        assert HOOK not in d["metadata"].get("annotations", {})


def test_demo_postgres_exists_before_the_migrators():
    docs = rendered_documents(merge(REQUIRED, {"postgres": {"enabled": True}}))
    (sts,) = by_kind(docs, "StatefulSet")
    ann = sts["metadata"]["annotations"]
    assert ann[HOOK] == "pre-install" and int(ann[WEIGHT]) < -10
    for job in migrator_jobs(docs).values():
        init = job["spec"]["template"]["spec"]["initContainers"]
        assert init[0]["name"] == "wait-for-postgres"
    (init,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("-postgres-init")]
    assert init["metadata"]["annotations"][HOOK] == "pre-install" and int(init["metadata"]["annotations"][WEIGHT]) < -10
    sql = base64.b64decode(init["data"]["create-databases.sql"]).decode()
    for svc, db in [("catalog", "catalog"), ("order", "orders"), ("stock", "stock"), ("payment", "payment"), ("notification", "notification"),
                    ("coordinator", "coordinator")]:
        assert f'CREATE DATABASE "{db}" OWNER "{svc}_migrator";' in sql
