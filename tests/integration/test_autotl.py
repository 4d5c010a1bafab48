"""AutoTL over HTTP against the real server and its worker: with no method, the job tries
the candidates, keeps the winner on validation, evaluates it once on its test split, and
says so in its events, version and model card."""
from __future__ import annotations

import pytest

from tests.integration import helpers
from tests.integration.jobs import wait_job
from tests.integration.lexical_data import code_split
from tests.integration.paraphrase_data import paraphrase_examples

CODES, HELD_OUT = code_split()


def finetune(client, tenant: str, examples: list[dict], params: dict | None = None) -> tuple[dict, list[dict]]:
    body = {"tenant": tenant, "examples": examples, **({"params": params} if params is not None else {})}
    r = client.post("/v1/finetune", json=body)
    assert r.status_code == 202, r.text
    done = wait_job(client, r.json()["job_id"], timeout=300)
    assert done["status"] == "succeeded", done
    return done, client.get(f"/v1/jobs/{done['job_id']}/events").json()["events"]


def test_auto_picks_lexical_where_word_identity_decides_and_says_why(client):
    tenant, _ = helpers.new_tenant(client, "auto")
    done, events = finetune(client, tenant, CODES)  # no params at all: auto
    kinds = [e["kind"] for e in events]
    tried = [e for e in events if e["kind"] == "candidate"]
    assert [c["candidate"] for c in tried] == ["head", "zero-shot", "lexical", "hybrid"]
    assert all(c["seconds"] > 0 for c in tried if c["candidate"] != "zero-shot")  # it trains nothing
    (chosen,) = [e for e in events if e["kind"] == "chosen"]
    assert chosen["candidate"] == "lexical" and "validation macro-F1" in chosen["reason"]
    assert kinds.index("chosen") < kinds.index("evaluation") < kinds.index("promotion") < kinds.index("succeeded")
    assert done["promoted"] and done["metrics"]["split"] == "test"

    (v,) = client.get(f"/v1/tenants/{tenant}/adapters/default/versions").json()["versions"]
    assert v["method"] == "lexical" and v["training"]["method"] == "auto" and v["training"]["chosen"] == "lexical"
    card = client.get(f"/v1/tenants/{tenant}/adapters/default/versions/{done['version']}/card").json()
    assert [c["candidate"] for c in card["candidates"]] == [c["candidate"] for c in tried]
    assert [c["candidate"] for c in card["candidates"] if c.get("chosen")] == ["lexical"]
    assert card["evaluation"]["split"] == "test" and card["test"]["macro_f1"] == done["metrics"]["macro_f1"]
    assert card["test"]["n"] == v["training"]["test"] > 0
    md = client.get(f"/v1/tenants/{tenant}/adapters/default/versions/{done['version']}/card",
                    headers={"accept": "text/markdown"})
    assert md.status_code == 200 and "lexical" in md.text and "yes" in md.text

    hits = 0
    for i in range(0, len(HELD_OUT), 40):
        chunk = HELD_OUT[i : i + 40]
        r = client.post("/v1/predict", json={"tenant": tenant, "adapter": "default", "inputs": [t for t, _ in chunk]})
        assert r.status_code == 200, r.text
        hits += sum(p["label"] == label for p, (_, label) in zip(r.json()["predictions"], chunk))
    assert hits / len(HELD_OUT) >= 0.95


def test_auto_picks_a_transfer_method_where_meaning_decides(client):
    tenant, _ = helpers.new_tenant(client, "auto")
    done, events = finetune(client, tenant, paraphrase_examples(), {"time_budget_s": 60})
    (chosen,) = [e for e in events if e["kind"] == "chosen"]
    # 24 a class: a few-shot set, so setfit (adapters/fewshot.py) is a candidate too when it fits the budget
    assert chosen["candidate"] in ("head", "head-mlp", "hybrid", "setfit"), chosen
    (v,) = client.get(f"/v1/tenants/{tenant}/adapters/default/versions").json()["versions"]
    assert v["training"]["time_budget_s"] == 60 and v["method"] != "lexical"


@pytest.mark.parametrize("budget", [0, 3601, "soon"])
def test_time_budget_is_bounded(client, budget):
    tenant, _ = helpers.new_tenant(client, "auto")
    r = client.post("/v1/finetune", json={"tenant": tenant, "examples": CODES, "params": {"time_budget_s": budget}})
    assert r.status_code == 400 and "time_budget_s" in r.text, r.text
