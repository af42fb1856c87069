"""Model facts: config.json shapes, safetensors headers, quantization, the hub client."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fake_hub import fake_hub
from safetensors.numpy import save_file

from raylm.errors import ModelError
from raylm.models.facts import ModelFacts, facts_from_config
from raylm.models.hub_config import fetch_hub_config
from raylm.models.weights import read_model_facts

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"


def test_parameter_counts_match_the_published_ones(
    model_facts: Callable[[str], ModelFacts],
) -> None:
    # Published counts: 70.55e9 (fixture's _source) and 8.03e9 (Meta's model card).
    assert model_facts("deepseek-r1-distill-llama-70b").num_params == pytest.approx(70.55e9, 0.005)
    assert model_facts("llama-3-8b-instruct").num_params == pytest.approx(8.03e9, 0.005)
    assert model_facts("qwen3-0.6b").num_params == pytest.approx(0.6e9, 0.03)


def test_bf16_weights_are_two_bytes_per_parameter(model_facts: Callable[[str], ModelFacts]) -> None:
    f = model_facts("deepseek-r1-distill-llama-70b")
    assert f.torch_dtype == "bfloat16"
    assert f.weight_bytes == 2 * f.num_params
    assert not f.weight_bytes_exact and f.source == "config"
    # Untied: a separate LM head as large as the embedding.
    assert f.lm_head_bytes == f.embedding_bytes == 128256 * 8192 * 2


def test_gptq_int4_is_about_19_gb_like_the_seed_says(
    model_facts: Callable[[str], ModelFacts],
) -> None:
    f = model_facts("qwen2.5-32b-instruct-gptq-int4")
    assert f.quantization is not None
    assert (f.quantization.method, f.quantization.bits, f.quantization.group_size) == (
        "gptq",
        4,
        128,
    )
    # clusters.md: "the weights (~19 GB at 4 bits)"; embeddings and LM head stay fp16.
    assert f.weight_bytes == pytest.approx(19e9, rel=0.1)
    assert f.embedding_bytes == 152064 * 5120 * 2


def test_tied_embeddings_have_no_separate_head(model_facts: Callable[[str], ModelFacts]) -> None:
    f = model_facts("qwen3-0.6b")
    assert f.tie_word_embeddings and f.lm_head_bytes == 0
    untied = facts_from_config(
        {**json.loads((MODELS / "qwen3-0.6b.json").read_text()), "tie_word_embeddings": False}
    )
    assert untied.weight_bytes - f.weight_bytes == f.embedding_bytes


@pytest.mark.parametrize(
    ("qcfg", "method", "ratio"),
    [
        # Llama-3-8B: 87% of the bytes are block linears, 13% embedding + LM head (kept).
        ({"quant_method": "fp8"}, "fp8", (0.55, 0.58)),
        ({"quant_method": "awq", "bits": 4, "group_size": 128}, "awq", (0.34, 0.37)),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes", (0.36, 0.39)),
        ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "bitsandbytes", (0.55, 0.58)),
    ],
)
def test_quantization_shrinks_the_linear_layers(
    qcfg: dict[str, object], method: str, ratio: tuple[float, float]
) -> None:
    cfg = json.loads((MODELS / "llama-3-8b-instruct.json").read_text())
    full = facts_from_config(cfg)
    q = facts_from_config({**cfg, "quantization_config": qcfg})
    assert q.quantization is not None and q.quantization.method == method
    assert ratio[0] < q.weight_bytes / full.weight_bytes < ratio[1]
    assert q.embedding_bytes == full.embedding_bytes  # embeddings are not quantized


def test_quantization_without_bits_is_refused() -> None:
    cfg = json.loads((MODELS / "llama-3-8b-instruct.json").read_text())
    with pytest.raises(ModelError, match="bits"):
        facts_from_config({**cfg, "quantization_config": {"quant_method": "gptq"}})


def test_config_missing_fields_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="num_hidden_layers"):
        facts_from_config({"hidden_size": 8, "num_attention_heads": 2, "vocab_size": 10})


def test_demo_model_weights_are_exact_from_the_header(demo_dir: Path) -> None:
    f = read_model_facts(demo_dir)
    assert f.source == "safetensors" and f.weight_bytes_exact
    # Sum of the real header's tensor sizes: float32 SmolLM2-135M.
    assert f.weight_bytes == 538060032
    assert f.torch_dtype == "float32"
    assert f.num_params == 538060032 // 4
    assert f.embedding_bytes == 49152 * 576 * 4 and f.lm_head_bytes == 0
    assert (f.num_attention_heads, f.num_kv_heads, f.num_layers, f.head_dim) == (9, 3, 30, 64)
    # The header agrees with the estimate from config.json alone.
    est = facts_from_config(json.loads((demo_dir / "config.json").read_text()))
    assert est.num_params == f.num_params


def test_config_json_path_works_too(demo_dir: Path) -> None:
    assert read_model_facts(demo_dir / "config.json").weight_bytes == 538060032


def test_truncated_safetensors_is_reported(demo_dir: Path) -> None:
    with (demo_dir / "model.safetensors").open("r+b") as f:
        f.truncate(1_000_000)
    with pytest.raises(ModelError, match="truncated"):
        read_model_facts(demo_dir)


def test_garbage_safetensors_is_reported(demo_dir: Path) -> None:
    (demo_dir / "model.safetensors").write_bytes(struct.pack("<Q", 12) + b"not json at!")
    with pytest.raises(ModelError, match="safetensors header"):
        read_model_facts(demo_dir)


def _tiny_config() -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
    }


def test_sharded_checkpoint_sums_every_shard(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(_tiny_config()))
    a = {"model.embed_tokens.weight": np.zeros((100, 64), np.float16)}
    b = {
        "lm_head.weight": np.zeros((100, 64), np.float16),
        "model.layers.0.mlp.up_proj.weight": np.zeros((128, 64), np.float16),
    }
    save_file(a, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(b, str(tmp_path / "model-00002-of-00002.safetensors"))
    wm = {k: "model-00001-of-00002.safetensors" for k in a} | {
        k: "model-00002-of-00002.safetensors" for k in b
    }
    index = {"metadata": {"total_size": 1}, "weight_map": wm}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    f = read_model_facts(tmp_path)
    assert f.source == "safetensors"
    assert f.weight_bytes == (100 * 64 * 2 + 128 * 64) * 2
    assert f.embedding_bytes == f.lm_head_bytes == 100 * 64 * 2
    # Shards absent (only config + index, as fetched from a hub): the index's total_size.
    for p in tmp_path.glob("*.safetensors"):
        p.unlink()
    index["metadata"] = {"total_size": 123456}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    g = read_model_facts(tmp_path)
    assert (g.source, g.weight_bytes, g.weight_bytes_exact) == ("safetensors-index", 123456, True)


def test_missing_config_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"No config\.json"):
        read_model_facts(tmp_path)


def test_hub_config_and_index_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYLM_HOME", str(tmp_path))
    cfg = (MODELS / "qwen2.5-32b-instruct-gptq-int4.json").read_bytes()
    index = json.dumps(
        {"metadata": {"total_size": 19_396_000_000}, "weight_map": {"x": "m-1.safetensors"}}
    ).encode()
    repos = {
        "Qwen/Qwen2.5-32B-Instruct-GPTQ-Int4": {
            "config.json": cfg,
            "model.safetensors.index.json": index,
        },
        "someone/single-file": {"config.json": cfg},
    }
    with fake_hub(repos) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        d = fetch_hub_config("Qwen/Qwen2.5-32B-Instruct-GPTQ-Int4")
        assert sorted(p.name for p in d.iterdir()) == [
            "config.json",
            "model.safetensors.index.json",
        ]
        f = read_model_facts(d)
        assert (f.source, f.weight_bytes) == ("safetensors-index", 19_396_000_000)
        single = read_model_facts(fetch_hub_config("someone/single-file"))
        assert single.source == "config"
        with pytest.raises(ModelError, match=r"has no config\.json"):
            fetch_hub_config("someone/absent")
    # The hub is gone now: cached files still serve, unknown ones fail at once.
    assert read_model_facts(fetch_hub_config("someone/single-file")).source == "config"
    with pytest.raises(ModelError, match="cannot be reached"):
        fetch_hub_config("someone/never-fetched")


@pytest.mark.timeout(30)
def test_unreachable_hub_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYLM_HOME", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(ModelError, match="HF_ENDPOINT"):
        fetch_hub_config("meta-llama/Llama-3.1-8B")
