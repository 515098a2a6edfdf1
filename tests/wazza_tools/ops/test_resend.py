"""`wazza-hooks resend`, run as a person runs it, against a real ingester on the real broker: a
stored event posted again with its exact body and a fresh Wazza signature is answered 200 and
lands on the raw topic again, with the same event id; a secret the ingester refuses is exit 1
with the hint; every refusal is one line."""

from __future__ import annotations

import time

from tests.support.commands import hooks
from tests.support.env import SECRET, subprocess_env
from tests.support.ingesters import deliver, serving, warm_up
from tests.support.kafka import Topics, read_topic
from tests.support.ops import one_line_refusal
from tests.support.signing import completed_body
from wazza_hooks import contract
from wazza_tools.dev.localbroker import LocalBroker


async def test_a_stored_event_is_posted_again_with_its_exact_body_freshly_signed(
    broker: LocalBroker, topics: Topics
) -> None:
    body = completed_body("job_resent")
    env = subprocess_env(
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        WAZZA_RAW_TOPIC=topics.raw,
        WAZZA_QUARANTINE_TOPIC=topics.quarantine,
        WAZZA_DLQ_TOPIC=topics.dlq,
        STAGING_SECRET=SECRET,
        WRONG_SECRET="not-the-secret",
    )
    async with serving(broker.bootstrap_servers, topics) as url:
        await warm_up(url)
        assert (await deliver(url, body))[0] == 200
        [stored] = [
            r
            for r in await read_topic(broker.bootstrap_servers, topics.raw, expect=2)
            if r.value == body
        ]
        event_id = contract.headers_dict(stored.headers)[contract.H_EVENT_ID].decode()
        started = int(time.time())

        sent = await hooks(
            "resend", event_id, "--url", url, "--secret-env", "STAGING_SECRET", env=env
        )

        assert sent.code == 0, sent
        assert sent.out == 'HTTP 200 OK\n{"received":true}\n'
        assert sent.err == (
            f"resending {topics.raw}:{stored.partition}:{stored.offset} (job.completed, job "
            f"job_resent, {len(body)} bytes) to {url}, secret from $STAGING_SECRET; the copy "
            "gets the same id\n"
        )
        copies = [
            r
            for r in await read_topic(broker.bootstrap_servers, topics.raw, expect=3)
            if r.value == body
        ]
        assert len(copies) == 2
        again = contract.headers_dict(copies[1].headers)
        assert (copies[1].key, copies[1].partition) == (b"job_resent", stored.partition)
        assert again[contract.H_EVENT_ID].decode() == event_id
        assert int(again[contract.H_SIGNATURE_TIMESTAMP]) >= started

        refused = await hooks(
            "resend",
            f"{topics.raw}:{stored.partition}:{stored.offset}",
            "--url",
            url,
            "--secret-env",
            "WRONG_SECRET",
            env=env,
        )
        assert refused.code == 1, refused
        assert refused.out.startswith("HTTP 401 Unauthorized\n")
        assert refused.err.splitlines()[-1].startswith(
            "wazza-hooks: the ingester refused the signature (invalid_signature)"
        )

    no_secret = one_line_refusal(
        await hooks("resend", event_id, "--url", url, "--secret-env", "UNSET_SECRET", env=env), 2
    )
    assert no_secret == "wazza-hooks: --secret-env UNSET_SECRET: $UNSET_SECRET is not set or empty"
    unknown = one_line_refusal(
        await hooks("resend", "0" * 64, "--url", url, "--secret-env", "STAGING_SECRET", env=env)
    )
    assert unknown.startswith(f"wazza-hooks: no event {'0' * 64}: read ")
    # As send-test: the line saying what is sent, then why it did not arrive.
    gone = await hooks("resend", event_id, "--url", url, "--secret-env", "STAGING_SECRET", env=env)
    assert gone.code == 1, gone
    assert gone.out == ""
    assert gone.err.splitlines()[0].startswith("resending ")
    assert gone.err.splitlines()[1] == f"wazza-hooks: no answer from {url}: connection refused"
    assert len(gone.err.splitlines()) == 2
    bad_url = one_line_refusal(
        await hooks("resend", event_id, "--url", "localhost:8080", env=env), 2
    )
    assert bad_url == "wazza-hooks: --url: not an http(s) URL with a host: 'localhost:8080'"
