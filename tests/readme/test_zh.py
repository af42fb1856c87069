"""The Chinese README and guides cannot drift from the English ones: every command block
and shown output is the same, in the same order; the headings match; every command, flag,
path and metric the English names in running text (`inline code`) is named in the Chinese
too. The English README's own blocks are run by the other tests of this directory, so the
Chinese one's commands are run too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [
    (ROOT / "README.md", ROOT / "README.zh-CN.md"),
    (ROOT / "docs" / "cluster.md", ROOT / "docs" / "zh" / "cluster.md"),
    (ROOT / "docs" / "deploy.md", ROOT / "docs" / "zh" / "deploy.md"),
]
_FENCE = re.compile(r"^```")
_CODE = re.compile(r"`([^`]+)`")


def _split(text: str) -> tuple[list[str], str]:
    """(fenced blocks with their info strings, the prose outside them)."""
    fenced: list[str] = []
    prose: list[str] = []
    cur: list[str] | None = None
    for line in text.splitlines():
        if _FENCE.match(line):
            if cur is None:
                cur = [line]
            else:
                fenced.append("\n".join([*cur, line]))
                cur = None
        elif cur is not None:
            cur.append(line)
        else:
            prose.append(line)
    assert cur is None, "an unclosed ``` block"
    return fenced, "\n".join(prose)


def _names(prose: str) -> set[str]:
    """The inline code spans of `prose`, a span wrapped over lines read as one line."""
    return {" ".join(span.split()) for span in _CODE.findall(prose)}


def _headings(prose: str) -> list[int]:
    return [len(m.group(1)) for m in re.finditer(r"^(#{1,6}) ", prose, re.M)]


@pytest.mark.parametrize("english,chinese", PAIRS, ids=[p[1].name for p in PAIRS])
def test_the_chinese_text_has_the_same_blocks_headings_and_names(
    english: Path, chinese: Path
) -> None:
    en_blocks, en_prose = _split(english.read_text())
    zh_blocks, zh_prose = _split(chinese.read_text())
    assert len(zh_blocks) == len(en_blocks)
    for i, (en, zh) in enumerate(zip(en_blocks, zh_blocks, strict=True)):
        assert zh == en, f"block {i + 1} of {chinese.name} differs from {english.name}'s"
    assert _headings(zh_prose) == _headings(en_prose)
    missing = _names(en_prose) - _names(zh_prose)
    assert not missing, f"{chinese.name} never names: {sorted(missing)}"
    # A link back to the English, for those who share the page.
    assert english.name in chinese.read_text().splitlines()[0]


def test_the_english_readme_links_to_the_chinese_one() -> None:
    assert "(README.zh-CN.md)" in (ROOT / "README.md").read_text()
