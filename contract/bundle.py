"""The model bundle contract: what a bundle directory holds and how its manifest is checked.

A bundle (DESIGN.md, "Contracts": model bundle) is a directory with ``manifest.json``, the
ONNX graphs of one or more models (their large tensors stored once, as ONNX external data, in
one ``weights.bin`` that several graphs point into), and the side tables (``users.parquet``,
``items.parquet``) a service needs to featurise a request from ids alone. This module owns
the manifest's schema (version :data:`MANIFEST_VERSION`), the fixed graph interfaces of each
model kind, and :func:`read_manifest`, which validates a manifest and the files it names
(sha256) and raises :class:`BundleError` naming the file and the field at fault. It never
loads a graph: the runtime does that, and then checks each graph's actual inputs and
outputs against :func:`expected_io`.

Model kinds and their graphs (``B`` rows, ``C`` candidates; both dynamic):

``q_network`` (DRL-Rec teacher or student; a cached-state ranker):
- ``request(buffer f32[B,m,E], mask bool[B,m], user_ctx i64[B,U], cand_item i64[B,C,I],
  request_list i64[B,C,Lr]) -> state_part f32[B,W], item_part f32[B,C,W]``: once per
  request; ``state_part`` is the state half of the first MLP layer (``W_s s_t + b``),
  ``item_part`` the half of it from every candidate's item fields and from the list fields
  that are fixed for the request (``contract.features.REQUEST_LIST_SOURCES``).
- ``score(state_part, item_part, slot_list i64[B,C,Ls]) -> q f32[B,C]``: once per position,
  ``slot_list`` the list fields that change with the slot (``SLOT_LIST_SOURCES``).
- ``step(buffer, mask, user_ctx, impression_ids i64[B,N]) -> next_buffer, next_mask,
  state_part``: once per placed item: encode the impression, shift it into the window, re-run
  the state and its first-layer half.

``actor`` (the MMRF WatchTime actor, METHODS.md "MMRF"; a cached-state ranker with
q_network's graph layout): the score of a candidate is the dot product of the main agent's
continuous action with the candidate's item vector, ``<a^N(s_t), tanh(W_v a_t)>``.
- ``request(buffer, mask, user_ctx, cand_item, request_list) -> action f32[B,D], item_part
  f32[B,C,D]``: ``action`` is ``a^N`` computed from the state through the agents' state
  embeddings, the attention (or MMRF-CO's concatenation) and every auxiliary actor;
  ``item_part`` the item vectors' pre-tanh projection of the item fields and the per-request
  list fields.
- ``score(action, item_part, slot_list) -> score f32[B,C]``: ``sum_d action_d tanh(item_part
  + W_v^slot a_slot)_d``; the per-slot list fields enter the item vector as for q_network.
- ``step(buffer, mask, user_ctx, impression_ids) -> next_buffer, next_mask, action``.
Its manifest entry carries ``reward_scale`` (``cap`` > 0 seconds, ``quantile`` in (0, 1],
``mean``, ``std`` seconds, ``count``): the watch-time scale of training
(``training/mmrf/rewards.py``: the reward is ``min(watch_time / cap, 1)``).

``pointwise`` (a stateless scorer, e.g. the feedback-weighted Wide&Deep):
- ``request(user_ctx, cand_item, request_list) -> state_part f32[B,W], item_part
  f32[B,C,W], item_bias f32[B,C]``; ``score(state_part, item_part, item_bias, slot_list) ->
  q``.

Here ``U``, ``I``, ``Lr``, ``Ls`` are the user+context, item, per-request list and per-slot
list field counts of the manifest's feature spec, ``N = U + I + Lr + Ls``, ``m`` the memory,
``E`` the encoding size, ``W`` the first hidden width and ``D`` the actor's action width
(``action_dim``), all given in each model's ``dims``.
The state ``mask`` is always a suffix (the window fills from its newest end), which the graphs
may rely on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.features import REQUEST_LIST_SOURCES, SLOT_LIST_SOURCES, FeatureSpec

MANIFEST_VERSION = "1"
MANIFEST_FILE = "manifest.json"
KINDS = ("q_network", "actor", "pointwise")
#: Fields of an actor's ``reward_scale`` (training/mmrf/rewards.py ``RewardScale``).
REWARD_SCALE_FIELDS = ("cap", "quantile", "mean", "std", "count")
SIDE_TABLES = ("users", "items")
DTYPES = ("float32", "int64", "bool")


class BundleError(ValueError):
    """A bundle breaks the contract; the message names the file and the field at fault."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type and shape (ints, or names of dynamic
    dimensions such as ``"B"``)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    file: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }


@dataclass(frozen=True)
class ModelSpec:
    """One servable model of a bundle (an arm's ranker)."""

    name: str
    kind: str
    model_version: str
    dims: dict[str, int]
    graphs: dict[str, GraphSpec]
    params: int
    bytes: int
    flops_per_request: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    reward_scale: dict[str, float] = field(default_factory=dict)
    """An actor's watch-time scale (:data:`REWARD_SCALE_FIELDS`); empty for other kinds."""

    @property
    def stateful(self) -> bool:
        return "step" in self.graphs


@dataclass(frozen=True)
class Manifest:
    bundle_version: str
    spec: FeatureSpec
    models: dict[str, ModelSpec]
    side_tables: dict[str, dict[str, Any]]
    dataset: dict[str, Any]
    created: dict[str, Any]
    raw: dict[str, Any]

    @property
    def state_schema_version(self) -> str:
        """Changes whenever a cached session state could mean something else to the graphs:
        session-state keys carry it, so a reload never feeds an old state to a new graph."""
        return str(self.raw["state_schema_version"])


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


BATCH_DIM = "B"
"""The graphs' batch dimension (requests per call); ``C`` is the candidates of a request."""


def expected_io(kind: str, dims: dict[str, int]) -> dict[str, tuple[list[TensorSpec], ...]]:
    """The fixed interface of each graph of ``kind``: ``{graph: (inputs, outputs)}``.

    ``dims`` needs ``n_user_ctx``, ``n_item``, ``n_list_request``, ``n_list_slot``; ``hidden``
    for ``q_network`` and ``pointwise``, ``action_dim`` for ``actor``; ``memory`` and
    ``enc_dim`` for the stateful kinds (``q_network``, ``actor``). Raises BundleError on an
    unknown kind or a missing dimension.
    """
    if kind not in KINDS:
        raise BundleError(f"model kind {kind!r} is not one of {KINDS}")
    need = ["n_user_ctx", "n_item", "n_list_request", "n_list_slot"]
    need += ["action_dim"] if kind == "actor" else ["hidden"]
    if kind != "pointwise":
        need += ["memory", "enc_dim"]
    missing = [k for k in need if k not in dims]
    if missing:
        raise BundleError(f"model of kind {kind!r}: dims lack {missing}")
    u, i = dims["n_user_ctx"], dims["n_item"]
    w = dims["action_dim"] if kind == "actor" else dims["hidden"]
    lr, ls = dims["n_list_request"], dims["n_list_slot"]
    t = TensorSpec
    user_ctx = t("user_ctx", "int64", ("B", u))
    cand_item = t("cand_item", "int64", ("B", "C", i))
    # The actor's state half is its action and its output a score, not a Q value: the same
    # layout under names that say so (runtime/lists.py routes tensors by name).
    state_part = t("action" if kind == "actor" else "state_part", "float32", ("B", w))
    item_part = t("item_part", "float32", ("B", "C", w))
    request_list = t("request_list", "int64", ("B", "C", lr))
    slot_list = t("slot_list", "int64", ("B", "C", ls))
    q = t("score" if kind == "actor" else "q", "float32", ("B", "C"))
    if kind == "pointwise":
        item_bias = t("item_bias", "float32", ("B", "C"))
        return {
            "request": ([user_ctx, cand_item, request_list], [state_part, item_part, item_bias]),
            "score": ([state_part, item_part, item_bias, slot_list], [q]),
        }
    m, e = dims["memory"], dims["enc_dim"]
    buffer = t("buffer", "float32", ("B", m, e))
    mask = t("mask", "bool", ("B", m))
    return {
        "request": ([buffer, mask, user_ctx, cand_item, request_list], [state_part, item_part]),
        "score": ([state_part, item_part, slot_list], [q]),
        "step": (
            [buffer, mask, user_ctx, t("impression_ids", "int64", ("B", u + i + lr + ls))],
            [
                t("next_buffer", "float32", ("B", m, e)),
                t("next_mask", "bool", ("B", m)),
                state_part,
            ],
        ),  # fmt: skip
    }


def _get(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise BundleError(f"{where}: field {key!r} is missing")
    v = d[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise BundleError(f"{where}: field {key!r} has {type(v).__name__} {v!r}, expected {typ}")
    return v


def _tensor(d: dict[str, Any], where: str) -> TensorSpec:
    name = _get(d, "name", str, where)
    dtype = _get(d, "dtype", str, f"{where} {name}")
    if dtype not in DTYPES:
        raise BundleError(f"{where} {name}: field 'dtype' is {dtype!r}, not one of {DTYPES}")
    shape = _get(d, "shape", list, f"{where} {name}")
    return TensorSpec(name, dtype, tuple(shape))


def _model(name: str, d: dict[str, Any], src: str, spec: FeatureSpec) -> ModelSpec:
    where = f"{src}: models.{name}"
    kind = _get(d, "kind", str, where)
    dims = {k: int(v) for k, v in _get(d, "dims", dict, where).items()}
    lists = spec.group("list")
    want_dims = {
        "n_user_ctx": len(spec.group("user")) + len(spec.group("context")),
        "n_item": len(spec.group("item")),
        "n_list_request": sum(f.source in REQUEST_LIST_SOURCES for f in lists),
        "n_list_slot": sum(f.source in SLOT_LIST_SOURCES for f in lists),
    }
    for k, v in want_dims.items():
        if dims.get(k) != v:
            raise BundleError(
                f"{where}.dims: field {k!r} is {dims.get(k)!r} but the bundle's feature spec "
                f"{spec.version} has {v}"
            )
    expected = expected_io(kind, dims)
    graphs_raw = _get(d, "graphs", dict, where)
    graphs: dict[str, GraphSpec] = {}
    for g, (ins, outs) in expected.items():
        if g not in graphs_raw:
            raise BundleError(f"{where}.graphs: graph {g!r} is missing")
        gd = graphs_raw[g]
        gw = f"{where}.graphs.{g}"
        spec_g = GraphSpec(
            file=_get(gd, "file", str, gw),
            sha256=_get(gd, "sha256", str, gw),
            inputs=tuple(_tensor(x, f"{gw}.inputs") for x in _get(gd, "inputs", list, gw)),
            outputs=tuple(_tensor(x, f"{gw}.outputs") for x in _get(gd, "outputs", list, gw)),
        )
        for role, got, want in (("inputs", spec_g.inputs, ins), ("outputs", spec_g.outputs, outs)):
            if list(got) != want:
                raise BundleError(
                    f"{gw}.{role}: {[t.to_dict() for t in got]} differ from the {kind} "
                    f"interface {[t.to_dict() for t in want]}"
                )
        graphs[g] = spec_g
    extra = set(graphs_raw) - set(expected)
    if extra:
        raise BundleError(f"{where}.graphs: unknown graphs {sorted(extra)} for kind {kind!r}")
    scale: dict[str, float] = {}
    if kind == "actor" or "reward_scale" in d:
        scale = _reward_scale(_get(d, "reward_scale", dict, where), f"{where}.reward_scale")
    return ModelSpec(
        name=name,
        kind=kind,
        model_version=_get(d, "model_version", str, where),
        dims=dims,
        graphs=graphs,
        params=_get(d, "params", int, where),
        bytes=_get(d, "bytes", int, where),
        flops_per_request=int(d.get("flops_per_request", 0)),
        training=dict(d.get("training", {})),
        metrics=dict(d.get("metrics", {})),
        reward_scale=scale,
    )


def _reward_scale(d: dict[str, Any], where: str) -> dict[str, float]:
    """An actor's watch-time scale: every field of :data:`REWARD_SCALE_FIELDS`, finite,
    ``cap > 0``, ``0 < quantile <= 1``, ``std >= 0``, ``count >= 1``."""
    out: dict[str, float] = {}
    for k in REWARD_SCALE_FIELDS:
        v = _get(d, k, (int, float), where)
        if isinstance(v, bool) or not math.isfinite(v):
            raise BundleError(f"{where}: field {k!r} is {v!r}, expected a finite number")
        out[k] = v
    bad = {
        "cap": out["cap"] <= 0,
        "quantile": not 0 < out["quantile"] <= 1,
        "std": out["std"] < 0,
        "count": out["count"] < 1,
    }
    for k, is_bad in bad.items():
        if is_bad:
            raise BundleError(f"{where}: field {k!r} is {out[k]!r}, out of range (cap > 0, "
                              f"0 < quantile <= 1, std >= 0, count >= 1)")  # fmt: skip
    return out


def parse_manifest(raw: dict[str, Any], source: str = MANIFEST_FILE) -> Manifest:
    """Validate a manifest dict (no file access); raises BundleError naming the field."""
    version = _get(raw, "manifest_version", str, source)
    if version != MANIFEST_VERSION:
        raise BundleError(
            f"{source}: field 'manifest_version' is {version!r}; this code reads "
            f"{MANIFEST_VERSION!r}"
        )
    try:
        spec = FeatureSpec.from_dict(_get(raw, "feature_spec", dict, source))
    except (ValueError, KeyError) as e:
        raise BundleError(f"{source}: field 'feature_spec': {e}") from None
    order = [f.group for f in spec.fields]
    want = sorted(order, key=["user", "context", "item", "list"].index)
    if order != want:
        bad = next(f.name for f, g, w in zip(spec.fields, order, want, strict=True) if g != w)
        raise BundleError(
            f"{source}: field 'feature_spec': fields must come grouped as user, context, item, "
            f"list (the graphs' input layout); {bad!r} is out of place"
        )
    _get(raw, "state_schema_version", str, source)
    models_raw = _get(raw, "models", dict, source)
    if not models_raw:
        raise BundleError(f"{source}: field 'models' is empty")
    models = {n: _model(n, d, source, spec) for n, d in models_raw.items()}
    if "weights" in raw:
        _get(_get(raw, "weights", dict, source), "file", str, f"{source}: weights")
        _get(raw["weights"], "sha256", str, f"{source}: weights")
    tables = _get(raw, "side_tables", dict, source)
    for t in SIDE_TABLES:
        td = _get(tables, t, dict, f"{source}: side_tables")
        _get(td, "file", str, f"{source}: side_tables.{t}")
        _get(td, "sha256", str, f"{source}: side_tables.{t}")
    return Manifest(
        bundle_version=_get(raw, "bundle_version", str, source),
        spec=spec,
        models=models,
        side_tables=tables,
        dataset=dict(raw.get("dataset", {})),
        created=dict(raw.get("created", {})),
        raw=raw,
    )


def bundle_files(m: Manifest) -> dict[str, str]:
    """Every file the manifest names -> its expected sha256."""
    files = {t["file"]: t["sha256"] for t in m.side_tables.values()}
    if "weights" in m.raw:
        files[m.raw["weights"]["file"]] = m.raw["weights"]["sha256"]
    for model in m.models.values():
        files.update({g.file: g.sha256 for g in model.graphs.values()})
    return files


def read_manifest(directory: str | Path, verify_hashes: bool = True) -> Manifest:
    """Read, validate and (by default) hash-check a bundle directory's manifest and files.

    Raises BundleError naming the file and the field: a missing or malformed manifest, a
    missing file, a sha256 that differs, a graph interface that differs from its kind's.
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{path}: missing (is {directory} a bundle directory?)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    m = parse_manifest(raw, str(path))
    if verify_hashes:
        for name, want in bundle_files(m).items():
            f = directory / name
            if not f.is_file():
                raise BundleError(f"{f}: missing (named by {path})")
            got = sha256_file(f)
            if got != want:
                raise BundleError(
                    f"{f}: sha256 {got[:16]}... differs from the manifest's {want[:16]}..."
                )
    return m
