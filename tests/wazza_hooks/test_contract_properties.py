"""Properties of the contract's fast paths: each gives what the plain reading gives, for any input.

The depth check skips its walk when the raw body has few `{` and `[` bytes; the walk itself stops
at the limit. Both are compared here with the full walk they replaced, on generated JSON nested
around the limit, with strings full of brackets (which add to the count without nesting)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from wazza_hooks import contract
from wazza_hooks.contract import MAX_DEPTH, ContractError, RawEnvelope


def full_walk_deeper_than(value: Any, limit: int) -> bool:
    """The reference: every container visited, the deepest level compared with the limit."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children)
    return False


# Strings made mostly of the bytes the shortcut counts, and of what escapes them.
bracket_text = st.text(alphabet='{}[]"\\:, aé', max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | bracket_text
)
shallow = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(bracket_text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def nested(draw: st.DrawFn) -> Any:
    """A JSON value wrapped in up to MAX_DEPTH + 3 containers, each with shallow siblings: the
    depth lands on both sides of the limit."""
    value = draw(shallow)
    for _ in range(draw(st.integers(0, MAX_DEPTH + 3))):
        siblings = draw(st.lists(shallow, max_size=2))
        if draw(st.booleans()):
            value = [*siblings, value] if draw(st.booleans()) else [value, *siblings]
        else:
            value = {**{f"s{i}[": s for i, s in enumerate(siblings)}, draw(bracket_text): value}
    return value


event_types = st.sampled_from(
    [contract.JOB_COMPLETED, contract.JOB_FAILED, contract.JOB_PROCESSING, "job.cancelled"]
)
timestamps = st.none() | st.sampled_from(
    ["2025-10-22T10:30:00Z", "0001-01-01T00:00:00+01:00", "1969-12-31T23:59:59Z", "soon", ""]
)
numbers = st.none() | st.integers(-5, 10**13) | st.floats(-1, 150) | st.booleans() | bracket_text


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """An event body: a nested payload beside the fields `inapplicable` reads."""
    doc: dict[str, Any] = {"event": draw(event_types), "jobId": "job_abc123"}
    doc[draw(st.sampled_from(["output", "error", "metadata", "progress"]))] = draw(nested())
    if (moment := draw(timestamps)) is not None:
        doc["timestamp"] = moment
    if draw(st.booleans()):
        doc["progress"] = {
            "percent": draw(numbers),
            "estimatedTimeRemaining": draw(numbers),
            "stage": draw(bracket_text),
        }
    return doc


@settings(max_examples=400, deadline=None)
@given(value=nested(), limit=st.integers(0, MAX_DEPTH + 2))
def test_the_bounded_walk_agrees_with_the_full_walk(value: Any, limit: int) -> None:
    assert contract._deeper_than(value, limit) == full_walk_deeper_than(value, limit)


@settings(max_examples=400, deadline=None)
@given(doc=bodies(), indent=st.booleans())
def test_the_byte_count_shortcut_gives_the_full_walks_verdict(
    doc: dict[str, Any], indent: bool
) -> None:
    body = orjson.dumps(doc, option=orjson.OPT_INDENT_2 if indent else 0)
    event_type = doc["event"]
    parsed = orjson.loads(body)
    deep = full_walk_deeper_than(parsed, MAX_DEPTH)

    with_body = contract.check_body(parsed, event_type, body)
    without_body = contract.check_body(parsed, event_type)

    assert with_body == without_body
    assert (with_body[0] == "too_deep") == deep
    assert contract.inapplicable(parsed, event_type, body) == with_body[0]
    if not deep:
        assert with_body[1] == contract.parse_time_ms(parsed.get("timestamp"))


HEADER_NAMES = [
    contract.H_EVENT_TYPE,
    contract.H_EVENT_ID,
    contract.H_RECEIVED_AT_MS,
    contract.H_SIGNATURE_TIMESTAMP,
    contract.H_CONTENT_TYPE,
    contract.H_INGESTER,
    contract.H_SIGNATURE_SCHEME,
    contract.H_QUARANTINE_REASON,
]
header_values = (
    st.none()
    | st.binary(max_size=8)
    | st.integers(-5, 2**54).map(lambda n: str(n).encode())
    | st.text(max_size=300).map(str.encode)
)


@settings(max_examples=500, deadline=None)
@given(headers=st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_values), max_size=10))
def test_any_headers_read_as_an_envelope_that_round_trips_or_as_a_contract_error(
    headers: list[tuple[str, bytes]],
) -> None:
    try:
        envelope = RawEnvelope.from_headers(headers)
    except ContractError:
        return
    last = dict(headers)
    assert envelope.event_type == last[contract.H_EVENT_TYPE].decode()
    assert envelope.received_at_ms == int(last[contract.H_RECEIVED_AT_MS])
    assert RawEnvelope.from_headers(envelope.to_headers()) == envelope
