"""How messages travel (values `delivery`, every worker's DELIVERY; docs/databases.md): with
push (the default) a publishing worker's relay writes its subscribers' inboxes with their
relay roles (SUBSCRIBERS); with pull each worker reads its publishers' outboxes with their
puller roles (PUBLISHERS). Only the roles of the delivery in use get a Secret, are created by
the demo PostgreSQL and are granted by the migrators."""

from __future__ import annotations

import base64
import copy
from urllib.parse import urlsplit

from chart import REQUIRED, SERVICES, VALUE_SETS, by_kind, env_of, merge, publishers, rendered_documents, subscribers

PULL = merge(REQUIRED, {"delivery": "pull"})
HOOK = "helm.sh/hook"


def workers(docs):
    return {d["metadata"]["labels"]["conveyor/service"]: d for d in by_kind(docs, "Deployment")
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"}


def worker_env(docs, svc):
    return env_of(workers(docs)[svc]["spec"]["template"]["spec"]["containers"][0])


def migrator_env(docs, svc):
    (job,) = [j for j in by_kind(docs, "Job") if j["metadata"]["labels"]["conveyor/service"] == svc]
    return env_of(job["spec"]["template"]["spec"]["containers"][0])


def secrets(docs):
    return {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}


def secret_url(docs, name):
    return base64.b64decode(secrets(docs)[name]["data"]["DATABASE_URL"]).decode()


def test_publishers_are_the_contracts_routes_read_backwards():
    # conveyor_contracts::publishers_to, as its tests and docs/databases.md state them.
    assert publishers("catalog") == []
    assert publishers("notification") == ["order"]
    assert publishers("stock") == ["catalog", "order", "payment", "coordinator"]
    for svc in SERVICES:
        assert subscribers(svc), f"{svc} publishes to somebody, so it has a puller role"
        for pub in publishers(svc):
            assert svc in subscribers(pub)


def test_default_is_push():
    docs = rendered_documents(REQUIRED)
    for svc in SERVICES:
        env = worker_env(docs, svc)
        assert env["DELIVERY"] == "push", svc
        assert not [var for var in env if var.startswith("PUBLISHER")], svc
        assert "PULLER_ROLES" not in migrator_env(docs, svc), svc
    assert not [name for name in secrets(docs) if name.endswith("-db-puller")]


def test_pulled_workers_read_exactly_their_publishers_from_the_puller_secrets():
    docs = rendered_documents(PULL)
    for svc in SERVICES:
        env = worker_env(docs, svc)
        assert env["DELIVERY"] == "pull", svc
        # No relay: nothing about subscribers.
        assert not [var for var in env if var.startswith("SUBSCRIBER")], svc
        pubs = publishers(svc)
        assert sorted(var for var in env if var.startswith("PUBLISHER_URL_")) == sorted(f"PUBLISHER_URL_{p.upper()}" for p in pubs), svc
        if not pubs:
            assert "PUBLISHERS" not in env, f"{svc} receives from nobody"
            continue
        assert env["PUBLISHERS"] == ",".join(f"{p}=$(PUBLISHER_URL_{p.upper()})" for p in pubs), svc
        for p in pubs:
            assert env[f"PUBLISHER_URL_{p.upper()}"]["secretKeyRef"] == {"name": f"shop-conveyor-{p}-db-puller", "key": "DATABASE_URL"}
        # $(VAR) expands only variables defined before it.
        names = [e["name"] for e in workers(docs)[svc]["spec"]["template"]["spec"]["containers"][0]["env"]]
        assert all(names.index(f"PUBLISHER_URL_{p.upper()}") < names.index("PUBLISHERS") for p in pubs), svc


def test_pulled_migrators_grant_the_puller_roles_only():
    docs = rendered_documents(PULL)
    for svc in SERVICES:
        env = migrator_env(docs, svc)
        assert env["RUNTIME_ROLE"] == f"{svc}_runtime"
        assert "RELAY_ROLES" not in env, svc
        if subscribers(svc):
            assert env["PULLER_ROLES"] == f"{svc}_puller", svc
        else:
            assert "PULLER_ROLES" not in env, svc


def test_pulled_a_puller_secret_per_publisher_and_no_relay_secrets():
    docs = rendered_documents(PULL)
    all_secrets = secrets(docs)
    assert not [name for name in all_secrets if name.endswith("-db-relay")], "the relay roles are not used"
    for svc in SERVICES:
        name = f"shop-conveyor-{svc}-db-puller"
        secret = all_secrets[name]
        assert urlsplit(secret_url(docs, name)).username == f"{svc}_puller"
        assert urlsplit(secret_url(docs, name)).path == "/" + ("orders" if svc == "order" else svc)
        assert secret["metadata"]["labels"]["conveyor/database-role"] == "puller"
        assert HOOK not in secret["metadata"].get("annotations", {}), "only the owner's credentials are a hook"
        # The runtime and migrator Secrets are as with push.
        assert urlsplit(secret_url(docs, f"shop-conveyor-{svc}-db")).username == f"{svc}_runtime"
        assert urlsplit(secret_url(docs, f"shop-conveyor-{svc}-db-migrate")).username == f"{svc}_migrator"


def test_pulled_puller_roles_take_their_own_names_and_secrets():
    docs = rendered_documents(merge(PULL, {"services": {
        "stock": {"database": {"roles": {"puller": {"username": "shop_stock_reader"}}}},
        "order": {"database": {"roles": {"puller": {"existingSecret": "orders-outbox", "existingSecretKey": "url"}}}},
    }}))
    assert migrator_env(docs, "stock")["PULLER_ROLES"] == "shop_stock_reader"
    assert urlsplit(secret_url(docs, "shop-conveyor-stock-db-puller")).username == "shop_stock_reader"
    assert "shop-conveyor-order-db-puller" not in secrets(docs)
    for svc in SERVICES:
        if "order" in publishers(svc):
            assert worker_env(docs, svc)["PUBLISHER_URL_ORDER"]["secretKeyRef"] == {"name": "orders-outbox", "key": "url"}, svc


def test_pulled_a_new_puller_password_restarts_the_workers_that_read_with_it():
    def annotations(values, svc):
        return workers(rendered_documents(merge(PULL, values)))[svc]["spec"]["template"]["metadata"].get("annotations") or {}

    new_puller = {"services": {"order": {"database": {"roles": {"puller": {"password": "new"}}}}}}
    # order's puller role is used by the workers that receive from order, not by order itself.
    for svc in SERVICES:
        changed = annotations({}, svc) != annotations(new_puller, svc)
        assert changed == ("order" in publishers(svc)), svc
    # The relay roles are not used: their passwords restart nothing.
    new_relay = {"services": {"stock": {"database": {"roles": {"relay": {"password": "new"}}}}}}
    assert annotations({}, "order") == annotations(new_relay, "order")


def test_pulled_demo_postgres_creates_the_puller_roles_the_urls_name():
    values = merge(PULL, {"postgres": {"enabled": True, "auth": {"password": "demo pw"}}})
    docs = rendered_documents(values)
    init = base64.b64decode(secrets(docs)["shop-conveyor-postgres-init"]["data"]["create-databases.sql"]).decode()
    for svc in SERVICES:
        url = urlsplit(secret_url(docs, f"shop-conveyor-{svc}-db-puller"))
        assert url.hostname == "shop-conveyor-postgres" and len(url.password) == 32
        assert f"CREATE ROLE \"{svc}_puller\" LOGIN PASSWORD '{url.password}';" in init
    assert "_relay" not in init, "only the roles of the delivery in use"
    pushed = rendered_documents(merge(values, {"delivery": "push"}))
    pushed_init = base64.b64decode(secrets(pushed)["shop-conveyor-postgres-init"]["data"]["create-databases.sql"]).decode()
    assert "_puller" not in pushed_init and "order_relay" in pushed_init


def test_pulled_network_policy_lets_workers_reach_the_databases():
    docs = rendered_documents(merge(VALUE_SETS["network-policy-on"], {"delivery": "pull"}))
    (egress,) = [p["spec"] for p in by_kind(docs, "NetworkPolicy") if p["metadata"]["name"] == "shop-conveyor-egress"]
    assert "worker" in egress["podSelector"]["matchExpressions"][0]["values"]
    assert 5432 in [p["port"] for rule in egress["egress"] for p in rule["ports"]]


def test_pull_changes_only_the_delivery_wiring():
    """`delivery: push` given explicitly is the default render; pull differs from it only in
    the workers' peers (and their URL checksum), the migrators' grants and the delivery roles'
    Secrets."""
    assert rendered_documents(merge(REQUIRED, {"delivery": "push"})) == rendered_documents(REQUIRED)

    def without_delivery(docs):
        out = []
        for d in copy.deepcopy(docs):
            name = d["metadata"]["name"]
            if d["kind"] == "Secret" and name.endswith(("-db-relay", "-db-puller")):
                continue
            if d["kind"] in ("Deployment", "Job"):
                pod = d["spec"]["template"]
                for c in pod["spec"]["containers"]:
                    c["env"] = [e for e in c.get("env", []) if not e["name"].startswith(
                        ("DELIVERY", "SUBSCRIBER", "PUBLISHER", "RELAY_ROLES", "PULLER_ROLES"))]
                (pod["metadata"].get("annotations") or {}).pop("checksum/database-urls", None)
            out.append(d)
        return out

    assert without_delivery(rendered_documents(PULL)) == without_delivery(rendered_documents(REQUIRED))
    docs = rendered_documents(REQUIRED)
    for svc in SERVICES:
        env = worker_env(docs, svc)
        assert env["SUBSCRIBERS"] == ",".join(f"{s}=$(SUBSCRIBER_URL_{s.upper()})" for s in subscribers(svc))
        assert ("RELAY_ROLES" in migrator_env(docs, svc)) == bool(publishers(svc))
