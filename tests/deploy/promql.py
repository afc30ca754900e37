"""The PromQL that the Grafana dashboard and the alert rules run, and the metric names in it.

`dashboard_metric_names()` is the list another test compares with a live scrape of the services.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/copytrade-dashboard.json"
RULES = ROOT / "deploy/prometheus/rules.yaml"

# Grafana's variables, replaced by values PromQL accepts so that promtool can parse the queries.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${follower}": ".*",
    "$follower": ".*",
    "${master}": ".*",
    "$master": ".*",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC = re.compile(r"\b(copytrade_[a-zA-Z0-9_]*[a-zA-Z0-9])\b(?!:)")
LABEL_VALUES = re.compile(r"^label_values\((?P<metric>[^,]+),\s*(?P<label>\w+)\)$")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, rows included, with the panels nested in collapsed rows."""
    panels = []
    for panel in dashboard()["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return panels


def dashboard_queries() -> dict[str, str]:
    """Each panel target's PromQL as written in Grafana, keyed 'panel <id> <refId>'."""
    return {
        f"panel {panel['id']} {target['refId']}": target["expr"]
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    }


def variable_queries() -> dict[str, str]:
    """Query variables as PromQL: label_values(m, l) becomes count by (l) (m)."""
    queries = {}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match, f"variable {variable['name']}: expected label_values(metric, label)"
            queries[f"variable {variable['name']}"] = f"count by ({match['label']}) ({match['metric']})"
    return queries


def alert_queries() -> dict[str, str]:
    """Each alert's expression from deploy/prometheus/rules.yaml, keyed by alert name."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def metric_base_name(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def dashboard_metric_names() -> set[str]:
    """The copytrade metric names the dashboard and the alerts query, as a scrape shows them.

    Counters keep `_total`; histogram series lose `_bucket`/`_sum`/`_count` (so the base name,
    e.g. `copytrade_copy_latency_seconds`). Prometheus' own `up` is not included.
    """
    queries = [
        *dashboard_queries().values(),
        *variable_queries().values(),
        *alert_queries().values(),
    ]
    return {metric_base_name(name) for query in queries for name in METRIC.findall(query)}
