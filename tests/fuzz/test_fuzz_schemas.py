"""Property tests of the request schema (issue 9, part 3; cluster/schemas.py).

Random JSON payloads never raise anything but pydantic's ValidationError, and get the same verdict as JSON
text and as parsed JSON; valid requests round-trip through JSON unchanged.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cluster.serve.schemas import BatchLinkRequest, Filters, LinkRequest

SETTINGS = settings(max_examples=100, deadline=None)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
field_names = st.sampled_from(
    [
        "mention",
        "context",
        "image",
        "top_k",
        "filters",
        "explain",
        "mentions",
        "has_image",
        "name",
        "entity_ids",
        "topk",
    ]
) | st.text(max_size=8)
payloads = json_values | st.dictionaries(field_names, json_values, max_size=6)

filters = st.builds(
    Filters,
    has_image=st.none() | st.booleans(),
    name=st.none() | st.text(max_size=40),
    entity_ids=st.none() | st.lists(st.text(max_size=10), max_size=5),
)
mentions = st.fixed_dictionaries(
    {"mention": st.text(min_size=1, max_size=40)},
    optional={
        "context": st.text(max_size=60),
        "image": st.none() | st.text(max_size=40),
        "top_k": st.none() | st.integers(1, 100),
        "explain": st.booleans(),
        "filters": st.none() | filters.map(lambda f: f.model_dump()),
    },
)


@SETTINGS
@given(payload=payloads)
def test_random_payloads_only_ever_fail_validation(payload):
    for model in (LinkRequest, BatchLinkRequest, Filters):
        try:
            model.model_validate(payload)
        except ValidationError as err:
            assert err.errors(), "a ValidationError always lists what failed"


@SETTINGS
@given(payload=payloads)
def test_json_text_and_parsed_json_get_the_same_verdict(payload):
    """The HTTP layer validates the raw body, tests often validate dicts: both must accept the same requests
    (as equal models) and refuse the same ones (naming the same fields)."""
    import json

    text = json.dumps(payload)
    for model in (LinkRequest, BatchLinkRequest, Filters):
        try:
            from_text = model.model_validate_json(text)
        except ValidationError as err:
            from_text = sorted(e["loc"] for e in err.errors())
        try:
            from_dict = model.model_validate(json.loads(text))
        except ValidationError as err:
            from_dict = sorted(e["loc"] for e in err.errors())
        assert from_text == from_dict, (model.__name__, text)


@SETTINGS
@given(body=mentions)
def test_valid_requests_round_trip(body):
    request = LinkRequest.model_validate(body)
    assert LinkRequest.model_validate_json(request.model_dump_json()) == request
    assert LinkRequest.model_validate(request.model_dump()) == request
    for key, value in body.items():
        dumped = request.model_dump()[key]
        assert dumped == value


@SETTINGS
@given(items=st.lists(mentions, min_size=1, max_size=5))
def test_valid_batches_round_trip_and_keep_order(items):
    batch = BatchLinkRequest.model_validate({"mentions": items})
    assert [m.mention for m in batch.mentions] == [i["mention"] for i in items]
    assert BatchLinkRequest.model_validate_json(batch.model_dump_json()) == batch


@SETTINGS
@given(body=mentions, extra=st.text(min_size=1, max_size=8))
def test_an_unknown_field_is_always_refused_by_name(body, extra):
    if extra in LinkRequest.model_fields:
        return
    try:
        LinkRequest.model_validate({**body, extra: 1})
    except ValidationError as err:
        assert any(e["type"] == "extra_forbidden" and e["loc"] == (extra,) for e in err.errors())
    else:
        raise AssertionError(f"unknown field {extra!r} was accepted")
