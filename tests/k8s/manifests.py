"""Checks of rendered manifests against the real schemas: Kubernetes' own (the
kubernetes-validate package) and KubeRay's CRDs (tests/fixtures/kuberay), strictly: a
field the schema does not know is an error, as `kubectl apply --validate=strict` says."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

KUBERAY = Path(__file__).resolve().parents[1] / "fixtures" / "kuberay"
K8S_VERSION = "1.31"


def load_dir(d: Path) -> dict[str, list[dict[str, Any]]]:
    """{file name: its objects} of a rendered directory."""
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(d.glob("*.yaml"))}


def _strict(schema: Any) -> Any:
    """The schema with unknown properties refused wherever it lists the known ones."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(x) for x in schema]
    return schema


@cache
def crd_schema(file: str, version: str = "v1") -> dict[str, Any]:
    crd = yaml.safe_load((KUBERAY / file).read_text())
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = _strict(ver["schema"]["openAPIV3Schema"])
    return schema


def check_raycluster(doc: dict[str, Any]) -> None:
    """The RayCluster against KubeRay's CRD, as a RayCluster and as a RayJob's cluster, and
    each pod template against Kubernetes' PodTemplateSpec."""
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    jsonschema.validate(doc, crd_schema("ray.io_rayclusters.yaml"))
    job = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "check"},
        "spec": {"entrypoint": "true", "rayClusterSpec": copy.deepcopy(doc["spec"])},
    }
    jsonschema.validate(job, crd_schema("ray.io_rayjobs.yaml"))
    spec = doc["spec"]
    for template in [spec["headGroupSpec"]["template"]] + [
        g["template"] for g in spec.get("workerGroupSpecs", [])
    ]:
        check_core(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "check"},
                "template": template,
            }
        )


def check_core(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def check_all(files: dict[str, list[dict[str, Any]]]) -> None:
    for docs in files.values():
        for doc in docs:
            if doc["kind"] == "RayCluster":
                check_raycluster(doc)
            else:
                check_core(doc)
