"""The one exception hierarchy of raylm.

Every error carries what failed, why, and how to fix it (with the command to run when
there is one), so the CLI can print one clear line and a hint instead of a traceback.
"""

from __future__ import annotations


class RaylmError(Exception):
    """Base of every error raylm raises on purpose.

    Args:
        what: what failed, in one short sentence.
        why: the cause as far as it is known.
        fix: what the user can do about it.
        command: the exact command to run next, if there is one.
    """

    def __init__(
        self, what: str, *, why: str = "", fix: str = "", command: str | None = None
    ) -> None:
        self.what = what
        self.why = why
        self.fix = fix
        self.command = command
        super().__init__(self.message())

    def message(self) -> str:
        parts = [self.what.rstrip(".") + "."]
        if self.why:
            parts.append(self.why.rstrip(".") + ".")
        if self.fix:
            parts.append(self.fix.rstrip(".") + ".")
        if self.command:
            parts.append(f"Run: {self.command}")
        return " ".join(parts)


class ConfigError(RaylmError):
    """A spec file, flag or environment value is invalid."""


class ModelError(RaylmError):
    """A model cannot be found, read, imported or verified."""

    def __init__(
        self,
        what: str,
        *,
        model: str = "",
        why: str = "",
        fix: str = "",
        command: str | None = None,
    ) -> None:
        self.model = model
        super().__init__(what, why=why, fix=fix, command=command)


class ClusterError(RaylmError):
    """The Ray cluster cannot be started, joined or reached, or a node check failed."""

    def __init__(
        self, what: str, *, node: str = "", why: str = "", fix: str = "", command: str | None = None
    ) -> None:
        self.node = node
        super().__init__(what, why=why, fix=fix, command=command)


class PlanError(RaylmError):
    """No parallel layout fits, or a requested one cannot work.

    The byte counts, when memory decided, are per GPU of the layout that came closest.
    """

    def __init__(
        self,
        what: str,
        *,
        needed_bytes_per_gpu: int | None = None,
        available_bytes_per_gpu: int | None = None,
        why: str = "",
        fix: str = "",
        command: str | None = None,
    ) -> None:
        self.needed_bytes_per_gpu = needed_bytes_per_gpu
        self.available_bytes_per_gpu = available_bytes_per_gpu
        super().__init__(what, why=why, fix=fix, command=command)


class ReplicaError(RaylmError):
    """A replica failed to start, became unhealthy, or could not be placed."""

    def __init__(
        self,
        what: str,
        *,
        replica: str = "",
        log_path: str = "",
        why: str = "",
        fix: str = "",
        command: str | None = None,
    ) -> None:
        self.replica = replica
        self.log_path = log_path
        super().__init__(what, why=why, fix=fix, command=command)


def exception_line(e: BaseException) -> str:
    """`Type: first line` of an error (Ray's and HTTP clients' carry pages of detail)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".strip()


class OperationError(RaylmError):
    """A running deployment could not be shown or changed (`raylm ps`, `raylm scale`)."""
