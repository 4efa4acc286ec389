"""YAML → dataclasses: each value checked against its field's annotation (a mistyped, unknown or missing field is
one line naming it), and the methods' and protocols' raw entries swapped for their typed configs."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any

from harness.config.schema import Suite, SuiteError
from harness.models.generators import generator_for, get_generator
from harness.models.protocols import get_protocol, list_protocols
from methods import get_method, list_methods
from methods.base import SMALL_IMAGES, map_guidance

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (list, dict):
        return "a list" if origin is list else "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp, where: str, source: str):
    """Check `value` against the annotation `tp`; returns the (possibly built) value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for alternative in inner[1:]:  # e.g. `int | str`: the first type the value is, else the first's message
            if isinstance(value, typing.get_origin(alternative) or alternative):
                return _coerce(value, alternative, where, source)
        return _coerce(value, inner[0], where, source)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, source)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise SuiteError(f"{source}: {where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise SuiteError(f"{source}: {where}: expected a mapping, got {value!r}")
        return {
            _coerce(k, key_tp, f"{where} key", source): _coerce(v, val_tp, f"{where}.{k}", source)
            for k, v in value.items()
        }
    if tp is Any:  # free-form settings (a method's raw entry, a searched config, student options): its numbers too
        _check_finite(value, where, source)
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise SuiteError(f"{source}: {where}: expected {_describe(tp)}, got {value!r}{_number_hint(value, tp)}")
    if tp is float:
        _check_finite(value, where, source)
    return value


def _check_finite(value, where: str, source: str) -> None:
    """Every number a suite sets is finite: a NaN passes every range check written `x <= 0` (NaN compares false),
    and a NaN or infinite learning rate trains chance-level rows that look like results."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SuiteError(f"{source}: {where}: must be a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}", source)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]", source)


# What YAML 1.1 (PyYAML) reads as a string though it means a number: an exponent without a dot (1e-3, 5E4).
_EXPONENT_WITHOUT_DOT = re.compile(r"[-+]?[0-9]+[eE][-+]?[0-9]+")


def _number_hint(value, tp) -> str:
    if tp in (int, float) and isinstance(value, str) and _EXPONENT_WITHOUT_DOT.fullmatch(value.strip()):
        mantissa, _, exponent = value.strip().lower().partition("e")
        written = f"{int(float(value))}" if tp is int and float(value).is_integer() else f"{mantissa}.0e{exponent}"
        return f" (YAML reads {value} as a string; write {written})"
    return ""


def build(cls, raw, where: str, source: str):
    """Build dataclass `cls` from a mapping, rejecting unknown, missing and mistyped fields."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SuiteError(f"{source}: {where or 'top level'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    for key in raw:
        if key not in fields:
            raise SuiteError(f"{source}: {prefix}{key}: unknown field (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], prefix + name, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SuiteError(f"{source}: {prefix}{name}: missing (required)")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        # A config's own check says "field: why"; name the field in the path, as every other check does.
        field_name, _, why = str(e).partition(": ")
        if field_name in fields and why:
            raise SuiteError(f"{source}: {prefix}{field_name}: {why}") from None
        raise SuiteError(f"{source}: {where or 'top level'}: {e}") from None


def resolve_backbone_training(b, where: str, source: str) -> None:
    """A backbone section's `train` mapping becomes its kind's training dataclass (`Generator.train_config`); a kind
    that is never trained refuses one rather than ignore it."""
    if isinstance(b.train, dict) or b.train is None:
        generator = get_generator(b.kind)
        train_config = generator.train_config
        if train_config is not None and (b.train is not None or generator.train_by_default):
            b.train = build(train_config, b.train or {}, f"{where}.train", source)
        elif b.train is not None:
            raise SuiteError(f"{source}: {where}.train: kind {b.kind} is not trained by prepare; remove it")


def resolve_method_configs(s: Suite, source: str) -> None:
    """Each listed method's entry becomes its typed config (its defaults under the suite's fields): the stages read
    these and never go back to the YAML."""
    for name, raw in list(s.methods.items()):
        try:
            cls = get_method(name)
        except KeyError:
            raise SuiteError(f"{source}: methods.{name}: unknown method (known: {', '.join(list_methods())})") from None
        s.backbone_of(name)  # a method on a generator the suite lacks stops here
        if not isinstance(raw, cls.Config):
            fitted = _fitted_defaults(s, cls, raw or {})
            guidance = _guidance_for_backbone(s, cls, {**fitted, **(raw or {})})
            fields = {**cls.defaults, **fitted, **guidance, **(raw or {})}
            s.methods[name] = build(cls.Config, fields, f"methods.{name}", source)


def _fitted_defaults(s: Suite, cls, raw: dict) -> dict:
    """The settings the method declares for the kind of backbone it samples here and for small images
    (`Method.generator_defaults`, `small_image_defaults`), for the fields the suite leaves unset; the board notes
    which it took."""
    kind = s.backbone_of(cls.name).kind
    small = s.data.image_size <= SMALL_IMAGES
    fitted, why = {}, []
    for settings, reason in (
        (cls.generator_defaults.get(kind, {}), f"a {kind} backbone"),
        (cls.small_image_defaults if small else {}, f"{s.data.image_size}-px images"),
    ):
        # A variant's own overrides (`cls.defaults`) define its row: a fitted setting never undoes them.
        taken = {k: v for k, v in settings.items() if k not in raw and k not in fitted and k not in cls.defaults}
        fitted.update(taken)
        if taken:
            why.append(
                f"{reason}: "
                + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in taken.items())
            )
    if why:
        note = (
            f"{cls.name}: settings fit for " + "; ".join(why) + f" (its paper's are for its own generator and size; "
            f"methods/{cls.__module__.rsplit('.', 1)[-1]}.py; set them in the suite to override)"
        )
        if note not in s.notes:
            s.notes.append(note)
    return fitted


def _guidance_for_backbone(s: Suite, cls, raw: dict) -> dict:
    """The paper's guidance settings the suite leaves unset, mapped to the backbone the method samples where the
    paper chose them on another generator; each mapping becomes one of the board's notes."""
    paper = cls.paper_generator
    unset = [f for f in cls.guidance_fields if f not in raw]
    backbone = s.backbone_of(cls.name)
    if paper is None or not unset or paper.kind == backbone.kind:
        return {}
    typical = generator_for(backbone).typical_guidance()
    defaults = {**{f.name: f.default for f in dataclasses.fields(cls.Config)}, **cls.defaults}
    mapped = {f: map_guidance(defaults[f], paper.typical_guidance, typical) for f in unset}
    moved = [f for f in unset if mapped[f] != defaults[f]]
    if not moved:
        return mapped
    said = ", ".join(f"{f} {defaults[f]:g} → {mapped[f]:g}" for f in moved)
    note = (
        f"{cls.name}: guidance mapped from its paper's generator ({paper.name}, typical guidance "
        f"{paper.typical_guidance:g}) to this {backbone.kind} backbone (typical {typical:g}): {said} "
        "(1 + (g − 1) · (typical here − 1) / (typical there − 1); set them in the suite to override)"
    )
    if note not in s.notes:
        s.notes.append(note)
    return mapped


def resolve_protocols(s: Suite, source: str) -> None:
    """Each listed protocol's entry becomes its protocol object."""
    for name, raw in list(s.protocols.items()):
        try:
            cls = get_protocol(name)
        except KeyError:
            raise SuiteError(
                f"{source}: protocols.{name}: unknown protocol (known: {', '.join(list_protocols())})"
            ) from None
        if not isinstance(raw, cls):
            s.protocols[name] = build(cls, raw, f"protocols.{name}", source)
