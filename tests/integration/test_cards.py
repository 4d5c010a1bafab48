"""Issue 16, points 4-6, against the real server and its worker: calibrated scores, label
changes that are never silent, and the model card of a version (JSON, Markdown, PNG) over
HTTP and gRPC."""
from __future__ import annotations

import json
import time
from functools import partial

import grpc
import numpy as np
import pytest

from adapters import calibration
from adapters.format import decode
from adapters.registry import Registry
from service.proto.graft.v1 import graft_pb2 as pb
from service.proto.graft.v1 import graft_pb2_grpc as pb_grpc
from tests.integration import helpers
from tests.integration.data import split
from tests.integration.jobs import wait_job
from tests.integration.server import SIGNING_KEY

TRAIN, HELD_OUT = split()
LABELS = ["team-1", "team-2", "team-3"]
WEAK = {"method": "head", "epochs": 1, "lr": 1e-6}  # a head that barely moves from its random start: near chance
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CARD_FIELDS = {
    "card_version", "tenant", "adapter", "version", "created_at", "active", "parent_version", "backbone", "labels",
    "data", "method", "evaluation", "test", "calibration", "baselines", "label_changes", "promotion", "candidates",
    "curves", "groups",
}


def grouped(examples: list[dict]) -> list[dict]:
    """The examples, each in one of two groups (alternating within a class)."""
    return [{**e, "group": "web" if i % 2 else "phone"} for i, e in enumerate(examples)]


def finetune(client, tenant: str, examples: list[dict], params: dict | None = None, adapter: str = "default") -> tuple[dict, list[dict]]:
    r = client.post("/v1/finetune", json={"tenant": tenant, "adapter": adapter, "examples": examples,
                                         "params": params or {}})
    assert r.status_code == 202, r.text
    done = wait_job(client, r.json()["job_id"], timeout=180)
    assert done["status"] == "succeeded", done
    return done, client.get(f"/v1/jobs/{done['job_id']}/events").json()["events"]


@pytest.fixture(scope="module")
def carded(client):
    """A tenant (and its key) whose adapter `default` has one fine-tuned version, its examples grouped."""
    tenant, key = helpers.new_tenant(client, "card")
    # One method, so one candidate and the card's validation evaluation (auto's card: test_autotl.py)
    done, events = finetune(client, tenant, grouped(TRAIN), {"seed": 0, "method": "head"})
    return tenant, key, done, events


def test_served_scores_are_softmax_of_logits_over_the_fitted_temperature(client, server, carded):
    tenant, _, done, events = carded
    cal = done["metrics"]["calibration"]
    assert set(cal) >= {"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "bins"}
    assert cal["bins"] == 15 and cal["fitted_on"] == "validation" and 0 < cal["label_smoothing"] < 0.5
    t = cal["temperature"]
    assert abs(t - 1.0) > 1e-3, cal  # a fitted T, not the default: the check below would be vacuous otherwise
    (calibrated,) = [e for e in events if e["kind"] == "calibration"]
    assert calibrated["temperature"] == t

    registry = Registry(server.database_url, migrate=False, signing_key=SIGNING_KEY.encode())
    try:
        stored = registry.get_version(tenant, "default", done["version"])
    finally:
        registry.close()
    ready = client.get("/readyz").json()["backbones"][0]
    adapter = decode(stored.config, stored.weights, fingerprint=ready["fingerprint"], dim=ready["dim"])
    assert adapter.config.temperature == t
    texts = [text for text, _ in HELD_OUT]
    x = np.array(client.post("/v1/embed", json={"inputs": texts}).json()["embeddings"], dtype=np.float32)
    logits = x @ adapter.tensors["weight"].T + adapter.tensors["bias"]
    expected = calibration.softmax(logits, t)
    r = client.post("/v1/predict", json={"tenant": tenant, "inputs": texts, "top_k": 3})
    assert r.status_code == 200 and r.json()["version"] == done["version"], r.text
    index = {label: i for i, label in enumerate(adapter.labels)}
    served = np.zeros_like(expected)
    for row, p in enumerate(r.json()["predictions"]):
        for scored in p["top"]:
            served[row, index[scored["label"]]] = scored["score"]
    np.testing.assert_allclose(served, expected, atol=2e-5)
    assert not np.allclose(served, calibration.softmax(logits), atol=1e-3)  # T changed what is served


def test_the_card_has_every_field(client, carded):
    tenant, _, done, _ = carded
    r = client.get(f"/v1/tenants/{tenant}/adapters/default/versions/{done['version']}/card")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
    card = r.json()
    assert set(card) == CARD_FIELDS
    assert (card["tenant"], card["adapter"], card["version"], card["active"]) == (tenant, "default", 1, True)
    ready = client.get("/readyz").json()["backbones"][0]
    assert card["backbone"] == {"id": "minilm-l6", "fingerprint": ready["fingerprint"], "dim": 384,
                                "licence": "apache-2.0"}
    assert card["labels"] == LABELS
    data = card["data"]
    assert data["per_class"] == {label: 10 for label in LABELS} and data["examples"] == 30
    assert data["duplicates"] == 0 and data["label_conflicts"]["items"] == 0
    assert data["groups"] == {"phone": 15, "web": 15}
    assert data["lengths"]["chars"]["min"] > 0 and data["lengths"]["words"]["max"] >= data["lengths"]["words"]["min"]
    method = card["method"]
    assert method["name"] == "head" and method["head"] == "linear" and method["params"]["seed"] == 0
    assert method["train"] + method["validation"] == 30 and method["best_epoch"] >= 1
    ev = card["evaluation"]
    assert ev["split"] == "validation" and ev["macro_f1"] == done["metrics"]["macro_f1"]
    assert set(ev["per_class_f1"]) == set(LABELS) and ev["confusion"]["labels"] == LABELS
    assert sum(map(sum, ev["confusion"]["matrix"])) == ev["n"] == method["validation"]
    assert card["calibration"] == done["metrics"]["calibration"]
    assert set(card["baselines"]) == {"majority", "zero_shot"}
    assert card["label_changes"] is None  # nothing served before
    assert card["promotion"]["decision"] == "promote" and card["promotion"]["active_now"] is True
    assert "no active version" in card["promotion"]["reason"]
    (candidate,) = card["candidates"]
    assert candidate["method"] == "head" and candidate["chosen"] is True and candidate["seconds"] > 0
    assert candidate["score"] == pytest.approx(ev["macro_f1"], abs=1e-6)
    assert [c["epoch"] for c in card["curves"]] == list(range(1, len(card["curves"]) + 1))
    assert len(card["curves"]) == method["epochs_run"]
    assert set(card["curves"][0]) == {"epoch", "train_loss", "val_loss", "val_macro_f1"}


def test_group_metrics(client, carded):
    tenant, _, done, _ = carded
    card = client.get(f"/v1/tenants/{tenant}/adapters/default/versions/{done['version']}/card").json()
    groups = card["groups"]
    assert groups["split"] == "validation" and set(groups["groups"]) == {"phone", "web"}
    assert sum(g["n"] for g in groups["groups"].values()) == card["evaluation"]["n"]
    f1 = {name: g["macro_f1"] for name, g in groups["groups"].items()}
    gap = groups["largest_gap"]
    assert f1[gap["best"]] == max(f1.values()) and f1[gap["worst"]] == min(f1.values())
    assert gap["best"] != gap["worst"]  # two groups named, even when they tie
    assert gap["macro_f1"] == pytest.approx(max(f1.values()) - min(f1.values()), abs=1e-6)


def test_markdown_and_png_cards_404_and_tenant_isolation(client, server, carded):
    tenant, key, done, _ = carded
    base = f"/v1/tenants/{tenant}/adapters/default/versions"
    md = client.get(f"{base}/{done['version']}/card", headers={"accept": "text/markdown"})
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown"), md.text
    text = md.text
    assert text.startswith(f"# Model card: {tenant}/default version 1")
    for needle in ("data:image/png;base64,", "## Data", "## Evaluation", "## Calibration", "## Groups",
                   "Largest gap", "## Promotion", "apache-2.0", "| team-1 |"):
        assert needle in text, needle
    image = client.get(f"{base}/{done['version']}/card.png")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content[:8] == PNG_MAGIC and len(image.content) > 10_000

    for path in (f"{base}/99/card", f"{base}/99/card.png", f"/v1/tenants/{tenant}/adapters/missing/versions/1/card"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"]["message"], (path, r.text)
    assert client.get(f"{base}/0/card").status_code == 400

    with server.client(key) as own:  # the tenant's own key: its card
        assert own.get(f"{base}/1/card").json()["version"] == 1
    _, other_key = helpers.new_tenant(client, "card")
    with server.client(other_key) as other:  # another tenant's key: this tenant does not exist for it
        for path in (f"{base}/1/card", f"{base}/1/card.png"):
            r = other.get(path)
            assert r.status_code == 404 and tenant in r.json()["error"]["message"], r.text
        assert other.get(f"{base}/1/card", headers={"accept": "text/markdown"}).status_code == 404


def test_cards_over_grpc(client, server, carded):
    tenant, key, done, _ = carded
    C = grpc.StatusCode

    def code_of(call) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as e:
            call()
        return e.value.code()

    http = client.get(f"/v1/tenants/{tenant}/adapters/default/versions/1/card").json()
    with server.channel(key) as ch:
        stub = pb_grpc.GraftStub(ch)
        ref = dict(tenant=tenant, adapter="default", version=1)
        card = stub.GetVersionCard(pb.GetVersionCardRequest(**ref))
        assert json.loads(card.card_json) == http and card.markdown == ""
        md = stub.GetVersionCard(pb.GetVersionCardRequest(**ref, format="markdown"))
        assert md.card_json == "" and md.markdown.startswith(f"# Model card: {tenant}/default version 1")
        assert stub.GetVersionCardImage(pb.GetVersionCardRequest(**ref)).png[:8] == PNG_MAGIC
        missing = pb.GetVersionCardRequest(tenant=tenant, adapter="default", version=99)
        assert code_of(partial(stub.GetVersionCard, missing)) == C.NOT_FOUND
        assert code_of(partial(stub.GetVersionCardImage, missing)) == C.NOT_FOUND
        bad = pb.GetVersionCardRequest(**ref, format="html")
        assert code_of(partial(stub.GetVersionCard, bad)) == C.INVALID_ARGUMENT

        # Groups travel over gRPC's FineTune too.
        examples = [pb.Example(text=e["text"], label=e["label"], group=e["group"]) for e in grouped(TRAIN)]
        job = stub.FineTune(pb.FineTuneRequest(tenant=tenant, adapter="by-grpc", examples=examples,
                                               params=pb.FineTuneParams(epochs=20)))
    assert wait_job(client, job.job_id, timeout=180)["status"] == "succeeded"
    card = client.get(f"/v1/tenants/{tenant}/adapters/by-grpc/versions/1/card").json()
    assert card["data"]["groups"] == {"phone": 15, "web": 15} and set(card["groups"]["groups"]) == {"phone", "web"}

    _, other_key = helpers.new_tenant(client, "card")
    with server.channel(other_key) as ch:
        other = pb_grpc.GraftStub(ch)
        request = pb.GetVersionCardRequest(tenant=tenant, adapter="default", version=1)
        assert code_of(partial(other.GetVersionCard, request)) == C.NOT_FOUND
        assert code_of(partial(other.GetVersionCardImage, request)) == C.NOT_FOUND


def test_label_changes_are_never_silent(client):
    """A version that drops a label the active one serves: said in the job's events and
    evaluation, kept as a candidate unless allowed (fine-tune param, promote field)."""
    tenant = helpers.new_tenant(client, "labels")[0]
    weak, _ = finetune(client, tenant, TRAIN, WEAK)  # v1: all three teams, near chance
    assert (weak["version"], weak["promoted"]) == (1, True)
    two = [e for e in TRAIN if e["label"] != "team-3"]

    dropped, events = finetune(client, tenant, two, {"method": "head"})  # v2: better, but team-3 is gone
    change = {"active_version": 1, "added": [], "dropped": ["team-3"]}
    assert (dropped["version"], dropped["promoted"]) == (2, False), dropped
    assert dropped["metrics"]["label_changes"] == change
    assert dropped["metrics"]["macro_f1"] > dropped["metrics"]["baselines"]["active"]["macro_f1"]  # it would win
    kinds = [e["kind"] for e in events]
    (said,) = [e for e in events if e["kind"] == "labels_changed"]
    assert {k: said[k] for k in change} == change and kinds.index("labels_changed") < kinds.index("evaluation")
    (evaluation,) = [e for e in events if e["kind"] == "evaluation"]
    assert evaluation["label_changes"] == change
    (promotion,) = [e for e in events if e["kind"] == "promotion"]
    assert promotion["decision"] == "candidate" and "team-3" in promotion["reason"]
    assert "allow_dropped_labels" in promotion["reason"]
    assert client.post("/v1/predict", json={"tenant": tenant, "inputs": ["x"]}).json()["version"] == 1

    base = f"/v1/tenants/{tenant}/adapters/default"
    r = client.post(f"{base}/promote", json={"version": 2})
    assert r.status_code == 409, r.text
    assert "team-3" in r.json()["error"]["message"]
    assert r.json()["error"]["details"] == {"version": 2, "active_version": 1, "dropped": ["team-3"]}
    card = client.get(f"{base}/versions/2/card").json()
    assert card["label_changes"] == change and card["promotion"]["decision"] == "candidate"
    assert card["promotion"]["active_now"] is False

    allowed, events = finetune(client, tenant, two, {"allow_dropped_labels": True, "method": "head"})  # v3: allowed
    assert (allowed["version"], allowed["promoted"]) == (3, True), allowed
    assert allowed["metrics"]["label_changes"] == change
    assert "labels_changed" in [e["kind"] for e in events]
    deadline = time.monotonic() + 5  # the API's adapter cache sees the worker's publish within a registry poll
    while True:
        served = client.post("/v1/predict", json={"tenant": tenant, "inputs": [t for t, _ in HELD_OUT],
                                                  "top_k": 3}).json()
        if served["version"] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert served["version"] == 3 and {s["label"] for p in served["predictions"] for s in p["top"]} == {"team-1", "team-2"}

    # Back to v1 adds team-3 again (nothing dropped); v2 over v1 needs the flag.
    assert client.post(f"{base}/promote", json={"version": 1}).json()["active_version"] == 1
    assert client.post(f"{base}/promote", json={"version": 2}).status_code == 409
    r = client.post(f"{base}/promote", json={"version": 2, "allow_dropped_labels": True})
    assert r.status_code == 200 and r.json()["active_version"] == 2, r.text
    assert client.post(f"{base}/promote", json={"version": 2, "allow_dropped_labels": "yes"}).status_code == 400
