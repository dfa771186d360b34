"""Data of the reports: a world's dataset (made once, recognised by content), samples, populations.

World fingerprint (:func:`world_fingerprint`): the world config with the KuaiRand folder
replaced by the sha256 of the tables' *content*, so a checkout in another folder recognises
the datasets and runs made from the same tables, and a changed table is noticed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training.data.features import Requests, SideTables, build_requests
from training.data.pipeline import Dataset, code_version
from training.data.validate import check_dataset
from training.harness.runfolder import read_json, write_json
from training.sim.config import ConfigError, WorldConfig

#: Hashed user draw of the DRL report's test sample (training.sim.rng streams).
TEST_STREAM = 7101
#: Stream of the online population draw (both reports).
ONLINE_STREAM = 11
#: Side file of a dataset made here: simulator source and world fingerprint.
SIM_SOURCE_FILE = "sim_source.json"


@functools.lru_cache(maxsize=8)
def _tables_sha(folder: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.csv")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def kuairand_tables_sha(folder: str | Path) -> str | None:
    """sha256 (16 hex) of the ``*.csv`` tables of a KuaiRand folder by name and content; None
    when the folder is missing."""
    p = Path(folder)
    files = sorted(p.glob("*.csv")) if p.is_dir() else []
    if not files:
        return None
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _tables_sha(str(p.resolve()), stamp)


def world_fingerprint(world: WorldConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The world config as JSON, ``kuairand_dir`` replaced by ``kuairand_tables`` (the
    tables' content hash; absent when the world does not read them)."""
    d = json.loads(json.dumps(world.to_dict() if isinstance(world, WorldConfig) else dict(world)))
    folder = d.pop("kuairand_dir", None)
    if d.get("kuairand", False):
        d["kuairand_tables"] = kuairand_tables_sha(folder) if folder else None
    return d


def dataset_dir(root: str | Path, world_preset: str, overrides: Sequence[tuple[str, str]],
                seed: int) -> Path:  # fmt: skip
    """``<root>/sim-<preset>[-<hash of overrides>]-s<seed>``."""
    tag = world_preset
    if overrides:
        h = hashlib.sha1(json.dumps(sorted(map(list, overrides))).encode()).hexdigest()[:8]
        tag = f"{tag}-{h}"
    return Path(root) / f"sim-{tag}-s{seed}"


def _sim_source_sha1() -> str:
    """sha1 of the simulator's source files (``training/sim/*.py``), as loaded by this process:
    a dataset made by other simulator code is noticed (``code_version`` only says dirty)."""
    h = hashlib.sha1()
    for f in sorted((Path(__file__).resolve().parents[1] / "sim").glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


SIM_SOURCE = _sim_source_sha1()


def same_world(ds: Dataset, wcfg: WorldConfig) -> bool:
    """Whether a simulated dataset is the world ``wcfg`` (by fingerprint, not by paths)."""
    if ds.meta.get("source") != "simulator" or not ds.meta.get("world"):
        return False
    side = ds.root / SIM_SOURCE_FILE
    have = read_json(side).get("world_fingerprint") if side.exists() else None
    if have is None:
        have = world_fingerprint(ds.meta["world"])
    return have == world_fingerprint(wcfg)


def ensure_dataset(
    path: Path, wcfg: WorldConfig, preset_name: str, progress: bool, log: Callable[[str], None]
) -> tuple[Dataset, dict[str, Any]]:
    """Open the dataset at ``path`` if it is the world ``wcfg``; else generate it there.

    A dataset made here carries ``sim_source.json`` (simulator source hash and world
    fingerprint); one made by other simulator code is regenerated. A dataset without the file
    (e.g. from ``ranker simulate``) is reused when its world matches; its source is unknown.
    A reused dataset is validated first (:func:`training.data.validate.check_dataset`: raises
    its DatasetValidationError), as every trainer's input is.
    """
    from training.sim.generate import generate_dataset

    side = path / SIM_SOURCE_FILE
    if (path / "dataset.json").exists():
        ds = Dataset.open(path)
        if not same_world(ds, wcfg):
            raise ConfigError(
                f"{path} holds a dataset of another world config; move it or choose --datasets"
            )
        src = read_json(side)["sim_source"] if side.exists() else None
        if src is None or src == SIM_SOURCE:
            check_dataset(path)  # a dataset on disk may have been edited: check before training
            log(f"reuse dataset {path} (simulator source {src or 'unknown'})")
            return ds, {"generated": False, "seconds": ds.meta.get("seconds"), "sim_source": src}
        log(f"dataset {path} was made by simulator source {src}, not {SIM_SOURCE}: regenerate")
    log(f"generate dataset {path}")
    t0 = time.perf_counter()
    generate_dataset(wcfg, path, progress=progress, preset_name=preset_name, overwrite=True)
    write_json(side, {"sim_source": SIM_SOURCE, "code_version": code_version(),
                      "world_fingerprint": world_fingerprint(wcfg)})  # fmt: skip
    return Dataset.open(path), {"generated": True, "seconds": time.perf_counter() - t0,
                                "sim_source": SIM_SOURCE}  # fmt: skip


def split_impressions(ds: Dataset, split: str) -> int:
    files = set(ds.meta["split"][split])
    return int(sum(s["impressions"] for s in ds.meta["shards"] if s["file"] in files))


def split_days(ds: Dataset, split: str) -> list[int]:
    files = set(ds.meta["split"][split])
    return sorted({int(s["day"]) for s in ds.meta["shards"] if s["file"] in files})


def sample_fraction(budget: int, total: int) -> float:
    """Share of a split to keep for a budget of ``budget`` impressions (0: all)."""
    return 1.0 if budget <= 0 or total <= 0 else min(1.0, budget / total)


def read_share(path: Path, key: str, fraction: float, seed: int, stream: int) -> pa.Table:
    """The rows of one shard whose ``key`` (user_id, session_id) hashes below ``fraction``."""
    from training.sim.rng import uniform

    t = pq.read_table(path)
    if fraction >= 1.0:
        return t
    keep = uniform(seed, stream, t.column(key).to_numpy()) < fraction
    return t.filter(pa.array(keep))


def read_test_sample(ds: Dataset, side: SideTables, budget: int, seed: int) -> Requests:
    """Whole sessions of a hashed random share ``budget / impressions`` of the test split's
    users (all of it for ``budget`` 0), as :class:`Requests`."""
    frac = sample_fraction(budget, split_impressions(ds, "test"))
    tables = [read_share(p, "user_id", frac, seed, TEST_STREAM) for p in ds.paths("test")]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        raise ConfigError(f"test sample of {ds.root} is empty (budget {budget})")
    return build_requests(pa.concat_tables(tables), side)


def online_population(seed: int, n_users: int, k: int) -> np.ndarray:
    """The online tests' users: ``k`` drawn at random per seed (all for ``k`` 0), sorted."""
    if not 0 < k < n_users:
        return np.arange(n_users)
    rng = np.random.default_rng([seed, ONLINE_STREAM])
    return np.sort(rng.choice(n_users, size=k, replace=False))
