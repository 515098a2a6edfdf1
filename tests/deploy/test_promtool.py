"""The Prometheus configuration and alert rules pass promtool (Debian's `prometheus` package,
installed by `make test` through deploy/tools/ensure-tools), and the rules' unit tests
fire every alert on a synthetic series made to trip it and keep it quiet on a healthy one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.deploy import PROMETHEUS_CONFIG, RULE_TESTS, RULES, require_tool, rule_queries

# Runs the project's commands or external tools as processes.
pytestmark = pytest.mark.slow

# promtool checks a handful of small files in well under a second.
PROMTOOL_SECONDS = 60


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_SECONDS,
        check=False,
    )


def test_promtool_accepts_the_compose_prometheus_config_and_the_rules_it_loads() -> None:
    done = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr
    # The config's rule_files glob must reach the rules file, not match nothing.
    assert str(RULES.name) in done.stdout + done.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rule_queries())} rules found" in done.stdout


def test_promtool_unit_tests_fire_each_alert_and_keep_it_quiet_when_healthy() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {q.origin.removeprefix("rule: ") for q in rule_queries()}
    assert firing == alerts, f"alerts never made to fire: {alerts - firing}"
    assert quiet == alerts, f"alerts never shown quiet: {alerts - quiet}"


def test_a_broken_rule_is_refused_so_the_checks_above_mean_something(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m]) >\n"
    )
    done = promtool("check", "rules", str(broken))
    assert done.returncode != 0
