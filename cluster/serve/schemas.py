"""Request and response models of the linking API (`POST /link`, `POST /link/batch`, `GET /entities/{id}`).

Every request model forbids unknown fields, so a typo such as `topk` is a 422 naming the field instead of a
silently ignored option. Size limits that depend on `ServeConfig` are checked in `cluster.serve.http`, because pydantic
models are static and the limits are per deployment.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

MAX_BATCH_CEILING = (
    1024  # hard ceiling, counted before items are validated; serve.max_batch_mentions above it has no effect
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Filters(_Strict):
    """Scalar filters pushed down to Milvus (never a raw expression: callers cannot inject Milvus syntax)."""

    has_image: StrictBool | None = None  # only entities with (true) or without (false) an image
    name: StrictStr | None = Field(default=None, max_length=512)  # exact entity name
    entity_ids: list[StrictStr] | None = Field(default=None, max_length=1000)  # restrict to these ids
    # the milvus.partition_key column's value (e.g. an entity type): Milvus searches that partition only
    partition: StrictStr | None = Field(default=None, max_length=256)

    @field_validator("name", "entity_ids")
    @classmethod
    def _utf8(cls, value):
        """JSON may carry lone surrogates (`"\\ud800"`); Milvus stores UTF-8, so such a value can match nothing."""
        for text in [value] if isinstance(value, str) else value or []:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("not valid Unicode text (lone surrogate)") from None
        return value


class MentionIn(_Strict):
    """One mention: its surface text, the sentence around it, and an optional image (base64 or URI)."""

    mention: StrictStr = Field(min_length=1)
    context: StrictStr = ""
    image: StrictStr | None = (
        None  # base64 (optionally a data: URL) or a URI: s3://, http(s)://, a local path
    )
    top_k: StrictInt | None = Field(default=None, ge=1, le=100)  # None = serve.top_k
    filters: Filters | None = None
    explain: StrictBool = False  # add MoE gate weights and per-unit scores


class LinkRequest(MentionIn):
    """`POST /link`."""


class BatchLinkRequest(_Strict):
    """`POST /link/batch`: many mentions in one request (at most serve.max_batch_mentions)."""

    mentions: list[MentionIn] = Field(min_length=1)

    @field_validator("mentions", mode="before")
    @classmethod
    def _count_first(cls, value):
        """Count before validating items: a million bad items would otherwise build a million errors first."""
        if isinstance(value, list) and len(value) > MAX_BATCH_CEILING:
            raise ValueError(f"more than {MAX_BATCH_CEILING} items (the hard ceiling)")
        return value


class UnitScores(BaseModel):
    """The three MMoE matcher units (reference section 1); the final score is their mean."""

    text: float
    image: float
    cross: float


class Candidate(BaseModel):
    entity_id: str
    name: str
    description: str
    score: float  # the raw MMoE score (unbounded)
    confidence: float  # in [0, 1]: temperature-scaled softmax over the candidates + NIL, fitted by `mel eval`
    rank: int  # 1 = best
    units: UnitScores | None = None  # with explain=true


class Explanation(BaseModel):
    """MoE routing of the mention per layer (text_intra, image_intra, cross_text, cross_image): the share of
    its tokens routed to each expert (`share`) and the mean gate weight per expert (`weight`)."""

    expert_usage: dict[str, dict[str, list[float]]]


class LinkResponse(BaseModel):
    candidates: list[Candidate]
    nil: bool  # true when the best candidate's confidence is under the NIL threshold
    nil_threshold: float | None  # in confidence units (calibrated by `mel eval`, or serve.nil_threshold)
    collection: str  # the Milvus collection that answered (the alias target at request time)
    timings_ms: dict[str, float]
    # how per-request DME went: selected | no_match | no_candidates | fallback:<why>; absent without DME
    dme: str | None = None
    explain: Explanation | None = None


class BatchLinkResponse(BaseModel):
    results: list[LinkResponse]
    timings_ms: dict[str, float]


class Entity(BaseModel):
    entity_id: str
    name: str
    description: str
    aliases: list[str] = []
    image_uris: list[str] = []
    attributes: dict[str, Any] = {}  # the KB's JSON attributes, e.g. {"type": "river"}

    @field_validator("attributes", mode="before")
    @classmethod
    def _parse_attributes(cls, value):
        """The catalog keeps the KB's JSON string; an unreadable one is shown as no attributes."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return {}
        return value if isinstance(value, dict) else {}


class EntityPage(BaseModel):
    """`GET /entities?q=&offset=&limit=`: one page of the KB browser; `total` counts every match."""

    query: str
    total: int
    offset: int
    limit: int
    entities: list[Entity]


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a message naming the offending field where there is one, and the request id."""

    error: str
    field: str | None = None
    request_id: str
