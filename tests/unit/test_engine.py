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
        assert status["status"] == "failed" and "backbone_load_failed" in status["error"]
        assert str(tmp_path) not in str(status)  # the open /readyz names no file path
        assert not engine.ready
        await engine.close()

    asyncio.run(main())


def test_predict_while_backbones_load_is_503_not_409(graft_home, tmp_path):
    """Before the backbones are loaded, an adapter's backbone is not missing from the
    configuration: the answer is 'retry shortly' (503), never 'add it to GRAFT_BACKBONES'."""
    import numpy as np

    from adapters import zero_shot
    from adapters.format import encode

    async def main():
        engine = make(graft_home, tmp_path, backbones=["minilm-l6"])
        engine.registry.create_tenant("acme")
        config, tensors = zero_shot.build("minilm-l6", "f" * 32, ["a", "b"], np.eye(2, 384, dtype=np.float32))
        engine.registry.create_adapter("acme", "default", *encode(config, tensors))
        with pytest.raises(Unavailable, match="still loading"):
            await engine.inference.predict("acme", "default", ["hello"])
        await engine.close()

    asyncio.run(main())


def test_a_fresh_home_is_created_private(tmp_path):
    import stat

    from adapters.registry import Registry, default_url

    home = tmp_path / "not" / "yet"
    Registry(default_url(home)).close()
    assert (home / "registry.db").is_file() and stat.S_IMODE(home.stat().st_mode) == 0o700


def test_deleting_an_adapter_cancels_its_jobs(graft_home, tmp_path):
    """A queued job of a deleted adapter would otherwise create it anew when it runs."""
    import numpy as np

    from adapters import zero_shot
    from adapters.format import encode

    examples = [{"text": t, "label": l} for t, l in [("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")]]

    async def main():
        engine = make(graft_home, tmp_path, backbones=["minilm-l6"])
        engine.registry.create_tenant("acme")
        config, tensors = zero_shot.build("minilm-l6", "f" * 32, ["x", "y"], np.eye(2, 384, dtype=np.float32))
        engine.registry.create_adapter("acme", "doomed", *encode(config, tensors))
        queue = engine.jobs.queue
        running = queue.submit("acme", "doomed", "minilm-l6", examples, {}, max_queued=10)
        claim = queue.claim("w1")
        queued = queue.submit("acme", "doomed", "minilm-l6", examples, {}, max_queued=10)
        other = queue.submit("acme", "kept", "minilm-l6", examples, {}, max_queued=10)
        await engine.versions.delete_adapter("acme", "doomed")
        assert queue.get(queued.id).status == "cancelled"
        assert queue.heartbeat(claim) is True  # the running job is asked to stop
        assert queue.get(other.id).status == "queued"
        assert running.id == claim.job.id
        await engine.close()

    asyncio.run(main())


def test_images_decode_in_their_own_bounded_pool(graft_home, tmp_path):
    """#14.16: image decoding runs on the `prepare` pool, at most GRAFT_DECODE_THREADS
    at once, never on asyncio's default pool (shared with database and auth calls)."""
    import threading
    import time

    from models.image import ImageBackbone

    active, peak, names = 0, 0, set()
    lock = threading.Lock()

    class Probe(ImageBackbone):  # the real class; only its decoding step is observed
        def __init__(self) -> None:
            pass

        def prepare(self, item):
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
                names.add(threading.current_thread().name)
            time.sleep(0.05)
            with lock:
                active -= 1
            return item

    async def main():
        engine = make(graft_home, tmp_path, backbones=["minilm-l6"], decode_threads=2)
        await asyncio.gather(*(engine.inference.prepare_items(Probe(), [b"x", b"y"]) for _ in range(8)))
        await engine.close()

    asyncio.run(main())
    assert peak == 2 and names and all(n.startswith("prepare") for n in names), (peak, names)


def test_a_request_refused_while_loading_is_not_charged_to_the_rate_limit(graft_home, tmp_path):
    """Engine.admit: 503 while the backbones load, before the tenant's bucket is touched; once
    loaded, the burst is whole (a refused request cost nothing)."""
    from service.auth import Principal
    from service.errors import RateLimited

    async def main():
        engine = make(graft_home, tmp_path, backbones=["minilm-l6"], rate_limit_rps=0.001, rate_limit_burst=2)
        who = Principal(tenant="t")
        for _ in range(3):
            with pytest.raises(Unavailable):
                await engine.admit(who, 1)
        await engine.wait_ready()
        await engine.admit(who, 1)
        await engine.admit(who, 1)  # the burst of 2, whole
        with pytest.raises(RateLimited):
            await engine.admit(who, 1)
        await engine.close()

    asyncio.run(main())
