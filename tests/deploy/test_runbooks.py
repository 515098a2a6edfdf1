"""Every alert links to its runbook: a `runbook_url` annotation naming a heading of
docs/runbooks.md, prefixed with the `runbook_base` external label when Prometheus has one (proved
here with Debian's `prometheus`, since promtool's unit tests cannot set external labels). And
the alerts on "any event" catch a counter series that appears at a non-zero value: the rules
with that branch taken out fail their own unit tests."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deploy import RULE_TESTS, RULES, require_tool
from tests.support.env import ROOT
from wazza_tools.dev.localbroker import free_port

# Runs the project's commands or external tools as processes.
pytestmark = pytest.mark.slow

RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_PREFIX = "{{ with $externalLabels.runbook_base }}{{ . }}/{{ end }}"
# Prometheus starts and evaluates a 1 s rule group within a few seconds; ample on a loaded CI.
PROMETHEUS_SECONDS = 30.0


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOKS.read_text().splitlines()
        if re.match(r"#{1,6} ", line)
    }


def test_every_alert_links_to_a_runbook_section_that_exists() -> None:
    anchors = runbook_anchors()
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_PREFIX), f"{rule['alert']}: {url!r}"
        path, _, anchor = url.removeprefix(RUNBOOK_PREFIX).partition("#")
        assert path == "docs/runbooks.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no heading #{anchor} in {RUNBOOKS}"


def test_every_runbook_section_says_what_it_means_what_to_check_and_what_to_do() -> None:
    text = RUNBOOKS.read_text()
    sections = dict(re.findall(r"^## (Wazza\w+)\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    assert set(sections) == {rule["alert"] for rule in alert_rules()}
    for name, body in sections.items():
        for part in ("What it means", "What to check", "What to do"):
            assert f"**{part}.**" in body, f"{name}: no {part!r}"


def test_prometheus_prefixes_the_runbook_url_with_the_runbook_base_external_label(
    tmp_path: Path,
) -> None:
    base = "https://git.example.com/ops/wazza-hooks/blob/main"
    rule = next(r for r in alert_rules() if r["alert"] == "WazzaTargetDown")
    rules = tmp_path / "rules.yml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "runbook",
                        "interval": "1s",
                        "rules": [
                            {
                                "alert": "WazzaTargetDown",
                                "expr": "vector(1)",
                                "annotations": {"runbook_url": rule["annotations"]["runbook_url"]},
                            }
                        ],
                    }
                ]
            }
        )
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"evaluation_interval": "1s", "external_labels": {"runbook_base": base}},
                "rule_files": [str(rules)],
            }
        )
    )
    port = free_port()
    argv = [
        require_tool("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + PROMETHEUS_SECONDS
        alerts: list[dict[str, Any]] = []
        while not alerts:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the alert never fired"
            time.sleep(0.3)
            url = f"http://127.0.0.1:{port}/api/v1/alerts"
            with contextlib.suppress(OSError), urllib.request.urlopen(url) as resp:
                alerts = json.load(resp)["data"]["alerts"]
        assert alerts[0]["annotations"]["runbook_url"] == (
            f"{base}/docs/runbooks.md#wazzatargetdown"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=PROMETHEUS_SECONDS)


# What each alert on "any event" was, or would be, with increase() alone: it reads 0 for a series
# whose first sample is already 1, and the unit tests that start a series absent must fail.
INCREASE_ONLY = {
    "WazzaDeadLetters": (
        'sum by (service) (increase(wazza_consumer_events_total{outcome="dead_lettered"}[15m])) > 0'
    ),
    "WazzaConsumerRecordsLost": (
        "sum by (service) (increase(wazza_consumer_records_lost_total[15m])) > 0"
    ),
    "WazzaConsumerLogReset": (
        "sum by (service) (increase(wazza_consumer_log_resets_total[15m])) > 0"
    ),
    "WazzaQuarantinedWebhooks": (
        'sum(increase(wazza_ingest_requests_total{outcome="quarantined"}[15m])) > 0'
    ),
}


def test_increase_alone_misses_a_series_that_appears_non_zero_and_the_unit_tests_say_so(
    tmp_path: Path,
) -> None:
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in INCREASE_ONLY:
                rule["expr"] = INCREASE_ONLY[rule["alert"]]
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(yaml.safe_dump(doc))
    (tmp_path / "tests").mkdir()
    tests = tmp_path / "tests" / RULE_TESTS.name
    tests.write_text(RULE_TESTS.read_text())
    done = subprocess.run(
        [require_tool("promtool"), "test", "rules", str(tests)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    out = done.stdout + done.stderr
    for alert in INCREASE_ONLY:
        assert f"alertname: {alert}," in out, f"no unit test of {alert} failed:\n{out}"


# `README.md, "Heading"` in deploy/ and the runbooks; `../README.md` or "the top-level
# README.md" is the project's README, any other the deploy guide. Comment markers of a wrapped
# line are dropped first.
_CROSS_REFERENCE = re.compile(r'((?:\.\./|top-level |deploy/)?README\.md)`?,? "([^"]+)"')


def headings(path: Path) -> set[str]:
    return {
        line.lstrip("#").strip()
        for line in path.read_text().splitlines()
        if re.match(r"#{1,6} ", line)
    }


def test_every_cross_reference_names_a_heading_that_exists() -> None:
    deploy = ROOT / "deploy"
    files = [p for p in deploy.rglob("*") if p.is_file() and p.suffix != ".lock"]
    files.append(RUNBOOKS)
    found = 0
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        text = re.sub(r"\n\s*#+ ?", " ", text)
        for target, wrapped in _CROSS_REFERENCE.findall(text):
            heading = " ".join(wrapped.split())
            readme = ROOT / "README.md" if target.startswith(("../", "top-level")) else None
            readme = readme or deploy / "README.md"
            assert heading in headings(readme), f"{path}: no heading {heading!r} in {readme}"
            found += 1
    assert found >= 5
