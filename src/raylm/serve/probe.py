"""Readiness that cannot be fooled: a real one-token generation within a deadline."""

from __future__ import annotations

import aiohttp


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
