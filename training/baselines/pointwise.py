"""Point-wise CTR baselines and the one loop that trains them.

This module owns the seven point-wise rankers of DRL-Rec's Table 2 (FM, Wide&Deep, NFM, AFM,
DeepFM, AutoInt, AFN), the field embedding they share, and a single training loop
(:func:`train_pointwise`) plus :func:`predict`. MMRF's Wide&Deep / DeepFM baselines, which are
trained on impressions weighted by a weighted sum of feedback, use the same loop through its
per-sample ``weights``.

Every model reads a ``(B, F)`` int64 matrix of categorical field ids, field ``j`` with ids in
``[0, sizes[j])`` (0 = unknown; see :mod:`contract.features`), and returns ``(B,)`` logits
(pre-sigmoid). Notation in the docstrings: ``e_i`` is the ``d``-dim embedding of field ``i``,
``w_i`` its first-order weight, ``<a, b>`` an inner product, ``⊙`` an element-wise product.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from training.divergence import check_finite

__all__ = [
    "AFM",
    "AFN",
    "FM",
    "MODELS",
    "NFM",
    "AutoInt",
    "DeepFM",
    "FieldEmbedding",
    "FieldLinear",
    "TrainResult",
    "WideDeep",
    "bi_interaction",
    "build_model",
    "epoch_batches",
    "fm_pairwise",
    "has_batch_norm",
    "predict",
    "seeded_build_model",
    "train_pointwise",
    "uses_batch_norm",
    "weighted_bce",
]


def _offsets(sizes: Sequence[int]) -> torch.Tensor:
    sizes = [int(s) for s in sizes]
    if not sizes:
        raise ValueError("sizes is empty; need at least one field")
    bad = [(j, s) for j, s in enumerate(sizes) if s < 1]
    if bad:
        j, s = bad[0]
        raise ValueError(f"field {j} has size {s}; sizes must be >= 1")
    return torch.tensor([0, *np.cumsum(sizes[:-1]).tolist()], dtype=torch.long)


class FieldEmbedding(nn.Module):
    """All fields' embeddings in one table, field ``j`` owning rows ``[o_j, o_j + sizes[j])``.

    ``E(x)[b, j] = T[o_j + x[b, j]]`` with ``o_j = sum_{k<j} sizes[k]``. One table (rather than
    one per field) means one gather per batch and one parameter to hand to an optimiser.
    Shapes: ``(B, F)`` int64 -> ``(B, F, d)``.
    """

    offsets: torch.Tensor

    def __init__(self, sizes: Sequence[int], dim: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.register_buffer("offsets", _offsets(self.sizes), persistent=False)
        self.table = nn.Embedding(sum(self.sizes), dim)
        # Factorisation models sum F(F-1)/2 products of embeddings; torch's N(0, 1) default
        # would start them with huge, noisy logits.
        nn.init.normal_(self.table.weight, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table(x + self.offsets)


class FieldLinear(nn.Module):
    """First-order term ``w_0 + sum_j w_j[x_j]`` over the same offsets; ``(B, F) -> (B,)``."""

    offsets: torch.Tensor

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.register_buffer("offsets", _offsets(self.sizes), persistent=False)
        self.weight = nn.Embedding(sum(self.sizes), 1)
        nn.init.zeros_(self.weight.weight)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight(x + self.offsets).sum(dim=(1, 2)) + self.bias


def bi_interaction(e: torch.Tensor) -> torch.Tensor:
    """Bi-interaction pooling ``sum_{i<j} e_i ⊙ e_j = ((sum_i e_i)^2 - sum_i e_i^2) / 2``.

    Rendle's O(F d) identity instead of the O(F^2 d) double loop. ``(B, F, d) -> (B, d)``.
    """
    s = e.sum(dim=1)
    return 0.5 * (s * s - (e * e).sum(dim=1))


def fm_pairwise(e: torch.Tensor) -> torch.Tensor:
    """FM's second-order term ``sum_{i<j} <e_i, e_j>``; ``(B, F, d) -> (B,)``."""
    return bi_interaction(e).sum(dim=-1)


def _mlp(
    in_dim: int, hidden: Sequence[int], dropout: float = 0.0, batch_norm: bool = False
) -> nn.Sequential:
    """ReLU MLP ``in_dim -> hidden... -> 1``."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers.append(nn.Linear(d, h))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = h
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


class FM(nn.Module):
    """Factorization Machine (Rendle, ICDM 2010).

    ``y = w_0 + sum_i w_i + sum_{i<j} <e_i, e_j>``, the pairwise sum computed in O(F d) as
    ``sum_k ((sum_i e_ik)^2 - sum_i e_ik^2) / 2``.
    """

    def __init__(self, sizes: Sequence[int], embed_dim: int = 16) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.embedding = FieldEmbedding(sizes, embed_dim)
        self.linear = FieldLinear(sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + fm_pairwise(self.embedding(x))


class WideDeep(nn.Module):
    """Wide & Deep (Cheng et al., DLRS 2016).

    ``y = w_0 + sum_i w_i  +  MLP([e_1; ...; e_F])``. The wide part here is first-order over
    the fields only; the paper's hand-crafted cross-product columns are left out, as in the
    usual CTR benchmarks (DRL-Rec compares against that form).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        embed_dim: int = 16,
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.embedding = FieldEmbedding(sizes, embed_dim)
        self.linear = FieldLinear(sizes)
        self.deep = _mlp(len(self.sizes) * embed_dim, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.deep(self.embedding(x).flatten(1)).squeeze(-1)
        return self.linear(x) + deep


class NFM(nn.Module):
    """Neural Factorization Machine (He & Chua, SIGIR 2017).

    ``y = w_0 + sum_i w_i + MLP(BN(sum_{i<j} e_i ⊙ e_j))``: FM's pairwise products pooled to one
    ``d``-vector (bi-interaction), with batch norm and dropout on it as in the paper.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        embed_dim: int = 16,
        hidden: Sequence[int] = (64,),
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.embedding = FieldEmbedding(sizes, embed_dim)
        self.linear = FieldLinear(sizes)
        # The paper normalises the bi-interaction output: its scale grows with F and with the
        # embedding norms, which otherwise makes the first hidden layer hard to train.
        self.bi_norm: nn.Module = nn.BatchNorm1d(embed_dim) if batch_norm else nn.Identity()
        self.bi_dropout = nn.Dropout(dropout)
        self.deep = _mlp(embed_dim, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.bi_dropout(self.bi_norm(bi_interaction(self.embedding(x))))
        return self.linear(x) + self.deep(z).squeeze(-1)


class AFM(nn.Module):
    """Attentional Factorization Machine (Xiao et al., IJCAI 2017).

    ``y = w_0 + sum_i w_i + p^T sum_{i<j} a_ij (e_i ⊙ e_j)``, with
    ``a_ij = softmax_{ij}(h^T ReLU(W (e_i ⊙ e_j) + b))`` over the F(F-1)/2 pairs.
    """

    pair_i: torch.Tensor
    pair_j: torch.Tensor

    def __init__(
        self,
        sizes: Sequence[int],
        embed_dim: int = 16,
        attention_dim: int = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        n = len(self.sizes)
        if n < 2:
            raise ValueError(f"AFM needs at least 2 fields to form pairs, got {n}")
        self.embedding = FieldEmbedding(sizes, embed_dim)
        self.linear = FieldLinear(sizes)
        rows, cols = torch.triu_indices(n, n, offset=1)
        self.register_buffer("pair_i", rows, persistent=False)
        self.register_buffer("pair_j", cols, persistent=False)
        self.attention = nn.Sequential(
            nn.Linear(embed_dim, attention_dim),
            nn.ReLU(),
            nn.Linear(attention_dim, 1, bias=False),
        )
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(embed_dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embedding(x)
        pairs = e[:, self.pair_i] * e[:, self.pair_j]  # (B, P, d)
        a = torch.softmax(self.attention(pairs), dim=1)  # (B, P, 1)
        pooled = self.dropout((a * pairs).sum(dim=1))  # (B, d)
        return self.linear(x) + self.project(pooled).squeeze(-1)


class DeepFM(nn.Module):
    """DeepFM (Guo et al., IJCAI 2017).

    ``y = w_0 + sum_i w_i + sum_{i<j} <e_i, e_j> + MLP([e_1; ...; e_F])``: an FM and a deep
    MLP reading the same embeddings, so no feature engineering is needed for the wide side.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        embed_dim: int = 16,
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.embedding = FieldEmbedding(sizes, embed_dim)
        self.linear = FieldLinear(sizes)
        self.deep = _mlp(len(self.sizes) * embed_dim, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embedding(x)
        return self.linear(x) + fm_pairwise(e) + self.deep(e.flatten(1)).squeeze(-1)


class _InteractingLayer(nn.Module):
    """One AutoInt layer: multi-head self-attention over fields with a residual projection."""

    def __init__(self, in_dim: int, head_dim: int, n_heads: int, residual: bool) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        out = head_dim * n_heads
        self.query = nn.Linear(in_dim, out, bias=False)
        self.key = nn.Linear(in_dim, out, bias=False)
        self.value = nn.Linear(in_dim, out, bias=False)
        self.residual = nn.Linear(in_dim, out, bias=False) if residual else None

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        b, f, _ = e.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, f, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, F, dh)

        q, k, v = heads(self.query(e)), heads(self.key(e)), heads(self.value(e))
        # The paper's similarity is the plain inner product (no 1/sqrt(d) scaling).
        att = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        out = (att @ v).transpose(1, 2).reshape(b, f, self.n_heads * self.head_dim)
        if self.residual is not None:
            out = out + self.residual(e)
        return torch.relu(out)


class AutoInt(nn.Module):
    """AutoInt (Song et al., CIKM 2019).

    Per layer and head ``h``: ``ẽ_m^h = sum_k softmax_k(<W_Q^h e_m, W_K^h e_k>) W_V^h e_k``,
    ``e_m <- ReLU([ẽ_m^1; ...; ẽ_m^H] + W_Res e_m)``; after L layers
    ``y = w^T [e_1; ...; e_F] + b``.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        embed_dim: int = 16,
        n_layers: int = 3,
        n_heads: int = 2,
        head_dim: int = 16,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"AutoInt needs n_layers >= 1, got {n_layers}")
        self.sizes = tuple(int(s) for s in sizes)
        self.embedding = FieldEmbedding(sizes, embed_dim)
        dims = [embed_dim] + [n_heads * head_dim] * n_layers
        self.layers = nn.ModuleList(
            _InteractingLayer(dims[i], head_dim, n_heads, residual) for i in range(n_layers)
        )
        self.out = nn.Linear(len(self.sizes) * dims[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embedding(x)
        for layer in self.layers:
            e = layer(e)
        return self.out(e.flatten(1)).squeeze(-1)


class AFN(nn.Module):
    """Adaptive Factorization Network (Cheng, Shen & Huang, AAAI 2020).

    Logarithmic transformation layer: log-neuron ``l`` is ``y_l = exp(sum_i w_li ln|e_i|)``
    (element-wise over the ``d`` embedding dims, i.e. ``prod_i e_i^{w_li}``, a learned-order
    cross feature), then ``y = MLP([y_1; ...; y_L])``. ``|e|`` is clamped to ``eps`` and both
    the log and exp outputs are batch-normalised, as in the paper's reference code.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        embed_dim: int = 16,
        log_neurons: int = 64,
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.0,
        eps: float = 1e-5,
        max_exponent: float = 30.0,
    ) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.eps, self.max_exponent = eps, max_exponent
        n = len(self.sizes)
        self.embedding = FieldEmbedding(sizes, embed_dim)
        self.log_norm = nn.BatchNorm1d(n)
        self.log_weights = nn.Linear(n, log_neurons)
        self.exp_norm = nn.BatchNorm1d(log_neurons)
        self.deep = _mlp(log_neurons * embed_dim, hidden, dropout, batch_norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embedding(x)  # (B, F, d)
        log_e = self.log_norm(torch.log(e.abs().clamp_min(self.eps)))
        z = self.log_weights(log_e.transpose(1, 2)).transpose(1, 2)  # (B, L, d)
        # exp of an unbounded linear form overflows float32 near 88; one such batch would
        # turn every parameter to NaN, so cap the exponent well below that.
        y = self.exp_norm(torch.exp(z.clamp(max=self.max_exponent)))
        return self.deep(y.flatten(1)).squeeze(-1)


MODELS: dict[str, type[nn.Module]] = {
    "fm": FM,
    "wide_deep": WideDeep,
    "nfm": NFM,
    "afm": AFM,
    "deepfm": DeepFM,
    "autoint": AutoInt,
    "afn": AFN,
}


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` holds a batch-norm layer. In training mode such a layer normalises
    over the batch and cannot take a one-row batch (torch raises), so :func:`train_pointwise`
    never feeds it one."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@functools.cache
def uses_batch_norm(name: str) -> bool:
    """Whether the model ``MODELS[name]`` built with its defaults has batch norm (NFM, AFN):
    such a model needs ``batch_size >= 2``. Configs check it before any work starts.

    Raises:
        ValueError: ``name`` is not in :data:`MODELS`.
    """
    return has_batch_norm(build_model(name, (2, 2), 2))


def epoch_batches(n: int, batch_size: int, min_rows: int = 1) -> int:
    """The number of batches an epoch of ``n`` rows is cut into by ``torch.tensor_split``.

    ``k = ceil(n / batch_size)`` near-equal parts (sizes ``floor(n/k)`` or ``ceil(n/k)``, so no
    tail batch of a few rows), reduced to ``floor(n / min_rows)`` when ``k`` parts would leave a
    part under ``min_rows`` rows: the rows of the would-be short batch are merged into the
    others. ``min_rows`` is 2 for a model with batch norm (e.g. ``n=3, batch_size=2``: one
    batch of 3, not 2 + 1; ``n=5``: 3 + 2, not 2 + 2 + 1), 1 otherwise (no change).

    Raises:
        ValueError: ``n < min_rows``, ``batch_size < min_rows`` or ``min_rows < 1``.
    """
    if min_rows < 1 or batch_size < min_rows or n < min_rows:
        raise ValueError(
            f"need n >= min_rows and batch_size >= min_rows >= 1, got n={n}, "
            f"batch_size={batch_size}, min_rows={min_rows}"
        )
    return min(-(-n // batch_size), n // min_rows)


def build_model(name: str, sizes: Sequence[int], embed_dim: int = 16, **kw: Any) -> nn.Module:
    """Construct ``MODELS[name](sizes, embed_dim, **kw)``; the init uses torch's global RNG."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown point-wise model {name!r}; valid names: {', '.join(sorted(MODELS))}"
        ) from None
    return cls(sizes, embed_dim, **kw)


def seeded_build_model(
    name: str, sizes: Sequence[int], seed: int, embed_dim: int = 16, **kw: Any
) -> nn.Module:
    """:func:`build_model` with a deterministic init from ``seed``, leaving torch's global RNG
    state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name, sizes, embed_dim, **kw)


def weighted_bce(
    logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``mean_b w_b * BCE(sigmoid(logit_b), y_b)``; ``w = 1`` when ``weights`` is None.

    Dividing by the batch size (not ``sum w``) keeps a zero-weight sample out of the gradient
    and keeps a batch whose weights are all zero from producing 0/0.
    """
    return F.binary_cross_entropy_with_logits(logits, y, weight=weights, reduction="mean")


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_pointwise` reports.

    Attributes:
        train_loss_history: mean weighted training loss over each window of ``log_every``
            optimiser steps, in order (the last window may be shorter).
        valid_loss: unweighted mean BCE on the validation set after training, or None.
        seconds: wall-clock seconds spent in the training loop (validation excluded).
        n_samples: number of training rows (per epoch).
    """

    train_loss_history: list[float]
    valid_loss: float | None
    seconds: float
    n_samples: int


def _check_x(model: nn.Module, x: np.ndarray, what: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{what} must be (N, F), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{what} must hold integer field ids, got dtype {x.dtype}")
    sizes = getattr(model, "sizes", None)
    if sizes is None or x.shape[0] == 0:
        return
    if x.shape[1] != len(sizes):
        raise ValueError(f"{what} has {x.shape[1]} fields, the model expects {len(sizes)}")
    # Offsets would silently send an out-of-range id of field j into field j+1's rows.
    bad = (x < 0) | (x >= np.asarray(sizes))
    if bad.any():
        j = int(np.argmax(bad.any(axis=0)))
        v = int(x[bad[:, j], j][0])
        raise ValueError(f"{what}: field {j} has id {v} outside [0, {sizes[j]})")


def _check_target(v: np.ndarray, n: int, what: str) -> None:
    if v.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},), got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{what} has non-finite values")


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


@torch.no_grad()
def _logits(model: nn.Module, x: np.ndarray, batch_size: int) -> torch.Tensor:
    """Eval-mode logits on CPU, restoring the model's train/eval flag afterwards."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))
    try:
        out = [model(xb.to(device)).float().cpu() for xb in xt.split(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def predict(model: nn.Module, x: np.ndarray, batch_size: int = 16384) -> np.ndarray:
    """Click probabilities ``sigmoid(model(x))``, ``(N, F)`` -> ``(N,)`` float32, in eval mode."""
    _check_x(model, x, "x")
    return torch.sigmoid(_logits(model, x, batch_size)).numpy()


def train_pointwise(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    x_valid: np.ndarray | None = None,
    y_valid: np.ndarray | None = None,
    epochs: int = 1,
    batch_size: int = 4096,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log_every: int = 50,
) -> TrainResult:
    """Fit ``model`` by Adam on (optionally per-sample weighted) BCE-with-logits.

    Each epoch visits the rows in a fresh order drawn from a ``torch.Generator`` seeded by
    ``seed``; dropout also draws from ``seed`` (inside a forked RNG, so torch's global state is
    left untouched). The same model init, data and arguments therefore give the same result.

    Args:
        model: one of :data:`MODELS` (or any module mapping ``(B, F)`` ids to ``(B,)`` logits).
        x_train: ``(N, F)`` integer field ids.
        y_train: ``(N,)`` labels in ``[0, 1]`` (soft labels allowed).
        weights: ``(N,)`` non-negative per-sample loss weights, or None for all ones.
        x_valid, y_valid: optional held-out set; both or neither.
        batch_size: rows per optimiser step, at least 2 for a model with batch norm (NFM,
            AFN). An epoch is cut into :func:`epoch_batches` near-equal batches; for a model
            with batch norm a batch that would hold one row is merged into the others.
        log_every: optimiser steps per entry of ``train_loss_history`` and progress update.

    Returns:
        A :class:`TrainResult`. The model is left on ``device`` in eval mode.

    Raises:
        ValueError: bad ids, labels, weights or sizes (fewer than 2 training rows, batch_size
            1 for a model with batch norm, ...), before any step.
        DivergenceError: (:mod:`training.divergence`) the loss of a step is NaN or inf; no
            update is applied from that step and training stops there.
    """
    if epochs < 1 or batch_size < 1 or log_every < 1:
        raise ValueError(
            f"epochs, batch_size and log_every must be >= 1, got {epochs}, {batch_size}, "
            f"{log_every}"
        )
    min_rows = 2 if has_batch_norm(model) else 1
    if batch_size < min_rows:
        raise ValueError(
            f"batch_size={batch_size}: a model with batch norm ({type(model).__name__}) trains "
            f"on batches of at least {min_rows} rows"
        )
    _check_x(model, x_train, "x_train")
    n = x_train.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 training rows, got {n}")
    _check_target(y_train, n, "y_train")
    if y_train.min() < 0 or y_train.max() > 1:
        raise ValueError(
            f"y_train must lie in [0, 1], got range [{y_train.min()}, {y_train.max()}]"
        )
    if weights is not None:
        _check_target(weights, n, "weights")
        if weights.min() < 0:
            raise ValueError(f"weights must be >= 0, got min {weights.min()}")
    if (x_valid is None) != (y_valid is None):
        raise ValueError("pass both x_valid and y_valid, or neither")
    if x_valid is not None and y_valid is not None:
        _check_x(model, x_valid, "x_valid")
        _check_target(y_valid, x_valid.shape[0], "y_valid")

    dev = torch.device(device)
    model.to(dev)
    xt = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.int64))
    yt = torch.from_numpy(np.asarray(y_train, dtype=np.float32))
    wt = None if weights is None else torch.from_numpy(np.asarray(weights, dtype=np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n_batches = epoch_batches(n, batch_size, min_rows)

    history: list[float] = []
    window_sum = torch.zeros((), device=dev)
    window_steps = 0
    start = time.perf_counter()
    model.train()
    with (
        torch.random.fork_rng(devices=_rng_devices(dev)),
        tqdm(total=epochs * n_batches, disable=not progress, desc="train", unit="step") as bar,
    ):
        torch.manual_seed(seed)
        step = 0
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=gen).tensor_split(n_batches):
                xb, yb = xt[idx].to(dev), yt[idx].to(dev)
                wb = None if wt is None else wt[idx].to(dev)
                loss = weighted_bce(model(xb), yb, wb)
                step += 1
                # Before the update, so the model keeps its last good weights: one scalar
                # read per step, the price of stopping at the step that diverged.
                check_finite({"weighted_bce": loss.detach()}, step, type(model).__name__)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                # Accumulate on the device and read back once per window (the finite check is
                # the only per-step read).
                window_sum += loss.detach()
                window_steps += 1
                bar.update(1)
                if window_steps == log_every:
                    history.append(window_sum.item() / window_steps)
                    bar.set_postfix(loss=f"{history[-1]:.4f}")
                    window_sum.zero_()
                    window_steps = 0
        if window_steps:
            history.append(window_sum.item() / window_steps)
    seconds = time.perf_counter() - start
    model.eval()

    valid_loss = None
    if x_valid is not None and y_valid is not None:
        logits = _logits(model, x_valid, max(batch_size, 16384))
        target = torch.from_numpy(np.asarray(y_valid, dtype=np.float32))
        valid_loss = weighted_bce(logits, target).item() if len(target) else None
    return TrainResult(history, valid_loss, seconds, n)
