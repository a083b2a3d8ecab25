"""Every Python and shell snippet of README.md runs as written.

The fenced ```python blocks run in order in one namespace (later blocks use earlier names), the
```bash blocks with the venv's ``workbench`` on PATH, all in one temporary folder, so a block can read
what an earlier one wrote. An HTML comment right before a block says what the test changes, visible to
anyone reading the README's source; nothing else is changed and nothing is skipped silently:

    <!-- test: "img_size=768)" -> "img_size=768, depth=4)" (why); skip line "torchrun": needs 8 GPUs -->
    <!-- test: skip: make demo trains for ~10 minutes -->

``"old" -> "new"`` replaces text (with an optional note in parentheses), ``skip line "text": reason``
leaves out the lines containing the text, ``skip: reason`` leaves out the block. Each replacement and
each skipped line must match the block, so a directive cannot go stale.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
RUN = {"python", "bash"}
TEXT = {"", "text"}  # fenced text (the layout tree): not a snippet

_FENCE = re.compile(r"^```(\S*)\s*$")
_QUOTED = r"\"([^\"]*)\"|'([^']*)'"
_DIRECTIVE = re.compile(
    rf"\s*(?:(?:{_QUOTED})\s*->\s*(?:{_QUOTED})(?:\s*\([^)]*\))?"
    rf"|skip line\s+(?:{_QUOTED})\s*:(?P<line_reason>[^;]*)"
    r"|skip\s*:(?P<reason>[^;]*))\s*(?:;|$)"
)


@dataclass
class Snippet:
    """A fenced block of README.md: its language, first code line (1-based) and test directives."""

    language: str
    line: int
    code: str
    replacements: list[tuple[str, str]] = field(default_factory=list)
    skipped_lines: list[tuple[str, str]] = field(default_factory=list)  # (text, reason)
    skip_reason: str = ""

    def runnable(self) -> str:
        """The code the test runs: replacements made, skipped lines blanked (line numbers kept)."""
        code = self.code
        for old, new in self.replacements:
            if old not in code:
                raise ValueError(
                    f"README.md:{self.line}: the test replaces {old!r}, which is not in the block"
                )
            code = code.replace(old, new)
        lines = code.split("\n")
        for text, _ in self.skipped_lines:
            if not any(text in line for line in lines):
                raise ValueError(f"README.md:{self.line}: the test skips lines with {text!r}; there are none")
            lines = ["" if text in line else line for line in lines]
        return "\n".join(lines)


def parse_directives(text: str, where: str) -> dict:
    """The directives of one ``<!-- test: ... -->`` comment (``text`` is what follows ``test:``)."""
    parsed: dict = {"replacements": [], "skipped_lines": [], "skip_reason": ""}
    position, text = 0, text.strip()
    while position < len(text):
        match = _DIRECTIVE.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"{where}: cannot read test directive {text[position:]!r}")
        old_double, old_single, new_double, new_single, line_double, line_single = match.groups()[:6]
        if match["reason"] is not None:
            if not match["reason"].strip():
                raise ValueError(f"{where}: 'skip:' needs a reason")
            parsed["skip_reason"] = match["reason"].strip()
        elif match["line_reason"] is not None:
            if not match["line_reason"].strip():
                raise ValueError(f"{where}: 'skip line' needs a reason")
            line_text = line_double if line_double is not None else line_single
            parsed["skipped_lines"].append((line_text, match["line_reason"].strip()))
        else:
            old = old_double if old_double is not None else old_single
            new = new_double if new_double is not None else new_single
            if not old:
                raise ValueError(f"{where}: a replacement needs the text it replaces")
            parsed["replacements"].append((old, new))
        position = match.end()
    return parsed


def parse_readme(text: str) -> list[Snippet]:
    """Every fenced block of ``text`` with the directives of the comment right before it."""
    lines = text.split("\n")
    snippets: list[Snippet] = []
    pending: dict | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.lstrip().startswith("<!-- test:"):
            start = index
            while "-->" not in lines[index]:
                index += 1
                if index == len(lines):
                    raise ValueError(f"README.md:{start + 1}: unclosed <!-- test: comment")
            comment = " ".join(lines[start : index + 1])
            body = comment.split("<!-- test:", 1)[1].rsplit("-->", 1)[0]
            pending = parse_directives(body, f"README.md:{start + 1}")
            pending_line = start + 1
            if index + 1 == len(lines) or not _FENCE.match(lines[index + 1]):
                raise ValueError(
                    f"README.md:{pending_line}: a test comment must come right before a ```block"
                )
        elif fence := _FENCE.match(line):
            language, first = fence.group(1), index + 1
            index += 1
            while index < len(lines) and lines[index].rstrip() != "```":
                index += 1
            if index == len(lines):
                raise ValueError(f"README.md:{first}: unclosed ``` block")
            if language not in RUN | TEXT:
                raise ValueError(f"README.md:{first}: ```{language} is neither run (python, bash) nor text")
            if pending is not None and language not in RUN:
                raise ValueError(f"README.md:{pending_line}: a test comment before a block that is not run")
            snippet = Snippet(language, first + 1, "\n".join(lines[first:index]), **(pending or {}))
            snippets.append(snippet)
            pending = None
        index += 1
    return snippets


def code_snippets() -> list[Snippet]:
    return [snippet for snippet in parse_readme(README.read_text()) if snippet.language in RUN]


def test_every_snippet_is_run_or_skipped_with_a_reason():
    snippets = code_snippets()
    assert {snippet.language for snippet in snippets} == RUN
    for snippet in snippets:
        snippet.runnable()  # every replacement and skipped line matches its block
    # Only what cannot run here is left out: the two commands of the first lines, and torchrun.
    skipped_blocks = [snippet.code.split()[:2] for snippet in snippets if snippet.skip_reason]
    skipped_lines = [text for snippet in snippets for text, _ in snippet.skipped_lines]
    assert skipped_blocks == [["make", "demo"]] and skipped_lines == ["torchrun"]


def test_directives_are_checked():
    readme = '<!-- test: "768" -> "64" (smaller) -->\n```python\nx = 768\n```\n'
    (snippet,) = parse_readme(readme)
    assert snippet.runnable() == "x = 64"
    stale = parse_readme(readme.replace("x = 768", "x = 512"))[0]
    with pytest.raises(ValueError, match="not in the block"):
        stale.runnable()
    (skipping,) = parse_readme('<!-- test: skip line "torchrun": 8 GPUs -->\n```bash\nls\ntorchrun x\n```\n')
    assert skipping.runnable() == "ls\n" and skipping.skipped_lines == [("torchrun", "8 GPUs")]
    for broken in (
        "<!-- test: skip: -->\n```bash\nls\n```\n",  # no reason
        "<!-- test: shrink everything -->\n```bash\nls\n```\n",  # not a directive
        '<!-- test: "a" -> "b" -->\n\nSome text.\n',  # not before a block
        '<!-- test: "a" -> "b" -->\n```\na\n```\n',  # before a block that is not run
        "```sh\nls\n```\n",  # a language the test would silently pass over
    ):
        with pytest.raises(ValueError):
            parse_readme(broken)


def test_readme_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # timm must not wait on the hub
    monkeypatch.setenv("MPLBACKEND", "Agg")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    namespace: dict = {"__name__": "__readme__"}
    for snippet in code_snippets():
        if snippet.skip_reason:
            continue
        code = snippet.runnable()
        if snippet.language == "python":
            # Padded so that a traceback names the README's own line numbers.
            exec(compile("\n" * (snippet.line - 1) + code, str(README), "exec"), namespace)
        else:
            result = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", code],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert result.returncode == 0, f"README.md:{snippet.line}:\n{code}\n{result.stderr[-3000:]}"
