"""A study's result: a tidy table, one row per measurement, that writes itself as CSV.

table = layer_decoding(model, val_set)   # Table of LensRow
table.to_csv("lens.csv")                 # a header from the rows' fields, one line per row
table.column("mIoU")                     # [float, ...] in row order
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any


def _as_dict(row: Any) -> dict[str, Any]:
    return dataclasses.asdict(row) if dataclasses.is_dataclass(row) else dict(row)


class Table(list):
    """Rows (dataclasses or dicts with the same fields), in the order the study measured them."""

    def columns(self) -> list[str]:
        return list(_as_dict(self[0])) if self else []

    def column(self, name: str) -> list[Any]:
        """The values of field ``name``, one per row."""
        return [_as_dict(row)[name] for row in self]

    def csv_text(self) -> str:
        """The rows as CSV: a header of field names, one line per row."""
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.columns())
        writer.writeheader()
        writer.writerows(_as_dict(row) for row in self)
        return text.getvalue()

    def to_csv(self, path: str | Path) -> Path:
        """Write ``csv_text`` to ``path``; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            file.write(self.csv_text())
        return path
