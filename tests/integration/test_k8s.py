"""Kubernetes manifests: every overlay renders with `kubectl kustomize`, validates offline
against the Kubernetes schemas, and names only probe paths, ports and settings that the
service really serves and reads."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["cpu", "gpu", "dev"]
K8S_VERSION = "1.33.0"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor")}


def render(overlay: str) -> list[dict]:
    kubectl = Path(sys.executable).with_name("kubectl")
    out = subprocess.run([str(kubectl), "kustomize", str(ROOT / "k8s/overlays" / overlay)],
                         check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.fixture(scope="module", params=OVERLAYS)
def manifests(request):
    return request.param, render(request.param)


def test_overlay_validates_against_the_schemas(manifests):
    _, docs = manifests
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
            "ConfigMap", "ServiceMonitor"} <= kinds
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def env_of(container: dict, docs: list[dict]) -> dict[str, str]:
    env = {}
    for source in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<secret>")
    return env


def test_manifests_match_what_the_service_serves_and_reads(manifests, server):
    overlay, docs = manifests
    known = {f"GRAFT_{name.upper()}" for name in Settings.model_fields} | {"BENTOML_HOME"}
    api = find(docs, "Deployment", "graft-api")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(api, docs)
    assert set(env) <= known, set(env) - known
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert ports == {"http": int(env["GRAFT_PORT"]), "grpc": int(env["GRAFT_GRPC_PORT"])}
    assert env["GRAFT_TRAIN_WORKERS"] == "0"  # training runs in graft-trainer only
    with server.client(None) as c:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = api[probe]["httpGet"]
            assert get["port"] in ports
            assert c.get(get["path"]).status_code == 200, probe
        monitor = find(docs, "ServiceMonitor", "graft-api")["spec"]["endpoints"][0]
        assert c.get(monitor["path"]).status_code == 200
    service_ports = {p["name"] for p in find(docs, "Service", "graft-api")["spec"]["ports"]}
    assert monitor["port"] in service_ports and {"http", "grpc"} <= service_ports

    trainer = find(docs, "Deployment", "graft-trainer")["spec"]["template"]["spec"]["containers"][0]
    assert set(env_of(trainer, docs)) <= known
    module = trainer["command"][-1]
    assert callable(importlib.import_module(module).main)
    trainer_env = env_of(trainer, docs)
    assert {p["name"]: p["containerPort"] for p in trainer["ports"]} == {"metrics": int(trainer_env["GRAFT_TRAIN_METRICS_PORT"])}
    assert find(docs, "PodMonitor", "graft-trainer")["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"

    for deployment in ("graft-api", "graft-trainer"):
        spec = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        container = spec["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert env_of(container, docs)["GRAFT_HOME"] in mounts and "/tmp" in mounts

    if overlay == "gpu":
        assert api["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert env["GRAFT_PROVIDER"] == "cuda"
    if overlay == "dev":
        pg = find(docs, "StatefulSet", "graft-postgres")
        assert pg["spec"]["replicas"] == 1 and pg["spec"]["volumeClaimTemplates"]
        assert find(docs, "Secret", "graft-secrets")


def test_dashboard_queries_name_real_metrics():
    import json
    import re

    from prometheus_client.metrics import MetricWrapperBase

    from service import metrics

    defined = {m._name for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    dashboard = json.loads((ROOT / "k8s/base/dashboards/graft.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = {re.sub(r"_(bucket|sum|count|total)$", "", m) for e in exprs for m in re.findall(r"graft_[a-z_]+", e)}
    defined = {re.sub(r"_total$", "", name) for name in defined} | {"graft_finetune_jobs"}  # jobs_by_status()
    assert queried and queried <= defined, queried - defined
