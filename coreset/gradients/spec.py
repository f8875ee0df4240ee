"""What a per-sample gradient run computes: which norms, over which parameter groups.

Column names follow the gradients table contract: ``<norm>_<group>`` with norm in
{l1, l2, linf} and group in {last, weights, biases, all}.
"""
from __future__ import annotations

from dataclasses import dataclass

from coreset.gradients.last_layer import NORMS

GROUPS = ("last", "weights", "biases", "all")
MIB = 1 << 20


@dataclass(frozen=True)
class GradientSpec:
    """Norms and groups to compute per sample.

    ``last`` is the final linear layer (weight + bias), ``weights`` every weight tensor of
    the Linear/Conv2d/BatchNorm layers (head included), ``biases`` every bias vector,
    ``all`` every trainable parameter. ``factors`` adds ``err`` and ``emb`` (the
    last-layer factors GradSimCore needs). ``chunk_bytes`` bounds the scratch memory
    of one layer's per-sample computation (unfolded patches, Gram matrices or
    materialised per-sample weight gradients); larger is faster up to a point.
    ``amp`` runs the forward/backward under bfloat16 autocast on CUDA (ignored on CPU);
    norms are always accumulated in float32.
    """

    norms: tuple[str, ...] = ("l2",)
    groups: tuple[str, ...] = GROUPS
    factors: bool = True
    chunk_bytes: int = 256 * MIB
    amp: bool = False

    def __post_init__(self) -> None:
        _check("norm", self.norms, NORMS)
        _check("group", self.groups, GROUPS)
        if self.chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {self.chunk_bytes}")

    @property
    def columns(self) -> list[str]:
        """Norm column names, in a fixed order (norm-major)."""
        return [f"{n}_{g}" for n in NORMS if n in self.norms for g in GROUPS if g in self.groups]

    @property
    def needs_backward(self) -> bool:
        """Whether any group beyond the closed-form last layer is asked for."""
        return any(g != "last" for g in self.groups)


def _check(kind: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    if isinstance(values, str):
        raise ValueError(f"{kind}s must be a tuple of names, not the string {values!r}; allowed: {', '.join(allowed)}")
    if not values:
        raise ValueError(f"at least one {kind} is needed; allowed: {', '.join(allowed)}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"unknown {kind}(s) {bad}; allowed: {', '.join(allowed)}")
