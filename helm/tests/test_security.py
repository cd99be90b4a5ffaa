"""Every pod the chart renders, in every values set: non-root, read-only root filesystem, no
privilege escalation, no capabilities, RuntimeDefault seccomp; every long-running container
has probes; every container has resources."""

from __future__ import annotations

import pytest

from chart import REQUIRED, VALUE_SETS, contract, pod_specs, rendered_documents


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_container_is_locked_down(name):
    uid = contract()["user"]["uid"]
    specs = pod_specs(rendered_documents(VALUE_SETS[name]))
    assert specs
    for ident, spec in specs:
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, ident
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", ident
        assert spec.get("automountServiceAccountToken") is False, ident
        if "postgres" not in ident:
            assert pod.get("runAsUser") == uid, ident
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{ident} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot") is True, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert sc.get("runAsUser", pod.get("runAsUser", 0)) != 0, where


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_workload_has_probes_and_resources(name):
    for ident, spec in pod_specs(rendered_documents(VALUE_SETS[name])):
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{ident} container {c['name']}"
            res = c.get("resources", {})
            assert res.get("requests", {}).get("cpu") and res["requests"].get("memory"), where
            assert res.get("limits", {}).get("memory"), where
        if ident.startswith("Job/"):
            continue  # run-to-completion: nothing to probe
        for c in spec["containers"]:
            where = f"{ident} container {c['name']}"
            assert "livenessProbe" in c and "readinessProbe" in c, where


def test_probes_use_the_health_endpoints_on_the_served_port():
    health = contract()["health"]
    for ident, spec in pod_specs(rendered_documents(REQUIRED)):
        if ident.startswith("Job/"):
            continue
        c = spec["containers"][0]
        assert c["livenessProbe"]["httpGet"] == {"path": health["live"], "port": "http"}, ident
        assert c["readinessProbe"]["httpGet"] == {"path": health["ready"], "port": "http"}, ident
        assert c["startupProbe"]["httpGet"]["path"] == health["live"], ident
        assert [p["name"] for p in c["ports"]] == ["http"], ident


def test_writable_paths_are_emptydirs():
    paths = contract()["writablePaths"]
    for ident, spec in pod_specs(rendered_documents(REQUIRED)):
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        for path in paths:
            assert path in mounts, ident
            assert "emptyDir" in volumes[mounts[path]], ident
