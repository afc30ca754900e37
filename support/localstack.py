"""Run copytrade's processes on this machine: nats-server and services as subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support.natsserver import NatsServer, free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LocalStack:
    """A nats-server plus copytrade services, each a real process with its own /metrics port."""

    workdir: Path
    config_path: Path
    nats: NatsServer | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def write_secret(self, name: str, value: str) -> None:
        """A secret file as a Kubernetes Secret mount would hold it."""
        (self.workdir / "secrets").mkdir(exist_ok=True)
        (self.workdir / "secrets" / name).write_text(value)

    def start_nats(self, config: Path | None = None, env: dict[str, str] | None = None) -> str:
        (self.workdir / "nats").mkdir(parents=True, exist_ok=True)
        self.nats = NatsServer(self.workdir / "nats", config=config, env=env)
        self.nats.start()
        return self.nats.url

    def start(self, name: str, command: str, **env: str) -> int:
        """Start `python -m services.<command>` as `name`; return its HTTP (metrics) port."""
        assert self.nats is not None
        port = free_port()
        environ = {
            **os.environ,
            "COPYTRADE_NATS_URL": self.nats.url,
            "COPYTRADE_CONFIG": str(self.config_path),
            "COPYTRADE_SECRETS_DIR": str(self.workdir / "secrets"),
            "COPYTRADE_HTTP_PORT": str(port),
            "COPYTRADE_INSTANCE": name,
            **env,
        }
        log = (self.workdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", f"services.{command}"], cwd=ROOT, env=environ, stdout=log, stderr=log
        )
        self.ports[name] = port
        return port

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for name, port in self.ports.items():
            while not _ready(port):
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited: see {self.workdir / (name + '.log')}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready: see {self.workdir / (name + '.log')}")
                time.sleep(0.05)

    def stop(self, timeout_s: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.nats is not None:
            self.nats.stop()

    def metrics(self, name: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/metrics", timeout=5) as r:
            return str(r.read().decode())


def _ready(port: int) -> bool:
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response,
    ):
        return bool(response.status == 200)
    return False


@contextlib.contextmanager
def local_stack(workdir: Path, config_path: Path) -> Iterator[LocalStack]:
    stack = LocalStack(workdir, config_path)
    try:
        yield stack
    finally:
        stack.stop()
