"""What a model reference names, for planning: its facts and what `vllm serve` loads.

A reference is a model directory, a `config.json`, a store name (or the hub id it was
pulled from), or a hub id that is not in the store, of which only the config and the weight
index are fetched. Store names and directories resolve through `ModelStore.resolve`, the
one resolver of model references; this adds only what planning accepts beyond it.
"""

from __future__ import annotations

from pathlib import Path

from raylm.errors import ModelError
from raylm.models.facts import ModelFacts
from raylm.models.hub_config import fetch_hub_config
from raylm.models.store import ModelStore
from raylm.models.weights import read_model_facts


def planning_reference(ref: str, store: ModelStore | None = None) -> tuple[ModelFacts, str]:
    """(facts, what vLLM loads) of `ref`; a bare config.json loads as the model's name."""
    p = Path(ref).expanduser()
    if p.is_file() and p.suffix == ".json":
        facts = read_model_facts(p)
        return facts, str(p.parent) if p.name == "config.json" else facts.name
    store = store or ModelStore()
    try:
        entry = store.resolve(ref)
    except ModelError:
        if p.is_absolute() or ref.startswith((".", "~")) or "/" not in ref:
            raise
        # A hub id not in the store: plan from its config alone.
        d = fetch_hub_config(ref)
        return read_model_facts(d).model_copy(update={"name": ref, "origin": ref}), ref
    facts = read_model_facts(entry.path).model_copy(update={"name": entry.name})
    return facts, str(entry.path)
