"""Engine: loading states, validation limits, backbone lookup errors."""
from __future__ import annotations

import asyncio

import pytest

from service.engine import Engine
from service.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, Unavailable
from service.settings import Settings


def make(graft_home, tmp_path, **kw) -> Engine:
    return Engine(Settings(
        home=graft_home, database_url=f"sqlite:///{tmp_path}/registry.db",
        max_batch_items=4, max_text_chars=50, **kw,
    ))


def test_lifecycle_and_embedding(graft_home, minilm_spec, tmp_path):
    async def main():
        # Loaded by path: the catalog id `minilm-l6` is then known but not loaded here.
        engine = make(graft_home, tmp_path, backbones=[str(minilm_spec.path)], default_backbone="model")
        assert engine.status()["status"] == "loading"
        with pytest.raises(Unavailable):
            await engine.inference.embed(["hi"])
        await engine.wait_ready()
        assert engine.status()["status"] == "ready"
        out = await engine.inference.embed(["hi", "there"])
        assert out.backbone.id == "model" and out.vectors.shape == (2, 384)
        with pytest.raises(Conflict, match="GRAFT_BACKBONES"):
            await engine.inference.embed(["hi"], "minilm-l6")
        with pytest.raises(NotFound):
            await engine.inference.embed(["hi"], "unknown")
        with pytest.raises(InvalidInput, match="empty"):
            await engine.inference.embed([])
        with pytest.raises(PayloadTooLarge, match="GRAFT_MAX_BATCH_ITEMS"):
            await engine.inference.embed(["a"] * 5)
        with pytest.raises(PayloadTooLarge, match=r"inputs\[1\]"):
            await engine.inference.embed(["a", "b" * 51])
        with pytest.raises(InvalidInput, match=r"inputs\[0\]"):
            await engine.inference.embed([3])
        await engine.close()

    asyncio.run(main())


def test_failed_load_is_reported_not_raised(graft_home, tmp_path):
    async def main():
        engine = make(graft_home, tmp_path, backbones=[str(tmp_path / "missing")])
        await engine.wait_ready()
        status = engine.status()
        assert status["status"] == "failed" and "missing" in status["error"]
        assert not engine.ready
        await engine.close()

    asyncio.run(main())
