"""GLISTER (Killamsetty et al. 2021, "GLISTER: generalization based data subset selection for
efficient and robust learning"; DeepCore's ``Glister`` with ``--balance True``).

GLISTER-ONLINE selects the training images whose gradient step most raises the log-likelihood
of a held-out validation set. With θ_S = θ − η·Σ_{j∈S} g_j (one SGD step on the subset's
summed loss, as the paper's L_T(θ, S) and the authors' CORDS code take it; DeepCore's update,
which it never calls, takes the mean) and the Taylor approximation
L_V(θ_S − η·g_e) ≈ L_V(θ_S) − η·⟨g_e, ∇L_V(θ_S)⟩, the greedy adds the image of largest
⟨g_e, ∇L_V(θ_S)⟩ (∇L_V: the validation images' mean loss gradient), takes its step, and
recomputes the validation gradient at the new θ_S. As in the paper's last-layer approximation
only the final linear layer moves and every training gradient stays the one at θ,
g_j = err_j ⊗ [h_j; 1] (:mod:`~coreset.methods.last_layer`); a validation image's logits after
the steps are z_v − η·Σ_{j∈S} (⟨h_j, h_v⟩ + 1)·err_j, its gradient (softmax − onehot) ⊗ [h_v; 1].

Factorised, so no C·(D+1)-wide vector is formed: with K = [H_T, 1]·[H_V, 1]ᵀ (n_c × m_c), a pick
j moves the validation logits by −η·K_j ⊗ err_j (O(m·C)), and the gains ⟨g_i, ∇L_V⟩ are
rowsum(E_T ∘ (K·E'_V))/m or rowsum(E_T ∘ ([H_T, 1]·([H_V, 1]ᵀ·E'_V)))/m, whichever product is
cheaper (the first at ImageNet: ~65 validation images a class, D + 1 = 513; the second at MNIST:
~600 against 129). The validation logits come from the table's ``err``: z = log(err + onehot),
floored at 2⁻²⁴, are the logits up to a per-row constant, which softmax ignores (float16
factors resolve probabilities below ~6·10⁻⁵ coarsely). The order stops at the largest
configured fraction's budget (:func:`~coreset.methods.embedding.prefix_length`); the images
past it score 0, unranked; the i-th pick scores 1 − i/n_c.

Default (the paper's method): the study's validation split (``split.parquet``'s ``val`` rows,
whose factors at the trained model the gradient stage writes for this method under
``validation/``), class by class as DeepCore balances, η = ``train.lr`` (DeepCore's
``eta = args.lr``) unless ``eta`` is set.

``variant="deepcore"`` reproduces DeepCore's code, which departs from the paper three times:
(1) main.py passes no ``dst_val``, so the "validation" set is the class's own training images;
(2) the state update is passed as ``upadate_state=`` (a typo) and its LazyGreedy never calls
it, so the validation gradient is never updated: the picks are a static ranking by
⟨g_i, ḡ⟩; (3) it differentiates the *batch-mean* loss (``CrossEntropyLoss``'s default
reduction, then ``.sum()`` of that scalar) over batches of ``selection_batch`` (its ``--batch``,
256) of the class's images in index order, so each g_i carries the weight w_i = 1/|its batch|:
a class's last, short batch weighs more, in its own gains and in ḡ = mean_j w_j·g_j. Its score
is the gain w_i·⟨g_i, ḡ⟩ itself. It needs no validation rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from coreset.errors import ConfigError, StageError
from coreset.methods.base import METHODS, Context, Inputs, Variant, check_variant, need_columns, score_frame
from coreset.methods.embedding import EmbeddingMethod, greedy_position_scores, prefix_length
from coreset.methods.geometry import PROBABILITY_FLOOR
from coreset.methods.last_layer import BatchMeanParams, batch_mean_weights
from coreset.similarity import stack_list_column


def with_bias(emb: np.ndarray) -> np.ndarray:
    """[h; 1] per row: the last layer's input, bias included."""
    return np.hstack([np.asarray(emb, dtype=np.float64), np.ones((len(emb), 1))])


def softmax_error(z: np.ndarray, label: int) -> np.ndarray:
    """softmax(z) − onehot(label) per row, the label's entry as −Σ_{k≠label} p_k: p_label − 1
    cancels once the steps make the validation images confident."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    e[:, label] = 0.0
    e[:, label] = -e.sum(axis=1)
    return e


def glister_order(err_t: np.ndarray, emb_t: np.ndarray, err_v: np.ndarray, emb_v: np.ndarray, label: int,
                  eta: float, steps: int) -> np.ndarray:
    """The first ``steps`` training rows of one class (label ``label``) in GLISTER-ONLINE's
    greedy order against its validation rows, ties to the lower index."""
    e_t = np.asarray(err_t, dtype=np.float64)
    p_t, p_v = with_bias(emb_t), with_bias(emb_v)
    n, m, c = len(e_t), len(p_v), e_t.shape[1]
    k = p_t @ p_v.T  # ⟨[h_j; 1], [h_v; 1]⟩
    onehot = np.zeros(c)
    onehot[label] = 1.0
    z = np.log(np.maximum(np.asarray(err_v, dtype=np.float64) + onehot, PROBABILITY_FLOOR))  # logits + a row constant
    through_k = n * m <= (n + m) * p_t.shape[1]  # the cheaper side of the gain product
    left = np.ones(n, dtype=bool)
    order = np.empty(min(steps, n), dtype=np.int64)
    for step in range(len(order)):
        e_v = softmax_error(z, label)
        carried = k @ e_v if through_k else p_t @ (p_v.T @ e_v)  # Σ_v ⟨[h_i;1],[h_v;1]⟩ e'_v
        gains = np.einsum("ic,ic->i", e_t, carried) / m
        gains[~left] = -np.inf
        j = order[step] = int(np.argmax(gains))
        left[j] = False
        z -= eta * np.outer(k[j], e_t[j])
    return order


def deepcore_gains(err_t: np.ndarray, emb_t: np.ndarray, selection_batch: int) -> np.ndarray:
    """DeepCore's static gains w_i·⟨g_i, mean_j w_j·g_j⟩ over one class's training rows (in
    sample_id order), w_i = 1/|batch of i| in batches of ``selection_batch``."""
    n = len(err_t)
    e = np.asarray(err_t, dtype=np.float64) * batch_mean_weights(n, selection_batch)[:, None]
    p = with_bias(emb_t)
    target = p.T @ e / n  # mean_j w_j g_j as a (D + 1) x C matrix
    return np.einsum("ic,ic->i", e, p @ target)


@dataclass(frozen=True)
class GlisterParams(BatchMeanParams):
    """``eta``: the step η (unset: ``train.lr``, as DeepCore); ``variant``: ``deepcore`` ranks by
    DeepCore's static gains on the class's own images; ``selection_batch``: DeepCore's batch
    (its ``--batch``, 256), which weights its gradients (``deepcore`` only)."""

    eta: float | None = None

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.eta is not None and not self.eta > 0:
            raise ConfigError(f"{prefix}eta must be > 0, got {self.eta}")


@METHODS.register("glister")
class Glister(EmbeddingMethod):
    """Per class: GLISTER-ONLINE's greedy order against the class's validation images, from the factors."""

    name = "glister"
    Params = GlisterParams

    def __init__(self, epoch: int, eta: float = 0.1, variant: Variant = "paper", selection_batch: int = 256,
                 max_fraction: float = 1.0) -> None:
        if not eta > 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        if selection_batch < 1:
            raise ValueError(f"selection_batch must be >= 1, got {selection_batch}")
        if not 0 < max_fraction <= 1:
            raise ValueError(f"max_fraction must lie in (0, 1], got {max_fraction}")
        check_variant(variant)
        super().__init__(epoch)
        self.eta = eta
        self.variant = variant
        self.selection_batch = selection_batch
        self.max_fraction = max_fraction

    @classmethod
    def from_study(cls, params: GlisterParams, context: Context) -> Glister:
        """At the trained model (the validation factors exist there only)."""
        return cls(epoch=context.final_epoch, eta=context.lr if params.eta is None else params.eta,
                   variant=params.variant, selection_batch=params.selection_batch, max_fraction=max(context.fractions))

    @property
    def columns(self) -> tuple[str, ...]:
        return ("err", "emb")

    def inputs(self) -> Inputs:
        return Inputs(columns=self.columns, epochs=(self.epoch,), by_class=True, validation=self.variant == "paper")

    def score(self, table: pd.DataFrame) -> pd.DataFrame:
        rows = self.class_rows(table)
        if self.variant == "paper":
            need_columns(rows, ("split",), self.name)  # the score stage adds it with the validation rows
        train = rows[rows["split"] == "train"] if "split" in rows.columns else rows
        val = rows[rows["split"] == "val"] if self.variant == "paper" else None
        parts = []
        for label, group in train.groupby("label", sort=True):
            err, emb = stack_list_column(group["err"]), stack_list_column(group["emb"])
            if val is None:
                scores = deepcore_gains(err, emb, self.selection_batch)
            else:
                mine = val[val["label"] == label]
                if mine.empty:
                    raise StageError(f"glister: class {label} has no validation images (data.val_fraction too "
                                     f"small); use variant=deepcore or a larger validation split")
                order = glister_order(err, emb, stack_list_column(mine["err"]), stack_list_column(mine["emb"]),
                                      int(label), self.eta, prefix_length(len(group), self.max_fraction))
                scores = greedy_position_scores(order, len(group))
            parts.append(score_frame(group, scores))
        return pd.concat(parts, ignore_index=True).sort_values("sample_id").reset_index(drop=True)
