"""Sending webhooks the way Wazza does: the spec's payloads, signed, posted, answered.

Shared by `send-test` and `simulate`. The payload builders and `sign` are pure; `post` makes one
HTTP attempt and turns every way it can fail into an `Answer` (never an exception), so that the
callers decide what is retried and what stops the run.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

DEFAULT_URL = "http://127.0.0.1:8080/api/webhooks/wazza"
# Where `wazza-hooks dev` (and so `make run`) keeps its generated secret, relative to the folder
# it runs in: devstack.dev_secret(Path("var")).
DEV_SECRET_FILE = Path("var") / "dev-secret"
# The sender's spec: "Return 200 status within 5 seconds"; an answer later than that is none.
ANSWER_TIMEOUT_SECONDS = 5.0

JOB_COMPLETED = "job.completed"
JOB_FAILED = "job.failed"
JOB_PROCESSING = "job.processing"
EVENT_TYPES = (JOB_COMPLETED, JOB_FAILED, JOB_PROCESSING)


class SenderError(Exception):
    """Root of the sender tools' errors: a one-line message for the terminal, exit 1."""


@dataclass(frozen=True, slots=True)
class SecretChoice:
    """The signing secret and where it came from (never the value in messages)."""

    value: str
    """The secret itself."""
    source: str
    """`--secret`, `$WAZZA_WEBHOOK_SECRETS`, `$WAZZA_WEBHOOK_SECRET` or the file's path."""


def resolve_secret(
    given: str | None,
    environ: Mapping[str, str] | None = None,
    dev_file: Path | None = DEV_SECRET_FILE,
) -> SecretChoice:
    """`--secret`, else the first of $WAZZA_WEBHOOK_SECRETS, else $WAZZA_WEBHOOK_SECRET (the
    spec's name), else the development secret `wazza-hooks dev` keeps (unless `dev_file` is
    None); raises SenderError."""
    env = os.environ if environ is None else environ
    if given is not None:
        if not given.strip():
            raise SenderError("--secret is empty")
        return SecretChoice(given.strip(), "--secret")
    for name in ("WAZZA_WEBHOOK_SECRETS", "WAZZA_WEBHOOK_SECRET"):
        first = next((s.strip() for s in env.get(name, "").split(",") if s.strip()), None)
        if first is not None:
            return SecretChoice(first, f"${name}")
    if dev_file is None:
        raise SenderError("no secret: pass --secret or set WAZZA_WEBHOOK_SECRETS")
    try:
        text = dev_file.read_text().strip()
    except FileNotFoundError:
        raise SenderError(
            f"no secret: pass --secret, set WAZZA_WEBHOOK_SECRETS, or run from the folder where "
            f"`make run` keeps {DEV_SECRET_FILE} (not found: {dev_file.absolute()})"
        ) from None
    except OSError as exc:
        raise SenderError(f"cannot read the secret file {dev_file}: {exc.strerror}") from None
    if not text:
        raise SenderError(f"the secret file {dev_file} is empty")
    return SecretChoice(text, str(dev_file))


def check_url(url: str) -> str:
    """The URL if it is an http(s) URL with a host; raises SenderError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SenderError(f"not an http(s) URL with a host: {url!r}")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise SenderError(f"bad port in URL {url!r}") from None
    return url


# --- payloads (the spec's examples, field for field) -------------------------------------------


def iso_seconds(unix_seconds: float) -> str:
    """The spec's timestamp format: `2025-10-22T10:30:00Z` (UTC, whole seconds)."""
    return datetime.fromtimestamp(int(unix_seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def processing_event(
    job_id: str, percent: int, stage: str, eta_seconds: int, at: float
) -> dict[str, Any]:
    """A `job.processing` body as in the spec."""
    return {
        "event": JOB_PROCESSING,
        "jobId": job_id,
        "status": "processing",
        "progress": {"percent": percent, "stage": stage, "estimatedTimeRemaining": eta_seconds},
        "timestamp": iso_seconds(at),
    }


def completed_event(
    job_id: str, output: Mapping[str, Any], metadata: Mapping[str, Any], at: float
) -> dict[str, Any]:
    """A `job.completed` body as in the spec."""
    return {
        "event": JOB_COMPLETED,
        "jobId": job_id,
        "status": "completed",
        "output": dict(output),
        "metadata": dict(metadata),
        "timestamp": iso_seconds(at),
    }


def failed_event(job_id: str, code: str, message: str, at: float) -> dict[str, Any]:
    """A `job.failed` body as in the spec."""
    return {
        "event": JOB_FAILED,
        "jobId": job_id,
        "status": "failed",
        "error": {"code": code, "message": message},
        "timestamp": iso_seconds(at),
    }


def spec_example(event_type: str, job_id: str, at: float, percent: int = 45) -> dict[str, Any]:
    """The spec's example of `event_type` for `job_id` at time `at` (send-test's event)."""
    if event_type == JOB_COMPLETED:
        return completed_event(
            job_id,
            {
                "url": f"https://cdn.wazza.ai/outputs/{job_id}.mp4",
                "width": 1920,
                "height": 1080,
                "duration": 10,
                "format": "mp4",
            },
            {"provider": "openai", "model": "sora-2-pro", "creditsUsed": 15},
            at,
        )
    if event_type == JOB_FAILED:
        return failed_event(
            job_id, "CONTENT_POLICY_VIOLATION", "Content violates safety policy", at
        )
    if event_type == JOB_PROCESSING:
        eta = round(300 * (100 - percent) / 55)  # the spec's 45 % -> 300 s, scaled
        return processing_event(job_id, percent, "rendering", eta, at)
    raise ValueError(f"unknown event type {event_type!r}")


def encode(document: Mapping[str, Any]) -> bytes:
    """The body bytes of an event (compact JSON; these exact bytes are signed and hashed)."""
    return orjson.dumps(document)


def overridden(body: bytes, fields: Mapping[str, Any]) -> tuple[bytes, list[str]]:
    """A user's payload with `fields` set (`progress.percent` reaches into `progress`), and the
    names of those that changed it. The body comes back byte for byte when none did: a payload
    is signed and sent as the user wrote it, never re-serialised without need. Raises
    SenderError when the body is not a JSON object."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SenderError(f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        if not fields:
            return body, []
        raise SenderError(
            f"a JSON {type(document).__name__}, not an object: {', '.join(fields)} cannot be set"
        )
    changed = []
    for name, value in fields.items():
        into, key = document, name
        if name == "progress.percent":
            progress = document.get("progress")
            if not isinstance(progress, dict):
                progress = document["progress"] = {}
            into, key = progress, "percent"
        same = key in into and into[key] == value and type(into[key]) is type(value)
        if not same:  # 45 == 45.0 and 1 == True: a change of type is a change
            into[key] = value
            changed.append(name)
    return (encode(document) if changed else body), changed


def sign(secret: bytes, body: bytes, timestamp: int) -> dict[str, str]:
    """The request headers of the Wazza scheme: hex HMAC-SHA256 over `<timestamp>.<raw body>`."""
    mac = hmac.new(secret, b"%d." % timestamp, hashlib.sha256)
    mac.update(body)
    return {
        "Content-Type": "application/json",
        "X-Wazza-Timestamp": str(timestamp),
        "X-Wazza-Signature": mac.hexdigest(),
    }


# --- one attempt --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """What one delivery attempt got back."""

    status: int | None
    """The HTTP status; None when no answer came (refused, reset, timed out)."""
    body: bytes
    """The answer's body (empty without an answer)."""
    seconds: float
    """From sending to the end of the answer (or to giving up on it)."""
    problem: str | None = None
    """Why no answer came: `timeout`, or the connection error, in a few words."""

    @property
    def ok(self) -> bool:
        """True for a 2xx."""
        return self.status is not None and 200 <= self.status < 300

    def reason(self) -> str | None:
        """The `error` code of a JSON refusal body (`invalid_signature`, ...), if any."""
        try:
            doc = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None
        value = doc.get("error") if isinstance(doc, dict) else None
        return value if isinstance(value, str) else None

    def quarantined(self) -> bool:
        """True for the ingester's 202 that kept the body aside instead of publishing it."""
        if self.status != 202:
            return False
        try:
            doc = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return False
        return isinstance(doc, dict) and "quarantined" in doc


async def post(
    session: aiohttp.ClientSession,
    url: str,
    secret: bytes,
    body: bytes,
    limits: aiohttp.ClientTimeout,
    now: float | None = None,
) -> Answer:
    """One signed POST of `body`, signed at `now` (default: the clock, so each retry is signed
    afresh). Every failure comes back as an Answer."""
    stamp = int(time.time() if now is None else now)
    headers = sign(secret, body, stamp)
    started = time.perf_counter()
    try:
        async with session.post(url, data=body, headers=headers, timeout=limits) as resp:
            answer = await resp.read()
            return Answer(resp.status, answer, time.perf_counter() - started)
    except TimeoutError:
        return Answer(None, b"", time.perf_counter() - started, "timeout")
    except aiohttp.ClientConnectorError as exc:
        return Answer(None, b"", time.perf_counter() - started, _connect_problem(exc))
    except aiohttp.ClientError as exc:
        return Answer(None, b"", time.perf_counter() - started, type(exc).__name__)


def _connect_problem(exc: aiohttp.ClientConnectorError) -> str:
    inner = exc.os_error
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    return str(inner.strerror or inner) if inner is not None else str(exc)


def print_answer(answer: Answer, prefix: str) -> int:
    """Print an answer as `send-test` and `resend` do: `HTTP STATUS PHRASE`, then its body on
    stdout; for a non-2xx, a hint on stderr after `prefix` (the command's own, as its other
    messages). The exit code: 0 for a 2xx, else 1."""
    try:
        phrase = HTTPStatus(answer.status or 0).phrase
    except ValueError:
        phrase = ""
    print(f"HTTP {answer.status} {phrase}".rstrip())
    print(answer.body.decode(errors="replace"))
    if answer.ok:
        return 0
    hint = refusal_hint(answer)
    print(f"{prefix}: {hint or 'not accepted (non-2xx)'}", file=sys.stderr)
    return 1


def refusal_hint(answer: Answer) -> str | None:
    """A sentence for an answer no retry can change (wrong secret, clock, path, address)."""
    reason = answer.reason()
    if answer.status == 401 and reason == "stale_timestamp":
        return (
            "the ingester says the signature timestamp is outside its tolerance: "
            "this machine's clock and the ingester's disagree"
        )
    if answer.status == 401:
        return (
            f"the ingester refused the signature ({reason or '401'}): the secret is not one it "
            "accepts (check --secret, WAZZA_WEBHOOK_SECRETS, or ./var/dev-secret of `make run`)"
        )
    if answer.status == 403:
        return "the ingester refused this address (403): it is not in WAZZA_ALLOWED_IPS"
    if answer.status == 404:
        return "nothing takes webhooks at this path (404): check the URL's path"
    if answer.status == 405:
        return "this URL does not take POST (405): check the URL"
    return None


def describe(answer: Answer) -> str:
    """`HTTP 200` / `no answer (timeout)`, for messages."""
    if answer.status is None:
        return f"no answer ({answer.problem})"
    return f"HTTP {answer.status}"
