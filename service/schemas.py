"""The HTTP API's request and response bodies (JSON, versioned under /v1).

Limits live here, at the edge (STYLE.md 6): a request that breaks one is answered 422 with
the field and the value, before any ranking work. Ids are 64-bit integers, as in the
impression log. Floats refuse NaN and infinities (JSON does not have them; Python's parser
accepts them, so the models say so).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

INT64 = 2**63 - 1
ID_SCHEMA: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": INT64}


class Strict(BaseModel):
    """Unknown fields refused; no NaN or infinities; no coercion (``"7"`` or ``true`` is not
    an id; an int is accepted where a float is asked)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class Context(Strict):
    """What the request knows about its moment."""

    timestamp_ms: int | None = Field(
        None, ge=0, le=INT64, description="Epoch milliseconds (UTC); default: now."
    )
    request_index: int | None = Field(
        None, ge=0, le=100_000,
        description="Index of the request in its session; default: the session state's count.",
    )  # fmt: skip


class ExplorationOverride(Strict):
    """Replaces the arm's exploration for this request (e.g. 0 to switch it off)."""

    epsilon: float = Field(ge=0.0, lt=1.0, description="Per-position exploration probability.")
    top_k: int = Field(3, ge=1, le=1000, description="Explored picks draw from this many best.")


class RankRequest(Strict):
    """POST /v1/rank."""

    user_id: int = Field(ge=0, le=INT64, description="The user (hashed into an A/B bucket).")
    session_id: int | None = Field(
        None, ge=0, le=INT64, description="The session; absent: the service starts one."
    )
    candidates: list[int] = Field(
        min_length=1,
        description="Matched candidate item ids (about 200), distinct.",
        json_schema_extra={"uniqueItems": True, "items": ID_SCHEMA},  # checked by the validator
    )
    k: int = Field(10, ge=1, description="List length (capped at the candidate count).")
    context: Context = Field(default_factory=Context)
    user_features: dict[str, int] | None = Field(
        None,
        description="Raw user profile values by field name (u_active, u_seg_a, ...); they "
        "override the bundle's user table for this request.",
        json_schema_extra={
            "anyOf": [{"type": "object", "additionalProperties": ID_SCHEMA}, {"type": "null"}]
        },  # fmt: skip
    )
    exploration: ExplorationOverride | None = None
    arm: str | None = Field(
        None, description="QA: force this arm (must be an arm of the experiment)."
    )

    @field_validator("candidates")
    @classmethod
    def _distinct_int64(cls, v: list[int]) -> list[int]:
        for x in v:
            if not 0 <= x <= INT64:
                raise ValueError(f"item id {x} outside [0, 2^63)")
        if len(set(v)) != len(v):
            seen: set[int] = set()
            dup = next(x for x in v if x in seen or seen.add(x))  # type: ignore[func-returns-value]
            raise ValueError(f"item id {dup} appears more than once")
        return v

    @field_validator("user_features")
    @classmethod
    def _non_negative(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        for name, x in (v or {}).items():
            if not 0 <= x <= INT64:
                raise ValueError(f"user feature {name!r}: value {x} outside [0, 2^63)")
        return v


class RankedItem(BaseModel):
    item_id: int
    position: int
    score: float
    explored: bool
    propensity: float = Field(description="P(this item at this position | earlier positions).")


class RankResponse(BaseModel):
    request_id: int
    session_id: int
    arm: str
    bucket: int = Field(description="The user's GrowthBook bucket in [0, 10000).")
    model_version: str
    bundle_version: str
    state: Literal["warm", "cold", "degraded"] = Field(
        description="warm: the session's cached state was used; cold: a new session (or an "
        "expired one); degraded: the state store failed, a cold state was served."
    )
    unknown_items: int = Field(description="Candidates missing from the bundle's item table.")
    items: list[RankedItem]


class FeedbackEvent(Strict):
    item_id: int = Field(ge=0, le=INT64)
    position: int = Field(ge=0, le=10_000, description="Where the item was shown.")
    click: int | None = Field(None, ge=0, le=1)
    like: int | None = Field(None, ge=0, le=1)
    follow: int | None = Field(None, ge=0, le=1)
    comment: int | None = Field(None, ge=0, le=1)
    hate: int | None = Field(None, ge=0, le=1)
    long_view: int | None = Field(None, ge=0, le=1)
    watch_time: float | None = Field(None, ge=0.0, le=86_400.0, description="Seconds.")
    timestamp_ms: int | None = Field(None, ge=0, le=INT64)


class FeedbackRequest(Strict):
    """POST /v1/feedback: what the user did with items of a served list."""

    request_id: int = Field(ge=0, le=INT64)
    session_id: int = Field(ge=0, le=INT64)
    user_id: int = Field(ge=0, le=INT64)
    arm: str | None = Field(None, description="The arm the rank response reported.")
    events: list[FeedbackEvent] = Field(min_length=1, max_length=1000)


class FeedbackResponse(BaseModel):
    accepted: int
    session_clicks: int | None = Field(
        description="The session's click count after these events; null if its state is gone."
    )


class ReloadRequest(Strict):
    bundle_dir: str | None = Field(None, description="Folder to load; default: the current one.")


# POST /admin/experiment's body, as ``service.bucketing.experiment_from_dict`` reads it (the
# route parses a plain object with that function; this only documents it). Beyond the schema:
# weights sum to 1, arm names are models of the bundle, override arms are arms.
EXPERIMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["seed", "arms"],
    "properties": {
        "seed": {"type": "string", "minLength": 1, "description": "Salt of the bucket hash."},
        "coverage": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0},
        "overrides": {"type": "object", "additionalProperties": {"type": "string"},
                      "description": "QA: user id (as a string) -> arm name."},
        "arms": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "weight"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "weight": {"type": "number", "minimum": 0, "maximum": 1},
                    "exploration_rate": {"type": "number", "minimum": 0, "exclusiveMaximum": 1,
                                         "default": 0.0},
                    "exploration_top_k": {"type": "integer", "minimum": 1, "default": 1},
                },
            },
        },
    },
}  # fmt: skip


class ArmInfo(BaseModel):
    name: str
    weight: float
    bucket_range: tuple[float, float]
    exploration_rate: float
    exploration_top_k: int
    model_version: str


class ModelsResponse(BaseModel):
    bundle_version: str
    bundle_dir: str
    state_schema_version: str
    experiment_seed: str
    generation: int = Field(
        0, description="Admin change this process serves (control record generation; 0: none)."
    )
    arms: list[ArmInfo]
    models: dict[str, dict]


# --- what the service answers besides 200 (declared in the OpenAPI document) -------------------


class FieldError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="Dotted path of the field at fault (``body`` for the whole).")
    value: Any = Field(description="The value sent (a summary when large).")
    message: str


class ValidationErrorBody(BaseModel):
    """422: the request does not fit its schema (one entry per fault)."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="The first fault: field, message and value.")
    errors: list[FieldError]


class ErrorBody(BaseModel):
    """A refusal by the service itself (a limit, an unknown arm, a bad token, a refused
    bundle, an unreadable or oversized body)."""

    model_config = ConfigDict(extra="forbid")

    error: str
    field: str = Field(description="The field or header at fault.")


class Ready(BaseModel):
    status: Literal["ready"]
    bundle_version: str


class NotReady(BaseModel):
    status: Literal["loading"]
