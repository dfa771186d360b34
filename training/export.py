"""Export trained rankers to a model bundle that serving can trust.

A bundle (``contract/bundle.py``) holds, per model, the graphs of its kind: for a DRL-Rec Q
network ``request``, ``score`` and ``step``; for MMRF's WatchTime actor (kind ``actor``) the
same three, ``request`` and ``step`` computing the main agent's action from the state
(:class:`ServedActor`) and ``score`` its dot product with each candidate's item vector; for a
point-wise scorer ``request`` and ``score``. The split folds into ``request`` what is computed
once per request rather than once per position:

- the first MLP layer ``W [s; a] + b`` is ``W_s s + b`` (the state half, ``state_part``)
  ``+ W_item a_item`` (the candidates' item fields, ``item_part``: fixed for the request)
  ``+ W_list a_list`` (the list fields, which change with the slot). ``score`` computes the
  last from projected tables ``P_f = E_f W_f^T`` (one row per id of each list field, 69 rows
  in the default spec), so a position costs a gather and a sum instead of a matmul; the
  actor's item projection ``W_v a_t`` (before its tanh) splits the same way;
- for Wide&Deep the wide (first-order) terms of the user, context and item fields are summed
  once per request into ``item_bias``; the list fields' weights are gathered per position.

:func:`export_bundle` traces every graph with ``torch.onnx.export`` (the TorchScript exporter,
``dynamo=False``: 0.2 s a graph instead of 4 s with the torch.export path for these small
static graphs, with the same operators), runs ``onnx.checker`` on each, and verifies the
bundle before it exists: every graph reloaded in onnxruntime against the torch module on
random inputs and on real requests of the dataset, and the composed graphs against the
original network's ``score`` (absolute error at most ``atol``, 1e-5 by default; see
:data:`PARITY_ATOL`). A bundle that fails is not written: everything is built in a temporary
sibling directory that is renamed into place only after verification, and removed on failure.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from contract.bundle import (
    MANIFEST_FILE,
    MANIFEST_VERSION,
    BundleError,
    TensorSpec,
    expected_io,
    parse_manifest,
    sha256_file,
)
from contract.features import (
    REQUEST_LIST_SOURCES,
    SLOT_LIST_SOURCES,
    FeatureSpec,
    side_table_columns,
)
from training.baselines.pointwise import WideDeep
from training.data.features import Requests
from training.data.pipeline import code_version
from training.drl.networks import QNetwork, param_count, push
from training.mmrf.networks import MultiAgentActorCritic

__all__ = [
    "PARITY_ATOL",
    "ActorRequest",
    "ActorScore",
    "ActorStep",
    "ExportModel",
    "ParityError",
    "ServedActor",
    "actor_export",
    "actor_graphs",
    "export_bundle",
    "pointwise_graphs",
    "q_graphs",
]

WEIGHTS_FILE = "weights.bin"
#: Largest absolute difference allowed between torch and onnxruntime outputs.
PARITY_ATOL = 1e-5
_OPSET = 17


class ParityError(BundleError):
    """onnxruntime's output differs from torch's by more than the tolerance."""


def _list_tables(
    table: torch.Tensor, w: torch.Tensor, d: int, spec: FeatureSpec, sources: tuple[str, ...]
) -> tuple[torch.Tensor, list[int]]:
    """Projected tables ``cat_f(E_f W_f^T)`` of the list fields whose source is in
    ``sources`` (spec order), and their sizes.

    ``table``: the embedding rows of all fields (spec offsets); ``w (W0, n_cand d)``: the
    first layer's weight over item + list fields, field ``f`` owning ``d`` columns (``d = 1``
    gives the wide weights). The item part of a first layer then reads
    ``sum_f P[offset_f + id_f]`` for these fields: a gather and a sum instead of a matmul.
    """
    fields = spec.fields
    n_uc = len(spec.group("user")) + len(spec.group("context"))
    parts, sizes = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one summation order: the same bytes whatever the machine
    try:
        with torch.no_grad():
            for j, f in enumerate(fields):
                if f.group != "list" or f.source not in sources:
                    continue
                lo = sum(x.size for x in fields[:j])
                col = (j - n_uc) * d
                parts.append(table[lo : lo + f.size] @ w[:, col : col + d].T)
                sizes.append(f.size)
    finally:
        torch.set_num_threads(threads)
    return torch.cat(parts), sizes


class _Gathered(nn.Module):
    """``sum_f P_f[id_f]`` as one gather: ``(B, C, L)`` ids -> ``(B, C, W0)``.

    The ``L`` fields' projected tables are summed into one joint table over every combination
    of their ids (``prod_f size_f`` rows: 792 for the default spec's per-slot fields, 640 for
    the per-request ones), indexed by ``ids @ strides``. One integer MatMul and one Gather
    replace ``L`` gathers and a ReduceSum, which onnxruntime runs slowly on small tensors
    (``benchmarks/bundle_cost.py``). Falls back to the per-field gather above
    :data:`JOINT_ROWS_MAX` rows.
    """

    def __init__(self, table: torch.Tensor, sizes: list[int]) -> None:
        super().__init__()
        table = table.detach().clone()
        n_joint = int(np.prod(sizes))
        self.joint = n_joint <= JOINT_ROWS_MAX
        offsets = [0, *np.cumsum(sizes[:-1]).tolist()]
        if self.joint:
            joint = torch.zeros([*sizes, table.shape[1]])
            for f, (o, size) in enumerate(zip(offsets, sizes, strict=True)):
                shape = [1] * len(sizes) + [table.shape[1]]
                shape[f] = size
                joint = joint + table[o : o + size].reshape(shape)
            strides = [int(np.prod(sizes[f + 1 :])) for f in range(len(sizes))]
            self.register_buffer("table", joint.reshape(n_joint, table.shape[1]))
            self.register_buffer("strides", torch.tensor(strides, dtype=torch.long))
        else:
            self.register_buffer("table", table)
            self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.joint:
            return F.embedding(torch.matmul(ids, self.strides), self.table)
        return F.embedding(ids + self.offsets, self.table).sum(-2)


#: Largest joint table :class:`_Gathered` builds (rows).
JOINT_ROWS_MAX = 1 << 16


class _SuffixGRU(torch.autograd.Function):
    """The GRU over a window whose valid entries are a suffix, as one ONNX ``GRU`` node.

    ``x (B, m, E)`` rolled so the ``n`` valid entries come first, ``n (B,)`` int64, ``h0 (B,
    H)``, weights in ONNX's gate order (z, r, h; torch's is r, z, n). Eagerly it runs the
    cells; exported it is ``GRU(linear_before_reset=1, sequence_lens=max(n, 1))`` and a
    ``Where`` that keeps ``h0`` for an empty window: one node instead of ``m`` unrolled cells
    of about 20 nodes each (the per-node cost dominates graphs this small).
    """

    @staticmethod
    def forward(ctx, x, n, h0, w, r, b, hd: int):  # type: ignore[override]
        wz, wr, wh = w[0].split(hd)
        rz, rr, rh = r[0].split(hd)
        bwz, bwr, bwh, brz, brr, brh = b[0].split(hd)
        h = h0
        for t in range(x.shape[1]):
            xt = x[:, t]
            z = torch.sigmoid(xt @ wz.T + bwz + h @ rz.T + brz)
            rg = torch.sigmoid(xt @ wr.T + bwr + h @ rr.T + brr)
            c = torch.tanh(xt @ wh.T + bwh + rg * (h @ rh.T + brh))
            h = torch.where((t < n)[:, None], (1 - z) * c + z * h, h)
        return h

    @staticmethod
    def symbolic(g, x, n, h0, w, r, b, hd: int):  # pragma: no cover - inside the ONNX exporter
        xs = g.op("Transpose", x, perm_i=[1, 0, 2])
        one = g.op("Constant", value_t=torch.tensor(1, dtype=torch.int64))
        lens = g.op("Cast", g.op("Max", n, one), to_i=6)  # int32
        h_init = g.op("Unsqueeze", h0, g.op("Constant", value_t=torch.tensor([0])))
        _, y_h = g.op("GRU", xs, w, r, b, lens, h_init, hidden_size_i=hd,
                      linear_before_reset_i=1, outputs=2)  # fmt: skip
        y_h = g.op("Squeeze", y_h, g.op("Constant", value_t=torch.tensor([0])))
        zero = g.op("Constant", value_t=torch.tensor(0, dtype=torch.int64))
        keep = g.op(
            "Unsqueeze", g.op("Greater", n, zero), g.op("Constant", value_t=torch.tensor([1]))
        )
        return g.op("Where", keep, y_h, h0)


def _zrn(weight: torch.Tensor, hd: int) -> torch.Tensor:
    r, z, n = weight.split(hd)
    return torch.cat([z, r, n])


def serving_state(net: nn.Module, buffer, mask, user_ctx) -> torch.Tensor:
    """``s_t`` as the network's :class:`~training.drl.networks.StateEncoder` (``net.
    state_encoder``: a DRL-Rec Q network's or MMRF's shared one) computes it, for suffix
    masks, with the GRU as one ONNX node (:class:`_SuffixGRU`); average pooling (the GRU
    ablation) is exported as is. ``buffer (B, m, E)``, ``mask (B, m)``, ``user_ctx (B, U)``
    -> ``(B, H)``."""
    enc = net.state_encoder
    if not enc.cfg.gru:
        return enc(buffer, mask, user_ctx)
    m, hd = buffer.shape[1], enc.cfg.gru_hidden
    n = mask.long().sum(1)
    idx = (torch.arange(m)[None, :] + (m - n)[:, None]) % m
    x = buffer.gather(1, idx[..., None].expand(-1, -1, buffer.shape[2]))
    gru = enc.gru
    w = _zrn(gru.weight_ih, hd)[None]
    r = _zrn(gru.weight_hh, hd)[None]
    b = torch.cat([_zrn(gru.bias_ih, hd), _zrn(gru.bias_hh, hd)])[None]
    return _SuffixGRU.apply(x, n, enc.initial(user_ctx), w, r, b, hd)


# --- DRL-Rec Q network -------------------------------------------------------------------


class QRequest(nn.Module):
    def __init__(self, net: QNetwork, spec: FeatureSpec) -> None:
        super().__init__()
        self.net, self.n_item = net, len(spec.group("item"))
        w, d = net.head.item_in.weight, net.cfg.d_r
        table, sizes = _list_tables(net.state_encoder.embedding.table.weight, w, d, spec,
                                    REQUEST_LIST_SOURCES)  # fmt: skip
        self.request_list = _Gathered(table, sizes)

    def forward(self, buffer, mask, user_ctx, cand_item, request_list):
        net, d = self.net, self.net.cfg.d_r
        s = serving_state(net, buffer, mask, user_ctx)
        e = net.state_encoder.embedding(cand_item, net.cfg.n_user_ctx).flatten(-2)
        w_item = net.head.item_in.weight[:, : self.n_item * d]
        return net.head.state_in(s), F.linear(e, w_item) + self.request_list(request_list)


class QScore(nn.Module):
    def __init__(self, net: QNetwork, spec: FeatureSpec) -> None:
        super().__init__()
        w, d = net.head.item_in.weight, net.cfg.d_r
        table, sizes = _list_tables(net.state_encoder.embedding.table.weight, w, d, spec,
                                    SLOT_LIST_SOURCES)  # fmt: skip
        self.slot_list = _Gathered(table, sizes)
        self.hidden, self.out = net.head.hidden, net.head.out

    def forward(self, state_part, item_part, slot_list):
        # 2-D rows (B*C, W): onnxruntime fuses each Linear + ReLU into one Gemm node there,
        # not on 3-D tensors; nodes, not FLOPs, set the cost of graphs this small.
        h = F.relu(state_part.unsqueeze(1) + item_part + self.slot_list(slot_list))
        h = h.flatten(0, 1)
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.out(h).view_as(slot_list[..., 0])


class QStep(nn.Module):
    def __init__(self, net: QNetwork) -> None:
        super().__init__()
        self.net = net

    def forward(self, buffer, mask, user_ctx, impression_ids):
        enc = self.net.encode(impression_ids)
        buffer, mask = push(buffer, mask, enc)
        s = serving_state(self.net, buffer, mask, user_ctx)
        return buffer, mask, self.net.head.state_in(s)


def _list_dims(spec: FeatureSpec) -> dict[str, int]:
    lists = spec.group("list")
    return {
        "n_user_ctx": len(spec.group("user")) + len(spec.group("context")),
        "n_item": len(spec.group("item")),
        "n_list_request": sum(f.source in REQUEST_LIST_SOURCES for f in lists),
        "n_list_slot": sum(f.source in SLOT_LIST_SOURCES for f in lists),
    }


def q_graphs(net: QNetwork, spec: FeatureSpec) -> tuple[dict[str, nn.Module], dict[str, int]]:
    """The ``request``/``score``/``step`` modules of a Q network and its manifest ``dims``."""
    cfg = net.cfg
    if cfg.sizes != tuple(spec.sizes()):
        raise BundleError(f"network field sizes {cfg.sizes} differ from the spec's {spec.sizes()}")
    dims = {
        **_list_dims(spec),
        "hidden": cfg.mlp[0],
        "memory": cfg.memory,
        "enc_dim": cfg.enc_dim,
        "d_r": cfg.d_r,
        "gru_hidden": cfg.gru_hidden,
    }
    mods = {"request": QRequest(net, spec), "score": QScore(net, spec), "step": QStep(net)}
    return mods, dims


# --- MMRF WatchTime actor ------------------------------------------------------------------


class ServedActor(nn.Module):
    """The parts of :class:`~training.mmrf.networks.MultiAgentActorCritic` that the main
    (WatchTime) agent's scores need: the shared state encoder, the item projection ``W_v``,
    every agent's state projection, the collaboration and every actor (the main action reads
    all the auxiliary ones, Eq. 3). The critics are left out: serving never evaluates them.
    """

    def __init__(self, net: MultiAgentActorCritic) -> None:
        super().__init__()
        self._net = (net,)  # not a submodule: the parameters counted are the ones below
        self.state_encoder = net.state_encoder
        self.item_proj = net.item_proj
        self.agent_state = net.agent_state
        self.attention = net.attention
        self.aux_actors = net.aux_actors
        self.main_actor = net.main_actor

    def main_action(self, s: torch.Tensor) -> torch.Tensor:
        """``a^N (B, D)`` of states ``s (B, H)`` (METHODS.md "MMRF", Eqs. 1-3)."""
        net = self._net[0]
        h = net.agent_states(s)
        e, _ = net.collaborate(h)
        return net.main_action(h, e, net.aux_actions(h, e))


class ActorRequest(nn.Module):
    def __init__(self, actor: ServedActor, spec: FeatureSpec) -> None:
        super().__init__()
        self.actor, self.n_item = actor, len(spec.group("item"))
        enc = actor.state_encoder.cfg
        w, d = actor.item_proj.weight, enc.d_r
        table, sizes = _list_tables(actor.state_encoder.embedding.table.weight, w, d, spec,
                                    REQUEST_LIST_SOURCES)  # fmt: skip
        self.request_list = _Gathered(table, sizes)

    def forward(self, buffer, mask, user_ctx, cand_item, request_list):
        a, enc = self.actor, self.actor.state_encoder
        s = serving_state(a, buffer, mask, user_ctx)
        e = enc.embedding(cand_item, enc.cfg.n_user_ctx).flatten(-2)
        w_item = a.item_proj.weight[:, : self.n_item * enc.cfg.d_r]
        return a.main_action(s), F.linear(e, w_item) + self.request_list(request_list)


class ActorScore(nn.Module):
    def __init__(self, actor: ServedActor, spec: FeatureSpec) -> None:
        super().__init__()
        enc = actor.state_encoder.cfg
        table, sizes = _list_tables(actor.state_encoder.embedding.table.weight,
                                    actor.item_proj.weight, enc.d_r, spec,
                                    SLOT_LIST_SOURCES)  # fmt: skip
        self.slot_list = _Gathered(table, sizes)

    def forward(self, action, item_part, slot_list):
        v = torch.tanh(item_part + self.slot_list(slot_list))  # (B, C, D) item vectors
        return torch.matmul(v, action.unsqueeze(-1)).squeeze(-1)


class ActorStep(nn.Module):
    def __init__(self, actor: ServedActor) -> None:
        super().__init__()
        self.actor = actor

    def forward(self, buffer, mask, user_ctx, impression_ids):
        enc = self.actor.state_encoder.encode(impression_ids)
        buffer, mask = push(buffer, mask, enc)
        s = serving_state(self.actor, buffer, mask, user_ctx)
        return buffer, mask, self.actor.main_action(s)


def actor_graphs(
    net: MultiAgentActorCritic, spec: FeatureSpec
) -> tuple[dict[str, nn.Module], dict[str, int]]:
    """The ``request``/``score``/``step`` modules of MMRF's WatchTime actor (kind ``actor``,
    contract/bundle.py) and its manifest ``dims``. Raises BundleError when the network's
    field sizes differ from the spec's.

    The item vector ``v = tanh(W_v a_t)`` splits like DRL-Rec's first layer: ``W_v a_t =
    W_item a_item + W_req a_req`` (``item_part``, once per request) ``+ W_slot a_slot``
    (gathered from projected tables per position); the tanh and the dot product with the
    action run in ``score``.
    """
    enc = net.cfg.encoder
    if enc.sizes != tuple(spec.sizes()):
        raise BundleError(f"network field sizes {enc.sizes} differ from the spec's {spec.sizes()}")
    actor = ServedActor(net)
    dims = {
        **_list_dims(spec),
        "action_dim": net.cfg.action_dim,
        "memory": enc.memory,
        "enc_dim": enc.enc_dim,
        "d_r": enc.d_r,
        "gru_hidden": enc.gru_hidden,
        "n_agents": net.cfg.n_agents,
        "agent_dim": net.cfg.agent_dim,
    }
    mods = {"request": ActorRequest(actor, spec), "score": ActorScore(actor, spec),
            "step": ActorStep(actor)}  # fmt: skip
    return mods, dims


# --- Wide & Deep ---------------------------------------------------------------------------


def _wd_list_parts(
    model: WideDeep, spec: FeatureSpec, sources: tuple[str, ...]
) -> tuple[_Gathered, _Gathered]:
    """The deep first layer's and the wide part's gathers over the list fields in ``sources``."""
    d = model.embedding.table.weight.shape[1]
    n_uc = len(spec.group("user")) + len(spec.group("context"))
    w_cand = model.deep[0].weight[:, n_uc * d :]
    deep, sizes = _list_tables(model.embedding.table.weight, w_cand, d, spec, sources)
    ones = torch.ones(1, w_cand.shape[1] // d)  # the wide weights are one column per field
    wide, _ = _list_tables(model.linear.weight.weight, ones, 1, spec, sources)
    return _Gathered(deep, sizes), _Gathered(wide, sizes)


class WDRequest(nn.Module):
    def __init__(self, model: WideDeep, spec: FeatureSpec) -> None:
        super().__init__()
        self.m = model
        self.n_uc = len(spec.group("user")) + len(spec.group("context"))
        self.n_item = len(spec.group("item"))
        self.d = model.embedding.table.weight.shape[1]
        self.request_list, self.request_wide = _wd_list_parts(model, spec, REQUEST_LIST_SOURCES)

    def forward(self, user_ctx, cand_item, request_list):
        m, d, n_uc, n_item = self.m, self.d, self.n_uc, self.n_item
        off = m.embedding.offsets
        first = m.deep[0]
        e_uc = m.embedding.table(user_ctx + off[:n_uc]).flatten(-2)
        e_it = m.embedding.table(cand_item + off[n_uc : n_uc + n_item]).flatten(-2)
        state_part = F.linear(e_uc, first.weight[:, : n_uc * d], first.bias)
        item_part = F.linear(e_it, first.weight[:, n_uc * d : (n_uc + n_item) * d])
        item_part = item_part + self.request_list(request_list)
        wide_uc = m.linear.weight(user_ctx + off[:n_uc]).sum((1, 2)) + m.linear.bias
        wide_it = m.linear.weight(cand_item + off[n_uc : n_uc + n_item]).sum((2, 3))
        wide_it = wide_it + self.request_wide(request_list).squeeze(-1)
        return state_part, item_part, wide_it + wide_uc.unsqueeze(1)


class WDScore(nn.Module):
    def __init__(self, model: WideDeep, spec: FeatureSpec) -> None:
        super().__init__()
        self.slot_list, self.slot_wide = _wd_list_parts(model, spec, SLOT_LIST_SOURCES)
        self.rest = model.deep[1:]

    def forward(self, state_part, item_part, item_bias, slot_list):
        h = (state_part.unsqueeze(1) + item_part + self.slot_list(slot_list)).flatten(0, 1)
        deep = self.rest(h).view_as(item_bias)  # 2-D rows: see QScore
        return deep + item_bias + self.slot_wide(slot_list).squeeze(-1)


def pointwise_graphs(
    model: WideDeep, spec: FeatureSpec
) -> tuple[dict[str, nn.Module], dict[str, int]]:
    """The ``request``/``score`` modules of a Wide&Deep scorer and its manifest ``dims``."""
    if not isinstance(model, WideDeep):
        raise BundleError(f"point-wise export supports WideDeep, not {type(model).__name__}")
    if model.sizes != tuple(spec.sizes()):
        raise BundleError(f"model field sizes {model.sizes} differ from the spec's {spec.sizes()}")
    dims = {**_list_dims(spec), "hidden": model.deep[0].out_features}
    return {"request": WDRequest(model, spec), "score": WDScore(model, spec)}, dims


# --- Export, verification, bundle ----------------------------------------------------------


@dataclass
class ExportModel:
    """One model to put in a bundle.

    ``reference(buffer, mask, user_ctx, cand_ids) -> (B, C)`` is the original network's score
    of candidates (item + list ids), used to check the composed graphs end to end; for a
    point-wise model it ignores buffer and mask.
    """

    name: str
    kind: str
    module: nn.Module
    graphs: dict[str, nn.Module]
    dims: dict[str, int]
    reference: Callable[..., torch.Tensor]
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    flops_per_request: int = 0
    reward_scale: dict[str, float] | None = None
    """An actor's watch-time scale, written to its manifest entry."""


def q_export(name: str, net: QNetwork, spec: FeatureSpec, **info: Any) -> ExportModel:
    net = net.eval()
    graphs, dims = q_graphs(net, spec)

    def reference(buffer, mask, user_ctx, cand_ids):
        return net.score(buffer, mask, user_ctx, cand_ids)[0]

    return ExportModel(name, "q_network", net, graphs, dims, reference, **info)


def actor_export(name: str, net: MultiAgentActorCritic, spec: FeatureSpec,
                 reward_scale: dict[str, Any], **info: Any) -> ExportModel:  # fmt: skip
    """MMRF's WatchTime actor as a bundle model of kind ``actor``; ``reward_scale`` (the run's
    :class:`training.mmrf.rewards.RewardScale` as a dict) goes into its manifest entry. The
    composed graphs are checked against the network's own :meth:`~training.mmrf.networks.
    MultiAgentActorCritic.scores` (the main agent's)."""
    net = net.eval()
    graphs, dims = actor_graphs(net, spec)
    served = graphs["step"].actor

    def reference(buffer, mask, user_ctx, cand_ids):
        return net.scores(net.state(buffer, mask, user_ctx), cand_ids)

    return ExportModel(name, "actor", served, graphs, dims, reference,
                       reward_scale=dict(reward_scale), **info)  # fmt: skip


def pointwise_export(name: str, model: WideDeep, spec: FeatureSpec, **info: Any) -> ExportModel:
    model = model.eval()
    graphs, dims = pointwise_graphs(model, spec)
    n_uc = dims["n_user_ctx"]

    def reference(buffer, mask, user_ctx, cand_ids):
        b, c, _ = cand_ids.shape
        uc = user_ctx[:, None, :].expand(b, c, n_uc)
        return model(torch.cat([uc, cand_ids], -1).reshape(b * c, -1)).reshape(b, c)

    return ExportModel(name, "pointwise", model, graphs, dims, reference, **info)


def _example(t: TensorSpec, sizes: dict[str, int], gen: torch.Generator,
             id_high: dict[str, list[int]]) -> torch.Tensor:  # fmt: skip
    """A random input: normal floats, suffix masks (the only masks a state ever has), ids
    uniform over each field's ``[0, size)``."""
    shape = [sizes[d] if isinstance(d, str) else d for d in t.shape]
    if t.dtype == "float32":
        return torch.randn(shape, generator=gen)
    if t.dtype == "bool":
        b, m = shape
        n = torch.randint(0, m + 1, (b, 1), generator=gen)
        return torch.arange(m)[None, :] >= m - n
    highs = torch.tensor(id_high[t.name])
    u = torch.rand([*shape], generator=gen)
    return (u * highs).long().clamp_max(highs - 1)


def _export_one(module: nn.Module, inputs: list[TensorSpec], outputs: list[TensorSpec],
                example: tuple[torch.Tensor, ...], path: Path) -> None:  # fmt: skip
    dyn = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
           for t in [*inputs, *outputs]}  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")
        torch.onnx.export(
            module, example, str(path), input_names=[t.name for t in inputs],
            output_names=[t.name for t in outputs], dynamic_axes=dyn, opset_version=_OPSET,
            dynamo=False, do_constant_folding=True,
        )  # fmt: skip
    onnx.checker.check_model(str(path), full_check=True)


def share_weights(paths: list[Path], weights: Path, min_bytes: int = 1024) -> dict[str, int]:
    """Move every initializer of at least ``min_bytes`` out of the graphs into one file.

    The graphs of a model repeat its tables (the embedding table sits in both ``request`` and
    ``step``); identical tensors are stored once in ``weights`` (ONNX external data, 64-byte
    aligned) and every graph points at the same bytes. Returns sizes in bytes: the graphs'
    total before and after, and the weights file.
    """
    from onnx import numpy_helper

    seen: dict[str, tuple[int, int]] = {}
    before = sum(p.stat().st_size for p in paths)
    with open(weights, "wb") as w:
        for path in paths:
            model = onnx.load(str(path))
            for t in model.graph.initializer:
                raw = numpy_helper.to_array(t).tobytes()
                if len(raw) < min_bytes:
                    continue
                key = hashlib.sha256(raw + str((t.data_type, list(t.dims))).encode()).hexdigest()
                if key not in seen:
                    pad = (-w.tell()) % 64
                    w.write(b"\0" * pad)
                    seen[key] = (w.tell(), len(raw))
                    w.write(raw)
                offset, length = seen[key]
                for field_name in ("raw_data", "float_data", "int64_data", "int32_data"):
                    t.ClearField(field_name)
                del t.external_data[:]
                for k, v in (("location", weights.name), ("offset", offset), ("length", length)):
                    entry = t.external_data.add()
                    entry.key, entry.value = k, str(v)
                t.data_location = onnx.TensorProto.EXTERNAL
            onnx.save(model, str(path))
    return {"graphs_before": before, "graphs_after": sum(p.stat().st_size for p in paths),
            "weights": weights.stat().st_size}  # fmt: skip


def _max_err(a: np.ndarray, b: np.ndarray) -> float:
    if a.dtype == bool:
        return float((a != b).sum())
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def _compare(sess: ort.InferenceSession, module: nn.Module, feeds: dict[str, torch.Tensor],
             outputs: list[TensorSpec], where: str, atol: float) -> float:  # fmt: skip
    with torch.no_grad():
        ref = module(*feeds.values())
    ref = ref if isinstance(ref, tuple) else (ref,)
    got = sess.run(None, {k: v.numpy() for k, v in feeds.items()})
    worst = 0.0
    for t, r, g in zip(outputs, ref, got, strict=True):
        if tuple(g.shape) != tuple(r.shape):
            raise ParityError(f"{where}: output {t.name} shape {g.shape} != torch {tuple(r.shape)}")
        err = _max_err(r.numpy(), g)
        worst = max(worst, err)
        if err > atol:
            raise ParityError(f"{where}: output {t.name} differs from torch by {err:.3g} > {atol}")
    return worst


@dataclass
class RealBatch:
    """Real model inputs from a dataset: windows of logged impressions, user+context ids,
    and candidates' item + list ids at a logged slot. ``impressions (B, N)``: a logged
    impression per row (the step's input)."""

    buffer_ids: np.ndarray  # (B, m, N)
    mask: np.ndarray  # (B, m)
    user_ctx: np.ndarray  # (B, U)
    cand_ids: np.ndarray  # (B, C, I + L)
    impressions: np.ndarray  # (B, N)


def _verify(model: ExportModel, paths: dict[str, Path], spec: FeatureSpec,
            real: RealBatch | None, atol: float, seed: int) -> dict[str, float]:  # fmt: skip
    """Every graph against its torch module, and request+score composed against the
    network's own score, on random inputs (two shapes) and on real requests."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = {g: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
            for g, p in paths.items()}  # fmt: skip
    io = expected_io(model.kind, model.dims)
    id_high = _id_highs(model, spec)
    gen = torch.Generator().manual_seed(seed)
    report: dict[str, float] = {}

    def keep(key: str, err: float) -> None:
        report[key] = max(report.get(key, 0.0), err)

    for b, c in ((1, 200), (3, 17)):
        dims = {"B": b, "C": c}
        for g, (ins, outs) in io.items():
            feeds = {t.name: _example(t, dims, gen, id_high) for t in ins}
            keep(f"random/{g}", _compare(sess[g], model.graphs[g], feeds, outs,
                                         f"{model.name}.{g} (random)", atol))  # fmt: skip
        m_, e_ = model.dims.get("memory", 1), model.dims.get("enc_dim", 1)
        buf = _example(TensorSpec("buffer", "float32", ("B", m_, e_)), dims, gen, id_high)
        mask = _example(TensorSpec("mask", "bool", ("B", m_)), dims, gen, id_high)
        uc = _example(TensorSpec("user_ctx", "int64", ("B", model.dims["n_user_ctx"])), dims,
                      gen, id_high)  # fmt: skip
        n_cand = len(spec.fields) - model.dims["n_user_ctx"]
        cand = _example(TensorSpec("cand_ids", "int64", ("B", "C", n_cand)), dims, gen, id_high)
        keep("random/composed", _composed(model, sess, spec, buf, mask, uc, cand, atol, "random"))
    if real is not None:
        report.update(_verify_real(model, sess, spec, real, io, atol))
    return report


def _split_cand(spec: FeatureSpec, cand: torch.Tensor) -> dict[str, torch.Tensor]:
    """Item + list ids in spec order ``(B, C, I + L)`` -> the graphs' three id inputs."""
    cols = [f for f in spec.fields if f.group in ("item", "list")]
    pick = {
        "cand_item": [j for j, f in enumerate(cols) if f.group == "item"],
        "request_list": [j for j, f in enumerate(cols) if f.source in REQUEST_LIST_SOURCES],
        "slot_list": [j for j, f in enumerate(cols) if f.source in SLOT_LIST_SOURCES],
    }
    return {k: cand[..., v].contiguous() for k, v in pick.items()}


def _composed(model: ExportModel, sess: dict[str, ort.InferenceSession], spec: FeatureSpec,
              buf, mask, uc, cand, atol: float, what: str) -> float:  # fmt: skip
    """onnxruntime's request then score against the torch network's score of the same ids."""
    ids = _split_cand(spec, cand)
    feeds = {"buffer": buf, "mask": mask, "user_ctx": uc, **ids}
    req_in = [t.name for t in sess["request"].get_inputs()]
    req_out = sess["request"].run(None, {k: feeds[k].numpy() for k in req_in})
    feeds.update(zip([o.name for o in sess["request"].get_outputs()],
                     map(torch.from_numpy, req_out), strict=True))  # fmt: skip
    (q_ort,) = sess["score"].run(None, {t.name: feeds[t.name].numpy()
                                        for t in sess["score"].get_inputs()})  # fmt: skip
    with torch.no_grad():
        q_ref = model.reference(buf, mask, uc, cand).numpy()
    err = _max_err(q_ref, q_ort)
    if err > atol:
        raise ParityError(f"{model.name}: request+score differ from the network's score by "
                          f"{err:.3g} > {atol} on {what} inputs")  # fmt: skip
    return err


def _verify_real(model: ExportModel, sess: dict[str, ort.InferenceSession], spec: FeatureSpec,
                 real: RealBatch, io: dict, atol: float) -> dict[str, float]:  # fmt: skip
    """Graphs on real requests, and the composed graphs against the network's own score."""
    uc = torch.from_numpy(real.user_ctx)
    cand = torch.from_numpy(real.cand_ids)
    ids = _split_cand(spec, cand)
    buf, mask = None, torch.from_numpy(real.mask)
    stateful = "step" in model.graphs
    if stateful:
        hist, window_mask = _window(real.buffer_ids, real.mask, model.dims["memory"])
        with torch.no_grad():
            buf = model.module.state_encoder.encode(torch.from_numpy(hist))
        mask = torch.from_numpy(window_mask)
    feeds = {"buffer": buf, "mask": mask, "user_ctx": uc, **ids}
    out: dict[str, float] = {}
    ins = [t.name for t in io["request"][0]]
    out["real/request"] = _compare(sess["request"], model.graphs["request"],
                                   {k: feeds[k] for k in ins}, io["request"][1],
                                   f"{model.name}.request (real)", atol)  # fmt: skip
    req_out = sess["request"].run(None, {k: feeds[k].numpy() for k in ins})
    feeds.update(zip([t.name for t in io["request"][1]], map(torch.from_numpy, req_out),
                     strict=True))  # fmt: skip
    out["real/score"] = _compare(sess["score"], model.graphs["score"],
                                 {t.name: feeds[t.name] for t in io["score"][0]},
                                 io["score"][1], f"{model.name}.score (real)", atol)  # fmt: skip
    out["real/composed"] = _composed(model, sess, spec, buf, mask, uc, cand, atol, "real")
    if stateful:
        step_feeds = {"buffer": buf, "mask": mask, "user_ctx": uc,
                      "impression_ids": torch.from_numpy(real.impressions)}  # fmt: skip
        out["real/step"] = _compare(sess["step"], model.graphs["step"], step_feeds,
                                    io["step"][1], f"{model.name}.step (real)", atol)  # fmt: skip
    return out


def _window(ids: np.ndarray, mask: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Real history windows ``(B, M, N)`` with suffix masks ``(B, M)`` cut or left-padded to a
    model's memory ``m`` (a bundle's models may read windows of different lengths)."""
    have = ids.shape[1]
    if m <= have:
        return ids[:, have - m :], mask[:, have - m :]
    pad = m - have
    return (np.concatenate([np.zeros((len(ids), pad, ids.shape[2]), ids.dtype), ids], 1),
            np.concatenate([np.zeros((len(ids), pad), bool), mask], 1))  # fmt: skip


def _table_file(table: pa.Table, path: Path) -> dict[str, Any]:
    pq.write_table(table, path, compression="zstd")
    return {"file": path.name, "sha256": sha256_file(path), "rows": table.num_rows}


def export_bundle(
    out: str | Path,
    models: list[ExportModel],
    spec: FeatureSpec,
    users: pa.Table,
    items: pa.Table,
    *,
    name: str = "bundle",
    dataset: dict[str, Any] | None = None,
    real: RealBatch | None = None,
    atol: float = PARITY_ATOL,
    overwrite: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Export ``models`` with the side tables to the bundle directory ``out``.

    Returns the manifest dict. Raises FileExistsError when ``out`` exists and not
    ``overwrite``; ParityError (and writes nothing) when a graph's onnxruntime output differs
    from torch's by more than ``atol``; BundleError on a model the exporter cannot split.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    t0 = time.perf_counter()
    # Folded tensors (projected and joint tables) are products computed here; one thread
    # fixes their summation order, so the same weights give the same bytes on any machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        manifest = _write_bundle(tmp, models, spec, users, items, name, dataset or {}, real,
                                 atol, seed)  # fmt: skip
        parse_manifest(manifest, str(tmp / MANIFEST_FILE))
        manifest["created"]["export_seconds"] = round(time.perf_counter() - t0, 2)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; a service may run as another user
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    return manifest


def _write_bundle(tmp: Path, models: list[ExportModel], spec: FeatureSpec, users: pa.Table,
                  items: pa.Table, name: str, dataset: dict[str, Any], real: RealBatch | None,
                  atol: float, seed: int) -> dict[str, Any]:  # fmt: skip
    paths: dict[str, dict[str, Path]] = {}
    full_hash: dict[str, str] = {}
    for m in models:
        gen = torch.Generator().manual_seed(seed)
        paths[m.name] = {}
        for g, (ins, outs) in expected_io(m.kind, m.dims).items():
            example = tuple(_example(t, {"B": 2, "C": 5}, gen, _id_highs(m, spec)) for t in ins)
            path = paths[m.name][g] = tmp / f"{m.name}.{g}.onnx"
            with torch.no_grad():
                _export_one(m.graphs[g], ins, outs, example, path)
            full_hash[path.name] = sha256_file(path)  # graph and weights together
    all_paths = [p for ps in paths.values() for p in ps.values()]
    sizes = share_weights(all_paths, tmp / WEIGHTS_FILE)
    for p in all_paths:
        onnx.checker.check_model(str(p), full_check=True)
    entries: dict[str, Any] = {}
    for i, m in enumerate(models):
        io = expected_io(m.kind, m.dims)
        parity = _verify(m, paths[m.name], spec, real, atol, seed + i)
        digest = hashlib.sha256(
            "".join(full_hash[p.name] for _, p in sorted(paths[m.name].items())).encode()
        ).hexdigest()
        entries[m.name] = {
            "kind": m.kind,
            "model_version": f"{m.name}-{digest[:12]}",
            "dims": m.dims,
            "graphs": {
                g: {
                    "file": p.name,
                    "sha256": sha256_file(p),
                    "inputs": [t.to_dict() for t in io[g][0]],
                    "outputs": [t.to_dict() for t in io[g][1]],
                }
                for g, p in paths[m.name].items()
            },  # fmt: skip
            "params": param_count(m.module),
            "bytes": _model_bytes(list(paths[m.name].values())),
            "flops_per_request": int(m.flops_per_request),
            "parity_max_abs_err": parity,
            "training": m.training,
            "metrics": m.metrics,
        }
        if m.reward_scale is not None:
            entries[m.name]["reward_scale"] = m.reward_scale
    user_cols, item_cols = side_table_columns(spec)
    for table, cols, what in ((users, user_cols, "users"), (items, item_cols, "items")):
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            raise BundleError(f"the {what} table lacks columns {missing} read by the spec")
    tables = {"users": _table_file(users.select(list(user_cols)), tmp / "users.parquet"),
              "items": _table_file(items.select(list(item_cols)),
                                   tmp / "items.parquet")}  # fmt: skip
    stateful = [entries[n]["model_version"] for n in sorted(entries)
                if "step" in entries[n]["graphs"]]  # fmt: skip
    state_schema = hashlib.sha256(
        (json.dumps(spec.to_dict(), sort_keys=True) + "".join(stateful)).encode()
    ).hexdigest()[:16]
    all_hashes = "".join(e["model_version"] for e in entries.values()) + tables["items"]["sha256"]
    return {
        "manifest_version": MANIFEST_VERSION,
        "bundle_version": f"{name}-{hashlib.sha256(all_hashes.encode()).hexdigest()[:12]}",
        "state_schema_version": state_schema,
        "feature_spec": spec.to_dict(),
        "models": entries,
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(tmp / WEIGHTS_FILE),
                    "bytes": sizes["weights"], "graph_bytes_unshared": sizes["graphs_before"]},
        "side_tables": tables,
        "dataset": dataset,
        "created": {
            "by": "ranker export",
            "code_version": code_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "opset": _OPSET,
            "parity_atol": atol,
        },
    }  # fmt: skip


def _model_bytes(paths: list[Path]) -> int:
    """Bytes on disk one model needs: its graph files and the distinct shared tensors they
    point at."""
    ranges = set()
    for p in paths:
        for t in onnx.load(str(p), load_external_data=False).graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                ext = {e.key: e.value for e in t.external_data}
                ranges.add((int(ext["offset"]), int(ext["length"])))
    return sum(p.stat().st_size for p in paths) + sum(n for _, n in ranges)


def _id_highs(m: ExportModel, spec: FeatureSpec) -> dict[str, list[int]]:
    """Each id input's field sizes (random ids are drawn below them)."""
    fs = spec.fields
    return {
        "user_ctx": [f.size for f in fs if f.group in ("user", "context")],
        "cand_item": [f.size for f in fs if f.group == "item"],
        "request_list": [f.size for f in fs if f.source in REQUEST_LIST_SOURCES],
        "slot_list": [f.size for f in fs if f.source in SLOT_LIST_SOURCES],
        "cand_ids": [f.size for f in fs if f.group in ("item", "list")],
        "impression_ids": [f.size for f in fs],
    }


def real_batch(req: Requests, memory: int, n: int = 64, seed: int = 0) -> RealBatch:
    """``n`` logged impressions of ``req`` (seeded draw): their history windows, user+context
    ids, every logged candidate's item + list ids at the impression's slot, and the
    impression's own n field ids (the spec's)."""
    from training.data.features import candidate_ids
    from training.drl.batches import history

    rng = np.random.default_rng(seed)
    g = np.sort(rng.choice(req.n_impressions, size=min(n, req.n_impressions), replace=False))
    hist, mask = history(req, g, memory)
    r, t = req.imp_req[g], req.imp_slot[g]
    return RealBatch(
        buffer_ids=hist.astype(np.int64),
        mask=mask,
        user_ctx=req.user_ctx[r],
        cand_ids=candidate_ids(req, r, t).astype(np.int64),
        impressions=req.imp_ids[g],
    )
