"""The Kubernetes manifests in k8s/ agree with the code: settings names, ports, probes, hardening.

Every YAML file parses; every kustomization names files that exist; every FlickrHub Deployment
runs `python -m <service>` with gRPC (or, for the edge, HTTP) probes on the port the service
really binds, requests and limits, a locked-down securityContext and a grace period longer than
the drain; every environment variable the manifests set is a field of `common.settings.Settings`
(read from the dataclass metadata, so a renamed setting breaks this test, not production).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the manifests")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
BASE = K8S / "base"
OVERLAYS = K8S / "overlays"
SECRET_TEMPLATE = BASE / "secret.example.yaml"

IMAGE = "flickrhub:latest"
CONFIG_MAP = "flickrhub-config"
SECRET = "flickrhub-secrets"
# service → replicas the brief asks for in base
SERVICES = {"gateway": 2, "mover": 2, "worker": 3, "cache": 2, "edge": 2}
# Deployments behind a Service: their endpoints must drain before SIGTERM (preStop sleep).
SERVED = {"gateway", "cache", "edge"}
# Variables the OpenTelemetry SDK reads itself (common.settings says so); allowed beside Settings'.
OTEL_SDK_OWN = {"OTEL_EXPORTER_OTLP_ENDPOINT"}

Doc = dict[str, Any]


def settings_env_names() -> set[str]:
    return {str(f.metadata["env"]) for f in dataclasses.fields(Settings)}


def secret_env_names() -> set[str]:
    return {str(f.metadata["env"]) for f in dataclasses.fields(Settings) if f.metadata.get("secret")}


@functools.cache
def _parse(path: Path) -> tuple[Doc, ...]:
    return tuple(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)


def load(path: Path) -> list[Doc]:
    """The objects in one YAML file (parsed once per run; callers get their own copy)."""
    return copy.deepcopy(list(_parse(path.resolve())))


def yaml_files() -> list[Path]:
    return sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")])


def kustomizations() -> list[Path]:
    return [p for p in yaml_files() if p.name == "kustomization.yaml"]


def base_docs() -> list[Doc]:
    """Every object the base kustomization applies (its resources, in order)."""
    kustomization = load(BASE / "kustomization.yaml")[0]
    return [doc for name in kustomization["resources"] for doc in load(BASE / name)]


def by_kind(kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in base_docs() if d["kind"] == kind}


def containers(workload: Doc) -> Iterator[Doc]:
    spec = workload["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def deployment(name: str) -> Doc:
    return by_kind("Deployment")[name]


def main_container(name: str) -> Doc:
    pod = deployment(name)["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == name]
    return dict(container)


def config_data() -> dict[str, str]:
    return {k: str(v) for k, v in by_kind("ConfigMap")[CONFIG_MAP]["data"].items()}


def secret_data() -> dict[str, str]:
    (secret,) = load(SECRET_TEMPLATE)
    return {k: str(v) for k, v in secret["stringData"].items()}


def shared_settings() -> Settings:
    """Settings as every service reads them before its own ports (ConfigMap + Secret)."""
    return Settings.from_env({**config_data(), **secret_data()})


def effective_env(name: str) -> dict[str, str]:
    """What the service's process sees: ConfigMap, then Secret, then the container's own env."""
    env = {**config_data(), **secret_data()}
    env.update({e["name"]: str(e["value"]) for e in main_container(name).get("env", [])})
    return env


def port_env(service: str) -> tuple[str, str]:
    return Settings.env_name(f"{service}_port"), Settings.env_name(f"{service}_metrics_port")


def prestop_sleep_s(container: Doc) -> int:
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    return int(command[1]) if command[:1] == ["sleep"] else 0


# -- files ------------------------------------------------------------------------------------


def test_every_manifest_parses_and_names_its_object() -> None:
    files = yaml_files()
    assert files, "no manifests under k8s/"
    for path in files:
        docs = load(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert {"apiVersion", "kind"} <= doc.keys(), f"{path}: object without apiVersion/kind"
            if doc["kind"] != "Kustomization":
                assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without a name"


def test_kustomizations_name_existing_files_and_leave_none_out() -> None:
    referenced: set[Path] = set()
    for path in kustomizations():
        kustomization = load(path)[0]
        for entry in kustomization.get("resources", []):
            target = (path.parent / entry).resolve()
            assert target.exists(), f"{path}: resource {entry} does not exist"
            referenced.add(target if target.is_file() else target / "kustomization.yaml")
        for patch in kustomization.get("patches", []):
            target = (path.parent / patch["path"]).resolve()
            assert target.is_file(), f"{path}: patch {patch['path']} does not exist"
            referenced.add(target)
    orphans = {p.resolve() for p in yaml_files()} - referenced - {SECRET_TEMPLATE.resolve()}
    orphans = {p for p in orphans if p.name != "kustomization.yaml"}
    assert not orphans, f"manifests no kustomization applies: {sorted(map(str, orphans))}"


def test_secret_template_holds_placeholders_and_is_never_applied() -> None:
    data = secret_data()
    assert {"FLICKR_API_KEY", "FLICKR_API_SECRET", "VAULT_MASTER_KEY"} <= data.keys()
    for key, value in data.items():
        assert "PLACEHOLDER" in value, f"{key} in {SECRET_TEMPLATE.name} must be a marked placeholder"
    for path in kustomizations():
        kustomization = load(path)[0]
        entries = [
            *kustomization.get("resources", []),
            *(p["path"] for p in kustomization.get("patches", [])),
        ]
        applied = {(path.parent / entry).resolve() for entry in entries}
        assert SECRET_TEMPLATE.resolve() not in applied, f"{path} applies the secret template"


# -- configuration ----------------------------------------------------------------------------


def test_every_env_var_the_manifests_set_is_a_setting() -> None:
    known = settings_env_names()
    used: dict[str, str] = {}
    for key in config_data():
        used[key] = "ConfigMap"
    for key in secret_data():
        used[key] = "Secret"
    for name in SERVICES:
        for env in main_container(name).get("env", []):
            used[env["name"]] = f"Deployment {name}"
    for path in OVERLAYS.rglob("*.yaml"):
        for doc in load(path):
            if doc["kind"] == "ConfigMap":
                for key in doc.get("data", {}):
                    used[key] = str(path.relative_to(K8S))
    unknown = {k: where for k, where in used.items() if k not in known and k not in OTEL_SDK_OWN}
    assert not unknown, f"not in common.settings.Settings: {unknown}"


def test_secrets_stay_out_of_the_config_map() -> None:
    leaked = secret_env_names() & config_data().keys()
    assert not leaked, f"secret settings in the ConfigMap: {leaked}"
    for path in OVERLAYS.rglob("*.yaml"):
        for doc in load(path):
            if doc["kind"] == "ConfigMap":
                assert not secret_env_names() & doc.get("data", {}).keys(), f"{path} holds a secret"


def test_each_service_reads_valid_settings_binding_all_interfaces() -> None:
    assert shared_settings().shutdown_grace_s > 0  # also proves every value parses
    for name in SERVICES:
        settings = Settings.from_env(effective_env(name))
        if name == "edge":
            assert settings.edge_host == "0.0.0.0"
        else:
            assert settings.bind_host == "0.0.0.0"


# -- deployments ------------------------------------------------------------------------------


def test_each_service_has_a_deployment_running_its_module() -> None:
    deployments = by_kind("Deployment")
    assert set(SERVICES) <= deployments.keys()
    for name, replicas in SERVICES.items():
        assert deployments[name]["spec"]["replicas"] == replicas, name
        container = main_container(name)
        assert container["image"] == IMAGE, name
        assert container["command"] == ["python", "-m", name], name
        sources = {
            ref.get("configMapRef", {}).get("name") or ref.get("secretRef", {}).get("name")
            for ref in container.get("envFrom", [])
        }
        assert {CONFIG_MAP, SECRET} <= sources, f"{name}: env must come from {CONFIG_MAP} and {SECRET}"


def test_probes_speak_grpc_health_on_the_service_port_and_http_on_the_edge() -> None:
    for name in SERVICES:
        container = main_container(name)
        env = effective_env(name)
        port = int(env[port_env(name)[0]])
        declared = {p["containerPort"] for p in container["ports"]}
        assert port in declared, f"{name}: service port {port} not declared"
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in container, f"{name}: no {probe}"
        if name == "edge":
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            named = {p["name"]: p["containerPort"] for p in container["ports"]}
            for probe in ("readinessProbe", "livenessProbe"):
                ref = container[probe]["httpGet"]["port"]
                assert named.get(ref, ref) == port, f"edge {probe} is not on EDGE_PORT"
        else:
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert container[probe]["grpc"]["port"] == port, f"{name}: {probe} not gRPC on {port}"


def test_every_container_has_requests_and_limits() -> None:
    for kind in ("Deployment", "StatefulSet"):
        for name, workload in by_kind(kind).items():
            for container in containers(workload):
                resources = container.get("resources", {})
                for section in ("requests", "limits"):
                    assert {"cpu", "memory"} <= resources.get(section, {}).keys(), (
                        f"{kind} {name}/{container['name']}: {section} need cpu and memory"
                    )


def test_every_pod_runs_non_root_read_only_without_capabilities() -> None:
    for kind in ("Deployment", "StatefulSet"):
        for name, workload in by_kind(kind).items():
            pod = workload["spec"]["template"]["spec"]
            pod_ctx = pod.get("securityContext", {})
            assert pod_ctx.get("runAsNonRoot") is True, f"{kind} {name}: runAsNonRoot"
            assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{kind} {name}"
            assert pod.get("automountServiceAccountToken") is False, f"{kind} {name}: API token mounted"
            for container in containers(workload):
                ctx = container.get("securityContext", {})
                where = f"{kind} {name}/{container['name']}"
                assert ctx.get("readOnlyRootFilesystem") is True, where
                assert ctx.get("allowPrivilegeEscalation") is False, where
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
                assert not ctx.get("capabilities", {}).get("add"), where


def test_grace_period_outlasts_the_drain_and_served_pods_drain_endpoints_first() -> None:
    grace = shared_settings().shutdown_grace_s
    for name in SERVICES:
        pod = deployment(name)["spec"]["template"]["spec"]
        sleep = prestop_sleep_s(main_container(name))
        if name in SERVED:
            assert 0 < sleep <= 10, f"{name}: needs a small preStop sleep so its endpoints drain"
        assert pod["terminationGracePeriodSeconds"] >= grace + sleep + 10, (
            f"{name}: terminationGracePeriodSeconds must exceed preStop + SHUTDOWN_GRACE_S with margin"
        )


def test_metrics_ports_are_declared_and_annotated_for_scraping() -> None:
    for name in SERVICES:
        template = deployment(name)["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        metrics = int(effective_env(name)[port_env(name)[1]])
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert annotations.get("prometheus.io/port") == str(metrics), name
        assert metrics in {p["containerPort"] for p in main_container(name)["ports"]}, name
        scrape = by_kind("NetworkPolicy")["allow-metrics-scrape"]["spec"]["ingress"]
        assert metrics in {p["port"] for rule in scrape for p in rule["ports"]}, f"{name}: scrape blocked"


def test_metrics_ports_are_the_settings_defaults() -> None:
    # One number per service everywhere: the README's table, `make run`'s banner and the runbook
    # all give Settings' defaults, so the manifests pin those too.
    defaults = Settings()
    for name in SERVICES:
        pinned = int(effective_env(name)[port_env(name)[1]])
        assert pinned == getattr(defaults, f"{name}_metrics_port"), name


def test_pods_spread_and_disruption_budgets_cover_every_service() -> None:
    budgets = by_kind("PodDisruptionBudget")
    for name in SERVICES:
        template = deployment(name)["spec"]["template"]
        labels = template["metadata"]["labels"]
        spread = template["spec"].get("topologySpreadConstraints", [])
        assert spread, f"{name}: no topologySpreadConstraints"
        for constraint in spread:
            assert constraint["labelSelector"]["matchLabels"].items() <= labels.items(), name
        assert name in budgets, f"{name}: no PodDisruptionBudget"
        assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= labels.items(), name


def test_services_select_pods_and_target_declared_ports() -> None:
    services = by_kind("Service")
    pods = {
        name: workload["spec"]["template"]
        for kind in ("Deployment", "StatefulSet")
        for name, workload in by_kind(kind).items()
    }
    assert {"gateway", "cache", "edge", "redis-queue", "redis-cache"} <= services.keys()
    for name in ("gateway", "cache"):
        assert services[name]["spec"].get("type", "ClusterIP") == "ClusterIP", name
    for name, service in services.items():
        selector = service["spec"]["selector"]
        matched = [t for t in pods.values() if selector.items() <= t["metadata"]["labels"].items()]
        assert matched, f"Service {name} selects no pod"
        for port in service["spec"]["ports"]:
            names = {p.get("name") for t in matched for c in t["spec"]["containers"] for p in c["ports"]}
            assert port["targetPort"] in names, f"Service {name}: targetPort {port['targetPort']} unknown"


def test_autoscalers_scale_workers_and_edge() -> None:
    hpas = by_kind("HorizontalPodAutoscaler")
    for name in ("worker", "edge"):
        target = hpas[name]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", name)
        assert hpas[name]["spec"]["minReplicas"] >= SERVICES[name]


def test_addresses_in_the_config_map_point_at_the_services() -> None:
    services = by_kind("Service")
    config = config_data()
    for setting, service, port_setting in (
        ("GATEWAY_ADDR", "gateway", "GATEWAY_PORT"),
        ("CACHE_ADDR", "cache", "CACHE_PORT"),
    ):
        host, _, port = config[setting].rpartition(":")
        assert host == service, f"{setting} should dial the {service} Service"
        assert int(port) in {p["port"] for p in services[service]["spec"]["ports"]}, setting
        assert int(port) == int(effective_env(service)[port_setting]), setting


# -- stores -----------------------------------------------------------------------------------


def redis_conf(name: str) -> dict[str, list[str]]:
    conf = by_kind("ConfigMap")[f"{name}-config"]["data"]["redis.conf"]
    parsed: dict[str, list[str]] = {}
    for line in conf.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            parsed.setdefault(key, []).append(value.strip())
    return parsed


def test_queue_redis_never_evicts_and_persists() -> None:
    conf = redis_conf("redis-queue")
    assert conf["maxmemory-policy"] == ["noeviction"]
    assert conf["appendonly"] == ["yes"]
    assert conf["appendfsync"] == ["everysec"]
    assert any(v != '""' for v in conf.get("save", [])), "queue Redis needs RDB save points too"
    stateful = by_kind("StatefulSet")["redis-queue"]
    claims = {c["metadata"]["name"] for c in stateful["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["name"]: m["mountPath"] for c in containers(stateful) for m in c.get("volumeMounts", [])}
    assert "data" in claims and mounts.get("data") == conf["dir"][0], "AOF must live on the PVC"
    assert shared_settings().redis_url.startswith("redis://redis-queue:")


def test_cache_redis_is_lru_capped_at_10gb_without_persistence() -> None:
    conf = redis_conf("redis-cache")
    assert conf["maxmemory"] == ["10gb"]
    assert conf["maxmemory-policy"] == ["allkeys-lru"]
    assert conf["appendonly"] == ["no"]
    assert conf["save"] == ['""']
    assert not by_kind("StatefulSet")["redis-cache"]["spec"].get("volumeClaimTemplates")
    assert shared_settings().cache_redis_url.startswith("redis://redis-cache:")


def test_no_mongodb_is_deployed() -> None:
    for kind in ("Deployment", "StatefulSet", "DaemonSet"):
        for name, workload in by_kind(kind).items():
            for container in containers(workload):
                assert "mongo" not in container["image"].lower(), f"{kind} {name} runs MongoDB"
    assert "MONGO_URL" not in config_data(), "MONGO_URL belongs in the Secret (external replica set)"
    assert "MONGO_URL" in secret_data()


# -- network ----------------------------------------------------------------------------------


def test_network_policies_deny_by_default_and_open_only_the_edge() -> None:
    policies = by_kind("NetworkPolicy")
    deny = [
        p
        for p in policies.values()
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, "no default-deny NetworkPolicy"
    open_to_all = [
        name for name, p in policies.items() for rule in p["spec"].get("ingress", []) if not rule.get("from")
    ]
    assert open_to_all == ["edge"], f"only the edge may be reachable from anywhere, got {open_to_all}"


# -- overlays ---------------------------------------------------------------------------------


def test_overlay_patches_target_objects_of_the_base() -> None:
    base = {(d["kind"], d["metadata"]["name"]) for d in base_docs()}
    for path in kustomizations():
        if path.parent == BASE:
            continue
        for patch in load(path)[0].get("patches", []):
            for doc in load(path.parent / patch["path"]):
                key = (doc["kind"], doc["metadata"]["name"])
                assert key in base, f"{patch['path']} patches {key}, which the base does not define"
                if doc["kind"] == "Deployment":
                    names = {c["name"] for c in containers(deployment(key[1]))}
                    for container in doc["spec"].get("template", {}).get("spec", {}).get("containers", []):
                        assert container["name"] in names, (
                            f"{patch['path']}: no container {container['name']}"
                        )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("target", ["base", "overlays/production"])
def test_kustomize_renders(target: str) -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60, check=False
    )
    assert rendered.returncode == 0, rendered.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert kinds.count("Deployment") == len(SERVICES)
