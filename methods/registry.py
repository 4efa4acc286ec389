"""The method registry: one file per method registers its class by name (as timm registers models), and an
ablation is one line, `register_variant(name, base, field=value, …)`."""

from __future__ import annotations

import dataclasses
import sys

_REGISTRY: dict[str, type] = {}


def register_method(cls):
    if cls.name in _REGISTRY:
        raise ValueError(f"method {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def register_variant(
    name: str,
    base: type,
    *,
    doc: str | None = None,
    search_space: dict | None = None,
    revision: int = 0,
    backbone_kind: str | None = None,
    **overrides,
):
    """Register `name` as `base` with other config defaults (its ablation row). A variant of a family with
    paired switches draws what `base` draws (`Method.seed_identity`): the rows differ only in the stages the
    overrides switch. `revision`: the variant's own, added to its family's (`Method.revision`). `backbone_kind`: the
    generator the variant samples where it is not its base's (`Method.backbone_kind`), e.g. D4M on Stable Diffusion."""
    fields = {f.name for f in dataclasses.fields(base.Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"variant {name!r}: {base.Config.__name__} has no field {', '.join(unknown)}")
    family = base.family or base.name
    attrs = {
        "name": name,
        "family": family,
        "defaults": {**base.defaults, **overrides},
        "__doc__": doc or f"{family} with {', '.join(f'{k} = {v!r}' for k, v in overrides.items())}.",
        "__module__": base.__module__,
    }
    if search_space is not None:
        attrs["search_space"] = search_space
    if revision:
        attrs["revision"] = revision
    if backbone_kind is not None:
        attrs["backbone_kind"] = backbone_kind
    class_name = "".join(part.capitalize() for part in name.replace("_", "-").split("-"))
    cls = type(class_name, (base,), {**attrs, "__qualname__": class_name})
    setattr(sys.modules[base.__module__], class_name, cls)  # found by name, as pickle looks classes up
    return register_method(cls)


def get_method(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def list_methods() -> list[str]:
    return sorted(_REGISTRY)
