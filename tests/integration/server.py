"""Start the real service (`bentoml serve`) on a free loopback port and wait until ready."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "graft-test-admin-key-of-forty-characters-x"
SIGNING_KEY = "graft-test-signing-key-of-forty-characters"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class _Metadata(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, key: str) -> None:
        self.key = key

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self.key}")]
        return continuation(details._replace(metadata=metadata), request)


class _AioMetadata(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, key: str) -> None:
        self.key = key

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        metadata = grpc.aio.Metadata(*(details.metadata or ()), ("authorization", f"Bearer {self.key}"))
        return await continuation(details._replace(metadata=metadata), request)


_ISSUED: set[int] = set()


def free_port() -> int:
    """A port free now and never handed out before in this process: two servers made
    before either starts must not be given the same one (the OS reuses free ports)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ISSUED:
            _ISSUED.add(port)
            return port


class Server:
    def __init__(self, home: Path, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.log_path = log_path
        self.env = {
            **os.environ,
            "GRAFT_HOME": str(home),
            "GRAFT_PORT": str(self.port),
            "GRAFT_GRPC_PORT": str(self.grpc_port),
            "GRAFT_HOST": "127.0.0.1",
            "GRAFT_ADMIN_KEY": ADMIN_KEY,
            "GRAFT_SIGNING_KEY": SIGNING_KEY,
            # BentoML keeps Prometheus' multiprocess files under BENTOML_HOME and clears
            # them when a server stops: each server of the tests gets its own.
            "BENTOML_HOME": str(log_path.parent / f"bentoml-{self.port}"),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.database_url = self.env.get("GRAFT_DATABASE_URL", "")

    def start(self, timeout: float = 300, ready: bool = True) -> "Server":
        """Start and wait until /readyz says ready (or, with ready=False, until /livez answers).
        A first start whose ports were taken meanwhile (free_port's port was free when chosen,
        but an outgoing connection may take it from the same ephemeral range before the server
        binds it) starts again on new ones; a restart keeps its ports."""
        first = self.proc is None
        for attempt in range(3):
            try:
                return self._start(timeout, ready)
            except RuntimeError as e:
                if not (first and attempt < 2 and "Address already in use" in str(e)):
                    raise
                self._use_ports(free_port(), free_port())
        raise AssertionError("unreachable")

    def _use_ports(self, port: int, grpc_port: int) -> None:
        self.port, self.grpc_port = port, grpc_port
        self.url, self.grpc_target = f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
        self.env.update(GRAFT_PORT=str(port), GRAFT_GRPC_PORT=str(grpc_port),
                        BENTOML_HOME=str(self.log_path.parent / f"bentoml-{port}"))

    def _start(self, timeout: float, ready: bool) -> "Server":
        bentoml = Path(sys.executable).with_name("bentoml")
        self._log = self.log_path.open("ab")  # a restart appends
        offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [str(bentoml), "serve", "service.api:Graft", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                with self.log_path.open("rb") as f:
                    f.seek(offset)
                    output = f.read().decode(errors="replace")
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{output[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz" if ready else f"{self.url}/livez", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def client(self, key: str | None = ADMIN_KEY, timeout: float = 60) -> httpx.Client:
        """An HTTP client that sends `key` (the admin key unless told otherwise; None: no key)."""
        return httpx.Client(base_url=self.url, timeout=timeout, headers=bearer(key) if key else {})

    def channel(self, key: str | None = ADMIN_KEY) -> grpc.Channel:
        channel = grpc.insecure_channel(self.grpc_target)
        return grpc.intercept_channel(channel, _Metadata(key)) if key else channel

    def aio_channel(self, key: str | None = ADMIN_KEY) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.grpc_target, interceptors=[_AioMetadata(key)] if key else None)

    def processes(self) -> list[psutil.Process]:
        """The server and every process under it (BentoML starts its workers in their own
        sessions, so a process group does not reach them)."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """kill -9 of the whole server, workers included."""
        for p in self.processes():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if self.proc:
            self.proc.wait()

    def stop(self) -> None:
        procs = self.processes()
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        gone, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:  # whatever a graceful stop left behind
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if hasattr(self, "_log"):
            self._log.close()
