"""What validation found: problems (each with file, line, record, JSON path, rule, message, hint) and counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One problem. `record` is the 0-based row index LLaMA-Factory/datasets give the record (None: file-level);
    `line` is the 1-based line where the record starts (None where the file type has no lines)."""

    file: str
    line: int | None
    record: int | None
    path: str
    rule: str
    message: str
    expected: str = ""
    hint: str = ""
    severity: Severity = "error"

    def format(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        rec = "" if self.record is None else f" record {self.record}:"
        text = f"{where}:{rec} {self.path}: {self.severity}: {self.message}"
        if self.expected:
            text += f" (expected {self.expected})"
        if self.hint:
            text += f"; fix: {self.hint}"
        return text + f" [{self.rule}]"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ValidationResult:
    """Everything one validation found. `problems` holds at most `max_errors` problems; counts are complete."""

    files: list[str] = field(default_factory=list)
    format: str | None = None
    stage: str | None = None
    entry: dict[str, Any] | None = None
    entries: list[dict[str, Any] | None] = field(default_factory=list)  # merged results: each one's entry, in order
    records: int = 0
    invalid: int = 0
    problems: list[Problem] = field(default_factory=list)
    by_rule: Counter = field(default_factory=Counter)
    errors: int = 0
    warnings: int = 0
    file_errors: int = 0
    max_errors: int | None = 100
    truncated: bool = False
    shape_hits: int = 0  # records settled by the shape cache (diagnostics; not part of the report)
    fast_hits: int = 0  # records settled by the fast path (fastpath.py; diagnostics, not part of the report)

    @property
    def ok(self) -> bool:
        """No error: every record is one LLaMA-Factory keeps, and the file/entry load. Warnings allowed."""
        return self.errors == 0

    def add(self, problem: Problem) -> None:
        self.by_rule[problem.rule] += 1
        if problem.severity == "error":
            self.errors += 1
            if problem.record is None:
                self.file_errors += 1
        else:
            self.warnings += 1
        if self.max_errors is None or len(self.problems) < self.max_errors:
            self.problems.append(problem)
        else:
            self.truncated = True

    def merge(self, other: ValidationResult) -> None:
        """Add another file's result (the other's record indexes stay per file)."""
        self.files += other.files
        self.entries += other.entries or [other.entry]
        self.records += other.records
        self.invalid += other.invalid
        for p in other.problems:
            self.add(p)
        # counts of problems the other result did not keep
        for rule, n in other.by_rule.items():
            kept = sum(1 for p in other.problems if p.rule == rule)
            self.by_rule[rule] += n - kept
        self.errors += other.errors - sum(1 for p in other.problems if p.severity == "error")
        self.warnings += other.warnings - sum(1 for p in other.problems if p.severity == "warning")
        self.file_errors += other.file_errors - sum(
            1 for p in other.problems if p.severity == "error" and p.record is None)
        self.truncated = self.truncated or other.truncated

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files": self.files,
            "format": self.format,
            "stage": self.stage,
            "records": self.records,
            "invalid": self.invalid,
            "errors": self.errors,
            "warnings": self.warnings,
            "by_rule": dict(sorted(self.by_rule.items())),
            "truncated": self.truncated,
        }

    def to_json(self) -> dict[str, Any]:
        """Machine-readable report: summary keys, the entry used (`entries`, one per file or dataset, for a merged
        result), and the (capped) problems."""
        out = {**self.summary(), "entry": self.entry}
        if self.entries:
            out["entries"] = self.entries
        out["problems"] = [p.to_dict() for p in self.problems]
        return out
