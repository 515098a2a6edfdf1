"""How every Kafka client of the project connects: TLS and SASL, from the environment.

The one place that turns `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SSL_*` and `KAFKA_SASL_*` into the
keyword arguments of aiokafka's producer, consumer and admin client (`client_options()`). The
ingester, the consumers and the tools read a `KafkaSecurity` once, at their edge
(`KafkaSecurity.from_env`), and pass it down; nothing else reads these variables. The SASL
password and the key's password are `Secret`s: never in a repr, a log line or an error.
docs/kafka-security.md describes the variables and the ACLs each principal needs.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.helpers import create_ssl_context

from .config import ConfigError, Env, Secret

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
"""The values of KAFKA_SECURITY_PROTOCOL (Kafka's own names)."""
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
"""The values of KAFKA_SASL_MECHANISM: the username/password mechanisms aiokafka speaks
(GSSAPI and OAUTHBEARER need code of the deployment's own, and are not offered)."""

_TLS = ("SSL", "SASL_SSL")
_SASL = ("SASL_PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How to authenticate to the brokers and protect the connection. The default is
    PLAINTEXT: no TLS, no SASL (a development broker)."""

    protocol: str = "PLAINTEXT"
    """KAFKA_SECURITY_PROTOCOL: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    ssl_cafile: Path | None = None
    """KAFKA_SSL_CAFILE: the CA certificates (PEM) the brokers' certificates are checked
    against; unset: the system's CAs."""
    ssl_certfile: Path | None = None
    """KAFKA_SSL_CERTFILE: this client's certificate (PEM), for brokers that require one
    (mutual TLS; the certificate's subject is then the principal)."""
    ssl_keyfile: Path | None = None
    """KAFKA_SSL_KEYFILE: its private key (PEM); unset: the key is in the certificate file."""
    ssl_key_password: Secret | None = None
    """KAFKA_SSL_KEY_PASSWORD: the private key's password, when it is encrypted."""
    sasl_mechanism: str | None = None
    """KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL protocols only)."""
    sasl_username: str | None = None
    """KAFKA_SASL_USERNAME: the principal (User:<name> in ACLs)."""
    sasl_password: Secret | None = None
    """KAFKA_SASL_PASSWORD."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaSecurity:
        """Read and validate; raises ConfigError naming the variable at fault (never showing
        a password). Files are checked to exist and the TLS context is built once here, so a
        certificate or key that cannot be loaded stops the process at start."""
        env = Env(environ)
        protocol = env.text("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
        if protocol not in PROTOCOLS:
            raise ConfigError(
                f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}, got {protocol!r}"
            )
        files = {
            name: _file(env, name)
            for name in ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE")
        }
        key_password = env.secret("KAFKA_SSL_KEY_PASSWORD")
        tls_set = [name for name, path in files.items() if path is not None]
        if key_password is not None:
            tls_set.append("KAFKA_SSL_KEY_PASSWORD")
        if tls_set and protocol not in _TLS:
            raise ConfigError(
                f"{tls_set[0]} is set but KAFKA_SECURITY_PROTOCOL is {protocol}: TLS settings "
                "need SSL or SASL_SSL"
            )
        if files["KAFKA_SSL_KEYFILE"] is not None and files["KAFKA_SSL_CERTFILE"] is None:
            raise ConfigError("KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE")
        if key_password is not None and files["KAFKA_SSL_CERTFILE"] is None:
            raise ConfigError("KAFKA_SSL_KEY_PASSWORD is set without KAFKA_SSL_CERTFILE")

        mechanism_text = env.text("KAFKA_SASL_MECHANISM", "")
        username = env.text("KAFKA_SASL_USERNAME", "") or None
        password = env.secret("KAFKA_SASL_PASSWORD")
        mechanism = mechanism_text.upper() or None
        if protocol in _SASL:
            if mechanism is None:
                raise ConfigError(
                    f"KAFKA_SASL_MECHANISM is required with KAFKA_SECURITY_PROTOCOL={protocol}: "
                    f"one of {', '.join(MECHANISMS)}"
                )
            if mechanism not in MECHANISMS:
                raise ConfigError(
                    f"KAFKA_SASL_MECHANISM must be one of {', '.join(MECHANISMS)}, "
                    f"got {mechanism_text!r}"
                )
            if username is None:
                raise ConfigError(f"KAFKA_SASL_USERNAME is required with {mechanism}")
            if password is None:
                raise ConfigError(f"KAFKA_SASL_PASSWORD is required with {mechanism}")
        else:
            given = [
                name
                for name, value in (
                    ("KAFKA_SASL_MECHANISM", mechanism),
                    ("KAFKA_SASL_USERNAME", username),
                    ("KAFKA_SASL_PASSWORD", password),
                )
                if value is not None
            ]
            if given:
                raise ConfigError(
                    f"{given[0]} is set but KAFKA_SECURITY_PROTOCOL is {protocol}: SASL needs "
                    "SASL_PLAINTEXT or SASL_SSL"
                )
        security = cls(
            protocol=protocol,
            ssl_cafile=files["KAFKA_SSL_CAFILE"],
            ssl_certfile=files["KAFKA_SSL_CERTFILE"],
            ssl_keyfile=files["KAFKA_SSL_KEYFILE"],
            ssl_key_password=key_password,
            sasl_mechanism=mechanism,
            sasl_username=username,
            sasl_password=password,
        )
        security.ssl_context()  # a certificate or key that does not load: refused now
        return security

    @property
    def tls(self) -> bool:
        """True when connections are encrypted."""
        return self.protocol in _TLS

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (checking the brokers' certificates and host names), or None
        without TLS; raises ConfigError naming the file that cannot be loaded."""
        if not self.tls:
            return None
        try:
            cafile_context: ssl.SSLContext = create_ssl_context(cafile=self.ssl_cafile)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"KAFKA_SSL_CAFILE: cannot load CA certificates from {self.ssl_cafile} ({exc})"
            ) from None
        if self.ssl_certfile is None:
            return cafile_context
        password = self.ssl_key_password.reveal() if self.ssl_key_password else None
        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=self.ssl_cafile,
                certfile=self.ssl_certfile,
                keyfile=self.ssl_keyfile,
                password=password,
            )
        except (ssl.SSLError, OSError) as exc:
            # The reason from OpenSSL (a wrong password, a key that does not match), never
            # the password itself.
            raise ConfigError(
                "KAFKA_SSL_CERTFILE/KAFKA_SSL_KEYFILE: cannot load the client certificate "
                f"{self.ssl_certfile} and its key (wrong KAFKA_SSL_KEY_PASSWORD?): "
                f"{getattr(exc, 'reason', None) or type(exc).__name__}"
            ) from None
        return context

    def client_options(self) -> dict[str, Any]:
        """The keyword arguments every aiokafka client (producer, consumer, admin) gets."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = (
                self.sasl_password.reveal() if self.sasl_password else None
            )
        return options

    def describe(self) -> str:
        """A few words for a log line or a banner: the protocol and, with SASL, the mechanism
        and user (never a password)."""
        if self.sasl_mechanism is None:
            return self.protocol
        return f"{self.protocol} {self.sasl_mechanism} as {self.sasl_username}"


PLAINTEXT = KafkaSecurity()
"""No TLS, no SASL: the default, and the local broker's."""


def _file(env: Env, name: str) -> Path | None:
    text = env.text(name, "")
    if not text:
        return None
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"{name}: no such file {text!r}")
    return path
