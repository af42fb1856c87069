"""README.md as the tests read it: its shell blocks, which machine runs each line, and the
command outputs it shows, checked against real ones.

Conventions the README follows so its recipes can run verbatim:
- In a ```bash block, a comment line `# on the head`, `# on each worker`, `# on any node`
  or `# when done, on each node` says where the lines below it run. Lines are run as typed
  (through bash), trailing comments included.
- A ```text block whose first line is `$ COMMAND` shows that command's output. A line
  `...` stands for any lines; a line ending in `...` is the start of a real line; lines of
  `  replica ...` in a row may appear in any order (replicas start concurrently). IP
  addresses and core counts are the machine's own and match any.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
MAKEFILE = README.parent / "Makefile"

_FENCE = re.compile(r"^```(\w*)\s*$")
_IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
_CORES = re.compile(r"\b\d+ core\(s\)")


def section(title: str, text: str | None = None) -> str:
    """The text of the `## title` section (up to the next `## `)."""
    text = README.read_text() if text is None else text
    m = re.search(rf"^## {re.escape(title)}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not m:
        raise AssertionError(f"README.md has no '## {title}' section")
    return m.group(1)


def blocks(text: str, lang: str) -> list[list[str]]:
    """The fenced blocks of `lang` in `text`, as lists of lines."""
    out: list[list[str]] = []
    cur: list[str] | None = None
    inside = False
    for line in text.splitlines():
        if not inside:
            m = _FENCE.match(line.strip())
            if m:
                inside, cur = True, ([] if m.group(1) == lang else None)
            continue
        if line.strip() == "```":
            if cur is not None:
                out.append(cur)
            inside, cur = False, None
        elif cur is not None:
            cur.append(line)
    return out


@dataclass(frozen=True)
class Step:
    """One line of a recipe and where it runs."""

    where: str  # "head", "each worker", "any node", "each node"
    line: str


_WHERE = {
    "# on the head": "head",
    "# on each worker": "each worker",
    "# on any node": "any node",
    "# when done, on each node": "each node",
}


def recipe(title: str) -> list[Step]:
    """The steps of the first bash block of section `title`."""
    (block, *_) = blocks(section(title), "bash")
    where = "head"
    steps = []
    for raw in block:
        line = raw.strip()
        if not line:
            continue
        key = line.split("(")[0].strip()
        if key in _WHERE:
            where = _WHERE[key]
            continue
        if line.startswith("#"):
            continue
        steps.append(Step(where, line))
    return steps


def shown_output(title: str, command_start: str) -> tuple[str, list[str]]:
    """(command, expected lines) of the text block in `title` whose `$ ` line starts so."""
    for block in blocks(section(title), "text"):
        if block and block[0].startswith("$ " + command_start):
            return block[0][2:], block[1:]
    raise AssertionError(f"README section {title!r} shows no output of `{command_start}`")


def _norm(line: str) -> str:
    line = _CORES.sub("N core(s)", _IP.sub("IP", line))
    return " ".join(line.split())


def assert_shows(expected: list[str], real: str) -> None:
    """Every expected line appears in the real output, in order (see the module doc)."""
    lines = [_norm(x) for x in real.splitlines()]
    pos = 0
    i = 0
    while i < len(expected):
        want = _norm(expected[i])
        if want == "...":
            i += 1
            continue
        group = [want]
        while want.startswith("replica ") and i + 1 < len(expected):
            nxt = _norm(expected[i + 1])
            if not nxt.startswith("replica "):
                break
            group.append(nxt)
            i += 1
        ends = []
        for w in group:
            hit = _find(lines, w, pos)
            if hit is None:
                raise AssertionError(
                    f"README shows {w!r}, not found in the real output (from line {pos}):\n"
                    + "\n".join(lines[pos:][:80])
                )
            ends.append(hit)
        pos = max(ends) + 1
        i += 1


def _find(lines: list[str], want: str, start: int) -> int | None:
    prefix = want[:-3].rstrip() if want.endswith("...") else None
    for k in range(start, len(lines)):
        if lines[k] == want or (prefix is not None and lines[k].startswith(prefix)):
            return k
    return None
