"""What `raylm doctor` reports: one `Check` per finding, its status, and the `--json` report.

Every other doctor module builds `Check`s; this one only says their shape, so the
printed table and the JSON keys have one definition.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CheckStatus(StrEnum):
    """How a check came out (a `str` enum: `--json` prints the bare word)."""

    PASS = "PASS"
    """Nothing to fix."""
    WARN = "WARN"
    """Works, but likely slow or fragile; the fix says what to change."""
    FAIL = "FAIL"
    """Broken: serving across the nodes will fail until it is fixed."""


class Check(BaseModel):
    """One finding of `raylm doctor`."""

    model_config = ConfigDict(extra="forbid")

    check: str = Field(description="Check name, e.g. 'versions', 'reachability'.")
    node: str = Field(description="Node the finding is about (its IP), or 'cluster'.")
    status: CheckStatus = Field(description="PASS, WARN or FAIL.")
    finding: str = Field(description="What was found.")
    fix: str = Field(description="How to fix it ('' on PASS).")


def make_check(check: str, node: str, status: CheckStatus, finding: str, fix: str = "") -> Check:
    """A `Check` from positional parts (short call sites: the checks build dozens)."""
    return Check(check=check, node=node, status=status, finding=finding, fix=fix)


class DoctorReport(BaseModel):
    """Everything `raylm doctor --json` prints."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="GCS address of the cluster checked.")
    checks: list[Check] = Field(description="Findings, in check order.")
    reachability: dict[str, dict[str, list[int]]] = Field(
        description="src ip -> dst ip -> ports that did NOT answer (empty list: all answered)."
    )
    # Dicts, not models: nccl_probe imports only the standard library (it also runs alone
    # on a GPU machine), and its figures go into the JSON as it returns them.
    nccl: list[dict[str, Any]] = Field(description="All-reduce results of --nccl, if run.")

    @property
    def failed(self) -> bool:
        return any(c.status is CheckStatus.FAIL for c in self.checks)
