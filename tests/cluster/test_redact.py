"""raylm.redact: what `raylm debug-bundle` takes out of every file before it leaves a node.
The bundle itself, gathered from three machines with a deployment running, is checked for
every real secret in tests/readme/test_multinode_recipe.py."""

from __future__ import annotations

from raylm.redact import REDACTED, Redactor


def test_known_values_and_the_shapes_secrets_take_in_logs_are_replaced() -> None:
    r = Redactor(["tok-abcdef123456", "short"])
    text = (
        "curl -H 'Authorization: Bearer sk-live-123456789' --api-key readme-test-key\n"
        "non-default args: {'model': '/m', 'api_key': ['Zx9PqLm3vT'], 'port': 8001}\n"
        'RAY_TOKEN=tok-abcdef123456 /v1?token=abc123def&x=1 {"api_key": "verysecret"}\n'
        "a short value stays: short\n"
    )
    out = r.text(text)
    for secret in ("sk-live-123456789", "readme-test-key", "Zx9PqLm3vT", "tok-abcdef123456"):
        assert secret not in out
    assert "abc123def" not in out and "verysecret" not in out
    assert "'model': '/m'" in out and "'port': 8001" in out and "stays: short" in out
    assert r.count == 6
    assert r.text(out) == out  # nothing left to find, nothing counted twice


def test_secret_named_variables_are_replaced_and_the_rest_kept() -> None:
    r = Redactor([])
    out = r.env({"RAYLM_API_KEY": "k", "HF_TOKEN": "hf_x", "PATH": "/usr/bin", "EMPTY_KEY": ""})
    assert out.splitlines() == [
        "EMPTY_KEY=",
        f"HF_TOKEN={REDACTED}",
        "PATH=/usr/bin",
        f"RAYLM_API_KEY={REDACTED}",
    ]
