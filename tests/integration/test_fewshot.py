"""Few-shot contrastive fine-tuning (method setfit, adapters/fewshot.py) over HTTP against the
real server and its worker: a setfit job trains a LoRA version that is promoted and serves;
auto on 8 examples a class tries setfit among its candidates, compared by cross-validation,
and says so in its events and card; bad setfit parameters get 400 saying why."""
from __future__ import annotations

import pytest

from tests.integration import helpers
from tests.integration.data import TICKETS, split
from tests.integration.jobs import wait_job

TRAIN, HELD_OUT = split()
FEW = [e for i, e in enumerate(TRAIN) if i % 10 < 6]  # 6 tickets a team
EIGHT = [{"text": t, "label": label} for label in ("team-1", "team-2") for t in TICKETS[label][:8]]


@pytest.fixture(scope="module")
def jobs(client):
    """A setfit job and an auto job on 8 a class, submitted together (one worker trains them in turn)."""
    tenant, _ = helpers.new_tenant(client, "fewshot")
    ids = {}
    for adapter, examples, params in (("setfit", FEW, {"method": "setfit"}), ("auto", EIGHT, {})):
        r = client.post("/v1/finetune", json={"tenant": tenant, "adapter": adapter, "examples": examples,
                                              "params": params})
        assert r.status_code == 202, r.text
        ids[adapter] = r.json()["job_id"]
    done = {adapter: wait_job(client, job, timeout=600) for adapter, job in ids.items()}
    assert all(d["status"] == "succeeded" for d in done.values()), done
    events = {a: client.get(f"/v1/jobs/{d['job_id']}/events").json()["events"] for a, d in done.items()}
    return tenant, done, events


def test_a_setfit_fine_tune_trains_promotes_and_serves(client, jobs):
    tenant, done, events = jobs
    assert done["setfit"]["promoted"] and done["setfit"]["version"] == 1
    assert [e["epoch"] for e in events["setfit"] if e["kind"] == "epoch"] == [1]
    (v,) = client.get(f"/v1/tenants/{tenant}/adapters/setfit/versions").json()["versions"]
    assert v["method"] == "lora" and v["training"]["method"] == "setfit"  # served as a LoRA version
    assert v["lora"] == {"rank": 8, "alpha": 16.0, "layers": 2, "split": 4,
                         "targets": ["query", "key", "value", "attention_output", "ffn_in", "ffn_out"]}
    assert v["training"]["params"]["iterations"] == 20
    accuracy, predictions = helpers.held_out_accuracy(client, tenant, "setfit", HELD_OUT)
    assert accuracy >= 0.75, (accuracy, predictions)


def test_auto_on_eight_a_class_tries_setfit_by_cross_validation(client, jobs):
    tenant, done, events = jobs
    tried = {e["candidate"]: e for e in events["auto"] if e["kind"] == "candidate"}
    assert list(tried) == ["head", "zero-shot", "lexical", "hybrid", "setfit"], tried
    assert tried["setfit"]["method"] == "lora" and all(e["folds"] == 4 for e in tried.values())
    split_event = next(e for e in events["auto"] if e["kind"] == "split")
    assert split_event["test"] == 0 and split_event["train"] + split_event["validation"] == 16
    (chosen,) = [e for e in events["auto"] if e["kind"] == "chosen"]
    assert "cross-validated macro-F1 (4 folds of train + validation)" in chosen["reason"]
    card = client.get(f"/v1/tenants/{tenant}/adapters/auto/versions/{done['auto']['version']}/card").json()
    setfit = next(c for c in card["candidates"] if c["candidate"] == "setfit")
    assert setfit["metric"].startswith("cross-validated macro-F1") and 0 <= setfit["score"] <= 1
    assert setfit["seconds"] > 0 and "validation_split_macro_f1" in setfit
    assert done["auto"]["metrics"]["selection"]["rows"] == 16
    md = client.get(f"/v1/tenants/{tenant}/adapters/auto/versions/{done['auto']['version']}/card",
                    headers={"accept": "text/markdown"})
    assert md.status_code == 200 and "| setfit | linear |" in md.text and "cross-validated macro-F1" in md.text


@pytest.mark.parametrize("params, examples, backbone, needle", [
    ({"method": "setfit", "lora_layers": 3}, FEW, None, "at most its top 2 layers"),
    ({"method": "setfit", "continual": True}, FEW, None, "params.continual is not offered"),
    ({"method": "setfit"}, FEW[:8], None, "3 examples of each label (2 to train on, 1 to validate); fewer for "
                                          "['team-2']"),
    ({"method": "setfit"}, FEW, "efficientnet-lite0", "an image backbone: use method head or unfreeze"),
])
def test_bad_setfit_parameters_are_400(client, params, examples, backbone, needle):
    tenant, _ = helpers.new_tenant(client, "fewshot")
    body = {"tenant": tenant, "examples": examples, "params": params, **({"backbone": backbone} if backbone else {})}
    r = client.post("/v1/finetune", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"], r.text
