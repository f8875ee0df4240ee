"""One file the gradient stage writes: the unit of its work and of its resumption."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coreset import layout


@dataclass(frozen=True)
class ShardTask:
    """Rows ``ids`` (sorted sample ids) at checkpoint ``epoch``, written to one file of ``table``:

    * ``gradients``: shard ``shard`` of the gradient table; ``final`` asks for every norm. The
      ids are those of whole classes (or one part of a class larger than a shard).
    * ``validation``: the validation rows of the class unit starting at gradient shard ``shard``
      (forward only).
    * ``perturbations``: DeepFool's perturbations of gradient shard ``shard``'s images, with
      the attack's ``settings``.
    """

    epoch: int
    shard: int
    ids: np.ndarray
    final: bool
    table: str = "gradients"
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def path(self) -> str:
        if self.table == "validation":
            return layout.validation_shard(self.shard)
        if self.table == "perturbations":
            return layout.perturbation_shard(self.settings, self.shard)
        return layout.gradient_shard(self.epoch, self.shard)

    @property
    def folder(self) -> str:
        return self.path.rsplit("/", 1)[0]

    @property
    def kind(self) -> str:
        """The file's table kind (:data:`coreset.tables.SCHEMAS`): validation rows are gradient rows."""
        return "perturbation" if self.table == "perturbations" else "gradients"
