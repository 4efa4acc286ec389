"""Method registry: one file per method, each registered by name (as timm registers models)."""
from __future__ import annotations

_REGISTRY: dict[str, type] = {}


def register_method(cls):
    if cls.name in _REGISTRY:
        raise ValueError(f"method {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


# Importing the modules registers them.
from . import adaptive_sampling, cao2, d4m, diffusion, herding, k_center, random_real  # noqa: E402,F401
