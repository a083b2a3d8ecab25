"""Renaming state-dict keys between two layouts with one ordered table of name templates.

A template is a dotted name fragment; ``{n}`` stands for a number, a leading ``^`` anchors it at the
start of the key, a trailing ``$`` at the end, and otherwise it matches only where a dot-separated
segment starts (so ``grouping.`` does not match inside ``ungrouping.``). The same table renames both
ways, most specific entries first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch


def _compile(template: str) -> tuple[re.Pattern, str]:
    body = template.removeprefix("^").removesuffix("$")
    regex = re.escape(body).replace(re.escape("{n}"), r"(\d+)")
    start = "^" if template.startswith("^") else r"(?:^|(?<=\.))"
    end = "$" if template.endswith("$") else ""
    return re.compile(start + regex + end), body.replace("{n}", r"\1")


class KeyMap:
    """Ordered (ours, theirs) template pairs; ``to_theirs`` and ``to_ours`` apply them in order."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        self._forward = [(_compile(ours)[0], _compile(theirs)[1]) for ours, theirs in pairs]
        self._backward = [(_compile(theirs)[0], _compile(ours)[1]) for ours, theirs in pairs]

    @staticmethod
    def _apply(key: str, rules: list[tuple[re.Pattern, str]]) -> str:
        for pattern, replacement in rules:
            key = pattern.sub(replacement, key)
        return key

    def to_theirs(self, key: str) -> str:
        return self._apply(key, self._forward)

    def to_ours(self, key: str) -> str:
        return self._apply(key, self._backward)


def rename_keys(
    state_dict: Mapping[str, torch.Tensor], rename: Callable[[str], str]
) -> dict[str, torch.Tensor]:
    """Rename every key with ``rename``; two keys landing on one name is an error, never a silent loss."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = rename(key)
        if new_key in renamed:
            raise ValueError(f"two keys map to {new_key!r} (one of them {key!r})")
        renamed[new_key] = value
    return renamed
