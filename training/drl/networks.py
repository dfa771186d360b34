"""DRL-Rec's Q network (teacher and student), HRL-Rec's DDPG actor-critic, and their cost.

This module owns the networks of METHODS.md ("The state encoder", "DRL-Rec"): nn.Modules and
the pure tensor code around them, no training loop. Notation: ``n`` feature fields (22 in
``contract.features.DEFAULT_SPEC``: user 8, context 2, item 6, list 6, in that order), field
dim ``d_r``, memory ``m`` (the last ``m`` impressions of the session), GRU width ``H``, a
batch of ``B`` states with ``C`` candidates each.

Design, as settled for this project:

- One shared embedding (:class:`SharedEmbedding`): one table over all ``n`` fields, used by the
  impression encoder, by the session's initial state and by the candidate embedding ``a_t``.
- Impression encoder: ``F_i = E(ids_i)`` in ``R^{n x d_r}``, one multi-head self-attention
  block across the fields, ``F'_i = LayerNorm(F_i + MHA(F_i))`` (2 heads, no feed-forward
  sub-layer), ``f_i = Flatten(F'_i)`` in ``R^{n d_r}`` (paper Eq. 1). Ablation
  ``self_attention=False``: ``f_i = mean over fields of F_i`` in ``R^{d_r}`` (the paper's
  "average pooling to replace the self-attention"; the encoding shrinks to ``d_r``).
- Session state: a buffer ``(B, m, E)`` of the last ``m`` impression encodings, oldest first,
  with a mask ``(B, m)``; :func:`push` shifts one encoding in. ``h_0 = tanh(W_0 Flatten(E(user
  and context ids)))`` and ``s_t = GRU(f_1..f_m)`` started from ``h_0`` (Eq. 2); the GRU cell
  runs over all ``m`` slots and only updates where the mask is true, so left padding (and any
  other hole) is skipped and the graph has a fixed shape for export. Ablation ``gru=False``:
  ``s_t = tanh(W_s (h_0 + P mean_valid(f_i)))`` (average pooling over the valid buffer).
- Scorer: ``a_t = Flatten(E(item + list ids of the candidate))`` in ``R^{12 d_r}`` and
  ``q_t = MLP(Concat(s_t, a_t))`` with three ReLU hidden layers (Eq. 3); the last hidden layer
  is returned as the hint ``h_t``. The first layer is computed as ``W_s s_t + W_a a_t + b``,
  which equals ``W [s_t; a_t] + b``, so the state part is computed once per row and each
  candidate costs only ``W_a a_t`` and the rest of the MLP.
- Teacher and student: the same class; :meth:`QNetConfig.scaled` makes the student (default
  compression 0.5: ``d_r`` 16 -> 8, GRU 64 -> 32, MLP (128, 64, 32) -> (64, 32, 16)).

Serving splits a network into two graphs: a state step ``encode(impression_ids (B, n)) ->
(B, E)`` followed by :func:`push`, and ``score(buffer, mask, user_ctx_ids, cand_ids) -> (q,
hint)``. Training calls the same two methods (``encode_history`` is ``encode`` over a ``(B, m,
n)`` block), so serving and training share one code path.

Where this differs from METHODS.md and the authors' code:

- METHODS.md describes carrying the GRU hidden state incrementally across the whole session.
  Here the state is a sliding window of the last ``m`` encodings and the GRU re-runs over it
  at each scorer call (``m`` cheap GRU steps per slot); a window cannot be carried
  incrementally because dropping its oldest entry changes every later hidden state. The
  Transformer work, the expensive part, is still done once per impression.
- The authors' simplified TensorFlow code scores an impression from the state alone (the
  target item's features sit inside the impression's fields) and has no ``Concat(s_t, a_t)``;
  this module follows the paper's Eq. 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from contract.features import FeatureSpec

__all__ = [
    "ActorCritic",
    "FieldSelfAttention",
    "QHead",
    "QNetConfig",
    "QNetwork",
    "SharedEmbedding",
    "StateEncoder",
    "flops_breakdown",
    "flops_per_request",
    "param_count",
    "push",
]


def _round_half_up(x: float) -> int:
    # Python's round() rounds halves to even (round(2.5) == 2); widths should not depend on that.
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class QNetConfig:
    """Shape of a DRL-Rec Q network; the teacher's defaults, the student via :meth:`scaled`."""

    sizes: tuple[int, ...]
    """Embedding rows of each field in spec order: user, context, then item, list."""
    n_user_ctx: int = 10
    """How many leading fields are user + context; the rest are a candidate's item + list."""
    d_r: int = 16
    """Field embedding dimension."""
    heads: int = 2
    """Attention heads of the field self-attention; must divide ``d_r``."""
    gru_hidden: int = 64
    """Width ``H`` of the GRU state (and of ``h_0``)."""
    mlp: tuple[int, ...] = (128, 64, 32)
    """Hidden widths of the Q MLP; the last one is the hint layer."""
    memory: int = 10
    """``m``: how many of the session's last impressions the state reads."""
    self_attention: bool = True
    """False: average pooling across fields replaces the attention block (ablation)."""
    gru: bool = True
    """False: average pooling over the buffer replaces the GRU (ablation)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        object.__setattr__(self, "mlp", tuple(int(w) for w in self.mlp))
        if not 0 < self.n_user_ctx < len(self.sizes):
            raise ValueError(
                f"n_user_ctx={self.n_user_ctx} must leave at least one field on each side "
                f"of {len(self.sizes)} fields"
            )
        bad = [(j, s) for j, s in enumerate(self.sizes) if s < 1]
        if bad:
            raise ValueError(f"field {bad[0][0]} has size {bad[0][1]}; sizes must be >= 1")
        for name in ("d_r", "heads", "gru_hidden", "memory"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.mlp or min(self.mlp) < 1:
            raise ValueError(f"mlp={self.mlp} needs at least one hidden layer, widths >= 1")
        if self.self_attention and self.d_r % self.heads:
            raise ValueError(f"heads={self.heads} does not divide d_r={self.d_r}")

    @classmethod
    def from_spec(cls, spec: FeatureSpec, **overrides: object) -> QNetConfig:
        """Config for ``spec``, whose fields must be ordered user, context, item, list."""
        groups = [f.group for f in spec.fields]
        n_uc = len(spec.group("user")) + len(spec.group("context"))
        if any(g not in ("user", "context") for g in groups[:n_uc]):
            raise ValueError(f"spec must list user and context fields first, got {groups}")
        return cls(sizes=tuple(spec.sizes()), n_user_ctx=n_uc, **overrides)  # type: ignore[arg-type]

    def scaled(self, compression: float) -> QNetConfig:
        """The student's config: ``d_r`` and every hidden width times ``compression``.

        Widths are rounded half up, at least 1; ``d_r`` is rounded to a multiple of ``heads``
        (at least ``heads``) when self-attention is on. ``memory`` and the fields are kept.
        """
        if not compression > 0:
            raise ValueError(f"compression={compression} must be > 0")

        def w(x: int) -> int:
            return max(1, _round_half_up(x * compression))

        if self.self_attention:
            d_r = self.heads * max(1, _round_half_up(self.d_r * compression / self.heads))
        else:
            d_r = w(self.d_r)
        return replace(
            self,
            d_r=d_r,
            gru_hidden=w(self.gru_hidden),
            mlp=tuple(w(x) for x in self.mlp),
        )

    @property
    def n_fields(self) -> int:
        return len(self.sizes)

    @property
    def n_cand(self) -> int:
        """Fields of a candidate (item + list)."""
        return self.n_fields - self.n_user_ctx

    @property
    def enc_dim(self) -> int:
        """``E``: size of one impression encoding."""
        return self.n_fields * self.d_r if self.self_attention else self.d_r

    @property
    def cand_dim(self) -> int:
        """Size of ``a_t``, the flattened candidate embedding."""
        return self.n_cand * self.d_r

    @property
    def hint_dim(self) -> int:
        return self.mlp[-1]


def push(
    buffer: torch.Tensor, mask: torch.Tensor, enc: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift one impression encoding into the state buffer; pure, returns new tensors.

    ``buffer (B, m, E)`` oldest first, ``mask (B, m)`` bool, ``enc (B, E)``. The oldest slot
    falls out, ``enc`` becomes the newest (last) slot and its mask entry is set.
    """
    if buffer.dim() != 3 or enc.shape != (buffer.shape[0], buffer.shape[2]):
        raise ValueError(f"push: buffer {tuple(buffer.shape)} and enc {tuple(enc.shape)} differ")
    if mask.shape != buffer.shape[:2]:
        raise ValueError(f"push: mask {tuple(mask.shape)} != buffer {tuple(buffer.shape[:2])}")
    buffer = torch.cat([buffer[:, 1:], enc.unsqueeze(1)], dim=1)
    mask = torch.cat([mask[:, 1:], torch.ones_like(mask[:, :1])], dim=1)
    return buffer, mask


class SharedEmbedding(nn.Module):
    """One table for all fields; embeds any contiguous run of fields.

    ``E(x)[..., j] = T[o_{first+j} + x[..., j]]`` with ``o_k = sum_{i<k} sizes[i]``: the same
    rows whether a field is embedded inside an impression, as user/context, or as a candidate.
    Shapes: ``(..., F')`` int64 with ``first + F' <= n`` -> ``(..., F', d_r)``.
    (The point-wise baselines' ``FieldEmbedding`` embeds all fields at once only; this one
    needs the ``first`` offset.)
    """

    def __init__(self, sizes: Sequence[int], dim: int, init_std: float = 0.05) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.table = nn.Embedding(sum(sizes), dim)
        nn.init.normal_(self.table.weight, std=init_std)

    def forward(self, ids: torch.Tensor, first: int = 0) -> torch.Tensor:
        return self.table(ids + self.offsets[first : first + ids.shape[-1]])


class FieldSelfAttention(nn.Module):
    """One multi-head self-attention block across fields: ``LayerNorm(X + MHA(X))``.

    ``MHA(X) = Concat_h(softmax(Q_h K_h^T / sqrt(d_h)) V_h) W_o`` with ``Q, K, V = X W_{q,k,v}``
    and ``d_h = d / heads``. Written out (rather than ``nn.MultiheadAttention``) so the
    exported graph is plain matmuls. Shapes: ``(N, n, d) -> (N, n, d)``.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads={heads} does not divide dim={dim}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_rows, n, d = x.shape
        dh = d // self.heads
        qkv = self.qkv(x).reshape(n_rows, n, 3, self.heads, dh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (N, heads, n, dh)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(n_rows, n, d)
        return self.norm(x + self.out(y))


class StateEncoder(nn.Module):
    """The shared embedding, the impression encoder and the session state ``s_t``.

    ``encode``: ``(B, n)`` impression ids -> ``(B, E)``. ``forward``: ``buffer (B, m, E)``,
    ``mask (B, m)`` bool, ``user_ctx_ids (B, n_user_ctx)`` -> ``s (B, H)``.
    """

    def __init__(self, cfg: QNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = SharedEmbedding(cfg.sizes, cfg.d_r)
        self.attention = FieldSelfAttention(cfg.d_r, cfg.heads) if cfg.self_attention else None
        self.init = nn.Linear(cfg.n_user_ctx * cfg.d_r, cfg.gru_hidden)
        if cfg.gru:
            self.gru = nn.GRUCell(cfg.enc_dim, cfg.gru_hidden)
        else:
            self.pool_proj = nn.Linear(cfg.enc_dim, cfg.gru_hidden)
            self.pool_out = nn.Linear(cfg.gru_hidden, cfg.gru_hidden)

    def encode(self, impression_ids: torch.Tensor) -> torch.Tensor:
        """``f_i``: ``(..., n)`` ids -> ``(..., E)``."""
        lead = impression_ids.shape[:-1]
        e = self.embedding(impression_ids.reshape(-1, self.cfg.n_fields))  # (N, n, d_r)
        if self.attention is None:
            f = e.mean(dim=1)
        else:
            f = self.attention(e).flatten(1)
        return f.reshape(*lead, self.cfg.enc_dim)

    def initial(self, user_ctx_ids: torch.Tensor) -> torch.Tensor:
        """``h_0 = tanh(W_0 Flatten(E(user, context)))``: ``(B, n_user_ctx)`` -> ``(B, H)``."""
        return torch.tanh(self.init(self.embedding(user_ctx_ids, 0).flatten(1)))

    def project(self, enc: torch.Tensor) -> torch.Tensor:
        """The GRU's input half ``W_ih f + b_ih`` (``(..., E) -> (..., 3H)``), or ``f`` itself
        without a GRU. Training computes it once per distinct impression of a batch and
        gathers it into every window that holds the impression (:meth:`from_projected`)."""
        if not self.cfg.gru:
            return enc
        return F.linear(enc, self.gru.weight_ih, self.gru.bias_ih)

    def from_projected(
        self, proj: torch.Tensor, mask: torch.Tensor, user_ctx_ids: torch.Tensor
    ) -> torch.Tensor:
        """``s_t`` from a buffer of :meth:`project` outputs; equals ``forward`` on encodings.

        The GRU step is PyTorch's GRUCell written out: ``r = sigma(i_r + h_r)``,
        ``z = sigma(i_z + h_z)``, ``n = tanh(i_n + r * h_n)``, ``h' = (1 - z) n + z h``.
        """
        if not self.cfg.gru:
            return self.forward(proj, mask, user_ctx_ids)
        h = self.initial(user_ctx_ids)
        w_hh, b_hh = self.gru.weight_hh, self.gru.bias_hh
        for t in range(proj.shape[1]):
            i_r, i_z, i_n = proj[:, t].chunk(3, dim=1)
            h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h = torch.where(mask[:, t, None], (1 - z) * n + z * h, h)
        return h

    def forward(
        self, buffer: torch.Tensor, mask: torch.Tensor, user_ctx_ids: torch.Tensor
    ) -> torch.Tensor:
        h = self.initial(user_ctx_ids)
        if self.cfg.gru:
            for t in range(buffer.shape[1]):
                h = torch.where(mask[:, t, None], self.gru(buffer[:, t], h), h)
            return h
        valid = mask.unsqueeze(-1)
        total = torch.where(valid, buffer, torch.zeros_like(buffer)).sum(dim=1)
        mean = total / valid.sum(dim=1).clamp_min(1).to(buffer.dtype)
        return torch.tanh(self.pool_out(h + self.pool_proj(mean)))


class QHead(nn.Module):
    """``q = MLP(Concat(s, x))`` over ``C`` vectors ``x`` per state, returning the last hidden.

    The first layer is ``relu(W_s s + W_x x + b)`` (= ``W [s; x] + b``), the state part computed
    once per row. Shapes: ``s (B, S)``, ``x (B, C, X)`` -> ``q (B, C)``, ``h (B, C, widths[-1])``.
    """

    def __init__(self, state_dim: int, item_dim: int, widths: Sequence[int]) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        self.state_in = nn.Linear(state_dim, widths[0])
        self.item_in = nn.Linear(item_dim, widths[0], bias=False)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(widths))
        self.out = nn.Linear(widths[-1], 1)

    def forward(self, s: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_item_part(s, self.item_in(x))

    def from_item_part(
        self, s: torch.Tensor, item_part: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The head given ``W_x x`` ``(B, C, widths[0])`` computed elsewhere."""
        h = F.relu(self.state_in(s).unsqueeze(1) + item_part)
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.out(h).squeeze(-1), h


class QNetwork(nn.Module):
    """DRL-Rec's Q network; ``forward`` is :meth:`score`.

    Shapes: impression ids ``(B, n)``, buffer ``(B, m, E)``, mask ``(B, m)`` bool,
    ``user_ctx_ids (B, n_user_ctx)``, ``cand_ids (B, C, n - n_user_ctx)`` (item then list
    fields, the list fields computed for the slot being filled), ``q (B, C)``,
    ``hint (B, C, mlp[-1])``.
    """

    def __init__(self, cfg: QNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.state_encoder = StateEncoder(cfg)
        self.head = QHead(cfg.gru_hidden, cfg.cand_dim, cfg.mlp)

    def encode(self, impression_ids: torch.Tensor) -> torch.Tensor:
        """One impression encoding per row: ``(B, n) -> (B, E)``; serving's state step."""
        return self.state_encoder.encode(impression_ids)

    def encode_history(self, history_ids: torch.Tensor) -> torch.Tensor:
        """A block of impressions at once: ``(B, m, n) -> (B, m, E)``, equal to ``encode``."""
        return self.state_encoder.encode(history_ids)

    def empty_buffer(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A session start: zero buffer ``(B, m, E)`` and an all-false mask ``(B, m)``."""
        p = self.head.out.weight
        buffer = torch.zeros(batch_size, self.cfg.memory, self.cfg.enc_dim, dtype=p.dtype)
        mask = torch.zeros(batch_size, self.cfg.memory, dtype=torch.bool)
        return buffer.to(p.device), mask.to(p.device)

    def state(
        self, buffer: torch.Tensor, mask: torch.Tensor, user_ctx_ids: torch.Tensor
    ) -> torch.Tensor:
        """``s_t (B, H)``; compute once and reuse it for any number of candidates."""
        return self.state_encoder(buffer, mask, user_ctx_ids)

    def project(self, enc: torch.Tensor) -> torch.Tensor:
        """See :meth:`StateEncoder.project` (training's shortcut; serving uses ``state``)."""
        return self.state_encoder.project(enc)

    def state_projected(
        self, proj: torch.Tensor, mask: torch.Tensor, user_ctx_ids: torch.Tensor
    ) -> torch.Tensor:
        """``s_t`` from projected buffer entries; equal to :meth:`state` on the encodings."""
        return self.state_encoder.from_projected(proj, mask, user_ctx_ids)

    def embed_candidates(self, cand_ids: torch.Tensor) -> torch.Tensor:
        """``a_t = Flatten(E(item + list ids))``: ``(B, C, n_cand) -> (B, C, n_cand d_r)``."""
        return self.state_encoder.embedding(cand_ids, self.cfg.n_user_ctx).flatten(-2)

    def q_from_state(
        self, s: torch.Tensor, cand_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q (B, C), hint (B, C, mlp[-1]))`` for a precomputed state ``s (B, H)``.

        With more candidates in the call than rows in the candidate fields' embedding tables
        (training: exploration inputs of 1000 per state), the first layer's item part
        ``W_x Flatten(E(ids)) = sum_f W_x^(f) E_f(id_f)`` is computed from per-field projected
        tables ``E_f W_x^(f)T`` and an ``embedding_bag`` sum: the same value (up to float
        rounding) at a fraction of the cost. Small calls (serving) take the direct path.
        """
        b, c, _ = cand_ids.shape
        if b * c > self._cand_rows:
            return self.head.from_item_part(s, self._projected_item_part(cand_ids))
        return self.head(s, self.embed_candidates(cand_ids))

    @property
    def _cand_rows(self) -> int:
        return sum(self.cfg.sizes[self.cfg.n_user_ctx :])

    def _projected_item_part(self, cand_ids: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        emb = self.state_encoder.embedding
        n_uc, d = cfg.n_user_ctx, cfg.d_r
        lo = int(sum(cfg.sizes[:n_uc]))
        w = self.head.item_in.weight  # (w0, n_cand * d)
        w0 = w.shape[0]
        parts, start = [], lo
        for f, size in enumerate(cfg.sizes[n_uc:]):
            rows = emb.table.weight[start : start + size]  # (size, d)
            parts.append(rows @ w[:, f * d : (f + 1) * d].T)  # (size, w0)
            start += size
        table = torch.cat(parts)  # (rows of the candidate fields, w0)
        idx = cand_ids + (emb.offsets[n_uc:] - lo)
        b, c, n = cand_ids.shape
        return F.embedding_bag(idx.reshape(b * c, n), table, mode="sum").view(b, c, w0)

    def score(
        self,
        buffer: torch.Tensor,
        mask: torch.Tensor,
        user_ctx_ids: torch.Tensor,
        cand_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Q values and hints of ``C`` candidates per state; serving's scorer graph."""
        _check_inputs(self.cfg, buffer, mask, user_ctx_ids, cand_ids)
        return self.q_from_state(self.state(buffer, mask, user_ctx_ids), cand_ids)

    def forward(
        self,
        buffer: torch.Tensor,
        mask: torch.Tensor,
        user_ctx_ids: torch.Tensor,
        cand_ids: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score(buffer, mask, user_ctx_ids, cand_ids)


class ActorCritic(nn.Module):
    """HRL-Rec's item recommender (Xie et al. 2021) as a DDPG actor-critic on the same encoder.

    - item vectors ``v = W a_t`` (``W`` linear, no bias), ``(B, C, D)`` with ``D =
      action_dim`` (default the size of ``a_t``);
    - actor ``mu(s) = tanh(MLP(s))`` in ``R^D``; a candidate's score is ``<mu(s), W a_t>``;
    - critic ``Q(s, x) = MLP(Concat(s, x))`` (a :class:`QHead`) for ``x`` in ``R^D``: a logged
      item's ``W a_t`` for the TD target, the actor's ``mu(s)`` for the policy gradient.

    The critic reads ``W a_t`` rather than ``a_t`` so that actions and items live in one
    space. The encoder is shared by actor and critic; which loss updates it (for example the
    critic's only, with ``s`` detached in the actor loss) is the trainer's choice.
    """

    def __init__(
        self,
        cfg: QNetConfig,
        actor_hidden: Sequence[int] = (64,),
        action_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.action_dim = int(action_dim or cfg.cand_dim)
        self.state_encoder = StateEncoder(cfg)
        self.item_proj = nn.Linear(cfg.cand_dim, self.action_dim, bias=False)
        layers: list[nn.Module] = []
        d = cfg.gru_hidden
        for w in actor_hidden:
            layers += [nn.Linear(d, int(w)), nn.ReLU()]
            d = int(w)
        layers += [nn.Linear(d, self.action_dim), nn.Tanh()]
        self.actor = nn.Sequential(*layers)
        self.critic = QHead(cfg.gru_hidden, self.action_dim, cfg.mlp)

    def encode(self, impression_ids: torch.Tensor) -> torch.Tensor:
        return self.state_encoder.encode(impression_ids)

    def state(
        self, buffer: torch.Tensor, mask: torch.Tensor, user_ctx_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.state_encoder(buffer, mask, user_ctx_ids)

    def item_vectors(self, cand_ids: torch.Tensor) -> torch.Tensor:
        """``W a_t``: ``(B, C, n_cand) -> (B, C, D)``."""
        a = self.state_encoder.embedding(cand_ids, self.cfg.n_user_ctx).flatten(-2)
        return self.item_proj(a)

    def action(self, s: torch.Tensor) -> torch.Tensor:
        """``mu(s)``: ``(B, H) -> (B, D)`` in ``[-1, 1]``."""
        return self.actor(s)

    def scores(self, s: torch.Tensor, cand_ids: torch.Tensor) -> torch.Tensor:
        """``<mu(s), W a_t>``: ``(B, C)``."""
        return torch.einsum("bd,bcd->bc", self.action(s), self.item_vectors(cand_ids))

    def critic_q(self, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``Q(s, x)``: ``s (B, H)``, ``x (B, C, D)`` -> ``(B, C)``."""
        return self.critic(s, x)[0]

    def forward(
        self,
        buffer: torch.Tensor,
        mask: torch.Tensor,
        user_ctx_ids: torch.Tensor,
        cand_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Ranking scores ``(B, C)``."""
        _check_inputs(self.cfg, buffer, mask, user_ctx_ids, cand_ids)
        return self.scores(self.state(buffer, mask, user_ctx_ids), cand_ids)


def _check_inputs(
    cfg: QNetConfig,
    buffer: torch.Tensor,
    mask: torch.Tensor,
    user_ctx_ids: torch.Tensor,
    cand_ids: torch.Tensor,
) -> None:
    b = buffer.shape[0]
    expected = {
        "buffer": (buffer, (b, None, cfg.enc_dim)),
        "mask": (mask, (b, buffer.shape[1])),
        "user_ctx_ids": (user_ctx_ids, (b, cfg.n_user_ctx)),
        "cand_ids": (cand_ids, (b, None, cfg.n_cand)),
    }
    for name, (x, shape) in expected.items():
        ok = x.dim() == len(shape) and all(
            e is None or e == s for e, s in zip(shape, x.shape, strict=True)
        )
        if not ok:
            want = tuple("*" if e is None else e for e in shape)
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {want}")


def param_count(module: nn.Module) -> int:
    """Number of scalar parameters (embedding tables included; buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def flops_breakdown(cfg: QNetConfig, n_candidates: int = 200, k: int = 10) -> dict[str, int]:
    """Multiply-adds of serving one list of ``k`` items from ``n_candidates``, by part.

    Serving fills ``k`` slots. Each slot is one scorer call (``h_0``, a GRU pass over the ``m``
    buffer slots, the state half of the MLP's first layer, then the per-candidate MLP for all
    ``n_candidates``; placed items are masked, not removed, so every call scores all of them)
    followed by one state step (encode the placed impression, :func:`push`: no arithmetic).

    - ``encoder`` = ``k * (3 n d^2 + 2 n^2 d + n d^2)``: QKV projections, the ``heads`` score
      matrices and weighted sums (``n^2 d_h`` each, ``d = heads d_h``), the output
      projection; 0 with average pooling (additions only).
    - ``state`` = ``k * (n_uc d H + m * 3H(E + H) + H w_1)``: ``h_0``, ``m`` GRU cell steps
      (``W_ih`` is ``3H x E``, ``W_hh`` is ``3H x H``), the state part of the first MLP layer;
      with ``gru=False`` the GRU term is ``E H + H^2`` (projection and output layer).
    - ``candidates`` = ``k * n_candidates * (A w_1 + sum_i w_i w_{i+1} + w_last)`` with ``A =
      n_cand d``: the item part of the first layer, the other layers and the output.

    Counted: matrix multiply-adds only. Not counted: biases, activations, the softmax,
    LayerNorm, the GRU gates' element-wise products, means, embedding gathers (each linear in
    a width, against products of two widths).
    """
    w = cfg.mlp
    per_candidate = cfg.cand_dim * w[0] + sum(a * b for a, b in pairwise(w)) + w[-1]
    return {
        "encoder": k * encoder_flops(cfg),
        "state": k * (state_flops(cfg) + cfg.gru_hidden * w[0]),
        "candidates": k * n_candidates * per_candidate,
    }


def encoder_flops(cfg: QNetConfig) -> int:
    """Multiply-adds of encoding one impression: ``3 n d^2 + 2 n^2 d + n d^2`` with the field
    self-attention, 0 with average pooling (:func:`flops_breakdown`'s ``encoder`` per slot)."""
    n, d = cfg.n_fields, cfg.d_r
    return (3 * n * d * d + 2 * n * n * d + n * d * d) if cfg.self_attention else 0


def state_flops(cfg: QNetConfig) -> int:
    """Multiply-adds of ``s_t`` from the buffer: ``n_uc d H + m 3H(E + H)`` (``h_0``, the GRU
    steps), with ``gru=False`` ``n_uc d H + E H + H^2`` (:func:`flops_breakdown`)."""
    d, h, m, e = cfg.d_r, cfg.gru_hidden, cfg.memory, cfg.enc_dim
    sequence = m * 3 * h * (e + h) if cfg.gru else e * h + h * h
    return cfg.n_user_ctx * d * h + sequence


def flops_per_request(cfg: QNetConfig, n_candidates: int = 200, k: int = 10) -> int:
    """Total multiply-adds of one request; see :func:`flops_breakdown` for what is counted."""
    return sum(flops_breakdown(cfg, n_candidates, k).values())
