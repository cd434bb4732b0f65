"""Render a ValidationResult: text lines `file:line: record N: $.path: severity: message ...` or JSON."""

from __future__ import annotations

import json

from .result import ValidationResult


def _counts(result: ValidationResult, severity: str) -> str:
    rules = {p.rule for p in result.problems if p.severity == severity}
    parts = [f"{rule} {n}" for rule, n in sorted(result.by_rule.items()) if rule in rules or (
        severity == "warning" and rule in ("duplicate", "empty-content", "too-long") and rule not in
        {p.rule for p in result.problems if p.severity == "error"})]
    return ", ".join(parts)


def summary_line(result: ValidationResult) -> str:
    nfiles = len(result.files)
    text = (f"{result.records} record{'s' if result.records != 1 else ''} checked in {nfiles} "
            f"file{'s' if nfiles != 1 else ''}")
    if result.format:
        text += f" as {result.format}, stage {result.stage}"
    text += f": {result.invalid} invalid"
    text += f"; {result.errors} error{'s' if result.errors != 1 else ''}"
    errs = _counts(result, "error")
    if errs:
        text += f" ({errs})"
    text += f", {result.warnings} warning{'s' if result.warnings != 1 else ''}"
    warns = _counts(result, "warning")
    if warns:
        text += f" ({warns})"
    if result.truncated:
        text += f"; only the first {result.max_errors} problems are listed (--max-errors)"
    return text


def passed(result: ValidationResult, strict: bool = False) -> bool:
    """The verdict: no error (and, when strict, no warning either)."""
    return result.ok and not (strict and result.warnings)


def format_text(result: ValidationResult, strict: bool = False) -> str:
    lines = [p.format() for p in result.problems]
    verdict = "ok: " if passed(result, strict) else "invalid (--strict: warnings fail): " if result.ok else "invalid: "
    lines.append(verdict + summary_line(result))
    return "\n".join(lines) + "\n"


def format_json(result: ValidationResult, strict: bool = False) -> str:
    """The result as JSON; `ok` is the verdict (with `strict`, warnings make it false)."""
    doc = result.to_json()
    doc["ok"] = passed(result, strict)
    doc["strict"] = strict
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
