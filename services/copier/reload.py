"""Live follower changes: the mounted ConfigMap and Secret are re-read when their content changes.

A new config is validated whole before any of it applies: the file, every follower's
credentials, and the signal verifier built from its public keys. Anything wrong keeps the whole
previous config in force, logs one `event=config_reload_failed` line, sets
`copytrade_config_last_reload_success` to 0, and the watcher keeps watching: the next good
files apply and set it back to 1.

Watching is cheap (`ChangeWatch`): each tick stats the config file and the secrets directory and
reads the directory's `..data` link, through which Kubernetes swaps a mounted Secret; every
secret file is stat'ed only after one of those moved, or every `FULL_SCAN_S`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from services.copier.followers import FollowerBook
from services.copier.metrics import CopierMetrics
from shared.config import CopytradeConfig, SecretSource, load_config
from shared.errors import ConfigError
from shared.exchange.registry import venue
from shared.observability import RedactSecrets
from shared.signing import SignalVerifier

log = logging.getLogger("copytrade.reload")
FULL_SCAN_S = 30.0  # a file rewritten in place in a plain directory is seen within this
DETAIL_CHARS = 300
Signature = tuple[tuple[int, int, int] | None, tuple[int, int, int] | None, str | None]


def fingerprint(config_path: Path, secrets_dir: Path) -> bytes:
    """A digest of the config file's and every secret file's name, inode, mtime and size.

    Stat, not content: a ConfigMap or Secret update swaps in files with new inodes, and a file
    rewritten in place gets a new mtime; reading thousands of secret files does not scale.
    """
    digest = hashlib.sha256()
    names = sorted(os.listdir(secrets_dir)) if secrets_dir.is_dir() else []
    for path in [config_path, *(secrets_dir / name for name in names)]:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue  # swapped away mid-scan: the next scan sees the new files
        if stat.S_ISREG(st.st_mode):  # not the `..data` directories
            digest.update(f"{path.name}\0{st.st_ino}\0{st.st_mtime_ns}\0{st.st_size}\0".encode())
    return digest.digest()


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None  # not a Kubernetes mount: a plain directory


def quick_signature(config_path: Path, secrets_dir: Path) -> Signature:
    """Three system calls that move whenever either mount changes (bar in-place rewrites).

    The config file is stat'ed through its link (a swap gives it a new inode). The directory's
    mtime moves when a file is added, removed or renamed over, and when the kubelet adds new
    names' links, which it does just after swapping `..data`.
    """
    return _stat(config_path), _stat(secrets_dir), _readlink(secrets_dir / "..data")


class ChangeWatch:
    """Whether the config file or the secrets changed: `due()` each tick (cheap), and when it
    says so, `rescan()` (stats every file, for a thread).

    A rescan is due when the quick signature moved, on the tick after it moved (links the
    kubelet adds after its swap), and every `full_scan_s` (a file rewritten in place).
    """

    def __init__(
        self,
        config_path: Path,
        secrets_dir: Path,
        *,
        full_scan_s: float = FULL_SCAN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._paths = config_path, secrets_dir
        self._full_scan_s, self._clock = full_scan_s, clock
        self._quick = quick_signature(*self._paths)
        self._full = fingerprint(*self._paths)
        self._next_full = clock() + full_scan_s
        self._recheck = False

    def due(self) -> bool:
        quick = quick_signature(*self._paths)
        moved, self._quick = quick != self._quick, quick
        due = moved or self._recheck or self._clock() >= self._next_full
        self._recheck = moved
        return due

    def rescan(self) -> bool:
        """Stat every file; True when anything changed since the last rescan."""
        self._next_full = self._clock() + self._full_scan_s
        full = fingerprint(*self._paths)
        changed, self._full = full != self._full, full
        return changed


class ReloadFailed(Exception):
    """A new config that cannot apply, with a reason code and where it failed (no secrets)."""

    def __init__(self, reason: str, where: str, detail: str) -> None:
        super().__init__(f"reason={reason} in={where} detail={detail!r}")
        self.reason = reason


def _failure(exc: ConfigError | ValueError | OSError, where: str) -> ReloadFailed:
    """One-line and free of file content: a decoding error names the position, not the byte."""
    if isinstance(exc, UnicodeDecodeError):
        return ReloadFailed("not_utf8", where, f"undecodable byte at position {exc.start}")
    if isinstance(exc, OSError):
        return ReloadFailed("unreadable", where, exc.strerror or type(exc).__name__)
    return ReloadFailed("invalid", where, " ".join(str(exc).split())[:DETAIL_CHARS])


class ConfigReloader:
    def __init__(
        self,
        *,
        config_path: str,
        secrets_dir: str,
        book: FollowerBook,
        metrics: CopierMetrics,
        redactor: RedactSecrets,
        interval_s: float,
        secrets: SecretSource | None = None,
        full_scan_s: float = FULL_SCAN_S,
    ) -> None:
        self._config_path, self._secrets_dir = Path(config_path), Path(secrets_dir)
        self._secrets = secrets or SecretSource(secrets_dir)  # as the book reads them
        self._book, self._metrics, self._redactor = book, metrics, redactor
        self._interval_s = interval_s
        self._changes = ChangeWatch(self._config_path, self._secrets_dir, full_scan_s=full_scan_s)
        metrics.reloads.labels("error")  # the watcher's own failures, 0 until one happens

    def load(self) -> bool:
        """Apply the files as they are now; False (the whole old config kept) when they are
        not valid, all of them."""
        try:
            config = self._validated()
            removed = self._book.apply(config)  # changes nothing when it raises
        except ReloadFailed as exc:
            return self._rejected(exc)
        except (ConfigError, ValueError, OSError) as exc:  # a secret changed after validation
            return self._rejected(_failure(exc, "apply"))
        self._redactor.add(self._book.secret_values())
        for follower_id in removed:
            self._metrics.forget_follower(follower_id)
        self._metrics.set_followers(self._book.state_counts())
        self._metrics.reloads.labels("applied").inc()
        self._metrics.reload_ok.set(1)
        log.info("event=config_applied followers=%d removed=%d", len(self._book.all()), len(removed))
        return True

    def _validated(self) -> CopytradeConfig:
        """The new config, once everything it needs reads and parses: raises ReloadFailed."""
        try:
            config = load_config(self._config_path)
        except (ConfigError, ValueError, OSError) as exc:  # UnicodeDecodeError is a ValueError
            raise _failure(exc, "config") from None
        for follower in config.followers_of(self._book.group):
            try:
                self._secrets.credentials(follower, "USER")
                if venue(follower.exchange).paper_switch:
                    self._secrets.alpaca_paper(follower)
            except (ConfigError, ValueError, OSError) as exc:
                raise _failure(exc, f"credentials:{follower.id}") from None
        try:  # the book builds the same verifier after swapping its followers: it must not fail
            SignalVerifier(config.signals.public_keys)
        except (ConfigError, ValueError) as exc:
            raise _failure(exc, "signals.public_keys") from None
        return config

    def _rejected(self, failure: ReloadFailed) -> bool:
        self._metrics.reloads.labels("rejected").inc()
        self._metrics.reload_ok.set(0)
        log.error("event=config_reload_failed %s", failure)
        return False

    async def watch(self) -> None:
        """Reload on every change, forever: no bad file or failing tick ends the watch."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                if self._changes.due() and await asyncio.to_thread(self._changes.rescan):
                    self.load()
            except Exception as exc:  # noqa: BLE001 - last resort: a dead watcher would apply nothing again
                self._metrics.reloads.labels("error").inc()
                self._metrics.reload_ok.set(0)
                log.error("event=config_reload_failed reason=unexpected error=%s", type(exc).__name__)
