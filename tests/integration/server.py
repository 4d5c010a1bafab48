"""Start the real service (`bentoml serve`) on a free loopback port and wait until ready."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.database_url = self.env.get("GRAFT_DATABASE_URL", "")

    def start(self, timeout: float = 300, ready: bool = True) -> "Server":
        """Start and wait until /readyz says ready (or, with ready=False, until /livez answers)."""
        bentoml = Path(sys.executable).with_name("bentoml")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [str(bentoml), "serve", "service.api:Graft", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz" if ready else f"{self.url}/livez", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()
