"""The source registry: built-in adapters by name, and YAML specs by path."""

from __future__ import annotations

from pathlib import Path

from . import (
    brats,
    busi,
    covid_qu_ex,
    cvc_clinicdb,
    isic2018,
    kvasir_seg,
    montgomery,
    msd,
    nnunet,
    ph2,
)
from .base import Case, Discovered, LayoutError, MaskFile, Problem, SourceInfo
from .spec import SpecError, load_spec

REGISTRY: dict[str, SourceInfo] = {
    module.SOURCE.name: module.SOURCE
    for module in (
        kvasir_seg,
        cvc_clinicdb,
        isic2018,
        ph2,
        busi,
        montgomery,
        covid_qu_ex,
        msd,
        nnunet,
        brats,
    )
}


def resolve_source(name_or_spec: str) -> SourceInfo:
    """A registry entry by name, or a source built from a YAML spec path."""
    if name_or_spec in REGISTRY:
        return REGISTRY[name_or_spec]
    if name_or_spec.endswith((".yaml", ".yml")):
        return load_spec(Path(name_or_spec))
    raise ValueError(
        f"unknown source {name_or_spec!r}: expected one of {', '.join(REGISTRY)} "
        f"or a path to a YAML spec (*.yaml)"
    )


__all__ = [
    "REGISTRY",
    "Case",
    "Discovered",
    "LayoutError",
    "MaskFile",
    "Problem",
    "SourceInfo",
    "SpecError",
    "load_spec",
    "resolve_source",
]
