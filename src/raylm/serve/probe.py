"""What raylm asks a replica: /health, its engine load from /metrics, and a real one-token
generation within a deadline (when to ask which: raylm.serve.health)."""

from __future__ import annotations

import aiohttp

from raylm.serve.health import EngineLoad, parse_engine_load


async def http_ok(session: aiohttp.ClientSession, url: str, timeout_s: float) -> bool:
    """True when GET `url` answers 200 within the timeout."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            return r.status == 200
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


async def generate_one_token(
    session: aiohttp.ClientSession,
    base_url: str,
    model: str,
    timeout_s: float,
    api_key: str | None = None,
) -> tuple[bool, str]:
    """Ask for one token; (True, "") on a real completion, else (False, why)."""
    body = {"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with session.post(
            f"{base_url}/v1/completions",
            json=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as r:
            if r.status != 200:
                return False, f"probe got HTTP {r.status}: {(await r.text())[:200]}"
            data = await r.json()
    except TimeoutError:
        return False, f"probe generation did not finish within {timeout_s:.0f} s"
    except (aiohttp.ClientError, OSError, ValueError) as e:
        return False, f"probe failed: {type(e).__name__}: {e}"
    usage = data.get("usage") or {}
    if not data.get("choices") or usage.get("completion_tokens", 0) < 1:
        return False, "probe completion carried no generated token"
    return True, ""


async def engine_load(
    session: aiohttp.ClientSession, base_url: str, timeout_s: float, api_key: str | None = None
) -> EngineLoad | None:
    """The engine's load from the replica's /metrics, or None when it does not answer."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with session.get(
            f"{base_url}/metrics", headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as r:
            if r.status != 200:
                return None
            return parse_engine_load(await r.text())
    except (TimeoutError, aiohttp.ClientError, OSError, UnicodeDecodeError):
        return None
