"""Static checks of everything under deploy/ and the Dockerfile, with the real tools where they exist.

hadolint lints the Dockerfile, Docker Compose renders both profiles, kubectl kustomize renders the k8s base and
overlays and kubernetes-validate checks every rendered object against the API schema. On top, cross-checks that
no schema can do: probe paths are real routes, grace periods outlast the drain, every EMBED_* key is a real
setting and every metric a dashboard or autoscaler reads is one the server exports (all from docs/contract.md).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import nginx_conf
from tests.deploy.contract_names import (
    REPO,
    get_routes,
    metric_family,
    metric_names,
    setting_default,
    setting_names,
)

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
K8S_TARGETS = ["base", "overlays/cpu", "overlays/gpu"]
K8S_VERSION = "1.33.0"  # oldest release we claim to support; the schemas reject fields it does not know
DRAIN_S = float(setting_default("EMBED_GRACEFUL_TIMEOUT_S"))


def _duration_s(text: str | int | float) -> float:
    """Compose / nginx durations: `30s`, `1m30s`, `500ms`, or a bare number of seconds (Compose JSON uses ns)."""
    if isinstance(text, int | float):
        return float(text) / 1e9 if text > 10_000 else float(text)
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts:
        return float(text)
    return sum(float(n) * units[u] for n, u in parts)


# --- Dockerfile ---------------------------------------------------------------------------------------------

def _dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, flags=re.IGNORECASE)
            assert match, f"every stage is named: {line}"
            current = [line]
            stages[match.group(2)] = current
        else:
            current.append(line)
    return stages


def test_dockerfile_is_hadolint_clean(hadolint: str) -> None:
    result = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=REPO, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(hadolint: str, tmp_path: Path) -> None:
    """Control: the linter really runs and fails (an unpinned base and a shell-form CMD are findings)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install fastapi\nCMD python -m service\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged image


def test_dockerfile_stages_have_one_job_each() -> None:
    stages = _dockerfile_stages()
    assert set(stages) == {"export", "cpu", "gpu"}
    assert list(stages)[-1] == "gpu", "the default target (last stage) is the GPU image"
    for name, instructions in stages.items():
        base = instructions[0].split()[1]
        assert ":" in base, f"{name}: base image {base} is not pinned"
        assert not base.endswith(":latest"), f"{name}: base image {base} is not pinned"
    assert any("python -m export --out /artifacts/" in i for i in stages["export"])
    for name in ("cpu", "gpu"):
        body = "\n".join(stages[name])
        assert "torch" not in body.lower(), f"{name}: the runtime image must not carry torch"
        copies = [i for i in stages[name] if i.upper().startswith("COPY")]
        # Every source of every COPY (all words but the instruction, flags and the destination): the runtime gets
        # the server's code, the package metadata it is installed from, the exported artifacts and its locks.
        sources = {word for i in copies for word in i.split()[1:-1] if not word.startswith("--")}
        allowed = {"service/", "/artifacts", "pyproject.toml", "README.md", "requirements/lock/build.txt",
                   "requirements/lock/serve.txt" if name == "cpu" else "requirements/lock/serve-gpu.txt"}
        assert sources <= allowed, sources - allowed
        user = [i for i in stages[name] if i.upper().startswith("USER ")]
        assert user, f"{name}: no USER"
        assert user[-1].split()[1].split(":")[0] not in {"0", "root"}, f"{name}: runs as root"
        assert re.search(r"^USER \d+:\d+$", user[-1]), "numeric uid, so runAsNonRoot can verify it"
        entry = [i for i in stages[name] if i.upper().startswith("ENTRYPOINT")]
        assert entry, f"{name}: no ENTRYPOINT"
        assert entry[-1].split(None, 1)[1].startswith("["), "exec form, so SIGTERM reaches python"
        health = [i for i in stages[name] if i.upper().startswith("HEALTHCHECK")]
        assert health
        assert "/health" in health[-1]
        assert "/health" in get_routes()
        assert "PYTHONDONTWRITEBYTECODE=1" in body, "no .pyc writes on a read-only root filesystem"


def test_gpu_requirements_match_serve_but_for_onnxruntime() -> None:
    def pins(name: str) -> dict[str, str]:
        lines = (REPO / "requirements" / name).read_text().splitlines()
        pairs = (ln.split("==") for ln in lines if ln.strip() and not ln.startswith("#"))
        return {pkg.strip(): ver.strip() for pkg, ver in pairs}

    serve, gpu = pins("serve.txt"), pins("serve-gpu.txt")
    assert gpu.pop("onnxruntime-gpu") == serve.pop("onnxruntime"), "same onnxruntime release on CPU and GPU"
    assert gpu == serve


def test_dockerignore_admits_every_copied_path() -> None:
    """`.dockerignore` starts from `*`: each COPY source must be re-admitted or the build breaks."""
    rules = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*"
    admitted = {r[1:].rstrip("/").split("/")[0] for r in rules if r.startswith("!")}
    for instructions in _dockerfile_stages().values():
        for instruction in instructions:
            if instruction.upper().startswith("COPY") and "--from=" not in instruction:
                top = instruction.split()[-2].rstrip("/").split("/")[0]
                assert top in admitted, f"{instruction!r} copies {top}, which .dockerignore excludes"


# --- Docker Compose ----------------------------------------------------------------------------------------

def _compose_config(compose: list[str], profile: str) -> dict[str, Any]:
    result = subprocess.run(
        [*compose, "-f", str(DEPLOY / "docker-compose.yml"), "--profile", profile, "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_compose_profile_renders(compose: list[str], profile: str) -> None:
    config = _compose_config(compose, profile)
    services = config["services"]
    replica = f"embed-{profile}"
    assert set(services) == {replica, "lb", "prometheus", "grafana"}
    svc = services[replica]
    assert svc["deploy"]["replicas"] >= 2
    assert _duration_s(svc["stop_grace_period"]) > DRAIN_S, "SIGKILL must not cut the drain short"
    assert svc["read_only"] is True
    assert any(t.startswith("/tmp") for t in svc["tmpfs"])  # noqa: S108  checks the compose file mounts a tmpfs there
    assert svc["user"].split(":")[0] not in {"0", "root"}
    assert "embed" in svc["networks"]["default"]["aliases"], "nginx and Prometheus find replicas by this alias"
    assert "/health" in " ".join(svc["healthcheck"]["test"])
    unknown = {k for k in svc["environment"] if k.startswith("EMBED_")} - setting_names()
    assert not unknown, f"not settings in docs/contract.md: {unknown}"
    devices = svc["deploy"].get("resources", {}).get("reservations", {}).get("devices", [])
    if profile == "gpu":
        assert devices
        assert devices[0]["driver"] == "nvidia"
        assert "gpu" in devices[0]["capabilities"]
        assert svc["environment"]["EMBED_REQUIRE_GPU"] == "true"
        # fp16 is opt-in until a GPU run validates it (docs/deployment.md).
        assert svc["environment"]["EMBED_GRAPH_VARIANT"] == "fp32"
    else:
        assert not devices
    lb_mounts = {m["target"] for m in services["lb"]["volumes"]}
    assert {"/etc/nginx/nginx.conf", "/etc/nginx/upstream_servers.conf"} <= lb_mounts


def test_compose_rejects_a_broken_file(compose: list[str], tmp_path: Path) -> None:
    """Control: `config` really validates (an unknown service key fails)."""
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  x:\n    image: busybox:1.36\n    replicas_typo: 2\n")
    result = subprocess.run([*compose, "-f", str(bad), "config"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode != 0


# --- nginx --------------------------------------------------------------------------------------------------

def _nginx_directives() -> dict[str, list[str]]:
    text = re.sub(r"#.*", "", (DEPLOY / "nginx" / "nginx.conf").read_text())
    found: dict[str, list[str]] = {}
    for name, value in re.findall(r"^\s*([a-z_]+)\s+([^;{]*);", text, flags=re.MULTILINE):
        found.setdefault(name, []).append(value.strip())
    return found


def test_nginx_config_passes_nginx_t(nginx: str, tmp_path: Path) -> None:
    conf = nginx_conf.render(tmp_path / "nginx", listen_port=18080, upstream_ports=[18081, 18082])
    result = nginx_conf.check(nginx, conf)
    assert result.returncode == 0, result.stderr


def test_nginx_guards_slow_clients_and_retries_boundedly() -> None:
    d = _nginx_directives()
    assert _duration_s(d["client_header_timeout"][0]) <= 30, "slowloris deadline (RELIABILITY #28)"
    assert _duration_s(d["client_body_timeout"][0]) <= 30, "slow-body deadline (RELIABILITY #29)"
    size = d["client_max_body_size"][0]
    size_bytes = int(size[:-1]) * {"k": 1024, "m": 1024**2}[size[-1].lower()] if size[-1].isalpha() else int(size)
    assert size_bytes >= int(setting_default("EMBED_MAX_BODY_BYTES")), "nginx must not refuse what replicas take"
    retry_on = d["proxy_next_upstream"][0].split()
    assert {"error", "timeout", "http_502", "http_503"} <= set(retry_on)
    assert "http_429" not in retry_on, "overload goes back to the client, not around the fleet"
    assert 1 < int(d["proxy_next_upstream_tries"][0]) <= 5
    assert _duration_s(d["proxy_next_upstream_timeout"][0]) > 0
    assert _duration_s(d["proxy_read_timeout"][0]) > float(setting_default("EMBED_QUEUE_TIMEOUT_S"))
    assert any(v.split()[0].isdigit() for v in d["keepalive"]), "upstream keepalive pool"
    assert d["proxy_set_header"]
    assert 'Connection ""' in d["proxy_set_header"]
    params = nginx_conf.upstream_parameters()
    assert "max_fails=" in params
    assert "fail_timeout=" in params


# --- Kubernetes -----------------------------------------------------------------------------------------------

def _render(kubectl: str, target: str) -> list[dict[str, Any]]:
    result = subprocess.run([kubectl, "kustomize", str(K8S / target)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for doc in docs:
        assert doc["kind"] not in kinds, f"one {doc['kind']} expected"
        kinds[doc["kind"]] = doc
    return kinds


def test_raw_k8s_resource_files_validate() -> None:
    """Without kubectl too: every plain resource file in base/ is schema-valid on its own."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate==1.37.0")
    files = [p for p in (K8S / "base").glob("*.yaml") if p.name != "kustomization.yaml"]
    assert len(files) >= 4
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", K8S_TARGETS)
def test_k8s_target_renders_and_validates(kubectl: str, target: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate==1.37.0")
    docs = _render(kubectl, target)
    kinds = _by_kind(docs)
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_validator_rejects_a_typo(kubectl: str) -> None:
    """Control: strict validation catches a misspelt probe field the API server would silently drop."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate==1.37.0")
    deployment = _by_kind(_render(kubectl, "overlays/cpu"))["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["timeoutSecs"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", K8S_TARGETS)
def test_k8s_cross_checks(kubectl: str, target: str) -> None:
    kinds = _by_kind(_render(kubectl, target))
    deployment, config = kinds["Deployment"], kinds["ConfigMap"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    # Probes: the right routes, all of them real; timeouts that survive a loaded replica (RELIABILITY #42).
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["startupProbe"]["httpGet"]["path"] == "/ready"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health"
    for kind, probe in probes.items():
        assert probe["httpGet"]["path"] in get_routes(), kind
        assert probe["httpGet"]["port"] in {p["name"] for p in container["ports"]}, kind
        assert probe["timeoutSeconds"] >= 2, f"{kind}: 1 s probes restart healthy replicas under load"

    # Settings: every key a real setting; the Deployment reads the (hash-suffixed) generated ConfigMap.
    settings = config["data"]
    assert set(settings) <= setting_names(), set(settings) - setting_names()
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    drain_s = float(settings.get("EMBED_GRACEFUL_TIMEOUT_S", DRAIN_S))

    # Shutdown: preStop sleep + drain fit inside the grace period (RELIABILITY #36).
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + drain_s

    # Security: non-root, read-only root filesystem, writable /tmp only.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # noqa: S108  checks the pod mounts an emptyDir there

    # Wiring: Service, PDB and HPA point at these pods; the HPA reads a metric the server exports.
    assert kinds["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["minReplicas"] >= 2, "the PDB needs a second replica to allow a drain"
    custom = [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert custom
    assert set(custom) <= metric_names()
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["metrics"])

    # Overlays: GPU asks for a GPU and refuses to fall back; CPU asks for none.
    resources = container["resources"]
    gpu_requested = "nvidia.com/gpu" in resources.get("limits", {})
    if target == "overlays/cpu":
        assert not gpu_requested
        assert "nvidia.com/gpu" not in resources.get("requests", {})
        assert settings["EMBED_PROVIDER"] == "cpu"
        assert container["image"].endswith(":cpu")
    else:
        assert gpu_requested
    if target == "overlays/gpu":
        assert settings["EMBED_PROVIDER"] == "cuda"
        assert settings["EMBED_REQUIRE_GPU"] == "true"
        assert settings["EMBED_GRAPH_VARIANT"] == "fp32"  # fp16 is opt-in until a GPU run validates it
        assert container["image"].endswith(":gpu")
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])


# --- Prometheus and Grafana -----------------------------------------------------------------------------------

def test_prometheus_discovers_the_replicas_compose_runs() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "embed"]
    assert job["metrics_path"] == "/metrics"
    assert "/metrics" in get_routes()
    (sd,) = job["dns_sd_configs"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    alias = compose["x-embed-service"]["networks"]["default"]["aliases"]
    assert sd["names"] == alias
    assert sd["type"] == "A"
    assert sd["port"] == int(setting_default("EMBED_PORT"))


def test_grafana_dashboard_reads_only_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "embed-server.json").read_text())
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert all(t["datasource"]["uid"] == uid for p in dashboard["panels"] for t in p["targets"])
    used = {metric_family(s) for e in exprs for s in re.findall(r"\bembed_[a-z_]+", e)}
    assert used <= metric_names(), used - metric_names()
    # The dashboard the brief asks for: throughput, per-stage latency, queue depth, batch size, errors.
    for needed in ("embed_requests_total", "embed_stage_duration_seconds", "embed_queue_depth", "embed_batch_size",
                   "embed_rejected_total", "embed_inference_failures_total"):
        assert needed in used, needed
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "embed.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    grafana_mounts = {v.split(":")[1] for v in compose["services"]["grafana"]["volumes"]}
    assert provider["providers"][0]["options"]["path"] in grafana_mounts
