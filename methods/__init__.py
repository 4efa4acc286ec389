"""Methods: one file each, registered by name (methods/registry.py).

Importing the package imports every module in it, which registers its methods: adding a method is adding its
file (docs/extending.md), with no list here to keep in step.
"""

from __future__ import annotations

import importlib
import pkgutil

from .registry import get_method, list_methods, register_method, register_variant

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["get_method", "list_methods", "register_method", "register_variant"]
