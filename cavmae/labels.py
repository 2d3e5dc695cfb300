"""Class label sets: the official ``index,mid,display_name`` CSV files and generic fallbacks.

The official AudioSet (527 classes) and VGGSound (309 classes) label files share one format
(OFFICIAL_CAVMAE.md §7.4): a header ``index,mid,display_name`` and one row per class, where
display names containing commas are quoted (``"Male speech, man speaking"``). ``LabelSet``
reads and writes that format with the :mod:`csv` module and keeps the names and machine ids
(``mid``) in class-index order, so that ``names[i]`` is the name of logit ``i``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cavmae.errors import ConfigError

__all__ = ["LabelSet"]

_HEADER = ("index", "mid", "display_name")


@dataclass(frozen=True)
class LabelSet:
    """Names and machine ids of a classifier's classes, in logit order.

    Attributes:
        names: Display names, ``names[i]`` belongs to logit ``i``.
        mids: Machine ids (AudioSet ontology ids such as ``/m/09x0r``, ``vgg_0`` for VGGSound),
            unique, same length as ``names``.
    """

    names: tuple[str, ...]
    mids: tuple[str, ...]
    _index: Mapping[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "mids", tuple(str(m) for m in self.mids))
        if len(self.names) != len(self.mids):
            raise ConfigError(
                f"a label set needs one mid per name, got {len(self.names)} names "
                f"and {len(self.mids)} mids"
            )
        if not self.names:
            raise ConfigError("a label set needs at least one class")
        index: dict[str, int] = {}
        for i, mid in enumerate(self.mids):
            if mid in index:
                raise ConfigError(f"duplicate mid {mid!r} at classes {index[mid]} and {i}")
            index[mid] = i
        object.__setattr__(self, "_index", index)

    # --- construction -------------------------------------------------------------------
    @classmethod
    def generic(cls, n: int) -> LabelSet:
        """Placeholder labels ``'class 0'`` .. ``'class n-1'`` (mids ``class_0`` ..).

        Args:
            n: Number of classes, >= 1.

        Returns:
            A label set of ``n`` classes.

        Raises:
            ConfigError: If ``n < 1``.
        """
        if n < 1:
            raise ConfigError(f"a label set needs at least one class, got n={n}")
        return cls(tuple(f"class {i}" for i in range(n)), tuple(f"class_{i}" for i in range(n)))

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> LabelSet:
        """Read an official ``index,mid,display_name`` label CSV.

        Rows may come in any order; their indices must be exactly ``0 .. N-1``.

        Args:
            path: The CSV file (UTF-8, an optional byte-order mark is accepted).

        Returns:
            The label set, ordered by index.

        Raises:
            ConfigError: If the file is missing or unreadable, its header is not
                ``index,mid,display_name``, a row is malformed, or the indices are not
                ``0 .. N-1``.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise ConfigError(f"label file {p} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read label file {p}: {e}") from e
        return cls._parse(text, str(p))

    @classmethod
    def _parse(cls, text: str, where: str) -> LabelSet:
        """Parse CSV text; ``where`` names the source in error messages."""
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != _HEADER:
            raise ConfigError(
                f"{where} is not a label CSV: expected the header 'index,mid,display_name', "
                f"got {header!r}"
            )
        by_index: dict[int, tuple[str, str]] = {}
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue  # blank lines (e.g. a trailing newline) carry no class
            line = reader.line_num
            if len(row) != 3:
                raise ConfigError(
                    f"{where}, line {line}: expected 3 fields (index,mid,display_name), "
                    f"got {len(row)}: {row!r}; quote display names that contain commas"
                )
            try:
                i = int(row[0])
            except ValueError:
                raise ConfigError(
                    f"{where}, line {line}: index {row[0]!r} is not an integer"
                ) from None
            if i in by_index:
                raise ConfigError(f"{where}, line {line}: index {i} appears twice")
            by_index[i] = (row[1].strip(), row[2])
        n = len(by_index)
        if n == 0:
            raise ConfigError(f"{where} has a header but no classes")
        if set(by_index) != set(range(n)):
            wrong = sorted(set(by_index) - set(range(n)))[:5]
            raise ConfigError(
                f"{where}: class indices must be exactly 0..{n - 1}; unexpected indices {wrong}"
            )
        mids, names = zip(*(by_index[i] for i in range(n)), strict=True)
        return cls(names=tuple(names), mids=tuple(mids))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelSet:
        """Inverse of :meth:`to_dict` (checkpoint metadata)."""
        try:
            return cls(names=tuple(d["names"]), mids=tuple(d["mids"]))
        except (KeyError, TypeError) as e:
            raise ConfigError(
                f"label metadata needs lists 'names' and 'mids', got {d!r:.200}"
            ) from e

    # --- output -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, list[str]]:
        """Plain JSON-serialisable form ``{"names": [...], "mids": [...]}``."""
        return {"names": list(self.names), "mids": list(self.mids)}

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the official ``index,mid,display_name`` format (names quoted as needed).

        Args:
            path: Destination file; its parent directory must exist.

        Returns:
            The path written.
        """
        p = Path(path)
        with p.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(_HEADER)
            for i, (mid, name) in enumerate(zip(self.mids, self.names, strict=True)):
                w.writerow((i, mid, name))
        return p

    # --- lookup -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __getitem__(self, i: int) -> str:
        return self.names[i]

    def index(self, mid: str) -> int:
        """Class index of a machine id.

        Raises:
            KeyError: If ``mid`` is not in the set.
        """
        try:
            return self._index[mid]
        except KeyError:
            raise KeyError(f"mid {mid!r} is not one of the {len(self)} classes") from None

    def name_of(self, mid: str) -> str:
        """Display name of a machine id (``KeyError`` if unknown)."""
        return self.names[self.index(mid)]
