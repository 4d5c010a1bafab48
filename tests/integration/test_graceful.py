"""SIGTERM (what Kubernetes sends at a pod's end) lets in-flight requests and their
batches finish before the server exits."""
from __future__ import annotations

import os
import signal
import threading
import time

from tests.integration.server import Server


def test_sigterm_drains_in_flight_requests(graft_home, tmp_path):
    srv = Server(graft_home, tmp_path / "s.log", GRAFT_DATABASE_URL=f"sqlite:///{tmp_path}/r.db",
                 GRAFT_TRAIN_WORKERS="0", GRAFT_RATE_LIMIT_RPS="0").start()
    texts = [f"a long enough sentence number {i} to keep the backbone busy for a while" for i in range(64)]
    results: list[object] = []

    def call() -> None:
        with srv.client(timeout=60) as c:
            try:
                results.append(c.post("/v1/embed", json={"inputs": texts}).status_code)
            except Exception as e:  # noqa: BLE001 - the assertion reports it
                results.append(repr(e))

    threads = [threading.Thread(target=call) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.3)  # the requests are in, their batches queued or running
        os.kill(srv.proc.pid, signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert results == [200] * 6, results
        srv.proc.wait(30)
    finally:
        srv.stop()


def test_a_server_whose_port_was_taken_starts_on_new_ones(graft_home, tmp_path):
    """free_port's port can be taken before the server binds it (an outgoing connection from
    the same ephemeral range): the first start moves to new ports instead of failing."""
    import socket

    srv = Server(graft_home, tmp_path / "s.log", GRAFT_DATABASE_URL=f"sqlite:///{tmp_path}/r.db",
                 GRAFT_TRAIN_WORKERS="0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", srv.port))
        taken.listen()
        busy = srv.port
        try:
            srv.start(ready=False)
            assert srv.port != busy and srv.url.endswith(f":{srv.port}")
            assert srv.client().get("/livez").status_code == 200
        finally:
            srv.stop()
    assert "Address already in use" in (tmp_path / "s.log").read_text()
