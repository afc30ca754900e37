"""`copytrade`, the console script (services.ops.cli holds the commands)."""

from __future__ import annotations

from services.ops.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
