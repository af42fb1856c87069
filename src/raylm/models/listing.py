"""What `raylm model list` shows: this node's store merged with what other nodes hold."""

from __future__ import annotations

from typing import Any

from raylm.models.store import ModelEntry


def model_rows(
    local: list[ModelEntry], per_node: dict[str, list[ModelEntry]]
) -> list[dict[str, Any]]:
    """One row per model found anywhere: its entry (this node's when it has one), `local`,
    and with `per_node` a `nodes` map of ip -> "verified" | "present" | "missing"."""
    mine = {e.name: e for e in local}
    names = sorted(set(mine) | {e.name for es in per_node.values() for e in es})
    rows = []
    for name in names:
        e = mine.get(name) or next(x for es in per_node.values() for x in es if x.name == name)
        row = e.model_dump(mode="json")
        row["local"] = name in mine
        if per_node:
            row["nodes"] = {
                ip: ("verified" if x.verified else "present")
                if (x := next((y for y in es if y.name == name), None))
                else "missing"
                for ip, es in per_node.items()
            }
        rows.append(row)
    return rows
