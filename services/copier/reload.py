"""Live follower changes: the mounted ConfigMap and Secret are re-read when their content changes.

Kubernetes updates a mounted ConfigMap or Secret by swapping a `..data` symlink inside the
directory, so the files are fingerprinted (not a path watched). A broken new config is rejected:
the previous one stays in force, an error is logged and the reload metrics say so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
from pathlib import Path

from services.copier.followers import FollowerBook
from services.copier.metrics import CopierMetrics
from shared.config import load_config
from shared.errors import ConfigError
from shared.observability import RedactSecrets

log = logging.getLogger("copytrade.reload")


def fingerprint(config_path: Path, secrets_dir: Path) -> bytes:
    """A digest of the config file's and every secret file's name, inode, mtime and size.

    Stat, not content: a ConfigMap or Secret update swaps in files with new inodes, and a file
    rewritten in place gets a new mtime; reading thousands of secret files each second does not
    scale with followers.
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
            # in a thread: with thousands of followers the scan takes milliseconds
            current = await asyncio.to_thread(fingerprint, self._config_path, self._secrets_dir)
            if current != self._seen:
                self._seen = current
                self.load()
