"""`raylm k8s render`: a serve spec and a cluster description in, Kubernetes manifests for
an existing KubeRay operator out. It plans like `raylm serve` does and applies nothing.

The head pod runs `raylm serve` with the sizes planned here, so the cluster it asks for
and the layout it serves are the same decision.
"""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from raylm.config import ServeSpec
from raylm.errors import ConfigError
from raylm.k8s import objects
from raylm.k8s.options import K8sOptions
from raylm.k8s.pods import LOCAL_GCS, SERVE_CONFIG_DIR
from raylm.k8s.raycluster import pod_groups, raycluster
from raylm.models.facts import ModelFacts
from raylm.planner import ClusterSpec, Layout
from raylm.units import GIB

SECRET_FILE = "secret.yaml"
KEY_NAMES = ("api-key", "admin-key")


class _Dumper(yaml.SafeDumper):
    """YAML for people and kubectl: no anchors for objects used twice, no folded lines."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class Manifest(BaseModel):
    """One file of the rendered set."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="File name in the output directory.")
    documents: list[dict[str, Any]] = Field(description="The Kubernetes objects it holds.")
    private: bool = Field(
        default=False, description="Holds secrets: written readable by its owner only."
    )

    def text(self) -> str:
        """The file's YAML, one document per object."""
        return yaml.dump_all(self.documents, Dumper=_Dumper, sort_keys=False, width=4096)


class Rendered(BaseModel):
    """What `render` made: the files, and the plan they carry out."""

    model_config = ConfigDict(extra="forbid")

    manifests: list[Manifest] = Field(description="Files in the order they are applied.")
    serve_argv: list[str] = Field(description="The `raylm serve` line the head pod runs.")
    generated_keys: bool = Field(
        description="API or admin key made here (the spec gave none); it is in the Secret."
    )

    def write(self, out_dir: Path) -> list[Path]:
        """Write every file into `out_dir` (created); the Secret's file mode 0600."""
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for m in self.manifests:
            path = out_dir / m.file
            if m.private:
                # Created private, never readable by others even for an instant.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(m.text())
            else:
                path.write_text(m.text())
            written.append(path)
        return written


def store_size_gib(facts: ModelFacts, opts: K8sOptions) -> int:
    """A new claim's size: as given, else room for two copies of the weights and a
    quarter more (a new revision downloads beside the old), at least 10 GiB."""
    if opts.store_size_gib:
        return opts.store_size_gib
    return max(10, math.ceil(facts.weight_bytes * 2.25 / GIB))


def kept_keys(out_dir: Path) -> dict[str, str]:
    """The API and admin keys of an earlier render into `out_dir`, so rendering again does
    not change the keys clients hold ({} when there is none)."""
    try:
        docs = list(yaml.safe_load_all((out_dir / SECRET_FILE).read_text()))
    except (OSError, yaml.YAMLError):
        return {}
    data = docs[0].get("stringData") if docs and isinstance(docs[0], dict) else None
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k in KEY_NAMES and isinstance(v, str) and v}


def model_of(spec: ServeSpec) -> str:
    """The spec's model as the pods can find it: a hub id or a store name. A Kubernetes
    deployment has no demo model to fall back on, and this machine's paths mean nothing in
    a pod."""
    model = spec.model
    if model is None:
        raise ConfigError(
            "A Kubernetes deployment needs a model",
            why="the demo model is for trying raylm on one machine",
            fix="Name a hub id or store name as MODEL, or `model` in the spec file",
        )
    if model.startswith(("/", ".", "~")) or model.endswith(".gguf"):
        raise ConfigError(
            f"Model {model!r} is a path on this machine, which the pods cannot read",
            fix="Name its hub id (the pods pull it), or import it into the store volume "
            "and name it as the store does",
            command="raylm model import PATH --name NAME",
        )
    return model


def serve_argv(spec: ServeSpec, opts: K8sOptions, with_file: bool) -> list[str]:
    """The head's `raylm serve` line: the planned sizes as flags over the user's file."""
    argv = ["raylm", "serve", model_of(spec)]
    if with_file:
        argv += ["-f", f"{SERVE_CONFIG_DIR}/raylm.toml"]
    argv += ["--name", opts.name, "--host", "0.0.0.0", "--port", str(opts.port)]
    argv += ["--address", LOCAL_GCS]
    if spec.autoscaling is None:  # else serve starts at min_replicas, with room for the most
        argv += ["--replicas", str(spec.replicas)]
    argv += [
        "--tp",
        str(spec.tensor_parallel_size),
        "--pp",
        str(spec.pipeline_parallel_size),
        "--max-model-len",
        str(spec.max_model_len),
    ]
    util = spec.engine_args.get("gpu-memory-utilization")
    if util is not None:
        argv += ["--engine-arg", f"gpu-memory-utilization={util:g}"]
    return argv


def render(
    planned: ServeSpec,
    layout: Layout,
    facts: ModelFacts,
    cluster: ClusterSpec,
    opts: K8sOptions,
    serve_file: str | None,
    keys: dict[str, str] | None = None,
) -> Rendered:
    """The manifests serving `planned` (a spec `apply_plan` completed with `layout`) on
    the machines of `cluster` that the layout uses. `serve_file` is the spec file as the
    user wrote it (kept in the Secret, under the planned flags), None without one; `keys`
    are an earlier render's (`kept_keys`), used where the spec names none."""
    groups = pod_groups(layout, cluster)
    if not groups:
        raise ConfigError(
            f"The plan uses none of the machines of {cluster.summary()}",
            fix="Describe the cluster as its machines are, e.g. --cluster 2x4xL20",
        )
    argv = serve_argv(planned, opts, serve_file is not None)
    keys = keys or {}
    api_key = planned.api_key.get_secret_value() if planned.api_key else keys.get("api-key")
    admin_key = planned.admin_key.get_secret_value() if planned.admin_key else keys.get("admin-key")
    generated = api_key is None or admin_key is None
    # An endpoint with no key is never rendered: Kubernetes Services are shared networks.
    api_key = api_key or secrets.token_urlsafe(32)
    admin_key = admin_key or secrets.token_urlsafe(32)
    infiniband = all(n.infiniband for n in cluster.nodes)
    manifests = [
        Manifest(
            file=SECRET_FILE,
            documents=[objects.serve_secret(opts, api_key, admin_key, serve_file)],
            private=True,
        ),
        Manifest(file="network.yaml", documents=[objects.network_config(opts, infiniband)]),
    ]
    if opts.store.kind == "pvc" and opts.store.claim is None:
        size = store_size_gib(facts, opts)
        manifests.append(Manifest(file="store.yaml", documents=[objects.store_claim(opts, size)]))
    manifests += [
        Manifest(
            file="raycluster.yaml",
            documents=[
                raycluster(
                    opts,
                    groups,
                    argv,
                    model_of(planned),
                    serve_file is not None,
                    planned.drain_timeout_s,
                )
            ],
        ),
        Manifest(file="service.yaml", documents=[objects.endpoint_service(opts)]),
    ]
    return Rendered(manifests=manifests, serve_argv=argv, generated_keys=generated)
