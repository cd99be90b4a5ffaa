"""image-contract.yaml is the one place that says what the image carries; the Dockerfile, the
Cargo targets, the service routes and the rendered chart must all agree with it."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import dockerfile  # BuildKit's own Dockerfile parser (Go), from PyPI

from chart import REPO, SERVICES, VALUE_SETS, by_kind, contract, load_yaml, rendered_documents

DOCKERFILE = REPO / "Dockerfile"


def contract_binaries() -> set[str]:
    return {s[part] for s in contract()["services"] for part in ("api", "worker", "migrator")}


def cargo_bins() -> dict[str, str]:
    """[[bin]] name -> package name, for services/* and migrator/."""
    out = {}
    for manifest in sorted(REPO.glob("services/*/Cargo.toml")) + [REPO / "migrator" / "Cargo.toml"]:
        data = tomllib.loads(manifest.read_text())
        for b in data.get("bin", []):
            out[b["name"]] = data["package"]["name"]
    return out


def stages():
    """The Dockerfile's stages: [(FROM command, [commands])]."""
    out = []
    for cmd in dockerfile.parse_file(str(DOCKERFILE)):
        if cmd.cmd.upper() == "FROM":
            out.append((cmd, []))
        elif out:
            out[-1][1].append(cmd)
    return out


def arg(commands, name) -> str:
    for c in commands:
        if c.cmd.upper() == "ARG" and c.value[0].startswith(f"{name}="):
            return c.value[0].split("=", 1)[1].strip('"')
    raise AssertionError(f"no ARG {name}")


def test_contract_names_every_service_binary_of_the_workspace():
    assert [s["name"] for s in contract()["services"]] == SERVICES
    assert contract_binaries() == set(cargo_bins()), "image-contract.yaml vs [[bin]] targets"
    assert len(contract_binaries()) == 18
    for s in contract()["services"]:
        assert (s["api"], s["worker"], s["migrator"]) == (f"{s['name']}-api", f"{s['name']}-worker", f"{s['name']}-migrator")


def test_contract_databases_are_the_launchers():
    source = (REPO / "crates" / "launcher" / "src" / "lib.rs").read_text()
    assert 'if svc == service::ORDER { "orders" } else { svc }' in source
    for s in contract()["services"]:
        assert s["database"] == ("orders" if s["name"] == "order" else s["name"])
    values = load_yaml(REPO / "helm" / "conveyor" / "values.yaml")
    for s in contract()["services"]:
        assert values["services"][s["name"]]["database"]["name"] == s["database"]


def test_contract_subscribers_are_the_routes_of_crates_contracts():
    source = (REPO / "crates" / "contracts" / "src" / "lib.rs").read_text()
    body = source[source.index("pub fn routes(") : source.index("pub fn subscribers_of(")]
    # Comments between the arms (and any names in them) are not routes.
    body = re.sub(r"//.*", "", body)
    names = "CATALOG|ORDER|STOCK|PAYMENT|NOTIFICATION|COORDINATOR"
    arms = re.findall(rf"({names})\s*=>\s*Routes::new\(\)(.*?)(?=,\s*\n\s*(?:[A-Z]+\s*=>|_\s*=>))", body, re.S)
    routes = {name.lower(): set(re.findall(rf"\b({names})\b", rest)) for name, rest in arms}
    routes = {k: {v.lower() for v in vs} for k, vs in routes.items()}
    assert set(routes) == set(SERVICES), routes
    for s in contract()["services"]:
        assert set(s["subscribers"]) == routes.get(s["name"], set()), s["name"]
        assert s["subscribers"] == sorted(s["subscribers"]), f"{s['name']}: subscribers in alphabetical order"


def test_dockerfile_is_multi_stage_and_builds_with_cargo():
    st = stages()
    assert len(st) >= 2
    build_from, build_cmds = st[0]
    assert build_from.value[0].startswith("rust:") and build_from.value[0].endswith("-bookworm")
    runs = " ".join(" ".join(c.value) for c in build_cmds if c.cmd.upper() == "RUN")
    assert "cargo build --release --locked --bins" in runs
    packages = set(re.findall(r"-p (conveyor-[a-z-]+)", runs))
    assert {cargo_bins()[b] for b in contract_binaries()} <= packages


def test_dockerfile_carries_exactly_the_contract_binaries():
    (build_from, build_cmds), (run_from, run_cmds) = stages()[0], stages()[-1]
    assert set(shlex.split(arg(build_cmds, "BINARIES"))) == contract_binaries()
    copies = [c for c in run_cmds if c.cmd.upper() == "COPY"]
    assert any(c.value[-1].rstrip("/") == contract()["binDir"] and "--from=build" in c.flags for c in copies)


def test_dockerfile_runtime_stage_matches_the_contract():
    run_from, run_cmds = stages()[-1]
    image = run_from.value[0]
    assert image.startswith("gcr.io/distroless/cc-debian12") or image.startswith("debian:bookworm-slim")
    users = [c.value[0] for c in run_cmds if c.cmd.upper() == "USER"]
    uid, gid = contract()["user"]["uid"], contract()["user"]["gid"]
    assert users == [f"{uid}:{gid}"], "the last stage runs as the contract's numeric user"
    assert uid != 0 and gid != 0
    exposed = {int(p.split("/")[0]) for c in run_cmds if c.cmd.upper() == "EXPOSE" for p in c.value}
    assert exposed == set(contract()["ports"].values())
    # Small: nothing installed in the runtime stage.
    assert not [c for c in run_cmds if c.cmd.upper() == "RUN"]


def test_dockerignore_keeps_every_workspace_member():
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert "target" in ignored and ".git" in ignored
    members = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["members"]
    for member in members:
        top = member.split("/")[0]
        assert top not in ignored, f"{top} is a workspace member and must stay in the build context"


def test_chart_runs_the_contract_binaries_on_the_contract_ports():
    c = contract()
    docs = rendered_documents(VALUE_SETS["all-on"])
    commands = set()
    for d in by_kind(docs, "Deployment") + by_kind(docs, "Job"):
        container = d["spec"]["template"]["spec"]["containers"][0]
        (command,) = container["command"]
        assert Path(command).parent == Path(c["binDir"])
        commands.add(Path(command).name)
        component = d["metadata"]["labels"]["app.kubernetes.io/component"]
        if component in ("api", "worker"):
            port = c["ports"][component]
            assert container["ports"][0]["containerPort"] == port
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["LISTEN_ADDR"] == f"0.0.0.0:{port}"
    assert commands == contract_binaries()
