"""Registering a webhook endpoint with Wazza's API, as the spec shows it.

`POST <api base>/v1/webhooks` with `Authorization: Bearer <API key>` and the JSON body
`{"url", "events", "secret"}`; the answer is the webhook object, whose `id` is returned.
Every failure is a SenderError with one line saying what happened.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp
import orjson

from wazza_tools.send.webhooks import SenderError

DEFAULT_API_BASE = "https://api.wazza.ai"
# Wazza's API is remote; ten seconds is ample for one small POST and short enough for a human.
REGISTER_TIMEOUT_SECONDS = 10.0
# An error body is quoted in the message, cut: an HTML error page is no one-line message.
_QUOTE_CHARS = 300


async def register_webhook(
    api_base: str, api_key: str, url: str, events: Sequence[str], secret: str
) -> str:
    """Register `url` for `events`, signed with `secret`; the webhook id the API answers."""
    endpoint = f"{api_base.rstrip('/')}/v1/webhooks"
    payload = {"url": url, "events": list(events), "secret": secret}
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    limits = aiohttp.ClientTimeout(total=REGISTER_TIMEOUT_SECONDS)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                endpoint, data=orjson.dumps(payload), headers=headers, timeout=limits
            ) as resp,
        ):
            status = resp.status
            body = await resp.read()
    except TimeoutError:
        raise SenderError(
            f"no answer from {endpoint} within {REGISTER_TIMEOUT_SECONDS:g} s"
        ) from None
    except aiohttp.ClientError as exc:
        refused = isinstance(getattr(exc, "os_error", None), ConnectionRefusedError)
        problem = "connection refused" if refused else str(exc) or type(exc).__name__
        raise SenderError(f"cannot reach {endpoint}: {problem}") from None
    text = body.decode(errors="replace").strip()[:_QUOTE_CHARS]
    if status in (401, 403):
        raise SenderError(f"the API refused the key (HTTP {status}): {text}")
    if not 200 <= status < 300:
        raise SenderError(f"the API answered HTTP {status}: {text}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    webhook_id = doc.get("id") if isinstance(doc, dict) else None
    if isinstance(webhook_id, bool) or not isinstance(webhook_id, str | int) or webhook_id == "":
        raise SenderError(f"the API answered HTTP {status} without a webhook id: {text}")
    return str(webhook_id)
