"""A request's prompt as the engine will see it, in token ids: the chat template applied to
every message, then tokenized the way vLLM's OpenAI server does (chat: no special tokens
added, the template has them; completions: the tokenizer's own). kv-aware routing keys
these ids exactly as the replicas' KV events are keyed (raylm.kv.blocks).

Tokenizing a 4k-token prompt costs milliseconds, most of it spent again on the same system
prompt or the same earlier turns. A tokenizer cuts text at its special tokens before
anything else, so the rendered text is cut there too and each piece's ids are remembered
(least recently used first out): a new turn costs only its own text.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from raylm.compat import hide_broken_torch_extensions

logger = logging.getLogger(__name__)


class PromptTokens:
    """Token ids of prompts for each served model, from its model directory's tokenizer
    (loaded by `load`; a model whose tokenizer is not loaded, or that has none, yields None:
    the request is routed by load)."""

    def __init__(self, model_dirs: dict[str, str], cache_chars: int = 32 << 20) -> None:
        self._dirs = dict(model_dirs)
        self._tokenizers: dict[str, Any] = {}
        self._specials: dict[str, tuple[re.Pattern[str] | None, dict[str, int]]] = {}
        self._pieces: OrderedDict[tuple[str, str], list[int]] = OrderedDict()
        self._cache_chars = cache_chars
        self._cached_chars = 0

    def load(self) -> None:
        """Load every model's tokenizer. Blocking (a tokenizer takes from 0.5 s to several
        seconds to load): the gateway runs it in a thread at start, so no request waits on
        it, and until a model's is loaded its prompts are routed by load."""
        for model in list(self._dirs):  # a copy: the event loop may learn one meanwhile
            if model not in self._tokenizers:
                self._load(model)

    def learn(self, model: str, path: str) -> None:
        """Know `model`'s directory (a model added live); `load` then loads it."""
        if model not in self._dirs and path:
            self._dirs[model] = path

    def unloaded(self) -> bool:
        """Whether a known model's tokenizer was not tried yet (`load` has work)."""
        return any(m not in self._tokenizers for m in list(self._dirs))

    def loaded(self, model: str) -> bool:
        """Whether `model`'s prompts can be tokenized now."""
        return self._tokenizers.get(model) is not None

    def _load(self, model: str) -> None:
        path = self._dirs.get(model)
        tok = None
        if path:
            try:
                hide_broken_torch_extensions()  # transformers imports torchvision if present
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(path)
            except Exception as e:  # routing by load is the fallback, never a failure
                logger.warning("no tokenizer for %s in %s: %s", model, path, e)
        specials = _special_splitter(tok) if tok is not None else (None, {})
        if tok is not None and not _pieces_agree(tok, *specials):
            specials = (None, {})  # this tokenizer joins across them
        # Specials first: a reader on the event loop takes a loaded tokenizer as ready.
        self._specials[model] = specials
        self._tokenizers[model] = tok

    def _pieces_of(self, model: str, tok: Any, text: str) -> list[tuple[str, list[int]]]:
        """`text` cut at special tokens, each piece with its ids (cached)."""
        splitter, special_ids = self._specials[model]
        if splitter is None:
            return [(text, list(tok.encode(text, add_special_tokens=False)))]
        return _cut(text, splitter, special_ids, lambda p: self._encode_cached(model, tok, p))

    def _encode_cached(self, model: str, tok: Any, piece: str) -> list[int]:
        key = (model, piece)
        ids = self._pieces.get(key)
        if ids is not None:
            self._pieces.move_to_end(key)
            return ids
        ids = list(tok.encode(piece, add_special_tokens=False))
        self._pieces[key] = ids
        self._cached_chars += len(piece)
        while self._cached_chars > self._cache_chars and self._pieces:
            (_, old), _ = self._pieces.popitem(last=False)
            self._cached_chars -= len(old)
        return ids

    def ids(self, model: str, route: str, body: dict[str, Any]) -> list[int] | None:
        pieces = self.pieces(model, route, body)
        return None if pieces is None else [t for _, ids in pieces for t in ids]

    def pieces(
        self, model: str, route: str, body: dict[str, Any]
    ) -> list[tuple[str, list[int]]] | None:
        """The prompt's ids in pieces, each with the text it came from (chat: cut at the
        special tokens; otherwise one piece), or None when it cannot be tokenized. The ids
        are the cache's own lists: read them, never change them."""
        tok = self._tokenizers.get(model)
        if tok is None:  # not loaded (yet), or none
            return None
        try:
            if route == "chat":
                messages = body.get("messages")
                if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                    return None
                text = tok.apply_chat_template(
                    [_text_message(m) for m in messages],
                    tokenize=False,
                    add_generation_prompt=body.get("add_generation_prompt", True) is not False,
                )
                return self._pieces_of(model, tok, text)
            prompt = body.get("prompt")
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
                return [("", [int(t) for t in prompt])]  # already token ids
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
                prompt = prompt[0]  # a batch: key on its first prompt
            if not isinstance(prompt, str):
                return None
            return [("", list(tok.encode(prompt, add_special_tokens=True)))]
        except Exception as e:  # an odd message the template refuses: route by load
            logger.debug("cannot tokenize a %s request for %s: %s", route, model, e)
            return None


def _cut(
    text: str, splitter: re.Pattern[str], ids: dict[str, int], encode: Callable[[str], list[int]]
) -> list[tuple[str, list[int]]]:
    """`text` cut at special tokens: each special token its own id, each other piece
    through `encode`."""
    return [(p, [ids[p]] if p in ids else encode(p)) for p in splitter.split(text) if p]


def _pieces_agree(tok: Any, splitter: re.Pattern[str] | None, ids: dict[str, int]) -> bool:
    """Whether cutting at special tokens gives this tokenizer's own ids (it does unless
    a special token strips the whitespace beside it), on a rendered sample chat."""
    if splitter is None:
        return True
    sample = [
        {"role": "system", "content": " You are terse.\n"},
        {"role": "user", "content": "Hi  there \n\n"},
    ]
    try:
        text = tok.apply_chat_template(sample, tokenize=False, add_generation_prompt=True)
        whole = list(tok.encode(text, add_special_tokens=False))
        # Not through the cache: this runs on the loading thread.
        pieces = _cut(text, splitter, ids, lambda p: list(tok.encode(p, add_special_tokens=False)))
    except Exception:
        return False
    return [t for _, piece_ids in pieces for t in piece_ids] == whole


def _text_message(m: dict[str, Any]) -> dict[str, Any]:
    """A message with its content as one string (OpenAI content parts: the text ones,
    joined by newlines, as vLLM renders text-only parts for a string template)."""
    content = m.get("content")
    if isinstance(content, list):
        content = "\n".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return {**m, "content": content if content is not None else ""}


def _special_splitter(tok: Any) -> tuple[re.Pattern[str] | None, dict[str, int]]:
    """A pattern that cuts text at the tokenizer's special tokens, and their ids."""
    try:
        specials = [t for t in tok.all_special_tokens if t]
        ids = {t: int(tok.convert_tokens_to_ids(t)) for t in specials}
    except Exception:
        return None, {}
    if not specials:
        return None, {}
    alternatives = "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))
    return re.compile(f"({alternatives})"), ids
