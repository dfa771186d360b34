"""Load a model bundle for serving: verify it, open its graphs, featurise its side tables.

:func:`load_bundle` is the one way a bundle enters a process (the service at start and on
reload, training's online evaluation of exported bundles, the benchmarks). Everything that
can fail fails here, at load time, never per request (STYLE.md 5): the manifest and every
file's sha256 (:func:`contract.bundle.read_manifest`), each graph's actual inputs and outputs
against the manifest, the side tables' columns, and a warm-up call through every graph.

ONNX Runtime sessions (:func:`session_options`): these graphs are small (kilo- to
mega-FLOPs per call), so a call costs more in thread hand-offs than in arithmetic. One intra-op
thread, sequential execution and full graph optimisation measured fastest on this machine
(``benchmarks/bundle_cost.py`` times the alternatives and saves the comparison); the service
scales over cores with processes, not threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

from contract.bundle import (
    BATCH_DIM,
    BundleError,
    Manifest,
    ModelSpec,
    TensorSpec,
    read_manifest,
)
from contract.features import (
    FeatureSpec,
    ListFieldEncoder,
    field_ids,
    group_ids,
    side_table_columns,
)
from contract.schema import ITEM_TABLE_SCHEMA, USER_TABLE_SCHEMA, check_columns

__all__ = ["Bundle", "LoadedModel", "SideTables", "load_bundle", "session_options"]

_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "bool": "tensor(bool)"}
_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(threads: int = 1, optimization: str = "all") -> ort.SessionOptions:
    """Session options for small ranking graphs: ``threads`` intra-op threads (1 by default:
    see the module docstring), one inter-op thread, sequential execution, no spinning.
    Raises ValueError on an unknown optimisation level."""
    if optimization not in _OPT_LEVELS:
        raise ValueError(f"optimization={optimization!r}: one of {sorted(_OPT_LEVELS)}")
    if threads < 1:
        raise ValueError(f"threads={threads} must be >= 1")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = _OPT_LEVELS[optimization]
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


@dataclass(frozen=True)
class SideTables:
    """The bundle's users and items, featurised once by the bundle's feature spec.

    Lookups by raw id use sorted arrays and ``searchsorted``. An unknown user gets the fields
    computed from the id alone (the hashed ``user_id``) and 0 ("unknown") elsewhere; an unknown
    item likewise gets its hashed ``item_id``, tag 0 and author -1: exactly what training's
    featurisation gives ids missing from its side tables, so serving and training agree.
    """

    spec: FeatureSpec
    user_ids: np.ndarray  # (U,) sorted raw ids
    user_f: np.ndarray  # (U, n_user)
    item_ids: np.ndarray  # (N,) sorted raw ids
    item_f: np.ndarray  # (N, n_item)
    item_tag: np.ndarray  # (N,) raw tag
    item_author: np.ndarray  # (N,) raw author

    @classmethod
    def read(cls, spec: FeatureSpec, users_path: Path, items_path: Path) -> SideTables:
        """Raises BundleError naming the file and column when a table breaks the contract.

        The tables need the columns :func:`contract.features.side_table_columns` names for
        ``spec``; those the contract's schemas also name (ids, tag, author, the default
        fields' columns) must have the contract's types, a declared field's column may have
        any type its kind reads."""
        users, items = pq.read_table(users_path), pq.read_table(items_path)
        user_cols, item_cols = side_table_columns(spec)
        try:
            for table, needed, contract, path in (
                (users, user_cols, USER_TABLE_SCHEMA, users_path),
                (items, item_cols, ITEM_TABLE_SCHEMA, items_path),
            ):
                typed = pa.schema([contract.field(c) for c in needed if c in contract.names])
                check_columns(table.schema, typed, str(path))
        except ValueError as e:
            raise BundleError(str(e)) from None
        u = {n: users.column(n).to_numpy(zero_copy_only=False) for n in users.column_names}
        i = {n: items.column(n).to_numpy(zero_copy_only=False) for n in items.column_names}
        for path, cols, group in ((users_path, u, "user"), (items_path, i, "item")):
            need = [f.source for f in spec.group(group) if f.source not in cols]  # type: ignore[arg-type]
            if need:
                raise BundleError(f"{path}: columns {need} are read by the spec's {group} fields")
        uo, io = np.argsort(u["user_id"], kind="stable"), np.argsort(i["item_id"], kind="stable")
        for path, ids in ((users_path, u["user_id"]), (items_path, i["item_id"])):
            if len(np.unique(ids)) != len(ids):
                raise BundleError(f"{path}: column 'user_id'/'item_id' has duplicate ids")
        return cls(
            spec=spec,
            user_ids=u["user_id"][uo].astype(np.int64),
            user_f=group_ids(spec, "user", {k: v[uo] for k, v in u.items()}),
            item_ids=i["item_id"][io].astype(np.int64),
            item_f=group_ids(spec, "item", {k: v[io] for k, v in i.items()}),
            item_tag=i["tag"][io].astype(np.int64),
            item_author=i["author_raw"][io].astype(np.int64),
        )

    @staticmethod
    def _rows(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(sorted_ids, ids)
        pos_c = np.minimum(pos, max(len(sorted_ids) - 1, 0))
        if not len(sorted_ids):
            return np.full(np.shape(ids), -1, dtype=np.int64)
        return np.where(sorted_ids[pos_c] == ids, pos_c, -1)

    def users(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(B, n_user)`` field ids and ``(B,)`` known flags of raw user ids."""
        rows = self._rows(self.user_ids, user_ids)
        known = rows >= 0
        f = self.user_f[np.maximum(rows, 0)]
        if not known.all():
            f[~known] = _from_id(self.spec, "user", np.asarray(user_ids)[~known])
        return f, known

    def user_with(self, user_id: int, raw: dict[str, int]) -> np.ndarray:
        """``(1, n_user)`` ids of one user whose raw profile values in ``raw`` (by field name)
        replace the table's. Raises KeyError naming a name that is not a user field, or the
        id field itself."""
        f, _ = self.users(np.array([user_id], dtype=np.int64))
        fields = self.spec.group("user")
        names = {fl.name: j for j, fl in enumerate(fields)}
        for name, value in raw.items():
            j = names.get(name)
            if j is None or fields[j].source == "user_id":
                settable = [n for n, k in names.items() if fields[k].source != "user_id"]
                raise KeyError(f"user feature {name!r} is not one of {settable}")
            f[0, j] = field_ids(fields[j], np.array([value]))[0]
        return f

    def items(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Field ids ``(..., n_item)``, tag, author and known flags of raw item ids."""
        rows = self._rows(self.item_ids, item_ids)
        known = rows >= 0
        r = np.maximum(rows, 0)
        f = self.item_f[r]
        tag = self.item_tag[r]
        author = self.item_author[r]
        if not known.all():
            unknown = ~known
            f[unknown] = _from_id(self.spec, "item", np.asarray(item_ids)[unknown])
            tag[unknown] = 0
            author[unknown] = -1
        return f, tag, author, known


def _from_id(spec: FeatureSpec, group: str, ids: np.ndarray) -> np.ndarray:
    """``(n, n_group)`` ids of raw ids missing from their table: the fields read from the id
    itself (``user_id``/``item_id``), 0 (unknown) for every other field."""
    key = "user_id" if group == "user" else "item_id"
    fields = spec.group(group)  # type: ignore[arg-type]
    out = np.zeros((len(ids), len(fields)), dtype=np.int64)
    for j, f in enumerate(fields):
        if f.source == key:
            out[:, j] = field_ids(f, ids)
    return out


@dataclass
class LoadedModel:
    """One model of a bundle: its manifest entry and an ONNX Runtime session per graph."""

    spec: ModelSpec
    sessions: dict[str, ort.InferenceSession]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def stateful(self) -> bool:
        return self.spec.stateful

    @property
    def memory(self) -> int:
        return self.spec.dims.get("memory", 0)

    @property
    def enc_dim(self) -> int:
        return self.spec.dims.get("enc_dim", 0)

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[graph].run(None, feeds)


@dataclass
class Bundle:
    """A verified, loaded bundle: manifest, models by name, featurised side tables and the
    spec's list-field encoder (built once here, used by every request)."""

    path: Path
    manifest: Manifest
    models: dict[str, LoadedModel]
    tables: SideTables
    list_encoder: ListFieldEncoder
    batch_size: int | None = None
    """The batch size the graphs were loaded for (None: any)."""

    @property
    def spec(self) -> FeatureSpec:
        return self.manifest.spec

    @property
    def version(self) -> str:
        return self.manifest.bundle_version

    def model(self, name: str) -> LoadedModel:
        try:
            return self.models[name]
        except KeyError:
            raise KeyError(f"bundle {self.version} has no model {name!r}; it has "
                           f"{sorted(self.models)}") from None  # fmt: skip


def _check_io(path: Path, sess: ort.InferenceSession, want: tuple[TensorSpec, ...], role: str,
              fixed: dict[str, int]) -> None:  # fmt: skip
    got = sess.get_inputs() if role == "inputs" else sess.get_outputs()
    got_desc = [(a.name, a.type, [d if isinstance(d, int) else "?" for d in a.shape]) for a in got]
    want_desc = [
        (t.name, _ORT_TYPES[t.dtype], [d if isinstance(d, int) else "?" for d in t.shape])
        for t in want
    ]
    if fixed:  # a fixed dimension reads as its value, or "?" where inference did not reach
        for (_, _, gs), t in zip(got_desc, want, strict=False):
            for j, d in enumerate(t.shape):
                if d in fixed and j < len(gs) and gs[j] == fixed[d]:
                    gs[j] = "?"
    if got_desc != want_desc:
        raise BundleError(f"{path}: graph {role} {got_desc} differ from the manifest's {want_desc}")


def load_bundle(
    path: str | Path,
    *,
    models: list[str] | None = None,
    threads: int = 1,
    optimization: str = "all",
    verify_hashes: bool = True,
    warm: bool = True,
    batch_size: int | None = None,
) -> Bundle:
    """Load and verify a bundle directory; only ``models`` (default: all) get sessions.

    ``batch_size`` fixes the graphs' batch dimension ``B`` (onnxruntime's free-dimension
    override): with the batch size known, the optimiser folds the graphs' shape arithmetic
    into constants (the student's step graph: 82 nodes -> 50, about 20% less time a call).
    The service ranks one request at a time and loads with ``batch_size=1``; the simulator's
    batched policies leave it None (any B). :func:`runtime.lists.build_lists` refuses other
    batch sizes with a RankingInputError.

    Raises BundleError naming the file and field: a bad manifest, a hash mismatch, a graph
    whose interface differs from the manifest's, a graph onnxruntime cannot load, a side
    table without the columns the spec reads. With ``warm``, every graph runs once on a
    small request (first-call allocation happens here, not on a user's request).
    """
    path = Path(path)
    manifest = read_manifest(path, verify_hashes=verify_hashes)
    names = list(manifest.models) if models is None else models
    unknown = [n for n in names if n not in manifest.models]
    if unknown:
        raise BundleError(
            f"{path}: models {unknown} are not in the bundle ({sorted(manifest.models)})"
        )
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    so = session_options(threads, optimization)
    fixed: dict[str, int] = {}
    if batch_size is not None:
        so.add_free_dimension_override_by_name(BATCH_DIM, batch_size)
        fixed[BATCH_DIM] = batch_size
    loaded: dict[str, LoadedModel] = {}
    for name in names:
        ms = manifest.models[name]
        sessions = {}
        for g, gs in ms.graphs.items():
            f = path / gs.file
            try:
                sess = ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own exception types
                raise BundleError(f"{f}: onnxruntime cannot load the graph ({e})") from None
            _check_io(f, sess, gs.inputs, "inputs", fixed)
            _check_io(f, sess, gs.outputs, "outputs", fixed)
            sessions[g] = sess
        loaded[name] = LoadedModel(ms, sessions)
    t = manifest.side_tables
    tables = SideTables.read(manifest.spec, path / t["users"]["file"], path / t["items"]["file"])
    try:
        encoder = ListFieldEncoder(manifest.spec)
    except KeyError as e:
        raise BundleError(f"{path / 'manifest.json'}: field 'feature_spec': {e.args[0]}") from None
    bundle = Bundle(path, manifest, loaded, tables, encoder, batch_size)
    if warm:
        from runtime.lists import warm_up

        for m in loaded.values():
            warm_up(bundle, m)
    return bundle
