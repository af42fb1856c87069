"""The model store: import, pull, verify and sync models, provably identical on every node."""

from raylm.models.manifest import FileEntry, FileProblem, Manifest, VerifyResult
from raylm.models.store import ModelEntry, ModelStore

__all__ = ["FileEntry", "FileProblem", "Manifest", "ModelEntry", "ModelStore", "VerifyResult"]
