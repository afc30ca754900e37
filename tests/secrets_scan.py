"""Known fake secrets the suite uses, and the scan that proves none of them leaks."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

KNOWN_SECRETS: set[str] = set()


def register(*values: str) -> None:
    """Declare values that must never appear in a log line, a result or a metric."""
    KNOWN_SECRETS.update(v for v in values if len(v) >= 6)


def leaks(texts: Iterable[str]) -> list[str]:
    """The registered secrets found in any of the texts (hidden: first 3 characters only)."""
    found = {secret for text in texts for secret in KNOWN_SECRETS if secret in text}
    return sorted(f"{secret[:3]}…" for secret in found)


def log_files(directory: Path) -> list[str]:
    return [p.read_text(errors="replace") for p in directory.rglob("*.log") if p.is_file()]
