"""What tests/deploy/ reads out of deploy/: paths, the PromQL of the dashboard and the alert
rules, the metric names and label matchers in that PromQL, and the external tools.

The PromQL reading is deliberately small: it strips strings, label matchers, ranges and
grouping clauses, and what is left that is not a function, an operator or a keyword is a metric
name. That is enough for the expressions we write, and a test below pins it on examples.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.env import BIN, ROOT

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "wazza-hooks.json"
RULES = DEPLOY / "prometheus" / "rules" / "wazza-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "wazza-alerts.test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"

# Series that Prometheus itself makes for every target: not exported by our processes, and
# proven by the live test instead (it queries them).
PROMETHEUS_OWN_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})
# A Histogram or Counter is exported under its base name with these suffixes.
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")

_KEYWORDS = frozenset(
    {
        # aggregation operators and their clauses
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "by", "without", "on", "ignoring", "group_left",
        "group_right",
        # binary set operators and modifiers
        "and", "or", "unless", "bool", "offset", "atan2",
        # literals
        "inf", "nan",
    }
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
# A name not followed by "(" (that would be a function); \b keeps "rate" from matching "rat".
_NAME = re.compile(r"\b[a-zA-Z_][a-zA-Z0-9_:]*\b(?!\s*\()")
_NUMBER_EXPONENT = re.compile(r"\b\d+(?:\.\d+)?[eE][+-]?\d+\b")
_SELECTOR = re.compile(r"\b([a-zA-Z_][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_PLAIN_ALTERNATIVES = re.compile(r"[\w.-]+(?:\|[\w.-]+)*")


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it comes from."""

    origin: str
    """`dashboard: <panel title> [refId]` or `rule: <alert name>`."""
    expr: str
    """The expression as written (Grafana variables included)."""


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard JSON."""
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    found: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries() -> list[Query]:
    """Every target expression of every panel."""
    return [
        Query(f"dashboard: {panel['title']} [{target['refId']}]", target["expr"])
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
    ]


def rule_queries() -> list[Query]:
    """Every alert (and recording) rule's expression."""
    doc = yaml.safe_load(RULES.read_text())
    return [
        Query(f"rule: {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in doc["groups"]
        for rule in group["rules"]
    ]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    text = _NUMBER_EXPONENT.sub(" ", text)
    return {name for name in _NAME.findall(text) if name.lower() not in _KEYWORDS}


def label_matchers(expr: str) -> list[tuple[str, str, str, str]]:
    """(metric, label, operator, value) of every matcher written inside a selector's braces."""
    found = []
    for metric, body in _SELECTOR.findall(expr):
        for label, op, value in _MATCHER.findall(body):
            found.append((metric, label, op, value))
    return found


def plain_values(op: str, value: str) -> list[str]:
    """The label values a positive matcher names outright (`a` or `a|b`); [] for patterns."""
    if op == "=":
        return [value]
    if op == "=~" and _PLAIN_ALTERNATIVES.fullmatch(value):
        return value.split("|")
    return []


def base_name(name: str) -> str:
    """A sample or family name without the Histogram/Counter suffix."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def require_tool(name: str) -> str:
    """The path of an external tool, the virtualenv's first; a clear failure (never a skip)
    when it is missing."""
    in_venv = BIN / name
    if in_venv.exists():
        return str(in_venv)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed: `make test` installs it (deploy/tools/ensure-tools for "
            "prometheus, promtool and haproxy; the dev extra of pyproject.toml for the others)"
        )
    return found


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
