"""What a command tells the operator when it stops: one line and an exit status."""

from __future__ import annotations

OK = 0
FAILED = 1  # the command ran and the answer is no (a refused trade, an invalid config)
USAGE = 2  # bad arguments, config or environment; NATS unreachable
UNKNOWN = 3  # a master trade's outcome is unknown: send it again with the same request id


class CliError(Exception):
    """One line for the operator (no traceback), and the exit status."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


def one_line(text: str) -> str:
    return " ".join(text.split())


def describe(exc: BaseException) -> str:
    text = one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
