"""The ingester's settings: read once from a mapping, validated, and secret-safe."""

from __future__ import annotations

import base64
import ipaddress
import traceback

import pytest

from ingest.settings import IngestSettings
from wazza_hooks import contract
from wazza_hooks.config import ConfigError, Secret

SECRET = "wazza-secret-do-not-leak-4f1c"
NEXT_SECRET = "wazza-next-secret-do-not-leak-9a2e"
STD_KEY = b"standard-key-do-not-leak-7d3b"
STD_PAYLOAD = base64.b64encode(STD_KEY).decode()
STD_SECRET = "whsec_" + STD_PAYLOAD
SECRET_TEXTS = [SECRET, NEXT_SECRET, STD_SECRET, STD_PAYLOAD]


def env(**overrides: str) -> dict[str, str]:
    base = {"WAZZA_WEBHOOK_SECRETS": SECRET}
    base.update(overrides)
    return base


def test_defaults_apply_when_only_the_secret_is_set() -> None:
    settings = IngestSettings.from_env(env())

    assert settings.wazza_secrets == (Secret(SECRET),)
    assert settings.standard_secrets == ()
    assert settings.allow_legacy_signature is False
    assert settings.tolerance_seconds == 300
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.allowed_networks == ()
    assert settings.trusted_proxies == ()
    assert settings.publish_timeout_seconds == 3.0
    assert settings.retry_after_seconds == 5
    assert settings.bootstrap_servers == "localhost:9092"
    assert settings.enable_idempotence is True
    assert settings.raw_topic == contract.RAW_TOPIC == "wazza.webhooks.raw"
    assert settings.quarantine_topic == contract.QUARANTINE_TOPIC == "wazza.webhooks.quarantine"
    assert settings.webhook_path == "/api/webhooks/wazza"
    assert settings.instance_id


def test_settings_are_frozen() -> None:
    settings = IngestSettings.from_env(env())

    with pytest.raises(AttributeError):
        settings.tolerance_seconds = 1  # type: ignore[misc]


def test_several_comma_separated_secrets_keep_their_order() -> None:
    settings = IngestSettings.from_env(env(WAZZA_WEBHOOK_SECRETS=f" {SECRET} ,{NEXT_SECRET},"))

    assert [s.reveal() for s in settings.wazza_secrets] == [SECRET, NEXT_SECRET]
    assert settings.verifier_config().wazza_secrets == (SECRET.encode(), NEXT_SECRET.encode())


def test_values_from_the_environment_replace_the_defaults() -> None:
    settings = IngestSettings.from_env(
        env(
            WAZZA_SIGNATURE_TOLERANCE_SECONDS="60",
            WAZZA_PUBLISH_TIMEOUT_SECONDS="4.5",
            WAZZA_ALLOWED_IPS="52.89.214.238, 34.212.75.30,54.218.53.128 ,52.32.178.7",
            WAZZA_TRUSTED_PROXIES="10.0.0.0/8",
            WAZZA_ALLOW_LEGACY_SIGNATURE="yes",
            KAFKA_ENABLE_IDEMPOTENCE="off",
            WAZZA_STANDARD_WEBHOOK_SECRETS=STD_SECRET,
            WAZZA_WEBHOOK_PATH="/hooks",
        )
    )

    assert settings.tolerance_seconds == 60
    assert settings.publish_timeout_seconds == 4.5
    assert settings.allowed_networks == tuple(
        ipaddress.ip_network(f"{ip}/32")
        for ip in ["52.89.214.238", "34.212.75.30", "54.218.53.128", "52.32.178.7"]
    )
    assert settings.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)
    assert settings.allow_legacy_signature is True
    assert settings.enable_idempotence is False
    assert settings.webhook_path == "/hooks"


def test_the_verifier_config_carries_the_decoded_keys_and_the_tolerance() -> None:
    settings = IngestSettings.from_env(
        env(
            WAZZA_STANDARD_WEBHOOK_SECRETS=STD_SECRET,
            WAZZA_SIGNATURE_TOLERANCE_SECONDS="120",
            WAZZA_ALLOW_LEGACY_SIGNATURE="true",
        )
    )

    config = settings.verifier_config()

    assert config.wazza_secrets == (SECRET.encode(),)
    assert config.standard_secrets == (STD_KEY,)
    assert config.tolerance_seconds == 120
    assert config.allow_legacy is True


@pytest.mark.parametrize("secrets", [None, "", " ", " , ,"])
def test_missing_secrets_are_an_error_naming_wazza_webhook_secrets(secrets: str | None) -> None:
    environ = {} if secrets is None else {"WAZZA_WEBHOOK_SECRETS": secrets}

    with pytest.raises(ConfigError, match="WAZZA_WEBHOOK_SECRETS"):
        IngestSettings.from_env(environ)


BAD_VALUES = [
    ("WAZZA_SIGNATURE_TOLERANCE_SECONDS", "five"),
    ("WAZZA_SIGNATURE_TOLERANCE_SECONDS", "300.5"),
    ("WAZZA_SIGNATURE_TOLERANCE_SECONDS", "0"),
    ("WAZZA_SIGNATURE_TOLERANCE_SECONDS", "-300"),
    ("WAZZA_PUBLISH_TIMEOUT_SECONDS", "5"),
    ("WAZZA_PUBLISH_TIMEOUT_SECONDS", "4.6"),
    ("WAZZA_PUBLISH_TIMEOUT_SECONDS", "30"),
    ("WAZZA_PUBLISH_TIMEOUT_SECONDS", "0"),
    ("WAZZA_PUBLISH_TIMEOUT_SECONDS", "nan"),
    ("WAZZA_PUBLISH_TIMEOUT_SECONDS", "inf"),
    ("WAZZA_PUBLISH_TIMEOUT_SECONDS", "soon"),
    ("WAZZA_MAX_BODY_BYTES", "1mb"),
    ("WAZZA_MAX_BODY_BYTES", "10"),
    ("WAZZA_RETRY_AFTER_SECONDS", "0"),
    ("KAFKA_LINGER_MS", "-1"),
    ("WAZZA_ALLOWED_IPS", "52.89.214.238/33"),
    ("WAZZA_ALLOWED_IPS", "52.89.214.238, wazza.ai"),
    ("WAZZA_TRUSTED_PROXIES", "10.0.0.0/8, 10.0.0.300"),
    ("WAZZA_ALLOW_LEGACY_SIGNATURE", "maybe"),
    ("KAFKA_ENABLE_IDEMPOTENCE", "2"),
    ("WAZZA_LOG_REQUESTS", "enabled"),
    ("WAZZA_STANDARD_WEBHOOK_SECRETS", "whsec_not base64!"),
    ("WAZZA_STANDARD_WEBHOOK_SECRETS", "whsec_"),
    ("WAZZA_WEBHOOK_PATH", "api/webhooks/wazza"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_a_bad_value_is_a_config_error_naming_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        IngestSettings.from_env(env(**{name: value}))

    assert name in str(caught.value)


def test_a_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_the_publish_timeout_may_not_reach_the_senders_five_second_deadline() -> None:
    with pytest.raises(ConfigError, match="WAZZA_PUBLISH_TIMEOUT_SECONDS"):
        IngestSettings.from_env(env(WAZZA_PUBLISH_TIMEOUT_SECONDS="4.99"))


def test_no_secret_appears_in_the_repr_of_the_settings() -> None:
    settings = IngestSettings.from_env(
        env(
            WAZZA_WEBHOOK_SECRETS=f"{SECRET},{NEXT_SECRET}",
            WAZZA_STANDARD_WEBHOOK_SECRETS=STD_SECRET,
        )
    )

    text = f"{settings!r} {settings!s} {settings.wazza_secrets!r} {settings.standard_secrets!s}"

    for secret in SECRET_TEXTS:
        assert secret not in text


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_no_secret_appears_in_any_config_error(name: str, value: str) -> None:
    environ = env(WAZZA_WEBHOOK_SECRETS=f"{SECRET},{NEXT_SECRET}")
    if name != "WAZZA_STANDARD_WEBHOOK_SECRETS":
        environ["WAZZA_STANDARD_WEBHOOK_SECRETS"] = STD_SECRET
    environ[name] = value

    with pytest.raises(ConfigError) as caught:
        IngestSettings.from_env(environ)

    report = "".join(traceback.format_exception(caught.value))
    for secret in SECRET_TEXTS:
        assert secret not in report


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(f"whsec_{SECRET}!", id="not-base64"),
        pytest.param(f"whsec_{STD_PAYLOAD.rstrip('=')}", id="missing-padding"),
        pytest.param(f"{STD_SECRET},whsec_{NEXT_SECRET}$", id="second-of-two"),
    ],
)
def test_a_malformed_standard_secret_is_refused_without_echoing_it(bad: str) -> None:
    with pytest.raises(ConfigError, match="WAZZA_STANDARD_WEBHOOK_SECRETS") as caught:
        IngestSettings.from_env(env(WAZZA_STANDARD_WEBHOOK_SECRETS=bad))

    report = "".join(traceback.format_exception(caught.value))
    for secret in [*SECRET_TEXTS, STD_PAYLOAD.rstrip("=")]:
        assert secret not in report


def test_standard_secrets_alone_are_enough_to_start() -> None:
    settings = IngestSettings.from_env({"WAZZA_STANDARD_WEBHOOK_SECRETS": STD_SECRET})

    assert settings.wazza_secrets == ()
    assert settings.verifier_config().standard_secrets == (STD_KEY,)


def test_an_empty_value_means_the_default() -> None:
    settings = IngestSettings.from_env(
        env(WAZZA_SIGNATURE_TOLERANCE_SECONDS="", WAZZA_WEBHOOK_PATH="  ")
    )

    assert settings.tolerance_seconds == 300
    assert settings.webhook_path == "/api/webhooks/wazza"
