"""Kubernetes manifests: every overlay renders with `kubectl kustomize`, validates offline
against the Kubernetes schemas, and names only probe paths, ports and settings that the
service really serves and reads."""
from __future__ import annotations

import copy
import importlib
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["cpu", "gpu", "dev"]
K8S_VERSION = "1.33.0"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor")}


def render(overlay: str, root: str = "k8s/overlays") -> list[dict]:
    kubectl = Path(sys.executable).with_name("kubectl")
    out = subprocess.run([str(kubectl), "kustomize", str(ROOT / root / overlay)],
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

    for kind, name in (("Deployment", "graft-api"), ("Deployment", "graft-trainer"), ("Job", "graft-prepare")):
        spec = find(docs, kind, name)["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        container = spec["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert env_of(container, docs)["GRAFT_HOME"] in mounts and "/tmp" in mounts
    check_prepared_artifacts(docs, api, trainer)

    if overlay == "gpu":
        assert api["resources"]["limits"]["nvidia.com/gpu"] == 1
        # fp16 artifacts are built where they serve: the prepare Job runs on a GPU node.
        prepare = find(docs, "Job", "graft-prepare")["spec"]["template"]["spec"]["containers"][0]
        assert prepare["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert env["GRAFT_PROVIDER"] == "cuda"
    if overlay == "dev":
        pg = find(docs, "StatefulSet", "graft-postgres")
        assert pg["spec"]["replicas"] == 1 and pg["spec"]["volumeClaimTemplates"]
        assert find(docs, "Secret", "graft-secrets")


def artifact_mount(pod: dict, container: dict, env: dict[str, str]) -> tuple[dict, dict]:
    """The volume mounted at GRAFT_ARTIFACTS and its mount."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["GRAFT_ARTIFACTS"]]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume, mount


def check_prepared_artifacts(docs: list[dict], api: dict, trainer: dict, api_pod: dict | None = None) -> None:
    """Artifacts built once (issue 19): the prepare Job (the trainer image: torch) writes them
    into a ReadWriteMany claim; the API (no torch in its image) and the trainer mount it
    read-only with GRAFT_PREPARED=required, at the path GRAFT_ARTIFACTS names."""
    from service import cli

    job = find(docs, "Job", "graft-prepare")["spec"]["template"]["spec"]
    prepare = job["containers"][0]
    assert prepare["command"][-3:] == ["-m", "service.cli", "prepare"] and callable(cli.main)
    assert prepare["image"] == trainer["image"] != api["image"]  # the serving image has no torch
    job_env = env_of(prepare, docs)
    assert set(job_env) <= {f"GRAFT_{name.upper()}" for name in Settings.model_fields}
    assert job_env["GRAFT_PREPARED"] == "build"
    volume, mount = artifact_mount(job, prepare, job_env)
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert not mount.get("readOnly")
    pvc = find(docs, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    pods = [(api, api_pod), (trainer, find(docs, "Deployment", "graft-trainer")["spec"]["template"]["spec"])]
    if api_pod is None:
        pods[0] = (api, find(docs, "Deployment", "graft-api")["spec"]["template"]["spec"])
    for container, pod in pods:
        env = env_of(container, docs)
        assert env["GRAFT_PREPARED"] == "required" and env["GRAFT_ARTIFACTS"] == job_env["GRAFT_ARTIFACTS"]
        volume, mount = artifact_mount(pod, container, env)
        assert volume["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True} and mount["readOnly"] is True


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


# -- KServe (k8s/kserve) -----------------------------------------------------------------
# kubernetes-validate has no KServe schemas: the ServingRuntime and InferenceService are
# validated with jsonschema against KServe's own CRD schemas, trimmed and vendored in
# tests/integration/kserve_crds.json (its "$comment" names the source), and the runtime's
# containers and volumes, which are core/v1, against Kubernetes' schemas as a Pod's.

KSERVE = {("serving.kserve.io/v1alpha1", "ServingRuntime"), ("serving.kserve.io/v1beta1", "InferenceService")}


def strict(schema: dict) -> dict:
    """The CRD schema rejecting unknown fields, as `kubectl apply` does (strict field
    validation), except where the CRD itself keeps unknown fields."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def kserve_validators() -> dict[str, jsonschema.Validator]:
    crds = json.loads((Path(__file__).with_name("kserve_crds.json")).read_text())
    return {kind: jsonschema.Draft7Validator(strict(crds[kind])) for _, kind in KSERVE}


@pytest.fixture(scope="module")
def kserve_docs() -> list[dict]:
    return render("kserve", root="k8s")


def test_kserve_variant_validates_against_the_schemas(kserve_docs, kserve_validators):
    docs = kserve_docs
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("ServingRuntime", "graft"), ("InferenceService", "graft"), ("ConfigMap", "graft-settings"),
            ("Deployment", "graft-trainer"), ("PodMonitor", "graft-api")} <= kinds
    # KServe makes the API's Deployment, Service and autoscaler: the base's are gone.
    assert not kinds & {("Deployment", "graft-api"), ("Service", "graft-api"),
                        ("HorizontalPodAutoscaler", "graft-api"), ("ServiceMonitor", "graft-api")}
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in KSERVE:
            kserve_validators[doc["kind"]].validate(doc)
        elif key not in CRDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    runtime = find(docs, "ServingRuntime", "graft")["spec"]
    predictor = find(docs, "InferenceService", "graft")["spec"]["predictor"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "graft-predictor"},
           "spec": {"containers": runtime["containers"], "volumes": runtime["volumes"],
                    "initContainers": predictor["initContainers"],
                    "securityContext": predictor["securityContext"],
                    "terminationGracePeriodSeconds": predictor["terminationGracePeriodSeconds"]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


@pytest.mark.parametrize("kind,path,value", [
    ("ServingRuntime", ["spec", "protocolVersion"], ["v2"]),  # the field is protocolVersions
    ("ServingRuntime", ["spec", "supportedModelFormats"], [{"version": "1"}]),  # name is required
    ("InferenceService", ["spec", "predictor", "model", "runtme"], "graft"),
    ("InferenceService", ["spec", "predictor", "scaleMetric"], "gpu"),  # not in the enum
])
def test_kserve_schemas_catch_mistakes(kserve_docs, kserve_validators, kind, path, value):
    """Guards the guard: the vendored schemas are not vacuous."""
    doc = copy.deepcopy(next(d for d in kserve_docs if d["kind"] == kind))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        kserve_validators[kind].validate(doc)


def test_kserve_variant_matches_what_the_service_serves_and_reads(kserve_docs, server):
    docs = kserve_docs
    runtime = find(docs, "ServingRuntime", "graft")["spec"]
    isvc = find(docs, "InferenceService", "graft")
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == "graft" and model["protocolVersion"] == "v2" in runtime["protocolVersions"]
    assert {"name": model["modelFormat"]["name"], "version": model["modelFormat"]["version"]} in [
        {"name": f["name"], "version": f.get("version")} for f in runtime["supportedModelFormats"]]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in ("RawDeployment", "Standard")

    (container,) = runtime["containers"]
    assert container["name"] == "kserve-container"
    trainer = find(docs, "Deployment", "graft-trainer")["spec"]["template"]["spec"]["containers"][0]
    check_prepared_artifacts(docs, container, trainer, api_pod=runtime)  # the runtime: serving image, no torch
    known = {f"GRAFT_{name.upper()}" for name in Settings.model_fields} | {"BENTOML_HOME"}
    env = env_of(container, docs)  # the base's ConfigMap graft-settings, then the container's own
    assert set(env) <= known, set(env) - known
    assert env["GRAFT_TRAIN_WORKERS"] == "0" and env_of(trainer, docs)["GRAFT_HOME"] == env["GRAFT_HOME"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(ports.values()) == [int(env["GRAFT_PORT"])]  # KServe routes to the first port
    with server.client(None) as c:  # probes carry no key
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert ports.get(get["port"], get["port"]) == int(env["GRAFT_PORT"]), probe
            assert get["path"].startswith("/v2/health/") and c.get(get["path"]).status_code == 200, probe
        monitor = find(docs, "PodMonitor", "graft-api")["spec"]["podMetricsEndpoints"][0]
        assert monitor["port"] in ports and c.get(monitor["path"]).status_code == 200
        assert runtime["annotations"]["prometheus.kserve.io/path"] == monitor["path"]
        assert int(runtime["annotations"]["prometheus.kserve.io/port"]) == int(env["GRAFT_PORT"])

    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert predictor["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["GRAFT_HOME"] in mounts and "/tmp" in mounts
    # The base's PodDisruptionBudget and NetworkPolicy select the predictor pods.
    labels = predictor["labels"]
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        spec = find(docs, kind, "graft-api")["spec"]
        selector = spec.get("selector") or spec["podSelector"]
        assert selector["matchLabels"].items() <= labels.items(), kind
    ingress = {p["port"] for rule in find(docs, "NetworkPolicy", "graft-api")["spec"]["ingress"] for p in rule["ports"]}
    assert int(env["GRAFT_PORT"]) in ingress


def test_pods_wait_for_the_prepare_job_before_they_start(manifests):
    """The API and the trainer wait in an initContainer (`check-prepared`, records only, the
    artifacts volume read-only) until the prepare Job has built what they serve."""
    _, docs = manifests
    for name in ("graft-api", "graft-trainer"):
        pod = find(docs, "Deployment", name)["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        assert "python -m service.cli check-prepared" in " ".join(init["command"])
        assert init["image"] == pod["containers"][0]["image"]
        mounts = {m["name"]: m for m in init["volumeMounts"]}
        assert mounts["graft-artifacts"]["readOnly"] is True
        assert {e["configMapRef"]["name"] for e in init["envFrom"]} == {"graft-settings"}


def test_kserve_predictor_waits_for_the_prepare_job_too(kserve_docs):
    """The KServe variant's predictor has the same initContainer, on the runtime's image and
    artifacts volume (KServe merges the predictor's pod fields with the runtime's)."""
    runtime = find(kserve_docs, "ServingRuntime", "graft")["spec"]
    (init,) = find(kserve_docs, "InferenceService", "graft")["spec"]["predictor"]["initContainers"]
    assert "python -m service.cli check-prepared" in " ".join(init["command"])
    assert init["image"] == runtime["containers"][0]["image"]
    mounts = {m["name"]: m for m in init["volumeMounts"]}
    assert mounts["graft-artifacts"]["readOnly"] is True
    volumes = {v["name"]: v for v in runtime["volumes"]}
    assert volumes["graft-artifacts"]["persistentVolumeClaim"]["claimName"] == "graft-artifacts"
    assert set(mounts) <= set(volumes)
