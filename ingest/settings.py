"""The ingester's settings: read once from the environment, validated, frozen."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from wazza_hooks import contract
from wazza_hooks.config import ConfigError, Env, Network, Secret, default_instance_id
from wazza_hooks.kafka_client import PLAINTEXT, KafkaSecurity

from .signature import VerifierConfig, decode_standard_secret

# The sender gives up on an answer after 5 s (its spec: "Return 200 status within 5 seconds"), so a
# publish must be abandoned, and a 503 sent, well before that.
_SENDER_DEADLINE_SECONDS = 5.0
# A webhook secret is an HMAC key that anyone who guesses it can sign with: 24 bytes is 192 bits
# when random (a generated 32-byte hex or base64 secret passes easily), and refuses the short
# words people type by hand.
MIN_SECRET_BYTES = 24
# Values copied from examples and templates, compared case-insensitively: a deployment that kept
# one would accept anyone's signature.
PLACEHOLDER_SECRETS = frozenset(
    {
        "change-me",
        "changeme",
        "change_me",
        "changethis",
        "secret",
        "your-secret",
        "your-webhook-secret",
        "your_webhook_secret",
        "webhook-secret",
        "password",
        "test",
        "example",
        "xxx",
        "todo",
        "replace-me",
    }
)


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """Everything the ingester is configured with."""

    wazza_secrets: tuple[Secret, ...]
    """WAZZA_WEBHOOK_SECRETS: HMAC secrets, comma-separated; the first signs test events."""
    standard_secrets: tuple[Secret, ...] = ()
    """WAZZA_STANDARD_WEBHOOK_SECRETS: `whsec_...` secrets; set them to accept Standard Webhooks."""
    allow_legacy_signature: bool = False
    """WAZZA_ALLOW_LEGACY_SIGNATURE: accept the body-only signature (no timestamp). Weaker."""
    tolerance_seconds: int = 300
    """WAZZA_SIGNATURE_TOLERANCE_SECONDS: largest |now - timestamp| accepted, both directions."""
    max_body_bytes: int = 1024 * 1024
    """WAZZA_MAX_BODY_BYTES: larger bodies get 413 (a job event is a few hundred bytes)."""
    body_timeout_seconds: float = 5.0
    """WAZZA_BODY_TIMEOUT_SECONDS: a body must arrive within this long once the headers did
    (408 otherwise): the sender gives up on an answer after 5 s anyway."""
    headers_timeout_seconds: float = 10.0
    """WAZZA_HEADERS_TIMEOUT_SECONDS: a connection's request line and headers must arrive within
    this long of its start or of its previous answer; an idle keep-alive connection is closed
    after it too."""
    max_connections: int = 512
    """WAZZA_MAX_CONNECTIONS: open connections past this get a 503 and are closed at once (under
    the 1,024 descriptors a process gets by default, with room for the broker's)."""
    max_body_bytes_in_flight: int = 64 * 1024 * 1024
    """WAZZA_MAX_BODY_BYTES_IN_FLIGHT: body bytes the requests being read may hold together;
    past it a request gets a 503 before its body is read (a 512 MiB pod keeps its headroom)."""
    allowed_networks: tuple[Network, ...] = ()
    """WAZZA_ALLOWED_IPS: CIDRs allowed to call; empty allows everyone."""
    trusted_proxies: tuple[Network, ...] = ()
    """WAZZA_TRUSTED_PROXIES: peers whose X-Forwarded-For is believed."""
    publish_timeout_seconds: float = 3.0
    """WAZZA_PUBLISH_TIMEOUT_SECONDS: longest wait for the broker's ack before answering 503."""
    retry_after_seconds: int = 5
    """WAZZA_RETRY_AFTER_SECONDS: the Retry-After sent with a 503."""
    bootstrap_servers: str = "localhost:9092"
    """KAFKA_BOOTSTRAP_SERVERS."""
    enable_idempotence: bool = True
    """KAFKA_ENABLE_IDEMPOTENCE: on for Apache Kafka; off for the local broker, which refuses it."""
    linger_ms: int = 0
    """KAFKA_LINGER_MS: extra wait to fill a batch. 0: batches close at the end of each event-loop
    turn, which already gathers every request that arrived meanwhile; a timer adds latency
    (asyncio's timers are coarse: 1 ms costs about 3 ms) and, measured, no throughput."""
    raw_topic: str = contract.RAW_TOPIC
    """WAZZA_RAW_TOPIC."""
    quarantine_topic: str = contract.QUARANTINE_TOPIC
    """WAZZA_QUARANTINE_TOPIC."""
    webhook_path: str = "/api/webhooks/wazza"
    """WAZZA_WEBHOOK_PATH: where the sender posts."""
    instance_id: str = ""
    """WAZZA_INSTANCE_ID: names this process in record headers and logs; host:pid by default."""
    log_requests: bool = True
    """WAZZA_LOG_REQUESTS: one JSON line per request outcome on stdout."""
    kafka_security: KafkaSecurity = PLAINTEXT
    """KAFKA_SECURITY_PROTOCOL, KAFKA_SSL_*, KAFKA_SASL_*: how the producer reaches the brokers
    (wazza_hooks/kafka_client.py)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> IngestSettings:
        """Read and validate; raises ConfigError naming the variable at fault."""
        env = Env(environ)
        wazza = env.secrets("WAZZA_WEBHOOK_SECRETS")
        standard = env.secrets("WAZZA_STANDARD_WEBHOOK_SECRETS")
        if not wazza and not standard:
            raise ConfigError(
                "WAZZA_WEBHOOK_SECRETS is required: the secret(s) registered with Wazza, "
                "comma-separated"
            )
        for secret in wazza:
            _check_strength(secret)
        for secret in standard:
            try:
                decode_standard_secret(secret.reveal())
            except ValueError as exc:
                raise ConfigError(f"WAZZA_STANDARD_WEBHOOK_SECRETS: {exc}") from None
        max_body = env.integer(
            "WAZZA_MAX_BODY_BYTES", 1024 * 1024, minimum=1024, maximum=64 * 1024 * 1024
        )
        in_flight = env.integer(
            "WAZZA_MAX_BODY_BYTES_IN_FLIGHT", 64 * 1024 * 1024, minimum=1024, maximum=2**40
        )
        if in_flight < max_body:
            raise ConfigError(
                "WAZZA_MAX_BODY_BYTES_IN_FLIGHT must be at least WAZZA_MAX_BODY_BYTES "
                f"({max_body}), got {in_flight}"
            )
        path = env.text("WAZZA_WEBHOOK_PATH", "/api/webhooks/wazza")
        if not path.startswith("/"):
            raise ConfigError(f"WAZZA_WEBHOOK_PATH must start with '/', got {path!r}")
        return cls(
            wazza_secrets=wazza,
            standard_secrets=standard,
            allow_legacy_signature=env.flag("WAZZA_ALLOW_LEGACY_SIGNATURE", False),
            tolerance_seconds=env.integer(
                "WAZZA_SIGNATURE_TOLERANCE_SECONDS", 300, minimum=1, maximum=86_400
            ),
            max_body_bytes=max_body,
            body_timeout_seconds=env.number(
                "WAZZA_BODY_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=_SENDER_DEADLINE_SECONDS
            ),
            headers_timeout_seconds=env.number(
                "WAZZA_HEADERS_TIMEOUT_SECONDS", 10.0, minimum=1.0, maximum=300.0
            ),
            max_connections=env.integer("WAZZA_MAX_CONNECTIONS", 512, minimum=1, maximum=1_000_000),
            max_body_bytes_in_flight=in_flight,
            allowed_networks=env.networks("WAZZA_ALLOWED_IPS"),
            trusted_proxies=env.networks("WAZZA_TRUSTED_PROXIES"),
            publish_timeout_seconds=env.number(
                "WAZZA_PUBLISH_TIMEOUT_SECONDS",
                3.0,
                minimum=0.05,
                # Never at or past the sender's deadline: it would time out before our 503.
                maximum=_SENDER_DEADLINE_SECONDS - 0.5,
            ),
            retry_after_seconds=env.integer(
                "WAZZA_RETRY_AFTER_SECONDS", 5, minimum=1, maximum=3600
            ),
            bootstrap_servers=env.text("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            enable_idempotence=env.flag("KAFKA_ENABLE_IDEMPOTENCE", True),
            linger_ms=env.integer("KAFKA_LINGER_MS", 0, minimum=0, maximum=1000),
            raw_topic=env.text("WAZZA_RAW_TOPIC", contract.RAW_TOPIC),
            quarantine_topic=env.text("WAZZA_QUARANTINE_TOPIC", contract.QUARANTINE_TOPIC),
            webhook_path=path,
            instance_id=env.text("WAZZA_INSTANCE_ID", default_instance_id()),
            log_requests=env.flag("WAZZA_LOG_REQUESTS", True),
            kafka_security=KafkaSecurity.from_env(environ),
        )

    def verifier_config(self) -> VerifierConfig:
        """The verification part, with secrets turned into HMAC keys."""
        return VerifierConfig(
            wazza_secrets=tuple(s.reveal().encode() for s in self.wazza_secrets),
            standard_secrets=tuple(
                decode_standard_secret(s.reveal()) for s in self.standard_secrets
            ),
            tolerance_seconds=self.tolerance_seconds,
            allow_legacy=self.allow_legacy_signature,
        )


def _check_strength(secret: Secret) -> None:
    """Refuse a WAZZA_WEBHOOK_SECRETS entry that is short or a known placeholder; the message
    names the variable and the rule, never the value."""
    value = secret.reveal()
    if value.strip().lower() in PLACEHOLDER_SECRETS:
        raise ConfigError(
            "WAZZA_WEBHOOK_SECRETS holds a placeholder value from an example: set the secret "
            "registered with Wazza (at least 24 random bytes)"
        )
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"WAZZA_WEBHOOK_SECRETS holds a secret of {len(value.encode())} bytes: each must be "
            f"at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
        )
