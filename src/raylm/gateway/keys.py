"""The clients' API keys: who may call the gateway, under which name, within which rates.

One endpoint shared by several teams needs a key per team, so that one team's burst is
refused without touching the others (raylm.gateway.rate_limits). A key is known to the
gateway by its name: the name is what /metrics and the logs show, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
from contextvars import ContextVar
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

DEFAULT_KEY_NAME = "default"
"""The name of the single key given as `api_key` (`raylm serve --api-key`)."""


class ClientKey(BaseModel):
    """One client's API key and its rate limits (`[[serve.keys]]` in raylm.toml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Who holds the key (a team, a service): the `key` label on /metrics.",
    )
    key: SecretStr = Field(
        min_length=1, description="The bearer token the client sends: `Authorization: Bearer`."
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Inference requests a minute (chat, completions, generate); a burst of "
        "up to one minute's worth passes at once. None: no limit.",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Prompt plus completion tokens a minute, as the replicas report them in "
        "`usage`; a request is refused while the key's tokens of the last minute are over "
        "the limit. None: no limit.",
    )

    priority: Literal["interactive", "batch"] = Field(
        default="interactive",
        description="When the gateway queues a model's requests (`max_in_flight_per_replica`), "
        "an interactive key's are let through before a batch key's (raylm.gateway.admission).",
    )

    @property
    def limited(self) -> bool:
        """Whether any rate applies to this key."""
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


CALLER: ContextVar[ClientKey | None] = ContextVar("raylm_caller", default=None)
"""The key the request being served came with (None without keys): set by the gateway's
dispatch, read where its tokens are charged and its priority applies."""


def check_distinct(keys: list[ClientKey]) -> None:
    """Refuse two keys with one name or one value (ValueError saying which names)."""
    names = [k.name for k in keys]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"API key names must differ; given more than once: {', '.join(twice)}")
    if len({k.key.get_secret_value() for k in keys}) < len(keys):
        raise ValueError("two API keys have the same value: give each client its own")


def with_default(api_key: SecretStr | None, keys: list[ClientKey]) -> list[ClientKey]:
    """Every key a client may send: a single `api_key` (named 'default') and `keys`."""
    return ([ClientKey(name=DEFAULT_KEY_NAME, key=api_key)] if api_key else []) + keys


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class Keyring:
    """Finds the client a bearer token belongs to. Lookup is by the token's SHA-256, so
    its time does not depend on how much of a wrong token matches a right one."""

    def __init__(self, keys: list[ClientKey]) -> None:
        self.keys = keys
        self._by_digest = {_digest(k.key.get_secret_value().encode()): k for k in keys}

    def __bool__(self) -> bool:
        return bool(self.keys)

    def client(self, authorization: bytes | None) -> ClientKey | None:
        """The key an `Authorization` header value carries (`Bearer <key>`), or None."""
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        token = token.strip()
        found = self._by_digest.get(_digest(token))
        if found is None or not hmac.compare_digest(found.key.get_secret_value().encode(), token):
            return None
        return found
