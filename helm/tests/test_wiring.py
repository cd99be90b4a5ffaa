"""What the binaries are given: each setting of values.yaml reaches the right variable, the
workers know their subscribers, KEDA measures the right queue, and the NetworkPolicies let
the saga through."""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit

from chart import NAMESPACE, REQUIRED, SERVICES, VALUE_SETS, WEBHOOK, by_kind, contract, env_of, merge, rendered_documents


def deployment(docs, svc, component):
    (d,) = [d for d in by_kind(docs, "Deployment")
            if d["metadata"]["labels"].get("conveyor/service") == svc
            and d["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    return d


def container_env(docs, svc, component):
    return env_of(deployment(docs, svc, component)["spec"]["template"]["spec"]["containers"][0])


def secret_value(docs, name, key):
    (s,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == name]
    return base64.b64decode(s["data"][key]).decode()


def test_every_process_gets_its_settings():
    docs = rendered_documents(VALUE_SETS["otel-export-on"] | {"logLevel": "debug", "logFormat": "text"})
    for svc in SERVICES:
        for component in ("api", "worker"):
            env = container_env(docs, svc, component)
            assert env["RUST_LOG"] == "debug" and env["LOG_FORMAT"] == "text"
            assert env["OTEL_SERVICE_NAME"] == f"{svc}-{component}"
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
            assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
            assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
            assert env["OTEL_EXPORTER_OTLP_TIMEOUT"] == "5000"
            assert "deployment.environment=test" in env["OTEL_RESOURCE_ATTRIBUTES"]
            assert env["DATABASE_URL"]["secretKeyRef"]["key"] == "DATABASE_URL"
        assert container_env(docs, svc, "api")["MAX_BODY_BYTES"] == "65536"
        worker = container_env(docs, svc, "worker")
        assert (worker["WORKER_CONCURRENCY"], worker["WORKER_BATCH_SIZE"]) == ("4", "50")
        assert (worker["WORKER_POLL_INTERVAL"], worker["WORKER_SHUTDOWN_GRACE"]) == ("1s", "10s")


def test_no_otel_endpoint_no_export():
    for svc in SERVICES:
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in container_env(rendered_documents(REQUIRED), svc, "api")


def test_workers_subscribers_come_from_the_subscribers_secrets():
    docs = rendered_documents(REQUIRED)
    for entry in contract()["services"]:
        env = container_env(docs, entry["name"], "worker")
        if not entry["subscribers"]:
            assert "SUBSCRIBERS" not in env
            continue
        expected = ",".join(f"{s}=$(SUBSCRIBER_URL_{s.upper()})" for s in entry["subscribers"])
        assert env["SUBSCRIBERS"] == expected
        for sub in entry["subscribers"]:
            ref = env[f"SUBSCRIBER_URL_{sub.upper()}"]["secretKeyRef"]
            assert ref == {"name": f"shop-conveyor-{sub}-db-relay", "key": "DATABASE_URL"}
        # $(VAR) expands only variables defined before it.
        names = [e["name"] for e in deployment(docs, entry["name"], "worker")["spec"]["template"]["spec"]["containers"][0]["env"]]
        assert all(names.index(f"SUBSCRIBER_URL_{s.upper()}") < names.index("SUBSCRIBERS") for s in entry["subscribers"])


def test_existing_secrets_are_used_everywhere():
    docs = rendered_documents(VALUE_SETS["existing-secrets-on"])
    assert not by_kind(docs, "Secret")
    env = container_env(docs, "payment", "worker")
    assert env["DATABASE_URL"]["secretKeyRef"] == {"name": "payment-db-runtime", "key": "url"}
    assert env["SUBSCRIBER_URL_STOCK"]["secretKeyRef"] == {"name": "stock-db-relay", "key": "url"}
    (job,) = [j for j in by_kind(docs, "Job") if j["metadata"]["labels"]["conveyor/service"] == "payment"]
    assert env_of(job["spec"]["template"]["spec"]["containers"][0])["DATABASE_URL"]["secretKeyRef"] == {"name": "payment-db-migrator", "key": "url"}


def test_database_urls_are_built_and_escaped():
    docs = rendered_documents(VALUE_SETS["per-service-overrides"])
    url = secret_value(docs, "shop-conveyor-order-db", "DATABASE_URL")
    parts = urlsplit(url)
    assert parts.scheme == "postgres" and parts.hostname == "db.internal" and parts.port == 5432
    assert parts.username == "order_runtime" and unquote(parts.password) == "p@ss word+/"
    assert parts.path == "/orders" and parts.query == "connect_timeout=5"
    # The migrator's hook Secret carries the migrator role's URL, its password escaped too.
    migrator = urlsplit(secret_value(docs, "shop-conveyor-order-db-migrate", "DATABASE_URL"))
    assert migrator.username == "order_migrator" and unquote(migrator.password) == "owner:pw" and migrator.path == "/orders"
    # A role without a password gets a URL without one (e.g. for a server that trusts the pod).
    relay = urlsplit(secret_value(docs, "shop-conveyor-order-db-relay", "DATABASE_URL"))
    assert relay.username == "order_relay" and relay.password is None
    # An explicit URL wins.
    assert secret_value(docs, "shop-conveyor-catalog-db", "DATABASE_URL") == "postgres://catalog:s3cr%40t@db.example:5433/catalog"
    # A username of your own is the URL's user and the role the migrator grants to.
    assert urlsplit(secret_value(docs, "shop-conveyor-stock-db", "DATABASE_URL")).username == "shop_stock"
    (job,) = [j for j in by_kind(docs, "Job") if j["metadata"]["labels"]["conveyor/service"] == "stock"]
    job_env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert (job_env["RUNTIME_ROLE"], job_env["RELAY_ROLES"]) == ("shop_stock", "shop_stock_inbox")


def test_demo_postgres_creates_the_roles_the_urls_name():
    docs = rendered_documents(merge(REQUIRED, {"postgres": {"enabled": True, "auth": {"password": "demo pw"}}}))
    assert secret_value(docs, "shop-conveyor-postgres", "password") == "demo pw"
    sql = secret_value(docs, "shop-conveyor-postgres-init", "create-databases.sql")
    passwords = set()
    for name in ["shop-conveyor-stock-db", "shop-conveyor-stock-db-relay", "shop-conveyor-stock-db-migrate"]:
        url = urlsplit(secret_value(docs, name, "DATABASE_URL"))
        assert url.hostname == "shop-conveyor-postgres" and url.path == "/stock"
        # Each role its own password, derived from the admin's (so upgrades keep it).
        assert len(url.password) == 32 and url.password not in passwords
        passwords.add(url.password)
        assert f"CREATE ROLE \"{url.username}\" LOGIN PASSWORD '{url.password}';" in sql
    assert 'CREATE DATABASE "stock" OWNER "stock_migrator";' in sql
    assert "catalog_relay" not in sql, "nobody delivers to catalog"
    again = rendered_documents(merge(REQUIRED, {"postgres": {"enabled": True, "auth": {"password": "demo pw"}}}))
    assert secret_value(again, "shop-conveyor-stock-db", "DATABASE_URL") == secret_value(docs, "shop-conveyor-stock-db", "DATABASE_URL")


def test_demo_postgres_generated_password_is_the_same_everywhere():
    docs = rendered_documents(merge(REQUIRED, {"postgres": {"enabled": True}}))
    password = secret_value(docs, "shop-conveyor-postgres", "password")
    assert len(password) == 32
    sql = secret_value(docs, "shop-conveyor-postgres-init", "create-databases.sql")
    for svc in SERVICES:
        url = urlsplit(secret_value(docs, f"shop-conveyor-{svc}-db", "DATABASE_URL"))
        assert f"CREATE ROLE \"{svc}_runtime\" LOGIN PASSWORD '{url.password}';" in sql


def test_per_service_overrides_win_even_when_false_or_zero():
    docs = rendered_documents(VALUE_SETS["per-service-overrides"])
    order_api = deployment(docs, "order", "api")
    assert order_api["spec"]["replicas"] == 0
    hpas = {h["metadata"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler")}
    assert "shop-conveyor-order-api" not in hpas and "shop-conveyor-stock-api" in hpas
    assert "shop-conveyor-payment-worker" not in hpas
    assert deployment(docs, "payment", "worker")["spec"]["replicas"] == 3
    assert container_env(docs, "order", "worker")["WORKER_CONCURRENCY"] == "16"
    scaled = {s["metadata"]["name"]: s for s in by_kind(docs, "ScaledObject")}
    assert list(scaled) == ["shop-conveyor-order-worker"]
    assert scaled["shop-conveyor-order-worker"]["spec"]["maxReplicaCount"] == 3
    # The notification worker finds order-api on its overridden Service port.
    assert container_env(docs, "notification", "worker")["ORDER_API_URL"] == f"http://shop-conveyor-order-api.{NAMESPACE}.svc:8082"
    (job,) = [j for j in by_kind(docs, "Job") if j["metadata"]["labels"]["conveyor/service"] == "catalog"]
    assert job["spec"]["backoffLimit"] == 0


def test_notification_settings_and_no_startup_faults():
    docs = rendered_documents(merge(VALUE_SETS["per-service-overrides"], VALUE_SETS["webhook-on"]))
    # Faults are flags switched at run time (/admin/faults), never a worker's environment.
    pay = container_env(docs, "payment", "worker")
    assert not [var for var in pay if var.startswith("PAYMENT_")], pay
    notif = container_env(docs, "notification", "worker")
    assert notif["NOTIFICATION_WEBHOOK_URL"] == WEBHOOK
    for var in ["LOOKUP_TIMEOUT", "WEBHOOK_TIMEOUT", "BREAKER_FAILURES", "BREAKER_COOLDOWN",
                "MAX_ATTEMPTS", "RETRY_BASE", "RETRY_MAX", "LEASE"]:
        assert f"NOTIFICATION_{var}" in notif


def test_saga_mode_reaches_order_api_and_the_step_timeout_coordinator_worker():
    defaults = rendered_documents(REQUIRED)
    assert container_env(defaults, "order", "api")["CONVEYOR_SAGA_MODE"] == "choreography"
    assert container_env(defaults, "coordinator", "worker")["CONVEYOR_STEP_TIMEOUT"] == "30s"
    docs = rendered_documents(VALUE_SETS["saga-orchestration-on"])
    assert container_env(docs, "order", "api")["CONVEYOR_SAGA_MODE"] == "orchestration"
    assert container_env(docs, "coordinator", "worker")["CONVEYOR_STEP_TIMEOUT"] == "10s"
    # Nobody else reads them.
    for svc in SERVICES:
        for component in ("api", "worker"):
            env = container_env(docs, svc, component)
            assert ("CONVEYOR_SAGA_MODE" in env) == ((svc, component) == ("order", "api")), (svc, component)
            assert ("CONVEYOR_STEP_TIMEOUT" in env) == ((svc, component) == ("coordinator", "worker")), (svc, component)


def test_keda_scales_each_worker_on_its_own_queue():
    docs = rendered_documents(VALUE_SETS["keda-postgresql-on"])
    assert not [h for h in by_kind(docs, "HorizontalPodAutoscaler") if "worker" in h["metadata"]["name"]]
    auths = {a["metadata"]["name"]: a for a in by_kind(docs, "TriggerAuthentication")}
    for so in by_kind(docs, "ScaledObject"):
        svc = so["metadata"]["labels"]["conveyor/service"]
        assert so["spec"]["scaleTargetRef"]["name"] == f"shop-conveyor-{svc}-worker"
        assert "replicas" not in deployment(docs, svc, "worker")["spec"]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "postgresql"
        assert "conveyor.inbox" in trigger["metadata"]["query"] and "'pending', 'running'" in trigger["metadata"]["query"]
        auth = auths[trigger["authenticationRef"]["name"]]
        assert auth["spec"]["secretTargetRef"] == [{"parameter": "connection", "name": f"shop-conveyor-{svc}-db", "key": "DATABASE_URL"}]
    docs = rendered_documents(VALUE_SETS["keda-prometheus-on"])
    assert not by_kind(docs, "TriggerAuthentication")
    for so in by_kind(docs, "ScaledObject"):
        svc = so["metadata"]["labels"]["conveyor/service"]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        assert f'service="{svc}"' in trigger["metadata"]["query"]
        assert "conveyor_queue_depth" in trigger["metadata"]["query"]


def test_api_hpa_and_pdb_per_service():
    docs = rendered_documents(REQUIRED)
    for svc in SERVICES:
        name = f"shop-conveyor-{svc}-api"
        (hpa,) = [h for h in by_kind(docs, "HorizontalPodAutoscaler") if h["metadata"]["name"] == name]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        (pdb,) = [p for p in by_kind(docs, "PodDisruptionBudget") if p["metadata"]["name"] == name]
        assert pdb["spec"]["selector"]["matchLabels"] == deployment(docs, svc, "api")["spec"]["selector"]["matchLabels"]
        assert "replicas" not in deployment(docs, svc, "api")["spec"]


def test_standard_labels_everywhere():
    docs = rendered_documents(VALUE_SETS["all-on"])
    for d in docs:
        labels = d["metadata"].get("labels", {})
        where = f"{d['kind']}/{d['metadata']['name']}"
        assert labels.get("helm.sh/chart") == "conveyor-0.1.0", where
        assert labels.get("app.kubernetes.io/name") == "conveyor", where
        assert labels.get("app.kubernetes.io/instance") == "shop", where
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", where
        assert labels.get("app.kubernetes.io/version"), where
        assert len(d["metadata"]["name"]) <= 63, where


def test_network_policies_allow_what_the_saga_needs():
    docs = rendered_documents(merge(VALUE_SETS["network-policy-on"], VALUE_SETS["webhook-on"]))
    pols = {p["metadata"]["name"].removeprefix("shop-conveyor-"): p["spec"] for p in by_kind(docs, "NetworkPolicy")}
    deny = pols["default-deny"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    assert deny["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "conveyor", "app.kubernetes.io/instance": "shop"}
    egress_ports = [p["port"] for rule in pols["egress"]["egress"] for p in rule["ports"]]
    assert 53 in egress_ports and 5432 in egress_ports
    notif = pols["notification-worker"]["egress"]
    assert notif[0]["to"][0]["podSelector"]["matchLabels"]["conveyor/service"] == "order"
    assert notif[1]["ports"] == [{"protocol": "TCP", "port": 8080}]  # the webhook URL's port
    api_from = pols["api"]["ingress"]
    assert any(r.get("from", [{}])[0].get("podSelector", {}).get("matchLabels", {}).get("conveyor/service") == "notification" for r in api_from)
    # With the demo server, egress goes to it and it admits the release's pods.
    docs = rendered_documents(merge(VALUE_SETS["network-policy-on"], {"postgres": {"enabled": True}}))
    pols = {p["metadata"]["name"].removeprefix("shop-conveyor-"): p["spec"] for p in by_kind(docs, "NetworkPolicy")}
    assert pols["postgres"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 5432}]


def test_otel_resource_names_the_pod_and_keeps_the_binaries_defaults():
    docs = rendered_documents(REQUIRED)
    env = container_env(docs, "stock", "worker")
    attrs = env["OTEL_RESOURCE_ATTRIBUTES"].split(",")
    assert "k8s.pod.name=$(POD_NAME)" in attrs and "k8s.deployment.name=shop-conveyor-stock-worker" in attrs
    assert not [a for a in attrs if a.startswith("service.")]  # service.namespace stays "conveyor"
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" not in env  # set only with an endpoint
