"""raylm.redact: what `raylm debug-bundle` takes out of every file before it leaves a node.
The bundle itself, gathered from three machines with a deployment running, is checked for
every real secret in tests/readme/test_multinode_recipe.py."""

from __future__ import annotations

from raylm.redact import REDACTED, Redactor


def test_known_values_and_the_shapes_secrets_take_in_logs_are_replaced() -> None:
    r = Redactor(["tok-abcdef123456", "abc"])
    text = (
        "curl -H 'Authorization: Bearer sk-live-123456789' --api-key readme-test-key\n"
        "non-default args: {'model': '/m', 'api_key': ['Zx9PqLm3vT'], 'port': 8001}\n"
        'RAY_TOKEN=tok-abcdef123456 /v1?token=abc123def&x=1 {"api_key": "verysecret"}\n'
        "a 3-character value stays: abc\n"
        "DATABASE_URL=postgres://app:p4ssw0rd@db:5432/x eos_token='</s>' pad_token=<pad>\n"
        'key = "k9"\n'
    )
    out = r.text(text)
    for secret in ("sk-live-123456789", "readme-test-key", "Zx9PqLm3vT", "tok-abcdef123456"):
        assert secret not in out
    assert "abc123def" not in out and "verysecret" not in out
    assert "'model': '/m'" in out and "'port': 8001" in out and "stays: abc" in out
    assert "p4ssw0rd" not in out and "postgres://app:<redacted>@db:5432" in out
    assert "eos_token='</s>'" in out and "pad_token=<pad>" in out
    assert 'key = "<redacted>"' in out
    assert r.count == 8
    assert r.text(out) == out  # nothing left to find, nothing counted twice


def test_secret_named_variables_are_replaced_and_the_rest_kept() -> None:
    r = Redactor([])
    env = {
        "RAYLM_API_KEY": "k",
        "HF_TOKEN": "hf_x",
        "MYSQL_PWD": "pw",
        "PATH": "/usr/bin",
        "EMPTY_KEY": "",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": "/root/.raylm/cluster/token",
    }
    assert r.env(env).splitlines() == [
        "EMPTY_KEY=",
        f"HF_TOKEN={REDACTED}",
        f"MYSQL_PWD={REDACTED}",
        "PATH=/usr/bin",
        f"RAYLM_API_KEY={REDACTED}",
        "RAY_AUTH_MODE=token",
        "RAY_AUTH_TOKEN_PATH=/root/.raylm/cluster/token",
    ]
