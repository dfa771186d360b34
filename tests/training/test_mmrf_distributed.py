"""MMRF under torchrun: two gloo ranks on their own shards keep equal weights, and stop together.

Each rank's weights are saved by a small script run with ``torch.distributed.run``; the test
compares them. Without the gradient averaging (training.distributed.average_gradients) the
ranks, which read different shards, would drift apart after one step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.distributed import lockstep

ROOT = Path(__file__).resolve().parents[2]

SMALL_SETS = {
    "batch_size": 32, "d_r": 4, "gru_hidden": 8, "memory": 4, "agent_dim": 8, "heads": 2,
    "action_dim": 4, "actor_hidden": (8,), "critic_mlp": (8,), "model_hidden": (8,),
    "sessions_per_chunk": 32, "model_warmup": 1, "sim_batch": 16, "max_instances": 128,
    "tscac_stage1_steps": 2,
}  # fmt: skip

SCRIPT = """
import json, sys, torch
from training.data.features import SideTables
from training.data.pipeline import Dataset
from training.distributed import init, shutdown
from training.drl.train import train
from training.mmrf.rewards import fit_reward_scale
from training.mmrf.train import MMRFConfig, make_trainer

data, out, variant_sets, flag = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
rank, world, dev = init("cpu")
ds = Dataset.open(data)
side = SideTables.from_tables(ds.users(), ds.items(), ds.spec)
tr = make_trainer(MMRFConfig().with_overrides(**variant_sets), side,
                  fit_reward_scale(ds.paths("train")))
if flag == "join":
    tr.join(rank, world)
s = train(tr, ds, progress=False, rank=rank, world_size=world)
state = {"net": tr.net.state_dict(), "target": tr.target.state_dict(),
         "model": tr.model.state_dict(), "steps": tr.step_count}
if hasattr(tr, "lam"):
    state["lam"] = tr.lam.value.clone()
torch.save(state, f"{out}/rank{rank}.pt")
shutdown(world)
"""


def _torchrun(tmp_path: Path, data: Path, sets: dict, flag: str = "join") -> list[dict]:
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(data), str(tmp_path), json.dumps(sets), flag]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def _differences(a: dict, b: dict) -> list[str]:
    out = []
    for part in ("net", "target", "model"):
        for k, v in a[part].items():
            if not torch.equal(v, b[part][k]):
                out.append(f"{part}.{k}")
    if "lam" in a and not torch.equal(a["lam"], b["lam"]):
        out.append("lam")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("variant", [{}, {"algorithm": "tscac", "non_impressions": "none"}],
                         ids=["mmrf", "tscac"])  # fmt: skip
def test_two_gloo_ranks_on_their_own_shards_keep_equal_weights(tiny_data, tmp_path, variant):
    ds = tiny_data[0]
    r0, r1 = _torchrun(tmp_path, ds.root, {**SMALL_SETS, **variant})
    assert r0["steps"] == r1["steps"] == 4  # 128 instances per rank, batches of 32
    assert _differences(r0, r1) == []
    if variant:  # TSCAC's multipliers moved by the ranks' mean distance, as one
        assert not torch.equal(r0["lam"], torch.ones_like(r0["lam"]))


@pytest.mark.slow
def test_without_averaging_the_ranks_drift_apart(tiny_data, tmp_path):
    """The control of the test above: the same two ranks without ``join`` differ."""
    ds = tiny_data[0]
    r0, r1 = _torchrun(tmp_path, ds.root, SMALL_SETS, flag="alone")
    assert len(_differences(r0, r1)) > 10


def test_lockstep_is_the_stream_itself_for_one_process():
    assert list(lockstep(iter([1, 2, 3]), world_size=1)) == [1, 2, 3]


@pytest.mark.slow
def test_ranker_mmrf_train_under_torchrun(tiny_data, tmp_path):
    ds = tiny_data[0]
    sets = [f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
            for k, v in SMALL_SETS.items() if k != "tscac_stage1_steps"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.cli", "mmrf-train", "--data", str(ds.root), "--out",
           str(tmp_path / "run"), "--no-progress", "--threads", "1",
           *[x for s in sets for x in ("--set", s)]]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("trained 128 instances") == 1  # rank 0 reports (its own instances)
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4 and "eval" in summary
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 4
