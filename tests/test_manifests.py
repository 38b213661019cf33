"""deploy/k8s, checked offline: every overlay renders with kustomize, every built-in kind passes
Kubernetes' own schema strictly, every InferenceService passes KServe's pinned CRD schema, the YAML
is lint-clean, and the settings that keep the service safe and schedulable are there: in the plain
overlays, clients reach TorchServe only through the auth proxy, which checks the Secret's key
(tests/integration/test_auth_proxy.py runs that proxy's nginx configuration for real)."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from sentiment.project import PROJECT_DIR

DEPLOY = PROJECT_DIR / "deploy"
OVERLAYS = DEPLOY / "k8s" / "overlays"
PLAIN_OVERLAYS = ("cpu", "gpu")
KSERVE_OVERLAYS = ("kserve", "kserve-v2", "kserve-canary")
# The Kubernetes release the built-in kinds are validated against: the oldest we support, as it
# has the fewest fields (lifecycle.preStop.sleep needs 1.30 or later).
KUBERNETES_VERSION = "1.32.0"
ISVC_SCHEMA = DEPLOY / "k8s" / "schemas" / "inferenceservice-v1beta1.json"
HEALTHCHECK = "/usr/local/bin/sentiment-healthcheck"
AUTH_PROXY_DIR = DEPLOY / "k8s" / "base" / "auth-proxy"
PROXY = "auth-proxy"
SECRET = "sentiment-token-keys"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not installed")


def test_every_overlay_is_tested():
    assert sorted(p.name for p in OVERLAYS.iterdir() if p.is_dir()) == sorted(PLAIN_OVERLAYS + KSERVE_OVERLAYS)


@functools.cache
def render(overlay: str) -> tuple[dict, ...]:
    result = subprocess.run(
        [KUBECTL, "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(overlay: str, kind: str) -> list[dict]:
    return [doc for doc in render(overlay) if doc["kind"] == kind]


def containers(overlay: str) -> dict[str, dict]:
    (deployment,) = of_kind(overlay, "Deployment")
    return {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}


def container(overlay: str, name: str = "torchserve") -> dict:
    return containers(overlay)[name]


def env_of(container_spec: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container_spec.get("env", [])}


def host_port(address: str) -> tuple[str | None, int | None]:
    """("127.0.0.1", 8079) from http://127.0.0.1:8079 or 127.0.0.1:8079."""
    parts = urlsplit(address if "//" in address else f"//{address}")
    return parts.hostname, parts.port


def auth_problems(pod: dict) -> list[str]:
    """Why a pod template would serve TorchServe without the Secret's key in front: [] when it is safe.
    Token authorization off is allowed only with inference on loopback and the auth proxy, checking
    the Secret's inference-key, on the port clients are let in on."""
    by_name = {c["name"]: c for c in pod["containers"]}
    torchserve = by_name.get("torchserve")
    if torchserve is None:
        return ["no torchserve container"]
    env = env_of(torchserve)
    problems = []
    if "--disable-token-auth" in torchserve.get("args", []) + torchserve.get("command", []):
        problems.append("--disable-token-auth on the command line")
    if (env.get("TS_DISABLE_TOKEN_AUTHORIZATION") or "").lower() != "true":
        return problems
    if host_port(env.get("TS_INFERENCE_ADDRESS") or "")[0] not in LOOPBACK:
        problems.append(f"token auth off with inference on {env.get('TS_INFERENCE_ADDRESS')}")
    proxy = by_name.get(PROXY)
    if proxy is None:
        return [*problems, "token auth off without the auth proxy"]
    keys = {
        item["valueFrom"]["secretKeyRef"]["key"]: item["valueFrom"]["secretKeyRef"]
        for item in proxy.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    current = keys.get("inference-key")
    if not current or current["name"] != SECRET or current.get("optional"):
        problems.append(f"the auth proxy does not require the Secret's inference-key: {keys}")
    if host_port(env_of(proxy).get("SENTIMENT_UPSTREAM") or "") != host_port(env.get("TS_INFERENCE_ADDRESS") or ""):
        problems.append("the auth proxy forwards elsewhere than TorchServe's inference address")
    proxy_ports = {port["name"] for port in proxy.get("ports", [])}
    torchserve_ports = {port["name"] for port in torchserve.get("ports", [])}
    if "inference" not in proxy_ports or "inference" in torchserve_ports:
        problems.append("the inference port is not the auth proxy's")
    return problems


@needs_kubectl
@pytest.mark.parametrize("overlay", PLAIN_OVERLAYS)
def test_a_plain_overlay_renders_every_kind_it_needs(overlay):
    kinds = sorted(doc["kind"] for doc in render(overlay))
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ConfigMap",
            "Secret",
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]
    )


@needs_kubectl
@pytest.mark.parametrize("overlay", PLAIN_OVERLAYS + KSERVE_OVERLAYS)
def test_every_built_in_kind_passes_kubernetes_strict_schema(overlay):
    built_in = [doc for doc in render(overlay) if doc["apiVersion"].split("/")[0] != "serving.kserve.io"]
    for doc in built_in:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {error.message}") from error


def test_strict_validation_refuses_an_unknown_field():
    """The check above can fail: a misspelt field is an error, not a warning."""
    deployment = yaml.safe_load((DEPLOY / "k8s" / "base" / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def strict(schema):
    """The CRD schema as `kubectl apply` enforces it: unknown fields are errors. Structural schemas
    leave additionalProperties unset and the API server prunes (kubectl refuses) unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


@functools.cache
def isvc_validator() -> jsonschema.Draft4Validator:
    # OpenAPI v3 schemas are close to draft 4; CRD schemas use nothing that differs.
    return jsonschema.Draft4Validator(strict(json.loads(ISVC_SCHEMA.read_text())))


def isvc_errors(document: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in isvc_validator().iter_errors(document)]


@needs_kubectl
@pytest.mark.parametrize("overlay", KSERVE_OVERLAYS)
def test_the_inference_service_passes_kserves_pinned_crd_schema(overlay):
    (isvc,) = of_kind(overlay, "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc_errors(isvc) == []


@needs_kubectl
def test_the_crd_schema_refuses_a_misspelt_or_mistyped_field():
    (isvc,) = of_kind("kserve", "InferenceService")
    misspelt = copy.deepcopy(isvc)
    misspelt["spec"]["predictor"]["model"]["storageURI"] = misspelt["spec"]["predictor"]["model"].pop("storageUri")
    mistyped = copy.deepcopy(isvc)
    mistyped["spec"]["predictor"]["canaryTrafficPercent"] = "10"
    assert any("storageURI" in error for error in isvc_errors(misspelt))
    assert any("canaryTrafficPercent" in error for error in isvc_errors(mistyped))


@needs_kubectl
def test_the_inference_services_use_the_torchserve_runtime_and_their_protocol():
    expected = {
        "kserve": ("sentiment", "v1"),
        "kserve-v2": ("sentiment-v2", "v2"),
        "kserve-canary": ("sentiment", "v1"),
    }
    for overlay, (name, protocol) in expected.items():
        (isvc,) = of_kind(overlay, "InferenceService")
        model = isvc["spec"]["predictor"]["model"]
        assert isvc["metadata"]["name"] == name
        assert model["modelFormat"]["name"] == "pytorch"
        assert model["runtime"] == "kserve-torchserve"
        assert model["protocolVersion"] == protocol
        assert model["storageUri"] and model["resources"]["requests"] and model["resources"]["limits"]
        assert env_of(model)["TS_CONFIG_FILE"] == "/mnt/models/config/config.properties"
        assert isvc["spec"]["predictor"]["minReplicas"] >= 1, "scale to zero costs a cold start of a minute"


@needs_kubectl
@pytest.mark.parametrize("overlay", KSERVE_OVERLAYS)
def test_the_inference_services_name_the_image_make_image_kserve_builds(overlay):
    # `make image-kserve` tags localhost/sentiment-torchserve-kserve:<version>; the overlay's `images:`
    # entry moves that repository name to a registry and tag.
    makefile = (PROJECT_DIR / "Makefile").read_text()
    assert re.search(r"^KSERVE_IMAGE \?= localhost/sentiment-torchserve-kserve:\$\(VERSION\)$", makefile, re.M)
    (isvc,) = of_kind(overlay, "InferenceService")
    image = isvc["spec"]["predictor"]["model"]["image"]
    assert re.fullmatch(
        r"[\w.-]+(:\d+)?(/[\w.-]+)*/sentiment-torchserve-kserve(:[\w.-]+|@sha256:[0-9a-f]{64})", image
    ), image


@needs_kubectl
def test_the_canary_sends_part_of_the_traffic_to_a_new_bundle():
    (stable,) = of_kind("kserve", "InferenceService")
    (canary,) = of_kind("kserve-canary", "InferenceService")
    assert "canaryTrafficPercent" not in stable["spec"]["predictor"]
    assert 0 < canary["spec"]["predictor"]["canaryTrafficPercent"] < 100
    assert canary["metadata"]["name"] == stable["metadata"]["name"], "a canary is a new revision of the same service"
    assert canary["spec"]["predictor"]["model"]["storageUri"] != stable["spec"]["predictor"]["model"]["storageUri"]


def test_deploy_is_yamllint_clean():
    config = YamlLintConfig(file=str(DEPLOY / ".yamllint"))
    problems = [
        f"{path.relative_to(PROJECT_DIR)}:{problem.line}: {problem.message}"
        for path in sorted(DEPLOY.rglob("*.y*ml"))
        for problem in linter.run(path.read_text(), config, str(path))
    ]
    assert problems == []


def test_yamllint_would_catch_a_problem():
    config = YamlLintConfig(file=str(DEPLOY / ".yamllint"))
    assert list(linter.run("key: value\nkey: again   \n", config))


@needs_kubectl
@pytest.mark.parametrize("overlay", PLAIN_OVERLAYS)
def test_the_pods_run_as_non_root_on_a_read_only_root_filesystem(overlay):
    (deployment,) = of_kind(overlay, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["automountServiceAccountToken"] is False
    assert set(containers(overlay)) == {PROXY, "torchserve"}
    for name, spec in containers(overlay).items():
        security = spec["securityContext"]
        uid = security.get("runAsUser", pod["securityContext"]["runAsUser"])
        assert uid != 0 and security.get("runAsNonRoot", True) is True, name
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
    # nginx-unprivileged's own user; the pod's uid 1000 is TorchServe's.
    assert container(overlay, PROXY)["securityContext"]["runAsUser"] == 101
    # The image's run folder is TorchServe's working directory (key_file.json, logs, sockets): writable.
    mounts = {mount["mountPath"] for mount in container(overlay)["volumeMounts"]}
    assert {"/home/model-server/run", "/tmp"} <= mounts
    # nginx writes its rendered config, pid file and buffers to emptyDirs and reads its config read-only.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    proxy_mounts = {mount["mountPath"]: mount for mount in container(overlay, PROXY)["volumeMounts"]}
    for path in ("/etc/nginx/conf.d", "/tmp", "/var/cache/nginx"):
        assert "emptyDir" in volumes[proxy_mounts[path]["name"]], path
    for path in ("/etc/nginx/nginx.conf", "/etc/nginx/templates/sentiment.conf.template"):
        assert proxy_mounts[path]["readOnly"] is True and "configMap" in volumes[proxy_mounts[path]["name"]], path


@needs_kubectl
@pytest.mark.parametrize("overlay", PLAIN_OVERLAYS)
def test_torchserve_is_reached_only_through_the_auth_proxy(overlay):
    (deployment,) = of_kind(overlay, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert auth_problems(pod) == []
    torchserve, proxy = container(overlay), container(overlay, PROXY)
    env = env_of(torchserve)
    # Off on purpose, and only because the proxy is there (auth_problems): TorchServe cannot be given keys.
    assert env["TS_DISABLE_TOKEN_AUTHORIZATION"] == "true"
    assert env["SENTIMENT_AUTH_PROXY"] == "true"
    assert host_port(env["TS_INFERENCE_ADDRESS"]) == ("127.0.0.1", 8079)
    assert host_port(env["TS_MANAGEMENT_ADDRESS"]) == ("127.0.0.1", 8081)
    assert host_port(env["TS_METRICS_ADDRESS"]) == ("0.0.0.0", 8082)
    # The Service sends clients to the proxy's port, and only there.
    (service,) = of_kind(overlay, "Service")
    assert [(port["port"], port["targetPort"]) for port in service["spec"]["ports"]] == [(8080, "inference")]
    (proxy_port,) = [port for port in proxy["ports"] if port["name"] == "inference"]
    assert proxy_port["containerPort"] == int(env_of(proxy)["SENTIMENT_PROXY_LISTEN"]) == 8080
    assert "inference" not in {port["name"] for port in torchserve["ports"]}
    # The Secret's keys: the current one required, the next one optional; TorchServe sees neither.
    secret_refs = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in proxy["env"] if "valueFrom" in item}
    assert secret_refs == {
        "SENTIMENT_INFERENCE_KEY": {"name": SECRET, "key": "inference-key"},
        "SENTIMENT_INFERENCE_KEY_NEXT": {"name": SECRET, "key": "inference-key-next", "optional": True},
    }
    assert all("valueFrom" not in item for item in torchserve["env"])
    assert not [volume for volume in pod["volumes"] if "secret" in volume], "no container needs the key as a file"
    (secret,) = of_kind(overlay, "Secret")
    assert secret["metadata"]["name"] == SECRET
    assert set(secret["stringData"]) == {"inference-key"}
    placeholder = secret["stringData"]["inference-key"]
    assert placeholder.startswith("REPLACE-ME"), "no real key in git"
    # The placeholder has no key's shape (the template's first map): applied as it is, it lets nobody in.
    assert not re.fullmatch(r"[A-Za-z0-9._~+/-]{16,}=*", placeholder)
    # Only the variables the template means reach envsubst.
    assert env_of(proxy)["NGINX_ENVSUBST_FILTER"] == "^SENTIMENT_"
    assert pod["enableServiceLinks"] is False, "SENTIMENT_SERVICE_HOST & co. would pass that filter"


def test_the_auth_check_can_fail():
    """auth_problems above finds each way a pod could serve TorchServe without the key in front."""
    pod = yaml.safe_load((DEPLOY / "k8s" / "base" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    assert auth_problems(pod) == []

    def changed(container_name: str, variable: str, **fields) -> dict:
        copied = copy.deepcopy(pod)
        (spec,) = [c for c in copied["containers"] if c["name"] == container_name]
        (item,) = [item for item in spec["env"] if item["name"] == variable]
        if "value" in fields:
            item["value"] = fields["value"]
        else:
            item["valueFrom"]["secretKeyRef"].update(fields)
        return copied

    without_proxy = copy.deepcopy(pod)
    without_proxy["containers"] = [c for c in pod["containers"] if c["name"] != PROXY]
    assert auth_problems(without_proxy) == ["token auth off without the auth proxy"]
    assert auth_problems(changed("torchserve", "TS_INFERENCE_ADDRESS", value="http://0.0.0.0:8079"))
    assert auth_problems(changed(PROXY, "SENTIMENT_INFERENCE_KEY", optional=True))
    assert auth_problems(changed(PROXY, "SENTIMENT_INFERENCE_KEY", name="another-secret"))
    assert auth_problems(changed(PROXY, "SENTIMENT_UPSTREAM", value="127.0.0.1:8080"))
    # Token authorization on needs no proxy.
    without_proxy["containers"] = [
        c
        for c in changed("torchserve", "TS_DISABLE_TOKEN_AUTHORIZATION", value="false")["containers"]
        if c["name"] != PROXY
    ]
    assert auth_problems(without_proxy) == []


def nginx_template() -> str:
    return (AUTH_PROXY_DIR / "sentiment.conf.template").read_text()


@needs_kubectl
@pytest.mark.parametrize("overlay", PLAIN_OVERLAYS)
def test_the_proxy_config_in_the_pod_is_the_tested_one(overlay):
    (config_map,) = of_kind(overlay, "ConfigMap")
    assert config_map["data"] == {
        "nginx.conf": (AUTH_PROXY_DIR / "nginx.conf").read_text(),
        "sentiment.conf.template": nginx_template(),
    }
    (deployment,) = of_kind(overlay, "Deployment")
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    mounted = {mount["mountPath"]: mount for mount in container(overlay, PROXY)["volumeMounts"]}
    for path, key in (
        ("/etc/nginx/nginx.conf", "nginx.conf"),
        ("/etc/nginx/templates/sentiment.conf.template", "sentiment.conf.template"),
    ):
        assert volumes[mounted[path]["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
        assert mounted[path]["subPath"] == key
    # The image's entrypoint renders /etc/nginx/templates/*.template into conf.d, which nginx.conf includes.
    assert "include /etc/nginx/conf.d/*.conf;" in config_map["data"]["nginx.conf"]
    # Every variable the template substitutes is set in the container (the next key optionally), and
    # every SENTIMENT_ variable set there is used.
    used = set(re.findall(r"\$\{(SENTIMENT_[A-Z_]+)\}", nginx_template()))
    assert used == {name for name in env_of(container(overlay, PROXY)) if name.startswith("SENTIMENT_")}


def test_the_proxy_limits_and_logs_like_torchserve_without_secrets():
    template = nginx_template()
    properties = dict(
        line.split("=", 1) for line in (PROJECT_DIR / "config.properties").read_text().splitlines() if "=" in line
    )
    assert re.search(r"^\s*client_max_body_size (\d+);", template, re.M).group(1) == properties["max_request_size"]
    log_format = re.search(r"log_format sentiment_proxy(.*?);\n", template, re.S).group(1)
    for secret_bearing in ('$request"', "$request ", "$args", "$query_string", "$request_uri", "$http_"):
        assert secret_bearing not in log_format, secret_bearing
    assert re.search(r"access_log \S+ sentiment_proxy;", template)
    # The key goes no further than the proxy, and only the inference paths pass.
    assert 'proxy_set_header Authorization "";' in template
    assert re.findall(r"^\s*location (.*?) \{", template, re.M) == [
        "= /healthz",
        "~ ^/(predictions|explanations|v1|v2)/",
        "= /ping",
        "/",
        "@too_large",
        "@upstream_down",
    ]
    assert template.count("proxy_pass http://sentiment_torchserve;") == 2
    # `if` only as `if (...) { add_header; return }`, the safe use of it inside a location.
    blocks = re.findall(r"\bif \(\$sentiment_authorized = 0\) \{(.*?)\}", template, re.S)
    assert len(blocks) == template.count("if (") == 2
    for block in blocks:
        assert [line.split()[0] for line in block.strip().splitlines()] == ["add_header", "return"]


@needs_kubectl
@pytest.mark.parametrize("overlay", PLAIN_OVERLAYS)
def test_resources_and_probes_are_set(overlay):
    for name, spec in containers(overlay).items():
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(spec["resources"][kind]), name
    torchserve = container(overlay)
    for probe in ("startupProbe", "readinessProbe"):
        assert torchserve[probe]["exec"]["command"] == [HEALTHCHECK], "ready means a READY worker"
    startup = torchserve["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180, "worker start takes 8-15 s, a cold node more"
    assert "tcpSocket" in torchserve["livenessProbe"], "a busy worker must not get the pod restarted"
    # The kubelet connects to the pod's IP: the port must be one TorchServe binds there, not a loopback one.
    (liveness_port,) = [p for p in torchserve["ports"] if p["name"] == torchserve["livenessProbe"]["tcpSocket"]["port"]]
    assert (liveness_port["containerPort"], "0.0.0.0") == host_port(env_of(torchserve)["TS_METRICS_ADDRESS"])[::-1]
    assert int(env_of(torchserve)["TS_DEFAULT_WORKERS_PER_MODEL"]) >= 1
    proxy = container(overlay, PROXY)
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "inference"}
    assert "location = /healthz" in nginx_template()
    assert proxy["resources"]["limits"]["memory"].endswith("Mi"), "nginx's share stays small"


@needs_kubectl
def test_cpu_pods_run_one_worker_per_requested_core():
    torchserve = container("cpu")
    assert env_of(torchserve)["TS_DEFAULT_WORKERS_PER_MODEL"] == torchserve["resources"]["requests"]["cpu"]


@needs_kubectl
def test_the_gpu_overlay_requests_a_gpu_on_gpu_nodes_with_the_gpu_defaults():
    (deployment,) = of_kind("gpu", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    torchserve = container("gpu")
    assert torchserve["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    gpu_properties = dict(
        line.split("=", 1) for line in (PROJECT_DIR / "config.gpu.properties").read_text().splitlines() if "=" in line
    )
    env = env_of(torchserve)
    assert env["TS_DEFAULT_WORKERS_PER_MODEL"] == gpu_properties["workers_per_gpu"]
    assert env["TS_JOB_QUEUE_SIZE"] == gpu_properties["job_queue_size"]
    assert "nvidia.com/gpu" not in container("cpu")["resources"]["limits"]
    # Its image carries the GPU archive; the base must not rename the image out of the overlays' reach.
    assert torchserve["image"].endswith(":1.0-gpu")
    assert container("cpu")["image"].endswith(":1.0")


@needs_kubectl
@pytest.mark.parametrize("overlay", PLAIN_OVERLAYS)
def test_the_proxy_image_is_pinned_by_tag_or_digest(overlay):
    image = container(overlay, PROXY)["image"]
    assert image.startswith("nginxinc/nginx-unprivileged")
    assert re.search(r":\d+\.\d+[\w.-]*$|@sha256:[0-9a-f]{64}$", image), image


@needs_kubectl
@pytest.mark.parametrize("overlay", PLAIN_OVERLAYS)
def test_the_policies_select_the_pods_they_protect(overlay):
    (deployment,) = of_kind(overlay, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        (policy,) = of_kind(overlay, kind)
        selector = policy["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), kind
    (service,) = of_kind(overlay, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (network_policy,) = of_kind(overlay, "NetworkPolicy")
    assert network_policy["spec"]["egress"] == [], "nothing leaves the pods"
    open_ports = {port["port"] for rule in network_policy["spec"]["ingress"] for port in rule["ports"]}
    assert open_ports == {"inference", "metrics"}
    (hpa,) = of_kind(overlay, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
