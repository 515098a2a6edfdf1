"""Reading configuration from the environment, once, at a service's edge.

Each service builds one frozen settings object with these helpers; a bad value raises
`ConfigError` naming the variable, and the service stops with that message. Inner modules take
plain arguments and never read the environment.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from typing import Final

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


def whole_number(lowest: int, highest: int, unit: str = "") -> Callable[[str], int]:
    """An argparse `type` for a whole number from `lowest` to `highest` (`unit` names what is
    counted in the refusal, e.g. "workers"). Every command's bounded options use this one."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lowest <= value <= highest:
            what = f" {unit}" if unit else ""
            raise argparse.ArgumentTypeError(
                f"{value}: choose between {lowest} and {highest}{what}"
            )
        return value

    return parse


def decimal_number(lowest: float, highest: float, note: str = "") -> Callable[[str], float]:
    """An argparse `type` for a number from `lowest` to `highest` (`note` follows the range in
    the refusal, e.g. " (a share: 0.1 = 10 %)")."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not lowest <= value <= highest:
            raise argparse.ArgumentTypeError(
                f"{text} must be between {lowest:g} and {highest:g}{note}"
            )
        return value

    return parse


def port_argument(lowest: int = 0, note: str = "") -> Callable[[str], int]:
    """An argparse `type` for a port number from `lowest` to 65535 (`note` follows the range
    in the refusal, e.g. "; 0: none")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
        if not lowest <= value <= 65535:
            raise argparse.ArgumentTypeError(f"{value} is not a port number ({lowest}-65535{note})")
        return value

    return parse


def redact_url(url: str) -> str:
    """The URL without its password, in the user part or in a `password=` parameter (in any
    case): the one redactor every log line and message that names a store goes through."""
    hidden = re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", url)
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", hidden)


class Secret:
    """A secret value that never shows itself in a repr, a log line or an error message."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value: Final = value

    def reveal(self) -> str:
        """The secret itself; call only where it is used (HMAC keys)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Env:
    """Typed access to an environment mapping; every error names the variable."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if environ is None else environ

    def text(self, name: str, default: str) -> str:
        """A string; an empty value means the default."""
        value = self._env.get(name, "").strip()
        return value or default

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        """An integer within [minimum, maximum]."""
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        """A number within [minimum, maximum]."""
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not minimum <= value <= maximum:  # also refuses nan
            raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {raw}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        """A boolean: true/false, yes/no, on/off, 1/0."""
        raw = self._env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")

    def items(self, name: str) -> list[str]:
        """A comma-separated list; blanks are dropped."""
        return [item.strip() for item in self._env.get(name, "").split(",") if item.strip()]

    def secrets(self, name: str) -> tuple[Secret, ...]:
        """Comma-separated secrets. Never echoes a value in an error."""
        return tuple(Secret(item) for item in self.items(name))

    def secret(self, name: str) -> Secret | None:
        """One secret, taken whole (commas and spaces are part of a password); None when unset
        or empty. Never echoes the value in an error."""
        value = self._env.get(name, "")
        return Secret(value) if value.strip() else None

    def networks(self, name: str) -> tuple[Network, ...]:
        """Comma-separated IP addresses or CIDR blocks."""
        nets: list[Network] = []
        for item in self.items(name):
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(f"{name}: {item!r} is not an IP address or CIDR block") from None
        return tuple(nets)


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`1 attempt`, `5 attempts`: a count and its noun (`many` where the plural is not noun+s),
    for messages people read."""
    return f"{count} {noun}" if count == 1 else f"{count} {many or noun + 's'}"


def version() -> str:
    """This installation's version (the package metadata), for `--version`."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("wazza-hooks")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def default_instance_id() -> str:
    """host:pid, which tells replicas and worker processes apart in headers and logs."""
    return f"{socket.gethostname()}:{os.getpid()}"
