"""How many samples a fraction buys, globally or per class.

Rounding is half-up (not Python's banker's ``round``) so budgets are monotone in the fraction:
``k = max(1, floor(fraction·N + 1/2))``. Class-balanced budgets split that same k over the
classes proportionally to their sizes by largest-remainder (Hamilton) apportionment, ties in
the remainder going to the lower label, so Σ k_c = k exactly and a class-balanced subset has
the same size as a global one. Since k ≤ N, proportional shares never exceed a class's size;
the size check below guards explicit budgets passed in by callers.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

BUDGETS = ("global", "class_balanced")


def half_up(x: float) -> int:
    """floor(x + 1/2): the rounding used for every budget and drop count."""
    return int(math.floor(x + 0.5))


def check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")


def global_budget(n: int, fraction: float) -> int:
    """k = max(1, floor(fraction·n + 1/2)) for a pool of n samples."""
    check_fraction(fraction)
    if n < 1:
        raise ValueError("cannot select from an empty score table")
    return min(n, max(1, half_up(fraction * n)))


def class_budgets(class_sizes: Mapping[int, int], k: int) -> dict[int, int]:
    """Largest-remainder apportionment of k over classes proportional to their sizes."""
    labels = sorted(class_sizes)
    sizes = np.array([class_sizes[c] for c in labels], dtype=np.int64)
    quotas = k * sizes / sizes.sum()
    shares = np.floor(quotas).astype(np.int64)
    order = np.lexsort((np.arange(len(labels)), -(quotas - shares)))
    shares[order[: k - int(shares.sum())]] += 1
    budgets = {c: int(s) for c, s in zip(labels, shares, strict=False)}
    check_class_budgets(class_sizes, budgets)
    return budgets


def check_class_budgets(class_sizes: Mapping[int, int], budgets: Mapping[int, int]) -> None:
    """Fail when a class has fewer images than its budget."""
    for c, k_c in budgets.items():
        if k_c > class_sizes.get(c, 0):
            raise ValueError(f"class {c} has {class_sizes.get(c, 0)} images but a budget of {k_c}")
