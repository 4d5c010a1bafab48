"""The `graft` command line (the installed console script, run as a subprocess) and the
`graft.Client` Python client, both against the real server of the session."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

import graft
from graft import Client
from graft.cli import report_error
from graft.errors import error_for
from tests.integration.data import split
from tests.integration.server import ADMIN_KEY, bearer, free_port

GRAFT = Path(sys.executable).with_name("graft")  # the console script pyproject installs
TRAIN, HELD_OUT = split()
LABELS = ["team-1", "team-2", "team-3"]
WEAK = {"method": "head", "epochs": 1, "lr": 1e-6}  # a head that barely moves from its random start: never beats a trained one
SLOW = {"epochs": 1000, "patience": 1000, "batch_size": 1}  # far longer than any test waits


def graft_cli(url: str, *args: str, key: str | None = ADMIN_KEY, stdin: str | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GRAFT_URL", "GRAFT_KEY", "GRAFT_TENANT")}
    env["GRAFT_URL"] = url
    if key is not None:
        env["GRAFT_KEY"] = key
    return subprocess.run([str(GRAFT), *args], env=env, capture_output=True, text=True, input=stdin,
                          timeout=timeout)


def new_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_jsonl(path: Path, examples: list[dict[str, str]]) -> Path:
    path.write_text("\n".join(json.dumps(e) for e in examples) + "\n")
    return path


def server_error(server, method: str, path: str, key: str = ADMIN_KEY, **kwargs) -> dict:
    """What the server itself answers to a request (to compare with what the CLI prints)."""
    r = httpx.request(method, server.url + path, headers=bearer(key), timeout=60, **kwargs)
    assert r.status_code >= 400, r.text
    return r.json()["error"]


# -- the command line -------------------------------------------------------------------------


def test_the_client_imports_nothing_of_the_service():
    """graft/ only speaks HTTP (docs/ARCHITECTURE.md): importing it pulls in no server module."""
    code = ("import sys, graft, graft.cli; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('service', 'adapters', 'models')); "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr


def test_help_documents_the_exit_codes():
    r = subprocess.run([str(GRAFT), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for line in ("0    ok", "1    the job ended failed or cancelled", "2    usage error", "3    cannot connect",
                 "4    the server refused", "5    server error", "GRAFT_URL", "GRAFT_KEY"):
        assert line in r.stdout, (line, r.stdout)


def test_cli_end_to_end(server, tmp_path):
    """Tenant, keys, a zero-shot adapter, a fine-tune followed with --wait, predict, embed,
    versions, rollback and promote, jobs, delete: each through the console script."""
    tenant = new_name("cli")
    r = graft_cli(server.url, "--json", "tenants", "create", tenant)
    assert r.returncode == 0, r.stderr
    key = json.loads(r.stdout)["api_key"]
    assert key.startswith("graft_")

    r = graft_cli(server.url, "keys", "issue", "--tenant", tenant, "--json")  # global flag after the command
    assert r.returncode == 0, r.stderr
    second = json.loads(r.stdout)
    r = graft_cli(server.url, "keys", "list", "--tenant", tenant)
    assert r.returncode == 0 and second["key_id"] in r.stdout, r.stdout + r.stderr
    r = graft_cli(server.url, "--json", "keys", "revoke", "--tenant", tenant, second["key_id"])
    assert r.returncode == 0, r.stderr
    revoked = {k["key_id"]: k["revoked"] for k in json.loads(r.stdout)["keys"]}
    assert revoked[second["key_id"]] is True and list(revoked.values()).count(False) == 1

    # From here on, the tenant's own key.
    r = graft_cli(server.url, "adapters", "create", "--tenant", tenant, "--adapter", "support",
                  "--labels", "team-1,team-2", "team-3", "--describe", "team-1=billing and refunds", key=key)
    assert r.returncode == 0, r.stderr
    assert f"{tenant}/support version 1 (zero-shot" in r.stdout and "team-1, team-2, team-3" in r.stdout
    r = graft_cli(server.url, "--json", "predict", "--tenant", tenant, "--adapter", "support",
                  "My parcel has not arrived after two weeks.", key=key)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == 1

    data = write_jsonl(tmp_path / "tickets.jsonl", TRAIN)
    r = graft_cli(server.url, "finetune", str(data), "--tenant", tenant, "--adapter", "support",
                  "--method", "head", "--epochs", "60", "--params", '{"seed": 1, "epochs": 5}', "--wait", "--poll", "0.2",
                  key=key)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "30 examples, 3 classes" in r.stderr and "val macro-F1" in r.stderr and "(best so far)" in r.stderr
    assert "evaluation of" in r.stdout and "zero-shot" in r.stdout and "active version 1" in r.stdout
    assert "per class" in r.stdout and "version 2 promoted: it serves" in r.stdout, r.stdout

    r = graft_cli(server.url, "--json", "adapters", "versions", "--tenant", tenant, "--adapter", "support", key=key)
    assert r.returncode == 0, r.stderr
    versions = json.loads(r.stdout)["versions"]
    assert [(v["version"], v["active"]) for v in versions] == [(1, False), (2, True)]
    assert versions[1]["training"]["params"]["epochs"] == 60  # --epochs wins over --params
    assert versions[1]["training"]["params"]["seed"] == 1
    r = graft_cli(server.url, "adapters", "versions", "--tenant", tenant, "--adapter", "support", key=key)
    assert r.returncode == 0 and "zero-shot" in r.stdout and "fine-tune" in r.stdout, r.stdout

    r = graft_cli(server.url, "--json", "predict", "--tenant", tenant, "--adapter", "support",
                  *[t for t, _ in HELD_OUT], key=key)
    assert r.returncode == 0, r.stderr
    served = json.loads(r.stdout)
    assert served["version"] == 2 and len(served["predictions"]) == len(HELD_OUT)
    texts = tmp_path / "texts.txt"
    texts.write_text("The courier never showed up today.\n\nThe app crashes on startup.\n")
    r = graft_cli(server.url, "predict", "--tenant", tenant, "--adapter", "support", "--file", str(texts),
                  "--top-k", "2", key=key)
    assert r.returncode == 0, r.stderr
    assert "version 2" in r.stdout and "The courier never showed up today." in r.stdout and "team-" in r.stdout

    # A worse version is kept as a candidate: --wait exits 1 and says how to promote it.
    r = graft_cli(server.url, "--json", "finetune", str(data), "--tenant", tenant, "--adapter", "support",
                  "--params", json.dumps(WEAK), "--wait", "--poll", "0.2", key=key)
    assert r.returncode == 1, r.stdout + r.stderr
    weak = json.loads(r.stdout)  # --json: the final job alone on stdout
    assert (weak["status"], weak["version"], weak["promoted"]) == ("succeeded", 3, False)
    r = graft_cli(server.url, "jobs", "wait", weak["job_id"], key=key)
    assert r.returncode == 1 and "version 3 kept as a candidate" in r.stdout, r.stdout + r.stderr
    assert f"graft adapters promote --tenant {tenant} --adapter support 3" in r.stdout

    r = graft_cli(server.url, "adapters", "rollback", "--tenant", tenant, "--adapter", "support", key=key)
    assert r.returncode == 0 and "version 1 serves" in r.stdout, r.stdout + r.stderr
    r = graft_cli(server.url, "adapters", "promote", "--tenant", tenant, "--adapter", "support", "2", key=key)
    assert r.returncode == 0 and "version 2 serves" in r.stdout, r.stdout + r.stderr

    r = graft_cli(server.url, "--json", "embed", "hello", "where is my parcel?", key=key)
    assert r.returncode == 0, r.stderr
    embedded = json.loads(r.stdout)
    assert embedded["dim"] == 384 and len(embedded["embeddings"]) == 2 and len(embedded["embeddings"][0]) == 384
    r = graft_cli(server.url, "embed", "hello", key=key)
    assert r.returncode == 0 and "384-d" in r.stdout, r.stdout + r.stderr

    r = graft_cli(server.url, "--json", "jobs", "list", "--tenant", tenant, key=key)
    assert r.returncode == 0, r.stderr
    jobs = json.loads(r.stdout)
    assert len(jobs) == 2 and {j["status"] for j in jobs} == {"succeeded"}
    r = graft_cli(server.url, "--json", "jobs", "events", weak["job_id"], key=key)
    kinds = [e["kind"] for e in json.loads(r.stdout)]
    assert kinds[0] == "queued" and kinds[-1] == "succeeded" and "evaluation" in kinds
    r = graft_cli(server.url, "jobs", "show", weak["job_id"], key=key)
    assert r.returncode == 0 and "succeeded" in r.stdout and "macro-F1" in r.stdout, r.stdout

    r = graft_cli(server.url, "--json", "adapters", "list", "--tenant", tenant, key=key)
    (listed,) = json.loads(r.stdout)["adapters"]
    assert (listed["adapter"], listed["active_version"], listed["versions"]) == ("support", 2, 3)
    r = graft_cli(server.url, "adapters", "delete", "--tenant", tenant, "--adapter", "support", key=key)
    assert r.returncode == 0 and "deleted" in r.stdout, r.stderr
    r = graft_cli(server.url, "adapters", "list", "--tenant", tenant, key=key)
    assert r.returncode == 0 and "no adapters" in r.stdout

    r = graft_cli(server.url, "tenants", "delete", tenant)
    assert r.returncode == 0 and f"tenant {tenant} erased" in r.stdout and "keys 2" in r.stdout, r.stdout


def test_refused_requests_exit_4_with_the_servers_message(server, tmp_path):
    tenant = new_name("cli")
    key = graft_cli(server.url, "--json", "tenants", "create", tenant).stdout
    key = json.loads(key)["api_key"]

    # A bad upload: the server names the line, the CLI prints that and what to do.
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "good", "label": "x"}\n{oops\n')
    r = graft_cli(server.url, "finetune", str(bad), "--tenant", tenant, "--wait", key=key)
    assert r.returncode == 4, r.stdout + r.stderr
    with bad.open("rb") as f:
        said = server_error(server, "POST", "/v1/finetune", key, data={"tenant": tenant, "adapter": "default"},
                            files={"file": ("bad.jsonl", f)})
    assert "line 2" in said["message"]
    assert f"graft: refused (400 invalid_input): {said['message']}" in r.stderr and "fix:" in r.stderr
    assert r.stdout == ""

    # Invalid params: every field at fault is listed.
    r = graft_cli(server.url, "finetune", str(write_jsonl(tmp_path / "ok.jsonl", TRAIN)), "--tenant", tenant,
                  "--params", '{"epochs": 0, "head": "transformer"}', key=key)
    assert r.returncode == 4, r.stderr
    assert "  - epochs: Input should be greater than or equal to 1" in r.stderr and "  - head: " in r.stderr, r.stderr

    # An unknown adapter (404) and a duplicate one (409).
    r = graft_cli(server.url, "predict", "--tenant", tenant, "--adapter", "ghost", "hello", key=key)
    said = server_error(server, "POST", "/v1/predict", key, json={"tenant": tenant, "adapter": "ghost",
                                                                  "inputs": ["hello"]})
    assert r.returncode == 4 and f"(404 not_found): {said['message']}" in r.stderr, r.stderr
    for _ in range(2):
        r = graft_cli(server.url, "adapters", "create", "--tenant", tenant, "--adapter", "twice",
                      "--labels", "a", "b", key=key)
    assert r.returncode == 4 and "409 conflict" in r.stderr, r.stderr

    # A bad key: 401 and where a key comes from.
    r = graft_cli(server.url, "embed", "hello", key="graft_000000000000_nope")
    assert r.returncode == 4 and "401 unauthenticated" in r.stderr and "GRAFT_KEY" in r.stderr, r.stderr
    r = graft_cli(server.url, "--json", "embed", "hello", key=None)  # no key at all
    assert r.returncode == 4 and r.stdout == "" and "401" in r.stderr


def test_usage_errors_exit_2(server, tmp_path):
    r = graft_cli(server.url, "predict", "hello")  # no --tenant (nor GRAFT_TENANT)
    assert r.returncode == 2 and "--tenant" in r.stderr
    r = graft_cli(server.url, "finetune", str(tmp_path / "missing.jsonl"), "--tenant", "acme")
    assert r.returncode == 2 and "no such file" in r.stderr
    data = write_jsonl(tmp_path / "ok.jsonl", TRAIN)
    r = graft_cli(server.url, "finetune", str(data), "--tenant", "acme", "--params", "{epochs: 3}")
    assert r.returncode == 2 and "--params is not JSON" in r.stderr
    r = graft_cli(server.url, "embed")
    assert r.returncode == 2 and "nothing to send" in r.stderr
    r = graft_cli(server.url, "adapters", "fly")
    assert r.returncode == 2


def test_a_closed_port_exits_3_and_says_so(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = graft_cli(url, "embed", "hello")
    assert r.returncode == 3, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()  # one line
    assert url in line and "connection refused" in line and "make serve" in line and "GRAFT_URL" in line
    r = graft_cli(url, "--json", "finetune", str(write_jsonl(tmp_path / "e.jsonl", TRAIN)), "--tenant", "acme",
                  "--wait")
    assert r.returncode == 3 and r.stdout == "" and url in r.stderr


def _start_waiting(server, tmp_path, tenant: str, key: str, adapter: str) -> tuple[subprocess.Popen[str], str]:
    """`graft finetune --wait` on a job that trains far longer than the test: the process and the job id."""
    data = write_jsonl(tmp_path / f"{adapter}.jsonl", TRAIN * 4)
    env = {**os.environ, "GRAFT_URL": server.url, "GRAFT_KEY": key}
    proc = subprocess.Popen([str(GRAFT), "finetune", str(data), "--tenant", tenant, "--adapter", adapter,
                             "--params", json.dumps(SLOW), "--wait", "--poll", "0.2"],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with Client(server.url, key) as c:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = [j for j in c.jobs(tenant) if j["adapter"] == adapter]
            if jobs and jobs[0]["status"] == "running":
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert jobs, "the CLI submitted no job"
    time.sleep(1)  # the CLI is following the job by now
    return proc, jobs[0]["job_id"]


def test_ctrl_c_while_waiting_asks_and_cancels_on_yes(server, tmp_path):
    tenant = new_name("cli")
    key = json.loads(graft_cli(server.url, "--json", "tenants", "create", tenant).stdout)["api_key"]
    proc, job_id = _start_waiting(server, tmp_path, tenant, key, "slow")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate("y\n", timeout=180)
    assert proc.returncode == 1, out + err
    assert f"cancel the job {job_id}? [y/N]" in err and "cancel requested" in err, err
    assert f"job {job_id} was cancelled" in out, out
    with Client(server.url, key) as c:
        assert c.job(job_id)["status"] == "cancelled"
        assert c.list_adapters(tenant)["adapters"] == []  # nothing half-published


def test_ctrl_c_while_waiting_detaches_on_no(server, tmp_path):
    tenant = new_name("cli")
    key = json.loads(graft_cli(server.url, "--json", "tenants", "create", tenant).stdout)["api_key"]
    proc, job_id = _start_waiting(server, tmp_path, tenant, key, "slow")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate("\n", timeout=60)  # the default answer: no
    assert proc.returncode == 130, out + err
    assert f"graft jobs wait {job_id}" in err and "detached" in err, err
    with Client(server.url, key) as c:
        assert c.job(job_id)["status"] in ("queued", "running")  # it keeps going
    r = graft_cli(server.url, "jobs", "cancel", job_id, key=key)
    assert r.returncode == 0 and job_id in r.stdout, r.stderr
    r = graft_cli(server.url, "jobs", "wait", job_id, "--poll", "0.2", key=key, timeout=180)
    assert r.returncode == 1 and "was cancelled" in r.stdout, r.stdout + r.stderr


# -- the Python client ------------------------------------------------------------------------


def test_client_end_to_end(server, tmp_path):
    tenant = new_name("py")
    with Client(server.url, ADMIN_KEY) as admin:
        created = admin.create_tenant(tenant)
        assert created["tenant"] == tenant
        issued = admin.issue_key(tenant, expires_in_s=3600)
        assert issued["expires_at"] and issued["api_key"].startswith("graft_")
        assert len(admin.list_keys(tenant)["keys"]) == 2
        after = admin.revoke_key(tenant, issued["key_id"])
        assert {k["key_id"]: k["revoked"] for k in after["keys"]}[issued["key_id"]] is True

    with Client(server.url, created["api_key"]) as c:
        zs = c.create_adapter(tenant, "support", LABELS, descriptions={"team-1": "billing"})
        assert (zs["version"], zs["labels"]) == (1, LABELS)
        assert c.predict(tenant, ["The tracking number does not work."], adapter="support")["version"] == 1

        events: list[dict] = []
        statuses: list[str] = []
        job = c.finetune(tenant, "support", examples=TRAIN, params={"epochs": 60})
        assert job["status"] == "queued"
        done = c.wait(job["job_id"], on_event=events.append, on_status=lambda j: statuses.append(j["status"]),
                      poll_s=0.2, timeout=300)
        assert (done["status"], done["version"], done["promoted"]) == ("succeeded", 2, True), done
        # every event once, in order, the last one included
        assert [e["n"] for e in events] == list(range(1, len(events) + 1))
        assert events == c.events(job["job_id"])
        kinds = [e["kind"] for e in events]
        assert kinds[0] == "queued" and kinds[-1] == "succeeded" and "epoch" in kinds
        assert kinds.index("evaluation") < kinds.index("promotion")
        assert statuses[-1] == "succeeded"
        assert done["metrics"]["macro_f1"] > done["metrics"]["baselines"]["active"]["macro_f1"]

        csv = tmp_path / "tickets.csv"
        csv.write_text("text,label\n" + "\n".join(f'"{e["text"]}",{e["label"]}' for e in TRAIN) + "\n")
        upload = c.wait(c.finetune(tenant, "from-csv", file=csv, params={"epochs": 20})["job_id"], poll_s=0.2,
                        timeout=300)
        assert upload["status"] == "succeeded" and upload["version"] == 1, upload
        jsonl = write_jsonl(tmp_path / "tickets.jsonl", TRAIN)
        upload = c.wait(c.finetune(tenant, "from-jsonl", file=str(jsonl))["job_id"], poll_s=0.2, timeout=300)
        assert upload["status"] == "succeeded", upload

        predicted = c.predict(tenant, [t for t, _ in HELD_OUT], adapter="support", top_k=2)
        assert predicted["version"] == 2 and all(len(p["top"]) == 2 for p in predicted["predictions"])
        versions = c.versions(tenant, "support")["versions"]
        assert [(v["version"], v["active"]) for v in versions] == [(1, False), (2, True)]
        assert c.rollback(tenant, "support")["active_version"] == 1
        assert c.promote(tenant, "support", 2)["active_version"] == 2

        embedded = c.embed(["hello", "where is my parcel?"])
        assert embedded["dim"] == 384 and len(embedded["embeddings"]) == 2
        assert abs(sum(v * v for v in embedded["embeddings"][0]) - 1) < 1e-3

        assert {a["adapter"] for a in c.list_adapters(tenant)["adapters"]} == {"support", "from-csv", "from-jsonl"}
        assert len(c.jobs(tenant)) == 3
        assert c.delete_adapter(tenant, "from-csv")["deleted"] is True

        slow = c.finetune(tenant, "slow", examples=TRAIN * 4, params=SLOW)
        c.cancel(slow["job_id"])
        assert c.wait(slow["job_id"], poll_s=0.2, timeout=120)["status"] == "cancelled"

    with Client(server.url, ADMIN_KEY) as admin:
        removed = admin.delete_tenant(tenant)["removed"]
        assert removed["adapters"] == 2 and removed["keys"] == 2


def test_client_reads_url_and_key_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("GRAFT_URL", server.url)
    monkeypatch.setenv("GRAFT_KEY", ADMIN_KEY)
    with Client() as c:
        assert c.url == server.url and c.embed(["hello"])["dim"] == 384


def test_client_errors_carry_the_servers_code_and_message(server):
    tenant = new_name("py")
    with Client(server.url, ADMIN_KEY) as admin:
        key = admin.create_tenant(tenant)["api_key"]
    with Client(server.url, key) as c:
        with pytest.raises(graft.BadRequest) as bad:
            c.create_adapter(tenant, "one", ["only"])
        said = server_error(server, "POST", "/v1/adapters", key, json={"tenant": tenant, "adapter": "one",
                                                                       "labels": ["only"]})
        assert (bad.value.status, bad.value.code, bad.value.message) == (400, "invalid_input", said["message"])
        assert isinstance(bad.value, graft.GraftError)

        with pytest.raises(graft.BadRequest) as bad:
            c.finetune(tenant, examples=TRAIN, params={"epochs": 0, "head": "transformer"})
        assert {d["where"] for d in bad.value.details} == {"params.epochs", "params.head"}

        with pytest.raises(graft.NotFound) as missing:
            c.job("nope")
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        assert isinstance(missing.value, graft.BadRequest)

        c.create_adapter(tenant, "twice", ["a", "b"])
        with pytest.raises(graft.Conflict) as conflict:
            c.create_adapter(tenant, "twice", ["a", "b"])
        assert conflict.value.status == 409 and "twice" in conflict.value.message

        with pytest.raises(ValueError):
            c.finetune(tenant)  # neither examples nor a file

    with Client(server.url, "graft_000000000000_nope") as stranger:
        with pytest.raises(graft.Unauthenticated) as denied:
            stranger.embed(["hello"])
        assert (denied.value.status, denied.value.code) == (401, "unauthenticated")

    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, key) as nowhere:
        with pytest.raises(graft.ConnectionFailed) as down:
            nowhere.embed(["hello"])
        assert down.value.status is None and down.value.code == "unreachable" and url in str(down.value)


def test_5xx_answers_map_to_server_errors_and_exit_5():
    """The real server has no 5xx to provoke on purpose: the mapping of one, from the
    answer's status and body to the error class and the CLI's exit code."""
    from rich.console import Console

    err = error_for(500, {"error": {"code": "internal", "message": "boom"}}, "http://x")
    assert isinstance(err, graft.ServerError) and (err.status, err.code, err.message) == (500, "internal", "boom")
    busy = error_for(503, {"error": {"code": "unavailable", "message": "loading"}}, retry_after="7")
    assert isinstance(busy, graft.Unavailable) and busy.retry_after == 7.0
    proxy = error_for(502, "<html>Bad Gateway</html>")
    assert isinstance(proxy, graft.ServerError) and proxy.code is None and "Bad Gateway" in proxy.message
    console = Console(record=True, width=200, file=io.StringIO())
    assert report_error(busy, console) == 5 and "retry in 7s" in console.export_text()
    assert report_error(error_for(429, {"error": {"code": "rate_limited", "message": "slow down"}},
                                  retry_after="3"), console) == 4
