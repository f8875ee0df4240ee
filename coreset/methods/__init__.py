"""Selection methods by name: ``get_method(name, **params).score(table)`` then ``.select(...)``."""
from __future__ import annotations

from coreset.methods import (  # noqa: F401 (registers methods)
    cal,
    ccs,
    craig,
    data_diet,
    deepfool,
    forgetting,
    geometry,
    glister,
    gradient_magnitude,
    gradmatch,
    gradsimcore,
    moderate,
    random,
    submodular,
    uncertainty,
)
from coreset.methods.base import METHODS, Context, Inputs, SelectionMethod, params_fields


def get_method(name: str, **params: object) -> SelectionMethod:
    """Build the registered method ``name``; KeyError lists the allowed names."""
    return METHODS.get(name)(**params)


__all__ = ["METHODS", "Context", "Inputs", "SelectionMethod", "get_method", "params_fields"]
