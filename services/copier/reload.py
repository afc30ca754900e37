"""Live follower changes: the mounted ConfigMap and Secret are re-read when their content changes.

Kubernetes updates a mounted ConfigMap or Secret by swapping a `..data` symlink inside the
directory, so the content is fingerprinted (not a path watched). A broken new config is rejected:
the previous one stays in force, an error is logged and the reload metrics say so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from services.copier.followers import FollowerBook
from services.copier.metrics import CopierMetrics
from shared.config import load_config
from shared.errors import ConfigError
from shared.observability import RedactSecrets

log = logging.getLogger("copytrade.reload")


def fingerprint(config_path: Path, secrets_dir: Path) -> bytes:
    """A digest of the config file and every secret file (names and contents)."""
    digest = hashlib.sha256()
    for path in [config_path, *sorted(secrets_dir.glob("*") if secrets_dir.is_dir() else [])]:
        try:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        except (IsADirectoryError, FileNotFoundError):
            continue  # the `..data` directories, or a file swapped away mid-read
    return digest.digest()


class ConfigReloader:
    def __init__(
        self, *, config_path: str, secrets_dir: str, book: FollowerBook, metrics: CopierMetrics,
        redactor: RedactSecrets, interval_s: float,
    ) -> None:
        self._config_path, self._secrets_dir = Path(config_path), Path(secrets_dir)
        self._book, self._metrics, self._redactor = book, metrics, redactor
        self._interval_s = interval_s
        self._seen = fingerprint(self._config_path, self._secrets_dir)

    def load(self) -> bool:
        """Apply the files as they are now; False (old config kept) when they are invalid."""
        try:
            removed = self._book.apply(load_config(self._config_path))
        except ConfigError as exc:
            self._metrics.reloads.labels("rejected").inc()
            self._metrics.reload_ok.set(0)
            log.error("event=config_rejected error=%s", exc)
            return False
        self._redactor.add(self._book.secret_values())
        for follower_id in removed:
            self._metrics.forget_follower(follower_id)
        self._metrics.set_followers(self._book.state_counts())
        self._metrics.reloads.labels("applied").inc()
        self._metrics.reload_ok.set(1)
        log.info("event=config_applied followers=%d removed=%d", len(self._book.all()), len(removed))
        return True

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            current = fingerprint(self._config_path, self._secrets_dir)
            if current != self._seen:
                self._seen = current
                self.load()
