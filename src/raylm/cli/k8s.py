"""`raylm k8s render`: parsing and printing only (raylm.k8s renders)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console

from raylm.errors import ConfigError

out = Console(soft_wrap=True, highlight=False)
k8s_app = typer.Typer(help="Kubernetes: manifests for a KubeRay operator.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(k8s_app, name="k8s")


@k8s_app.command("render")
def render_cmd(
    model: str | None = typer.Argument(
        None, help="Hub id or store name [default: `model` of the spec file]."
    ),
    file: Path | None = typer.Option(None, "-f", "--file", help="Spec file (raylm.toml)."),
    cluster: str = typer.Option(
        ...,
        "--cluster",
        "-c",
        help="The Kubernetes machines: NODESxGPUSxGPU like 2x4xL20 (+ib for InfiniBand), "
        "groups like '1x8xH100, 2x4xL20', or a JSON/TOML file.",
    ),
    out_dir: Path | None = typer.Option(
        None, "-o", "--out", help="Directory to write [default: ./k8s-NAME]."
    ),
    name: str | None = typer.Option(
        None, help="RayCluster name [default: the spec's deployment name, else raylm]."
    ),
    namespace: str = typer.Option("default", help="Namespace of every object."),
    image: str | None = typer.Option(
        None, help="Image of the Ray pods [default: raylm/raylm-gpu:latest]."
    ),
    store: str = typer.Option(
        "pvc", help="Model store: pvc (new claim), pvc:CLAIM (existing) or hostpath:/DIR."
    ),
    store_size: int | None = typer.Option(
        None, help="GiB of a new claim [default: the weights plus a quarter, >= 10]."
    ),
    storage_class: str | None = typer.Option(
        None, help="StorageClass of a new claim (ReadWriteMany)."
    ),
    service_type: str = typer.Option("ClusterIP", help="ClusterIP|NodePort|LoadBalancer."),
    port: int | None = typer.Option(None, help="Gateway port [default: the spec's, 8000]."),
    iface: str = typer.Option("eth0", help="Pod interface for NCCL and Gloo."),
    host_network: bool = typer.Option(False, help="Ray pods on their machines' network."),
    model_source: str = typer.Option("hf", help="hf|modelscope: where pods pull a hub id."),
    node_selector: list[str] = typer.Option(
        [], "--node-selector", help="KEY=VALUE every Ray pod's machine must carry (repeatable)."
    ),
    model_config: Path | None = typer.Option(
        None,
        "--model-config",
        help="Plan from this config.json instead of the hub's (a machine without the hub).",
    ),
    tp: int | None = typer.Option(None, "--tp", help="Tensor-parallel size per replica."),
    pp: int | None = typer.Option(None, "--pp", help="Pipeline-parallel size per replica."),
    replicas: int | None = typer.Option(None, help="Replicas [default: the planner's]."),
    max_model_len: int | None = typer.Option(None, help="Context length."),
) -> None:
    """Write manifests that serve MODEL on Kubernetes through KubeRay; applies nothing."""
    from raylm.config import load_specs
    from raylm.k8s.options import K8sOptions, ModelStore
    from raylm.k8s.render import kept_keys, model_of, render
    from raylm.models.reference import planning_reference
    from raylm.models.weights import read_model_facts
    from raylm.planner import parse_cluster_spec
    from raylm.serve.planning import apply_plan

    overrides: dict[str, Any] = {
        "model": model,
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "replicas": replicas,
        "max_model_len": max_model_len,
    }
    specs = load_specs(file, overrides, this_machine=False)
    if len(specs) > 1:
        raise ConfigError(
            f"Spec file {file} lists {len(specs)} models; `raylm k8s render` takes one",
            fix="Render one file per model, or serve the others with `raylm add -f` once "
            "the first runs",
        )
    spec = specs[0]
    given: dict[str, Any] = {
        "name": name or (spec.name if spec.name != "default" else "raylm"),
        "namespace": namespace,
        "store": ModelStore.parse(store),
        "store_size_gib": store_size,
        "storage_class": storage_class,
        "service_type": service_type,
        "port": port or spec.port,
        "iface": iface,
        "host_network": host_network,
        "model_source": model_source,
        "node_selector": dict(_label(x) for x in node_selector),
    }
    if image:
        given["image"] = image
    try:
        opts = K8sOptions(**given)
    except ValidationError as e:
        raise ConfigError(
            "Invalid `raylm k8s render` option",
            why="; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()),
            fix="Fix the values named above; `raylm k8s render --help` lists them",
        ) from None
    model_name = model_of(spec)
    facts = (
        read_model_facts(model_config).model_copy(update={"name": model_name})
        if model_config
        else planning_reference(model_name)[0]
    )
    machines = parse_cluster_spec(cluster)
    # Autoscaled: room for its most replicas, as `raylm serve` plans it.
    most = {"replicas": spec.autoscaling.max_replicas} if spec.autoscaling else {}
    planned, layout, words = apply_plan(spec.model_copy(update=most), facts, machines)
    if layout is None:  # apply_plan raises when nothing fits
        raise ConfigError(f"No layout of {model_name} fits {machines.summary()}")
    if spec.autoscaling:
        planned = planned.model_copy(update={"replicas": spec.replicas})
    target = out_dir or Path(f"k8s-{opts.name}")
    serve_file = file.read_text() if file is not None else None
    rendered = render(planned, layout, facts, machines, opts, serve_file, kept_keys(target))
    written = rendered.write(target)
    out.print(f"{model_name} on {machines.summary()}: {words}")
    for path in written:
        out.print(f"  wrote {path}")
    out.print(f"the head pod runs: {shlex.join(rendered.serve_argv)}")
    svc = opts.object_name("raylm")
    if rendered.generated_keys:
        out.print(
            f"API and admin keys were generated into {target / 'secret.yaml'} (mode 0600; "
            "keep it out of git). Rendering into the same directory again keeps them."
        )
    out.print(
        "\nNext, with the KubeRay operator installed:\n"
        f"  kubectl apply -f {target}\n"
        f"  kubectl -n {namespace} get raycluster {opts.name}\n"
        f"  kubectl -n {namespace} port-forward svc/{svc} {opts.port}\n"
        f"  export RAYLM_API_KEY=$(kubectl -n {namespace} get secret {svc} "
        "-o jsonpath='{.data.api-key}' | base64 -d)\n"
        f"  curl http://127.0.0.1:{opts.port}/v1/models "
        '-H "Authorization: Bearer $RAYLM_API_KEY"'
    )


def _label(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise ConfigError(f"Bad --node-selector {text!r}", fix="Write KEY=VALUE, e.g. pool=gpu")
    return key, value
