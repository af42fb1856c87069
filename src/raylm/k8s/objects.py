"""The plain Kubernetes objects around the RayCluster: the Secret of the serve spec and
keys, the network ConfigMap, the model store's claim and the endpoint's Service."""

from __future__ import annotations

from typing import Any

from raylm.k8s.options import K8sOptions


def _meta(opts: K8sOptions, suffix: str) -> dict[str, Any]:
    return {
        "name": opts.object_name(suffix),
        "namespace": opts.namespace,
        "labels": {"app.kubernetes.io/name": "raylm", "app.kubernetes.io/instance": opts.name},
    }


def serve_secret(
    opts: K8sOptions, api_key: str, admin_key: str, serve_file: str | None
) -> dict[str, Any]:
    """`<name>-raylm`: the clients' API key, the admin key (`raylm ps/scale` through the
    Service) and the serve spec as written (it may hold named keys of its own)."""
    data = {"api-key": api_key, "admin-key": admin_key}
    if serve_file is not None:
        data["raylm.toml"] = serve_file
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(opts, "raylm"),
        "type": "Opaque",
        "stringData": data,
    }


def network_config(opts: K8sOptions, infiniband: bool) -> dict[str, Any]:
    """`<name>-network`: what seed 004 put in its ConfigMap by hand, for every Ray pod."""
    data = {
        "NCCL_SOCKET_IFNAME": opts.iface,
        "GLOO_SOCKET_IFNAME": opts.iface,
        "NCCL_DEBUG": "WARN",
    }
    if not infiniband:
        data["NCCL_IB_DISABLE"] = "1"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(opts, "network"),
        "data": data,
    }


def store_claim(opts: K8sOptions, size_gib: int) -> dict[str, Any]:
    """`<name>-models`: one ReadWriteMany claim every Ray pod mounts as the model store."""
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": f"{size_gib}Gi"}},
    }
    if opts.storage_class:
        spec["storageClassName"] = opts.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(opts, "models"),
        "spec": spec,
    }


def endpoint_service(opts: K8sOptions) -> dict[str, Any]:
    """`<name>-raylm`: the OpenAI endpoint, on the head pod's gateway."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(opts, "raylm"),
        "spec": {
            "type": opts.service_type,
            "selector": {"ray.io/cluster": opts.name, "ray.io/node-type": "head"},
            "ports": [
                {"name": "openai", "port": opts.port, "targetPort": "openai", "protocol": "TCP"}
            ],
        },
    }
