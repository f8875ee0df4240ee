"""Which checkpoint a baseline reads: all of them must be ones the gradient stage writes
(``gradients.factor_epochs`` or the trained model), so its inputs are computed once for all methods."""
from __future__ import annotations

from coreset.errors import ConfigError
from coreset.methods.base import Context


def early_checkpoint(name: str, epoch: int | None, context: Context) -> int:
    """An early-training score's checkpoint: ``epoch``, or the latest of the study's early
    checkpoints when unset (the papers score a model trained for a small share of its epochs)."""
    if not context.factor_epochs:
        raise ConfigError(f"{name} needs gradients.factor_epochs (its early checkpoint is one of them)")
    return max(context.factor_epochs) if epoch is None else in_factor_epochs(name, epoch, context)


def model_checkpoint(name: str, epoch: int | None, context: Context) -> int:
    """An embedding method's checkpoint: ``epoch`` (one of the early ones), or the trained model."""
    return context.final_epoch if epoch is None else in_factor_epochs(name, epoch, context)


def in_factor_epochs(name: str, epoch: int, context: Context) -> int:
    if epoch not in context.factor_epochs:
        raise ConfigError(f"score.params.{name}.epoch={epoch} is not a checkpoint the gradient stage writes; "
                          f"gradients.factor_epochs: {list(context.factor_epochs)}")
    return epoch
