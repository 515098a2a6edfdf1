"""Make good requests the way the sender does, so that a test can spoil exactly one thing.

The HMACs are computed here with `hmac`/`hashlib` alone, independently of `ingest.signature`: a
test that signed with the code under test would only prove that the code agrees with itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson

# The one timestamp in the sender's published examples (wazza-webhooks.md).
SPEC_EVENT_TIMESTAMP = "2025-10-22T10:30:00Z"
JSON = "application/json"


def wazza_hex(secret: str, message: bytes) -> str:
    """Hex HMAC-SHA256 of `message` keyed with the secret's UTF-8 bytes."""
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign_wazza(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """Headers of a request signed with the sender's scheme: hex HMAC over `<ts>.<raw body>`."""
    return {
        "X-Wazza-Timestamp": str(timestamp),
        "X-Wazza-Signature": wazza_hex(secret, f"{timestamp}.".encode() + body),
        "Content-Type": JSON,
    }


def standard_v1(secret_whsec: str, msg_id: str, body: bytes, timestamp: int) -> str:
    """The base64 Standard Webhooks v1 signature (without the `v1,` prefix)."""
    key = base64.b64decode(secret_whsec.removeprefix("whsec_"))
    content = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def sign_standard(secret_whsec: str, msg_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    """Headers of a request signed with Standard Webhooks (`webhook-*`, `v1,<base64>`)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + standard_v1(secret_whsec, msg_id, body, timestamp),
        "Content-Type": JSON,
    }


def sign_legacy(secret: str, body: bytes) -> dict[str, str]:
    """Headers of a request signed the weak legacy way: hex HMAC over the body only, no time."""
    return {"X-Wazza-Signature": wazza_hex(secret, body), "Content-Type": JSON}


def completed_body(job_id: str) -> bytes:
    """A `job.completed` body shaped like the spec's example."""
    return orjson.dumps(
        {
            "event": "job.completed",
            "jobId": job_id,
            "status": "completed",
            "output": {
                "url": "https://cdn.wazza.ai/outputs/abc123.mp4",
                "width": 1920,
                "height": 1080,
                "duration": 10,
                "format": "mp4",
            },
            "metadata": {"provider": "openai", "model": "sora-2-pro", "creditsUsed": 15},
            "timestamp": SPEC_EVENT_TIMESTAMP,
        }
    )


def failed_body(job_id: str) -> bytes:
    """A `job.failed` body shaped like the spec's example."""
    return orjson.dumps(
        {
            "event": "job.failed",
            "jobId": job_id,
            "status": "failed",
            "error": {
                "code": "CONTENT_POLICY_VIOLATION",
                "message": "Content violates safety policy",
            },
            "timestamp": SPEC_EVENT_TIMESTAMP,
        }
    )


def processing_body(job_id: str, percent: int) -> bytes:
    """A `job.processing` body shaped like the spec's example, at `percent`."""
    return orjson.dumps(
        {
            "event": "job.processing",
            "jobId": job_id,
            "status": "processing",
            "progress": {"percent": percent, "stage": "rendering", "estimatedTimeRemaining": 300},
            "timestamp": SPEC_EVENT_TIMESTAMP,
        }
    )
