"""Request and answer shapes of the native routes `/generate` and `/batch_generate`,
the routes the seeds' users already call. Both run on a replica's /v1/completions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class SamplingFields(BaseModel):
    """Sampling parameters shared by both native routes (None: vLLM's default)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_tokens: int = Field(default=256, ge=1, description="Most tokens to generate.")
    temperature: float | None = Field(default=None, ge=0, description="0 for greedy decoding.")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling mass.")
    stop: str | list[str] | None = Field(default=None, description="Stop string(s).")
    seed: int | None = Field(default=None, description="Seed for reproducible sampling.")
    model: str | None = Field(
        default=None, description="Served model name; may be left out when only one is served."
    )

    def completion_body(self, prompt: str, model: str) -> dict[str, Any]:
        """The /v1/completions request for one prompt."""
        body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": self.max_tokens}
        for key in ("temperature", "top_p", "stop", "seed"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        return body


class GenerateRequest(SamplingFields):
    """POST /generate."""

    prompt: str = Field(min_length=1, description="The text to continue.")


class BatchGenerateRequest(SamplingFields):
    """POST /batch_generate: every prompt is routed on its own, all run concurrently."""

    prompts: list[str] = Field(description="The texts to continue, answered in this order.")


class GenerateResult(BaseModel):
    """One generated text, as /generate answers and /batch_generate lists."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The generated text.")
    finish_reason: str | None = Field(description="'stop', 'length', ...")
    usage: dict[str, int] = Field(description="prompt_tokens, completion_tokens, total_tokens.")
    model: str = Field(description="The model that generated it.")

    @classmethod
    def from_completion(cls, answer: Any, model: str) -> GenerateResult:
        """Read a /v1/completions answer; raises ValueError when it is not one."""
        try:
            choice = answer["choices"][0]
            usage = {
                k: int(v) for k, v in (answer.get("usage") or {}).items() if isinstance(v, int)
            }
            return cls(
                text=str(choice["text"]),
                finish_reason=choice.get("finish_reason"),
                usage=usage,
                model=str(answer.get("model") or model),
            )
        except (KeyError, IndexError, TypeError, AttributeError, ValidationError) as e:
            raise ValueError(f"not a completions answer: {e}") from e


def validation_message(error: ValidationError) -> tuple[str, str | None]:
    """One readable line for a pydantic error, and the offending parameter."""
    first = error.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    if first["type"] == "extra_forbidden":
        return f"Unknown field `{param}`.", param
    if first["type"] == "missing":
        return f"Missing required field `{param}`.", param
    return f"Invalid `{param}`: {first['msg']}.", param
