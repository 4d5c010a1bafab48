"""The int8 gate through the running service: a bad int8 graph is refused, fp32 is served,
and /readyz and graft_backbone_info say so."""
from __future__ import annotations

import re

import numpy as np

from models import load_backbone
from tests.bad_int8 import home_with_bad_int8
from tests.conftest import SENTENCES
from tests.integration.server import Server


def test_bad_int8_is_refused_and_fp32_served(minilm_spec, graft_home, tmp_path):
    home = home_with_bad_int8(minilm_spec, graft_home, tmp_path / "home")
    server = Server(home, tmp_path / "server.log", GRAFT_DATABASE_URL=f"sqlite:///{tmp_path}/registry.db",
                    GRAFT_BACKBONES='["minilm-l6"]', GRAFT_PRECISION="int8", GRAFT_PROVIDER="cpu").start()
    try:
        with server.client() as client:
            ready = client.get("/readyz")
            assert ready.status_code == 200
            (backbone,) = ready.json()["backbones"]
            assert backbone["precision"] == "fp32"
            gate = backbone["int8_gate"]
            assert gate["recipe"] is None and "no int8 recipe met the bar" in gate["reason"]
            assert all(m["min_cosine"] < 0.98 for m in gate["measured"].values())
            metrics = client.get("/metrics").text
            info = [line for line in metrics.splitlines() if line.startswith("graft_backbone_info{")]
            assert any(re.search(r'int8_recipe="",precision="fp32"', line) for line in info), info
            # What is served is the fp32 function.
            got = np.array(client.post("/v1/embed", json={"inputs": SENTENCES[:4]}).json()["embeddings"])
        fp32 = load_backbone("minilm-l6", graft_home, precision="fp32", provider="cpu").embed(SENTENCES[:4]).vectors
        assert np.abs(got - fp32).max() < 1e-4
    finally:
        server.stop()
