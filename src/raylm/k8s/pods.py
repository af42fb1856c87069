"""The pod templates of a rendered RayCluster: the Ray container of the head (which also
runs `raylm serve`) and of each worker group, with the store, /dev/shm and network.

KubeRay builds `ray start` from each group's rayStartParams and, with the annotation
`ray.io/overwrite-container-cmd`, leaves the container's command to us and hands the line
it built in $KUBERAY_GEN_RAY_START_CMD (always with --block). A Ray driver needs a raylet
on its own machine, so `raylm serve` cannot run in a pod of its own: the head container
starts Ray without --block, then becomes `raylm serve`; if the gateway dies, the pod does.
"""

from __future__ import annotations

import shlex
from typing import Any

from raylm.k8s.options import STORE_ROOT, K8sOptions

GPU_RESOURCE = "nvidia.com/gpu"
SERVE_CONFIG_DIR = "/etc/raylm"
LOCAL_GCS = "127.0.0.1:6379"  # the head's GCS, seen from its own container
OPEN_FILES = 65536  # KubeRay's own `ulimit -n` for Ray, which the annotation drops
STARTUP_S = 7200
"""How long the head may take to start Ray, wait for every worker (each may first fill its
machine's store from the hub) and open the gateway."""


def ray_ports(opts: K8sOptions) -> list[dict[str, Any]]:
    """The head's ports; KubeRay's head Service takes them from here once any is named."""
    return [
        {"name": "gcs-server", "containerPort": 6379},
        {"name": "dashboard", "containerPort": 8265},
        {"name": "client", "containerPort": 10001},
        {"name": "openai", "containerPort": opts.port},
    ]


def _env() -> list[dict[str, Any]]:
    return [
        {"name": "RAYLM_HOME", "value": STORE_ROOT},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]


def _secret_env(opts: K8sOptions) -> list[dict[str, Any]]:
    secret = opts.object_name("raylm")
    return [
        {
            "name": var,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": key}},
        }
        for var, key in (("RAYLM_API_KEY", "api-key"), ("RAYLM_ADMIN_KEY", "admin-key"))
    ]


def _mounts(opts: K8sOptions, serve_file: bool) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "model-store", "mountPath": f"{STORE_ROOT}/models"},
    ]
    if serve_file:
        mounts.append({"name": "raylm-spec", "mountPath": SERVE_CONFIG_DIR, "readOnly": True})
    return mounts


def _volumes(opts: K8sOptions, serve_file: bool) -> list[dict[str, Any]]:
    store: dict[str, Any]
    if opts.store.kind == "hostpath":
        store = {"hostPath": {"path": opts.store.path, "type": "DirectoryOrCreate"}}
    else:
        claim = opts.store.claim or opts.object_name("models")
        store = {"persistentVolumeClaim": {"claimName": claim}}
    volumes = [
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{opts.shm_gib}Gi"}},
        {"name": "model-store", **store},
    ]
    if serve_file:
        volumes.append(
            {
                "name": "raylm-spec",
                "secret": {
                    "secretName": opts.object_name("raylm"),
                    "items": [{"key": "raylm.toml", "path": "raylm.toml"}],
                    "defaultMode": 0o400,
                },
            }
        )
    return volumes


def model_init(opts: K8sOptions, model: str) -> dict[str, Any]:
    """The init container that puts the model in the store before Ray starts: the copy
    there verified (no hub needed), else pulled from the hub. The hub's token or mirror
    come from the optional Secret `<name>-hub` (HF_TOKEN, HF_ENDPOINT)."""
    ref = shlex.quote(model)
    script = f"raylm model verify {ref}"
    if "/" in model:
        script += f" || raylm model pull {ref} --source {opts.model_source}"
    # else a store name: it must be there already (`raylm model import` on the volume).
    return {
        "name": "model-store",
        "image": opts.image,
        "command": ["/bin/bash", "-c", "--"],
        "args": [script],
        "env": _env(),
        "envFrom": [{"secretRef": {"name": opts.object_name("hub"), "optional": True}}],
        "volumeMounts": [{"name": "model-store", "mountPath": f"{STORE_ROOT}/models"}],
    }


def _probes(opts: K8sOptions) -> dict[str, Any]:
    gateway = {"tcpSocket": {"port": opts.port}}
    return {
        # The gateway answers once Ray and the model are there; /health only once a
        # replica is ready, which can take a model load of many minutes.
        "startupProbe": {**gateway, "periodSeconds": 10, "failureThreshold": STARTUP_S // 10},
        "livenessProbe": {**gateway, "periodSeconds": 20, "failureThreshold": 3},
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": opts.port},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
    }


def _pod(
    opts: K8sOptions,
    container: dict[str, Any],
    gpus: int,
    selector: dict[str, str],
    init: list[dict[str, Any]],
    serve_file: bool,
) -> dict[str, Any]:
    if gpus:
        container["resources"] = {"limits": {GPU_RESOURCE: gpus}}
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": _volumes(opts, serve_file),
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
    }
    if init:
        spec["initContainers"] = init
    if selector:
        spec["nodeSelector"] = selector
    if opts.host_network:
        spec["hostNetwork"] = True
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    labels = {"app.kubernetes.io/name": "raylm", "app.kubernetes.io/instance": opts.name}
    return {"metadata": {"labels": labels}, "spec": spec}


def head_template(
    opts: K8sOptions,
    serve_argv: list[str],
    nodes: int,
    gpus: int,
    selector: dict[str, str],
    init: list[dict[str, Any]],
    serve_file: bool,
    drain_s: float,
) -> dict[str, Any]:
    """The head pod: Ray's head, the wait for the layout's `nodes` machines (the plan
    needs them all), then `raylm serve` in the foreground."""
    wait = ["raylm", "status", "--wait-nodes", str(nodes), "--address", LOCAL_GCS]
    wait += ["--timeout", str(STARTUP_S - 300)]
    script = (
        f"ulimit -n {OPEN_FILES}; "
        # Ray daemonizes without --block, and the container becomes the gateway.
        "${KUBERAY_GEN_RAY_START_CMD/ --block/} && "
        + shlex.join(wait)
        + " && exec "
        + shlex.join(serve_argv)
    )
    container = {
        "name": "ray-head",
        "image": opts.image,
        "command": ["/bin/bash", "-c", "--"],
        "args": [script],
        "env": _env() + _secret_env(opts),
        "envFrom": [{"configMapRef": {"name": opts.object_name("network")}}],
        "ports": ray_ports(opts),
        "volumeMounts": _mounts(opts, serve_file),
        **_probes(opts),
    }
    pod = _pod(opts, container, gpus, selector, init, serve_file)
    # SIGTERM drains in-flight requests, then stops every replica: give it the time.
    pod["spec"]["terminationGracePeriodSeconds"] = int(drain_s) + 60
    return pod


def worker_template(
    opts: K8sOptions, gpus: int, selector: dict[str, str], init: list[dict[str, Any]]
) -> dict[str, Any]:
    """A worker pod: KubeRay's `ray start` (it joins the head through its Service)."""
    container = {
        "name": "ray-worker",
        "image": opts.image,
        "command": ["/bin/bash", "-c", "--"],
        "args": [f"ulimit -n {OPEN_FILES}; $KUBERAY_GEN_RAY_START_CMD"],
        "env": _env(),
        "envFrom": [{"configMapRef": {"name": opts.object_name("network")}}],
        "volumeMounts": _mounts(opts, serve_file=False),
    }
    return _pod(opts, container, gpus, selector, init, serve_file=False)
