"""Secrets taken out of text before it leaves a node (`raylm debug-bundle`): the values
this node knows to be secret (the cluster token, keys in its environment, the spec's
keys), and the shapes secrets take in logs and command lines (bearer headers, vLLM's
`api_key` argument, `--api-key X`, `--token X`, `sk-...` keys)."""

from __future__ import annotations

import os
import re

REDACTED = "<redacted>"

_SECRET_NAME = re.compile(r"(TOKEN|KEY|SECRET|PASS|PWD|CREDENTIAL|AUTH|DSN)", re.I)
"""Environment variable names whose values are secrets..."""
_NOT_SECRET_NAME = re.compile(r"_(MODE|PATH|FILE|DIR)$", re.I)
"""... unless they name a mode or where a secret is kept (RAY_AUTH_MODE=token)."""

# Each keeps group 1 (what names the secret) and replaces the value after it.
_NOT_DONE = "(?!" + re.escape(REDACTED) + ")"
_ALONE = "(?<![A-Za-z0-9_])"  # a name of its own: not eos_token, not pad_token
_SHAPES = [
    re.compile(r"(://[^/\s:@]+:)" + _NOT_DONE + r"[^@\s/]+(?=@)"),  # user:password@host
    re.compile(r"""(^\s*key\s*=\s*["'])""" + _NOT_DONE + r"""[^"']+""", re.M),  # raylm.toml keys
    re.compile(r"(Bearer\s+)" + _NOT_DONE + r"[^\s'\",]+", re.I),
    re.compile(r"(--(?:api-key|admin-key|token)[=\s]+)" + _NOT_DONE + r"[^\s'\",]+"),
    re.compile(
        r"""((?<![A-Za-z0-9_])['"]?(?:api_key|admin_key|token)['"]?\s*[:=]\s*\[?\s*['"])"""
        + _NOT_DONE
        + "[^'\"]+",
        re.I,
    ),
    re.compile(
        r"((?<![A-Za-z0-9_])(?:api_key|admin_key|token)=)" + _NOT_DONE + r"[^\s&'\",]+", re.I
    ),
    re.compile(r"()\bsk-[A-Za-z0-9_\-]{8,}"),
]


def secret_env_names(env: dict[str, str] | None = None) -> list[str]:
    """Names of the variables in `env` (default: this process's) that hold secrets."""
    names = os.environ if env is None else env
    return sorted(k for k in names if _is_secret_name(k))


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name)) and not _NOT_SECRET_NAME.search(name)


def known_secrets(extra: list[str] | None = None) -> list[str]:
    """The secret values this node knows: its cluster token, secret-named variables of
    its environment, and `extra` (longest first, so no part of one is left)."""
    from raylm.cluster.record import read_token

    # Short values of secret-named variables ("1", "true") are flags, not secrets.
    found = {v for k in secret_env_names() if len(v := os.environ[k]) >= 8}
    token = read_token()
    if token:
        found.add(token)
    found.update(extra or [])
    return sorted(found, key=len, reverse=True)


class Redactor:
    """Replaces secrets in text and counts how many it replaced."""

    def __init__(self, secrets: list[str]) -> None:
        # Given as secrets (a spec's keys, the token): replaced however short, but a
        # value of 1-3 characters would garble every file and say little.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self.count = 0

    def text(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                self.count += text.count(s)
                text = text.replace(s, REDACTED)
        for shape in _SHAPES:
            text, n = shape.subn(lambda m: m.group(1) + REDACTED, text)
            self.count += n
        return text

    def env(self, env: dict[str, str]) -> str:
        """`env` as KEY=VALUE lines, secret-named values replaced."""
        lines = []
        for k in sorted(env):
            v = env[k]
            if _is_secret_name(k) and v:
                self.count += 1
                v = REDACTED
            lines.append(f"{k}={v}")
        return self.text("\n".join(lines) + "\n")
