"""A small typed client for Graft's HTTP API (httpx underneath).

    from graft import Client

    with Client("http://127.0.0.1:3000", key=admin_key) as graft:
        key = graft.create_tenant("acme")["api_key"]
        graft.create_adapter("acme", "support", ["refund", "shipping", "account"])
        graft.predict("acme", ["my parcel never arrived"], adapter="support")["predictions"][0]["label"]
        job = graft.finetune("acme", "support", file="examples.jsonl", params={"epochs": 30})
        done = graft.wait(job["job_id"], on_event=print)

The URL and key default to the environment (`GRAFT_URL`, else http://127.0.0.1:3000;
`GRAFT_KEY`). Every method returns the server's JSON as a TypedDict (graft/types.py) and
raises a `GraftError` subclass (graft/errors.py) when the server refuses, fails or cannot be
reached. This package speaks HTTP only: it imports nothing of the service.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, cast
from urllib.parse import quote

import httpx

from graft.errors import ConnectionFailed, GraftError, error_for
from graft.types import (
    ENDED, ActiveVersion, AdapterList, CreatedAdapter, Deleted, Embeddings, Event, ImageInput, Job, KeyCreated,
    KeyList, Prediction, TenantCreated, TenantDeleted, VersionList,
)

DEFAULT_URL = "http://127.0.0.1:3000"
Input = str | ImageInput

# What the server reads from an upload: it goes by the file's name (.zip, .csv, else JSONL).
_UPLOAD_TYPES = {".zip": "application/zip", ".csv": "text/csv", ".jsonl": "application/x-ndjson",
                 ".ndjson": "application/x-ndjson"}


def _seg(name: str) -> str:
    """A name or id as one path segment (quoted, so a stray '/' cannot change the route)."""
    return quote(str(name), safe="")


class Client:
    """Graft over HTTP. `url` and `key` default to `GRAFT_URL` / `GRAFT_KEY`; `timeout` is per
    request (seconds). Use it as a context manager, or call `close()`."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("GRAFT_URL") or DEFAULT_URL).rstrip("/")
        self.key = key if key is not None else os.environ.get("GRAFT_KEY") or None
        headers = {"user-agent": "graft-client/0.1"}
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    # -- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r}, key={'set' if self.key else 'none'})"

    def request(self, method: str, path: str, *, json_body: Any = None, **kwargs: Any) -> Any:
        """One call: the decoded JSON of a 2xx answer, else a GraftError."""
        try:
            r = self._http.request(method, path, json=json_body, **kwargs)
        except httpx.ConnectError as e:
            raise ConnectionFailed(f"cannot connect to {self.url} ({_reason(e)})", code="unreachable",
                                   url=self.url) from e
        except httpx.TimeoutException as e:
            raise ConnectionFailed(f"no answer from {self.url} within the timeout ({type(e).__name__})",
                                   code="timeout", url=self.url) from e
        except httpx.UnsupportedProtocol as e:
            raise ConnectionFailed(f"not an http(s) URL: {self.url!r}", code="bad_url", url=self.url) from e
        except httpx.TransportError as e:
            raise ConnectionFailed(f"the connection to {self.url} failed ({_reason(e)})", code="unreachable",
                                   url=self.url) from e
        if r.is_success:
            try:
                return r.json()
            except ValueError as e:
                raise GraftError(f"{method} {path}: the answer is not JSON: {r.text[:200]!r}",
                                 status=r.status_code, url=self.url) from e
        try:
            body: Any = r.json()
        except ValueError:
            body = r.text
        raise error_for(r.status_code, body, self.url, r.headers.get("retry-after"))

    def ready(self) -> dict[str, Any]:
        """/readyz: the backbones, their provider and precision (raises Unavailable while loading)."""
        return cast(dict[str, Any], self.request("GET", "/readyz"))

    # -- tenants and keys (admin key) -------------------------------------------------------

    def create_tenant(self, tenant: str) -> TenantCreated:
        """A tenant and its first key (`api_key`, shown once)."""
        return cast(TenantCreated, self.request("POST", "/v1/tenants", json_body={"tenant": tenant}))

    def delete_tenant(self, tenant: str) -> TenantDeleted:
        """Erase the tenant and everything Graft holds for it; says how many of each went."""
        return cast(TenantDeleted, self.request("DELETE", f"/v1/tenants/{_seg(tenant)}"))

    def issue_key(self, tenant: str, expires_in_s: float | None = None) -> KeyCreated:
        """Another key for the tenant, optionally expiring after `expires_in_s` seconds."""
        body = {"expires_in_s": expires_in_s} if expires_in_s is not None else {}
        return cast(KeyCreated, self.request("POST", f"/v1/tenants/{_seg(tenant)}/keys", json_body=body))

    def list_keys(self, tenant: str) -> KeyList:
        return cast(KeyList, self.request("GET", f"/v1/tenants/{_seg(tenant)}/keys"))

    def revoke_key(self, tenant: str, key_id: str) -> KeyList:
        """Revoke a key by its id (the middle part of `graft_<key_id>_<secret>`); the keys after."""
        return cast(KeyList, self.request("DELETE", f"/v1/tenants/{_seg(tenant)}/keys/{_seg(key_id)}"))

    # -- adapters ---------------------------------------------------------------------------

    def create_adapter(self, tenant: str, adapter: str, labels: Sequence[str], *,
                       descriptions: dict[str, str] | None = None, backbone: str | None = None) -> CreatedAdapter:
        """A zero-shot adapter from label names (optionally a description per label): version 1, serving at once."""
        body: dict[str, Any] = {"tenant": tenant, "adapter": adapter, "labels": list(labels)}
        if descriptions:
            body["descriptions"] = descriptions
        if backbone:
            body["backbone"] = backbone
        return cast(CreatedAdapter, self.request("POST", "/v1/adapters", json_body=body))

    def list_adapters(self, tenant: str) -> AdapterList:
        return cast(AdapterList, self.request("GET", f"/v1/tenants/{_seg(tenant)}/adapters"))

    def versions(self, tenant: str, adapter: str = "default") -> VersionList:
        """Every version of the adapter, with its metrics and training summary."""
        return cast(VersionList, self.request("GET", f"/v1/tenants/{_seg(tenant)}/adapters/{_seg(adapter)}/versions"))

    def promote(self, tenant: str, adapter: str, version: int, *, allow_dropped_labels: bool = False) -> ActiveVersion:
        """`allow_dropped_labels`: needed when the version lacks labels the active one serves (else 409)."""
        body: dict[str, Any] = {"version": version, **({"allow_dropped_labels": True} if allow_dropped_labels else {})}
        return cast(ActiveVersion, self.request(
            "POST", f"/v1/tenants/{_seg(tenant)}/adapters/{_seg(adapter)}/promote", json_body=body))

    def rollback(self, tenant: str, adapter: str = "default") -> ActiveVersion:
        return cast(ActiveVersion, self.request("POST", f"/v1/tenants/{_seg(tenant)}/adapters/{_seg(adapter)}/rollback"))

    def delete_adapter(self, tenant: str, adapter: str) -> Deleted:
        return cast(Deleted, self.request("DELETE", f"/v1/tenants/{_seg(tenant)}/adapters/{_seg(adapter)}"))

    # -- fine-tuning ------------------------------------------------------------------------

    def finetune(self, tenant: str, adapter: str = "default", examples: Iterable[dict[str, Any]] | None = None, *,
                 file: str | os.PathLike[str] | None = None, backbone: str | None = None,
                 params: dict[str, Any] | None = None) -> Job:
        """Queue a fine-tune job (answered at once, status `queued`). Either `examples`
        (`[{"text", "label"}, ...]` or `{"image": base64, "label"}`), sent as JSON, or `file`: a
        JSONL, CSV (columns text,label) or zip (a folder per label) file, uploaded as multipart.
        `params`: the optional hyperparameters (epochs, method, head, lr, ...; see the README)."""
        if (examples is None) == (file is None):
            raise ValueError("finetune needs exactly one of `examples` or `file`")
        if examples is not None:
            body: dict[str, Any] = {"tenant": tenant, "adapter": adapter, "examples": list(examples)}
            if backbone:
                body["backbone"] = backbone
            if params:
                body["params"] = params
            return cast(Job, self.request("POST", "/v1/finetune", json_body=body))
        path = Path(file)  # type: ignore[arg-type]
        fields = {"tenant": tenant, "adapter": adapter}
        if backbone:
            fields["backbone"] = backbone
        if params:
            fields["params"] = json.dumps(params)
        content_type = _UPLOAD_TYPES.get(path.suffix.lower(), "application/x-ndjson")
        with path.open("rb") as f:
            return cast(Job, self.request("POST", "/v1/finetune", data=fields,
                                          files={"file": (path.name, f, content_type)}))

    def job(self, job_id: str) -> Job:
        """The job's status, progress, metrics, version, promotion and error."""
        return cast(Job, self.request("GET", f"/v1/jobs/{_seg(job_id)}"))

    def events(self, job_id: str) -> list[Event]:
        """The job's events so far, oldest first (each numbered by `n`)."""
        return cast(list[Event], self.request("GET", f"/v1/jobs/{_seg(job_id)}/events")["events"])

    def cancel(self, job_id: str) -> Job:
        """Cancel the job: a queued one at once, a running one at its next epoch."""
        return cast(Job, self.request("POST", f"/v1/jobs/{_seg(job_id)}/cancel"))

    def jobs(self, tenant: str) -> list[Job]:
        """The tenant's jobs."""
        return cast(list[Job], self.request("GET", f"/v1/tenants/{_seg(tenant)}/jobs")["jobs"])

    def wait(self, job_id: str, on_event: Callable[[Event], None] | None = None, *, poll_s: float = 1.0,
             timeout: float | None = None, on_status: Callable[[Job], None] | None = None) -> Job:
        """Follow the job until it ends (succeeded, failed or cancelled) and return its final
        status. `on_event` is called once per new event, in order; `on_status` with the job
        after every poll. `timeout` (seconds, default none): TimeoutError when it passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = 0
        while True:
            job = self.job(job_id)
            events = self.events(job_id)  # read after the status: an ended job's last events are in
            for event in events:
                if event.get("n", 0) > seen:
                    seen = event.get("n", seen + 1)
                    if on_event:
                        on_event(event)
            if on_status:
                on_status(job)
            if job["status"] in ENDED:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(poll_s)

    # -- inference --------------------------------------------------------------------------

    def predict(self, tenant: str, inputs: Sequence[Input], *, adapter: str = "default",
                top_k: int = 1) -> Prediction:
        """Classify texts (or `{"image": base64}` items) with the adapter's active version."""
        body = {"tenant": tenant, "adapter": adapter, "inputs": list(inputs), "top_k": top_k}
        return cast(Prediction, self.request("POST", "/v1/predict", json_body=body))

    def embed(self, inputs: Sequence[Input], *, backbone: str | None = None) -> Embeddings:
        """L2-normalised embeddings of texts (or images) from a frozen backbone."""
        body: dict[str, Any] = {"inputs": list(inputs)}
        if backbone:
            body["backbone"] = backbone
        return cast(Embeddings, self.request("POST", "/v1/embed", json_body=body))


def _reason(e: Exception) -> str:
    """The innermost cause in a few words ('[Errno 111] Connection refused' -> 'connection refused')."""
    text = str(e) or type(e).__name__
    if "refused" in text.lower():
        return "connection refused"
    if "name or service not known" in text.lower() or "nodename nor servname" in text.lower():
        return "unknown host"
    return text.split("] ", 1)[-1]
