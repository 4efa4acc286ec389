"""The `evaluate` verb's own flags read as text: the set's name, its source path, a class order file, a tensor's
normalisation and the protocol subset. Torch-free, so the command line answers a mistake in them in well under two
seconds, before the heavy imports (issue 27); harness/stages/external.py reads and checks the set itself."""

from __future__ import annotations

import re
from pathlib import Path

from harness.core.identity import FULL_DATA

# Named normalisations a float tensor may carry (DD-Ranking's get_dataset, ddranking/utils/data.py).
NORMALISATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


class ExternalSetError(Exception):
    """What is wrong with a set made elsewhere, as one line."""


def check_name_form(name: str | None, method_names) -> str:
    """--name: a folder-safe name that is not one of `method_names` nor the full-data reference's."""
    if not name:
        raise ExternalSetError("--name: name the set (its rows' method), e.g. --name rded-released")
    if not NAME.fullmatch(name):
        raise ExternalSetError(f"--name: {name!r}: use letters, digits and . _ + - (it names a folder)")
    if name in method_names or name == FULL_DATA:
        raise ExternalSetError(f"--name: {name} is a method's (or the full-data rows'); name the set apart from them")
    return name


def check_source(source: str) -> Path:
    path = Path(source)
    if not path.exists():
        raise ExternalSetError(f"--set: {source} does not exist")
    return path


def read_class_order(text: str) -> list[str] | str:
    """`--class-order`: `suite` (the suite's own order, said explicitly) or a file of one class key or name per
    line, line i naming index i."""
    if text == "suite":
        return "suite"
    path = Path(text)
    if not path.is_file():
        raise ExternalSetError(f"--class-order: {text} is not a file (one class key or name per line, or `suite`)")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def parse_normalisation(text: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if text is None:
        return None
    if text in NORMALISATIONS:
        return NORMALISATIONS[text]
    try:
        means, stds = text.split("/")
        pair = tuple(float(v) for v in means.split(",")), tuple(float(v) for v in stds.split(","))
    except ValueError:
        pair = None
    if pair is None or len(pair[0]) != len(pair[1]) or not all(s > 0 for s in pair[1]):
        raise ExternalSetError(
            f"--tensor-normalization: {text!r}: expected {', '.join(NORMALISATIONS)}, or MEANS/STDS "
            "(comma-separated, one per channel, e.g. 0.2861/0.3530)"
        )
    return pair


def check_protocol_names(text: str | None, protocols) -> list[str] | None:
    """--protocols: a comma-separated subset of `protocols`, the suite's (None: all of them)."""
    if text is None:
        return None
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in protocols]
    if not names or unknown:
        raise ExternalSetError(
            f"--protocols: {', '.join(unknown) or repr(text)} not the suite's (it has: {', '.join(protocols)})"
        )
    return names


def precheck_evaluate(args, raw_suite: dict, method_names) -> None:
    """What of `evaluate`'s flags can be checked from their text and the suite's: the same one-line messages the
    full checks give, before any heavy import. The registered methods (variants included) and the suite's default
    protocols are checked again after, where their registries are loaded."""
    check_name_form(args.name, method_names)
    check_source(args.evaluate)
    if args.class_order is not None:
        read_class_order(args.class_order)
    parse_normalisation(args.tensor_normalization)
    if isinstance(raw_suite.get("protocols"), dict):
        check_protocol_names(args.protocols, list(raw_suite["protocols"]))
