"""Loading a suite: its text merged into one mapping (harness/config/text.py), then built and checked."""

from __future__ import annotations

from harness.config.checks import resolve_and_check
from harness.config.coerce import build
from harness.config.schema import Suite
from harness.config.text import QUICK, builtin_quick, read_suite, resolve_suite_path

__all__ = ["QUICK", "builtin_quick", "load_suite", "resolve_suite_path"]


def load_suite(
    name_or_path: str, profile: str = "full", overrides: dict | None = None, check_files: bool = True
) -> Suite:
    """Load, merge the profile and CLI overrides, and check a suite. Raises SuiteError (one line)."""
    raw, source = read_suite(name_or_path, profile, overrides)
    suite = build(Suite, raw, "", source)
    suite.source = source
    resolve_and_check(suite, source, check_files)
    return suite
