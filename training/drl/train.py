"""DRL-Rec training: teacher and student Double DQN, exploring and filtering, distillation.

Reads top to bottom: the config (every ablation of the paper's Table 4 is a switch), the
module whose ``forward(batch)`` is one step's losses (so DistributedDataParallel can wrap it),
the trainer (optimiser, target networks, checkpoints), the loop over streamed data, and
evaluation (the Q value of each logged impression, scored as a click predictor: AUC).

One step, for a batch of real instances (METHODS.md, "DRL-Rec"):

1. Teacher and student each compute ``Q(s_t, a_t)`` and a Double-DQN target ``y`` from their
   own online/target pair over the next state's unplaced logged candidates; ``L_T``, ``L_S``
   are the squared TD errors.
2. Exploring and filtering: both score the exploration input (``n_explore`` items per state);
   the teacher's top ``n_filtered`` and the student's top ``n_filtered`` (a student pick that
   the teacher also picked is counted once) join the real item as that state's lessons.
3. Confidence: ``c = 1 - (q^T - y^T)^2 / eta`` per real instance, its batch mean for
   exploration lessons (switch off: all 1).
4. ``L_KL``: per state, the list ``[real item] + filtered items``, KL at temperature 10,
   weighted by the real instance's confidence. Without exploring and filtering the list holds
   the real item alone, so ``L_KL`` is 0 and distillation runs through the hint loss: that is
   what "no exploration lessons" means for a per-state list, and the ablation table says so.
5. ``L_Hint`` on every lesson's last hidden layer, a learned linear adapter from the student's
   width to the teacher's.
6. ``L = 2 L_T + 2 L_S + L_KL + L_Hint``; the teacher gets gradient only from ``L_T``.

``DRLRec.forward`` only composes small functions, each tested on worked numbers: the next
state (:func:`~training.drl.batches.next_state`, :func:`~training.drl.batches.next_buffer`),
the target (:func:`~training.drl.losses.double_dqn_target`), the confidence, the filtering
(:func:`~training.drl.losses.filter_lessons`), the lessons' weights
(:func:`~training.drl.losses.lesson_weights`) and the losses of :mod:`training.drl.losses`.

Differences from the authors' simplified code (github modriczhang/DRL-Rec) are in
:mod:`training.drl.losses` and :mod:`training.drl.networks`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from contract.features import DEFAULT_SPEC, FeatureSpec, spec_differences
from training import distributed
from training.data.features import Requests, SideTables, build_requests
from training.data.pipeline import Dataset, DatasetError, iter_session_batches, shard_for_rank
from training.distributed import lockstep
from training.divergence import check_finite, check_finite_parameters, watched
from training.drl.batches import Batch, history, make_batch, next_buffer, request_order
from training.drl.losses import (
    DistillLosses,
    combine,
    confidence,
    double_dqn_target,
    filter_lessons,
    lesson_hint_loss,
    lesson_weights,
    listwise_kl,
    make_hint_adapter,
    td_loss,
)
from training.drl.networks import QNetConfig, QNetwork


@dataclass(frozen=True)
class DRLConfig:
    """DRL-Rec hyper-parameters and switches (defaults: METHODS.md and the paper)."""

    gamma: float = 0.4
    """Discount; 0 is the "future rewards" ablation."""
    discount: str = "slot"
    """Where ``gamma`` applies. ``slot`` (METHODS.md, the paper): at every step of the
    list-wise MDP, so a reward one request (list_size slots) ahead weighs gamma**list_size.
    ``request``: a documented variant, not the paper's: steps between slots of one request are
    undiscounted and gamma applies where the next state is the session's next request, so
    Q(s_t, a) values the rest of the list plus gamma times the next request's value (the
    horizon the world's cross-request mechanisms act on)."""
    compression: float = 0.5
    """Student size / teacher size for every width (paper Fig. 4a sweeps 0.875..0.25)."""
    n_explore: int = 1000
    """Input exploration candidates per state (paper: 100 / 500 / 1000)."""
    n_filtered: int = 3
    """Top-k kept by the teacher and by the student each (paper Fig. 4b sweeps 1..10)."""
    temperature: float = 10.0
    """KL temperature tau."""
    loss_weights: tuple[float, float, float, float] = (2.0, 2.0, 1.0, 1.0)
    """Weights of L_T, L_S, L_KL, L_Hint."""
    explore_filter: bool = True
    """Ablation switch: exploration lessons."""
    use_confidence: bool = True
    """Ablation switch: confidence weights (off: all 1)."""
    use_kl: bool = True
    """Ablation switch: the list-wise KL loss."""
    use_hint: bool = True
    """Ablation switch: the hint loss."""
    gru: bool = True
    """Ablation switch: GRU over the impression buffer (off: average pooling)."""
    self_attention: bool = True
    """Ablation switch: field self-attention (off: average pooling)."""
    d_r: int = 16
    """Teacher field embedding dimension."""
    gru_hidden: int = 64
    """Teacher GRU width."""
    mlp: tuple[int, ...] = (128, 64, 32)
    """Teacher Q-MLP widths (the last is the hint layer)."""
    memory: int = 10
    """m: impressions the state reads."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 256
    """Real instances per step."""
    grad_clip: float = 10.0
    """Global gradient-norm clip."""
    target_tau: float = 0.005
    """Soft target update rate."""
    epochs: int = 1
    """Passes over the training split."""
    max_instances: int = 0
    """Stop after this many real instances (0: no limit)."""
    sessions_per_chunk: int = 2048
    """Sessions read and shuffled together."""
    reward: str = "click"
    """Feedback aspect used as the reward r_t."""
    seed: int = 0
    """Seed of the initialisation, the shuffling and the exploration draws."""
    log_every: int = 50
    """Steps between logged loss lines."""

    def teacher_net(self, spec: FeatureSpec = DEFAULT_SPEC) -> QNetConfig:
        """The teacher's network config for ``spec`` (the dataset's: its fields size the
        embedding tables)."""
        return QNetConfig.from_spec(
            spec,
            d_r=self.d_r,
            gru_hidden=self.gru_hidden,
            mlp=self.mlp,
            memory=self.memory,
            gru=self.gru,
            self_attention=self.self_attention,
        )

    def __post_init__(self) -> None:
        if self.discount not in ("slot", "request"):
            raise ValueError(f"DRL config: discount={self.discount!r}: 'slot' or 'request'")

    def student_net(self, spec: FeatureSpec = DEFAULT_SPEC) -> QNetConfig:
        return self.teacher_net(spec).scaled(self.compression)

    def with_overrides(self, **kw: Any) -> DRLConfig:
        unknown = set(kw) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"DRL config: unknown keys {sorted(unknown)}")
        return dataclasses.replace(self, **kw)


class DRLRec(nn.Module):
    """Teacher, student and hint adapter; ``forward(batch)`` returns the step's losses.

    ``spec`` is the feature spec of the data (``Dataset.spec``; the trainer passes its side
    tables'): the networks' embedding tables have one block of ``size`` rows per field."""

    def __init__(self, cfg: DRLConfig, spec: FeatureSpec = DEFAULT_SPEC):
        super().__init__()
        self.cfg = cfg
        self.spec = spec
        self.teacher = QNetwork(cfg.teacher_net(spec))
        self.student = QNetwork(cfg.student_net(spec))
        self.adapter = make_hint_adapter(self.student.cfg.hint_dim, self.teacher.cfg.hint_dim)

    def forward(
        self, b: Batch, teacher_target: QNetwork, student_target: QNetwork
    ) -> tuple[DistillLosses, dict[str, float]]:
        cfg = self.cfg
        enc_t, s_t, q_t, h_t = self._real(self.teacher, b)
        enc_s, s_s, q_s, h_s = self._real(self.student, b)
        y_t = self._target(self.teacher, teacher_target, b, enc_t)
        y_s = self._target(self.student, student_target, b, enc_s)
        l_t = td_loss(q_t, y_t)
        l_s = td_loss(q_s, y_s)
        # Confidence is the teacher's: its TD error against its own target (Eq. 8).
        c_real = confidence(q_t, y_t) if cfg.use_confidence else torch.ones_like(q_t)

        lesson_ids, lesson_mask = self._lessons(b, s_t.detach(), s_s.detach())
        zero = torch.zeros((), device=q_t.device)
        kl = hint = zero
        if cfg.use_kl or cfg.use_hint:
            with torch.no_grad():
                q_tl, h_tl = self.teacher.q_from_state(s_t.detach(), lesson_ids)
            q_sl, h_sl = self.student.q_from_state(s_s, lesson_ids)
            if cfg.use_kl:
                kl = listwise_kl(q_tl, q_sl, lesson_mask, c_real, tau=cfg.temperature)
            if cfg.use_hint:
                w = lesson_weights(c_real, lesson_ids.shape[1])
                hint = lesson_hint_loss(h_tl, h_sl, w, lesson_mask, self.adapter)
        losses = combine(l_t, l_s, kl, hint, weights=cfg.loss_weights)
        info = {
            "charts/confidence": float(c_real.detach().mean()),
            "charts/q_teacher": float(q_t.detach().mean()),
            "charts/q_student": float(q_s.detach().mean()),
            "charts/target": float(y_s.detach().mean()),
        }
        return losses, info

    def _real(
        self, net: QNetwork, b: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``net`` on the batch's real instances: projected encodings ``(U, 3H)`` of the
        distinct impressions (each computed once), the state ``s_t (B, H)``, ``Q(s_t, a_t)
        (B,)`` of the shown items and their hints ``(B, 1, mlp[-1])``."""
        enc = net.project(net.encode(b.enc_ids))
        s = net.state_projected(enc[b.hist_index], b.hist_mask, b.user_ctx)
        q, h = net.q_from_state(s, b.action[:, None])
        return enc, s, q[:, 0], h

    def _lessons(
        self, b: Batch, s_t: torch.Tensor, s_s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each state's lessons ``(B, L, 12)`` and their mask ``(B, L)``: the real item, then
        (exploring and filtering on) the :func:`filter_lessons` picks of the exploration input."""
        bsz = b.action.shape[0]
        ids = b.action[:, None]
        mask = torch.ones(bsz, 1, dtype=torch.bool, device=ids.device)
        if not self.cfg.explore_filter:
            return ids, mask
        if b.explore is None or b.explore_mask is None:
            raise ValueError("explore_filter is on but the batch has no exploration input")
        with torch.no_grad():
            q_te, _ = self.teacher.q_from_state(s_t, b.explore)
            q_se, _ = self.student.q_from_state(s_s, b.explore)
        idx, valid = filter_lessons(q_te, q_se, b.explore_mask, self.cfg.n_filtered)
        picked = b.explore.gather(1, idx[:, :, None].expand(-1, -1, b.explore.shape[2]))
        return torch.cat([ids, picked], dim=1), torch.cat([mask, valid], dim=1)

    def _target(
        self, net: QNetwork, target: QNetwork, b: Batch, enc_hist: torch.Tensor
    ) -> torch.Tensor:
        """Double-DQN target: the online net picks the next action, the target net values it.

        The next state's buffer is the instance's window with its own impression pushed in
        (:func:`training.drl.batches.next_buffer`); its candidates and mask come from the batch
        (:func:`training.drl.batches.next_state`)."""
        per_request = self.cfg.discount == "request"
        if self.cfg.gamma == 0 and not per_request:
            return b.reward
        with torch.no_grad():
            buf, mask = next_buffer(enc_hist.detach(), b)  # projected encodings, as in forward
            s_on = net.state_projected(buf, mask, b.next_user_ctx)
            q_on, _ = net.q_from_state(s_on, b.next_cand)
            buf_t, mask_t = next_buffer(target.project(target.encode(b.enc_ids)), b)
            s_tg = target.state_projected(buf_t, mask_t, b.next_user_ctx)
            q_tg, _ = target.q_from_state(s_tg, b.next_cand)
        gamma: float | torch.Tensor = self.cfg.gamma
        if per_request:
            gamma = torch.where(b.same_request, 1.0, self.cfg.gamma).to(b.reward.dtype)
        return double_dqn_target(b.reward, b.done, gamma, q_on, q_tg, b.next_mask)


def stream_rng(seed: int) -> np.random.Generator:
    """The generator of a run's data stream (shuffles, exploration draws)."""
    return np.random.default_rng([seed, 1])


def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``theta' <- (1 - tau) theta' + tau theta``."""
    with torch.no_grad():
        for pt, p in zip(target.parameters(), online.parameters(), strict=True):
            pt.lerp_(p, tau)


def checkpoint_spec(sd: dict[str, Any]) -> FeatureSpec:
    """The feature spec a checkpoint (or a run's ``train.json`` summary) was trained with:
    its ``feature_spec`` dict, or ``DEFAULT_SPEC`` for one written before specs were saved."""
    d = sd.get("feature_spec")
    return DEFAULT_SPEC if d is None else FeatureSpec.from_dict(d)


class Checkpointed:
    """Checkpoints of a trainer: its named stateful parts (``_stateful``), the config, the
    data stream's RNG and the counters, saved atomically (temporary name, then rename)."""

    cfg: Any
    side: SideTables
    rng: np.random.Generator
    step_count: int
    instances: int
    device: torch.device

    def _stateful(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        sd = {name: part.state_dict() for name, part in self._stateful().items()}
        sd.update(
            cfg=dataclasses.asdict(self.cfg),
            rng=self.rng.bit_generator.state,
            step=self.step_count,
            instances=self.instances,
            feature_spec=self.side.spec.to_dict(),
        )
        return sd

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Raises DatasetError (a ValueError) when the checkpoint was trained with another
        feature spec than the side tables' (a checkpoint without one: ``DEFAULT_SPEC``)."""
        saved = checkpoint_spec(sd)
        if saved != self.side.spec:
            raise DatasetError(
                "the checkpoint was trained with another feature spec than this dataset's "
                f"({saved.n_fields} and {self.side.spec.n_fields} fields; they differ in "
                f"{spec_differences(saved, self.side.spec)[:5]})"
            )
        for name, part in self._stateful().items():
            part.load_state_dict(sd[name])
        self.rng.bit_generator.state = sd["rng"]
        self.step_count = int(sd["step"])
        self.instances = int(sd["instances"])

    def save(self, path: str | Path) -> None:
        """Write the checkpoint; raises :class:`~training.divergence.DivergenceError` (and
        writes nothing) when a network's parameters hold NaN or inf."""
        modules = {k: v for k, v in self._stateful().items() if isinstance(v, nn.Module)}
        check_finite_parameters(modules, self.step_count)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))


class DRLTrainer(Checkpointed):
    """Optimiser, target networks, RNG and step counter around :class:`DRLRec`."""

    def __init__(self, cfg: DRLConfig, side: SideTables, device: str = "cpu"):
        self.cfg = cfg
        self.side = side
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = DRLRec(cfg, side.spec).to(self.device)
        self.teacher_target = copy.deepcopy(self.model.teacher).requires_grad_(False)
        self.student_target = copy.deepcopy(self.model.student).requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.rng = stream_rng(cfg.seed)
        self.step_count = 0
        self.instances = 0
        self.ddp: nn.Module | None = None

    def wrap_ddp(self) -> None:
        """Wrap the model in DistributedDataParallel (call after init_process_group)."""
        from torch.nn.parallel import DistributedDataParallel

        dev = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=dev, find_unused_parameters=True)

    def batch(self, req: Requests, g: np.ndarray) -> Batch:
        n_explore = self.cfg.n_explore if self.cfg.explore_filter else 0
        return make_batch(
            req, self.side, g, memory=self.cfg.memory, reward=self.cfg.reward,
            n_explore=n_explore, rng=self.rng,
        )  # fmt: skip

    def step(self, b: Batch) -> dict[str, float]:
        self.model.train()
        b = b.to(self.device)
        module = self.ddp if self.ddp is not None else self.model
        losses, info = module(b, self.teacher_target, self.student_target)
        self.opt.zero_grad(set_to_none=True)
        losses.total.backward()
        gn = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        soft_update(self.teacher_target, self.model.teacher, self.cfg.target_tau)
        soft_update(self.student_target, self.model.student, self.cfg.target_tau)
        self.step_count += 1
        self.instances += int(b.reward.shape[0])
        return {**losses.metrics(), **info, "charts/grad_norm": float(gn)}

    def _stateful(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "teacher_target": self.teacher_target,
            "student_target": self.student_target,
            "opt": self.opt,
        }


def iter_training_batches(
    trainer: DRLTrainer, paths: list[Path], epochs: int
) -> Iterator[tuple[int, Batch]]:
    """Stream chunks of whole sessions, shuffle their instances, cut batches."""
    cfg = trainer.cfg
    for epoch in range(epochs):
        for table in iter_session_batches(paths, sessions_per_batch=cfg.sessions_per_chunk):
            req = build_requests(table, trainer.side)
            order = request_order(req, trainer.rng)
            for lo in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
                yield epoch, trainer.batch(req, order[lo : lo + cfg.batch_size])


def _loop(trainer, paths, skip, logs, history_rows, bar, ckpt, checkpoint_every, rank, t0,
          world_size=1):  # fmt: skip
    cfg = trainer.cfg
    seen = 0
    batches = iter_training_batches(trainer, paths, cfg.epochs)
    if world_size > 1 and getattr(trainer, "ddp", None) is None:
        # ranks kept equal by hand (training.distributed): all stop when one runs out
        batches = lockstep(batches, world_size, trainer.device)
    for i, (_epoch, batch) in enumerate(batches):
        if i < skip:  # resume: replay the stream (and its RNG draws) up to the checkpoint
            continue
        if cfg.max_instances and trainer.instances >= cfg.max_instances:
            break
        m = trainer.step(batch)
        # A NaN or inf loss (or gradient norm) stops the run at this step, before its
        # checkpoint: the folder keeps the last good one and no train.json.
        check_finite(watched(m), trainer.step_count)
        seen += int(batch.reward.shape[0])
        for k, v in m.items():
            logs[k].append(v)
        bar.update(int(batch.reward.shape[0]))
        if trainer.step_count % cfg.log_every == 0:
            row = {k: float(np.mean(v[-cfg.log_every :])) for k, v in logs.items()}
            row["step"] = trainer.step_count
            row["charts/sps"] = seen / max(time.perf_counter() - t0, 1e-9)
            history_rows.append(row)
            shown = [k for k in row if k.startswith("losses/")][:2]
            bar.set_postfix({k.split("/", 1)[1]: f"{row[k]:.4f}" for k in shown})
        if ckpt is not None and rank == 0 and trainer.step_count % checkpoint_every == 0:
            trainer.save(ckpt)
    return seen


def train(
    trainer: DRLTrainer,
    dataset: Dataset,
    *,
    out: Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 500,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
    desc: str = "drl-rec",
) -> dict[str, Any]:
    """Train on the dataset's training split; returns the run's summary (also saved).

    Drives any trainer with ``cfg`` (batch_size, sessions_per_chunk, epochs, max_instances,
    log_every, seed), ``side``, ``rng``, ``batch``, ``step``, ``save``/``load``,
    ``step_count`` and ``instances`` (DRL-Rec's, HRL-Rec's, MMRF's).

    Raises:
        DivergenceError: (:mod:`training.divergence`) a step's ``losses/...`` or grad-norm
            metric is NaN or inf; the loop stops at that step, writes no later checkpoint and
            no ``train.json``.
    """
    from tqdm.auto import tqdm

    cfg = trainer.cfg
    ckpt = out / "checkpoint.pt" if out is not None else None
    skip = 0
    if resume and ckpt is not None and ckpt.exists():
        trainer.load(ckpt)
        skip = trainer.step_count
        # The skipped steps are replayed (their shuffles and exploration draws included) from
        # the seed's fresh stream, which lands the generator where the checkpoint left it.
        trainer.rng = stream_rng(cfg.seed)
    paths = shard_for_rank(dataset.paths("train"), rank, world_size)
    logs: dict[str, list[float]] = defaultdict(list)
    history_rows = []
    t0 = time.perf_counter()
    bar = tqdm(desc=desc, unit="inst", unit_scale=True, disable=not progress or rank != 0)
    seen = 0
    # Under DDP, join() lets ranks whose shards run out early keep the collectives matched;
    # a trainer without DDP (MMRF) is kept in step by training.distributed.lockstep instead.
    ddp = getattr(trainer, "ddp", None)
    join = ddp.join() if ddp is not None else contextlib.nullcontext()
    with join:
        seen = _loop(trainer, paths, skip, logs, history_rows, bar, ckpt, checkpoint_every,
                     rank, t0, world_size)  # fmt: skip
    bar.close()

    sec = time.perf_counter() - t0
    if ckpt is not None and rank == 0:
        trainer.save(ckpt)
    summary = {
        "steps": trainer.step_count,
        "instances": trainer.instances,
        "seconds": round(sec, 2),
        "instances_per_s": round(seen / max(sec, 1e-9), 1),
        "history": history_rows,
        "config": dataclasses.asdict(cfg),
        "feature_spec": trainer.side.spec.to_dict(),
    }
    if out is not None and rank == 0:
        (out / "train.json").write_text(json.dumps(summary, indent=2))
    return summary


@torch.no_grad()
def impression_q(net: QNetwork, req: Requests, memory: int, batch: int = 4096) -> np.ndarray:
    """``Q(s_t, a_t)`` of every logged impression of ``req`` (state from the logged history)."""
    net.eval()
    dev = next(net.parameters()).device
    out = np.empty(req.n_impressions, dtype=np.float32)
    n_uc = req.user_ctx.shape[1]
    for lo in range(0, req.n_impressions, batch):
        g = np.arange(lo, min(lo + batch, req.n_impressions))
        hist, mask = history(req, g, memory)
        q, _ = net.score(
            net.encode_history(torch.from_numpy(hist).to(dev)),
            torch.from_numpy(mask).to(dev),
            torch.from_numpy(req.user_ctx[req.imp_req[g]]).to(dev),
            torch.from_numpy(req.imp_ids[g, n_uc:][:, None]).to(dev),
        )
        out[lo : lo + len(g)] = q[:, 0].float().cpu().numpy()
    return out


def evaluate(trainer: DRLTrainer, dataset: Dataset, split: str = "test") -> dict[str, float]:
    """Click AUC of the teacher's and the student's ``Q(s_t, a_t)`` on a split's impressions."""
    from training.eval.metrics import auc

    req = build_requests(dataset.read(split), trainer.side)
    y = req.label("click")
    out = {"impressions": float(req.n_impressions)}
    for name, net in (("teacher", trainer.model.teacher), ("student", trainer.model.student)):
        out[f"auc_{name}"] = auc(y, impression_q(net, req, trainer.cfg.memory))
    return out


def run(
    data: str | Path,
    out: str | Path,
    cfg: DRLConfig,
    *,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
    eval_split: str | None = "test",
) -> dict[str, Any]:
    """Train (single process, or one rank under torchrun) and evaluate; writes ``out/``."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = Dataset.open(data)
    # the reward, the session_clicks list field and the test AUC read their aspects
    ds.require_aspects({cfg.reward, "click"}, f"DRL-Rec (reward {cfg.reward!r}, click AUC)")
    side = SideTables.from_tables(ds.users(), ds.items(), ds.spec)
    rank, world_size, device = distributed.init(device)
    trainer = DRLTrainer(cfg, side, device=device)
    if world_size > 1:
        trainer.wrap_ddp()
    summary = train(
        trainer, ds, out=out, resume=resume, progress=progress, rank=rank, world_size=world_size
    )
    if eval_split and rank == 0:
        summary["eval"] = evaluate(trainer, ds, eval_split)
        summary["eval_split"] = eval_split
        (out / "train.json").write_text(json.dumps(summary, indent=2))
    distributed.shutdown(world_size)
    summary["rank"] = rank
    return summary
