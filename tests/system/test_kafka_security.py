"""TLS and SASL for every client, against a local Apache Kafka with a SASL_SSL listener (SCRAM-
SHA-512, client certificates required, a throwaway CA made here with openssl): the tools create
the topics over it, an ingester and a consumer reach it from the environment's settings and a
webhook is applied; a wrong password is refused with a log line that says so."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.commands import hooks
from tests.support.env import BIN, SECRET, subprocess_env
from tests.support.kafka import unique
from tests.support.processes import running
from tests.support.signing import completed_body, sign_wazza
from wazza_tools.dev.apache_kafka import ApacheKafka, java_and_maven
from wazza_tools.dev.localbroker import free_port, port_in_use

USER = "alice"
PASSWORD = "alice-scram-secret-1234"
# A JVM and three Python processes starting on a loaded 2-core machine.
START_SECONDS = 60.0


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, the broker's certificate for 127.0.0.1 and a client certificate, all signed by
    it; keys unencrypted PKCS#8 (what a PEM keystore of Kafka reads)."""
    paths = {n: folder / f"{n}.pem" for n in ("ca", "ca-key", "server", "server-key", "client")}
    paths |= {"client-key": folder / "client-key.pem", "keystore": folder / "keystore.pem"}
    days = "1"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", paths["ca-key"],
             "-out", paths["ca"], "-days", days, "-subj", "/CN=wazza-test-ca")  # fmt: skip
    for name, subject, extension in (
        ("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1"),
        ("client", "/CN=wazza-client", "extendedKeyUsage=clientAuth"),
    ):
        csr = folder / f"{name}.csr"
        ext = folder / f"{name}.ext"
        ext.write_text(extension + "\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", paths[f"{name}-key"],
                 "-out", csr, "-subj", subject)  # fmt: skip
        _openssl("x509", "-req", "-in", csr, "-CA", paths["ca"], "-CAkey", paths["ca-key"],
                 "-CAcreateserial", "-out", paths[name], "-days", days,
                 "-extfile", ext)  # fmt: skip
    paths["keystore"].write_text(paths["server-key"].read_text() + paths["server"].read_text())
    return paths


@pytest.fixture(scope="module")
def secure_broker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ApacheKafka, str, dict[str, Path]]]:
    missing = java_and_maven()
    if missing is not None:
        pytest.fail(f"the tests run on Apache Kafka: {missing}", pytrace=False)
    folder = tmp_path_factory.mktemp("secure-kafka")
    certs = _certificates(folder)
    port, controller, secure = free_port(), free_port(), free_port()
    prefix = "listener.name.sasl_ssl."
    overrides = {
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},"
        f"SASL_SSL://127.0.0.1:{secure}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,"
        "SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        f"{prefix}scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        f"{prefix}ssl.keystore.type": "PEM",
        f"{prefix}ssl.keystore.location": str(certs["keystore"]),
        f"{prefix}ssl.truststore.type": "PEM",
        f"{prefix}ssl.truststore.location": str(certs["ca"]),
        f"{prefix}ssl.client.auth": "required",
    }
    kafka = ApacheKafka(
        folder / "kafka",
        port,
        controller_port=controller,
        overrides=overrides,
        format_args=["--add-scram", f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]"],
    )
    with kafka:
        yield kafka, f"127.0.0.1:{secure}", certs


def _security_env(certs: dict[str, Path], password: str = PASSWORD) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SSL_CAFILE": str(certs["ca"]),
        "KAFKA_SSL_CERTFILE": str(certs["client"]),
        "KAFKA_SSL_KEYFILE": str(certs["client-key"]),
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": USER,
        "KAFKA_SASL_PASSWORD": password,
    }


def _job_status(db: Path, job_id: str) -> str | None:
    if not db.is_file():
        return None
    with sqlite3.connect(db) as conn:
        try:
            row = conn.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        except sqlite3.OperationalError:
            return None
    return None if row is None else str(row[0])


async def test_services_and_tools_reach_a_sasl_ssl_broker(
    secure_broker: tuple[ApacheKafka, str, dict[str, Path]], tmp_path: Path
) -> None:
    _, bootstrap, certs = secure_broker
    raw, quarantine, dlq = unique("sec.raw"), unique("sec.quarantine"), unique("sec.dlq")
    security = _security_env(certs)
    topics = await hooks(
        "topics", "ensure", "--bootstrap-servers", bootstrap, "--partitions", 2,
        "--raw-topic", raw, "--quarantine-topic", quarantine, "--dlq-topic", dlq,
        env=subprocess_env(**security),
    )  # fmt: skip
    assert topics.code == 0, topics
    assert f"{raw}: created, 2 partitions" in topics.out

    db = tmp_path / "wazza.db"
    env = subprocess_env(
        **security,
        WAZZA_WEBHOOK_SECRETS=SECRET,
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        WAZZA_RAW_TOPIC=raw,
        WAZZA_QUARANTINE_TOPIC=quarantine,
        WAZZA_DLQ_TOPIC=dlq,
        DATABASE_URL=f"sqlite:///{db}",
    )
    ingest_port = free_port()
    job_id = f"job_{uuid.uuid4().hex[:12]}"
    body = completed_body(job_id)
    with (
        running([str(BIN / "wazza-ingest"), "--port", str(ingest_port)], env) as ingester,
        running(
            [str(BIN / "wazza-consumer"), "completion", "--metrics-port", "0"], env
        ) as consumer,
    ):
        await ingester.wait_for(
            lambda _: port_in_use("127.0.0.1", ingest_port), START_SECONDS, "the ingester's port"
        )
        url = f"http://127.0.0.1:{ingest_port}/api/webhooks/wazza"
        deadline = time.monotonic() + START_SECONDS
        async with aiohttp.ClientSession() as http:
            while True:  # 503 until its producer has connected
                headers = sign_wazza(SECRET, body, int(time.time()))
                async with http.post(url, data=body, headers=headers) as resp:
                    if resp.status == 200 or time.monotonic() > deadline:
                        break
                await asyncio.sleep(0.2)
        assert resp.status == 200, ingester.output()
        await consumer.wait_for(
            lambda _: _job_status(db, job_id) == "completed", START_SECONDS, "the job applied"
        )
        # No secret in any log line.
        for output in (ingester.output(), consumer.output()):
            assert PASSWORD not in output


async def test_a_wrong_password_is_refused_with_a_clear_log_line(
    secure_broker: tuple[ApacheKafka, str, dict[str, Path]],
) -> None:
    _, bootstrap, certs = secure_broker
    wrong = "not-the-password-0000"
    env = subprocess_env(
        **_security_env(certs, password=wrong),
        WAZZA_WEBHOOK_SECRETS=SECRET,
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
    )
    with running([str(BIN / "wazza-ingest"), "--port", str(free_port())], env) as ingester:
        await ingester.wait_for(
            lambda p: "authentication failed" in p.output().lower(),
            START_SECONDS,
            "the refusal logged",
        )
    assert wrong not in ingester.output()
