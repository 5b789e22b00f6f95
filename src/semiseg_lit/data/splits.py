"""Split-list reading and seeded labeled/unlabeled partitioning (specs/data.md §2).

Published lists come in several line formats (§2.3): ``img mask`` pairs separated by one space
(UniMatch, ST++), TAB-separated pairs (CPS), bare ids (U2PL / CPS pascal) and image paths only
(U2PL cityscapes), with LF or CRLF endings and often no final newline. Lines are counted with
``splitlines()`` as UniMatch does (§2.2).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "SplitError",
    "Sample",
    "read_split_records",
    "partition",
    "check_disjoint",
    "check_files_exist",
    "check_unique_ids",
    "check_utf8_names",
    "without_missing_masks",
]

PathLike = str | Path
_MAX_LISTED = 5


class SplitError(ValueError):
    """A split list is missing, malformed, or inconsistent with another list or the files on disk."""


class Sample(NamedTuple):
    """One dataset item: its id, image path, mask path (None = unlabeled) and an optional label LUT.

    ``lut`` (uint8[256]) is applied to the raw mask at read time, e.g. Cityscapes labelIds -> trainIds.
    """

    id: str
    image: Path
    mask: Path | None
    lut: np.ndarray | None = None


def _first(items: Iterable[str], n: int = _MAX_LISTED) -> str:
    """Comma-separated first ``n`` items."""
    items = list(items)
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _split_line(line: str) -> tuple[str, ...]:
    """Fields of one list line: TAB-separated when it has a TAB, else whitespace-separated."""
    if "\t" in line:
        return tuple(f.strip() for f in line.split("\t") if f.strip())
    return tuple(line.split())


def read_split_records(path: PathLike) -> list[tuple[str, ...]]:
    """Read a split list into records of 1 field (id or image path) or 2 fields (image, mask).

    Handles space / TAB separators, CRLF endings, a missing final newline, a UTF-8 BOM and blank lines.
    Raises :class:`SplitError` naming the file if it is missing, holds 0 records, has a line with more
    than 2 fields, or repeats a record.
    """
    p = Path(path)
    if not p.is_file():
        raise SplitError(f"split list not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SplitError(f"split list {p} is not UTF-8 text ({e})") from e
    records: list[tuple[str, ...]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = _split_line(line)
        if not fields:
            continue
        if len(fields) > 2:
            raise SplitError(
                f"split list {p}, line {lineno}: {len(fields)} fields {list(fields)!r}; expected "
                "'<image> <mask>', '<image>\\t<mask>', a bare id or an image path"
            )
        records.append(fields)
    if not records:
        raise SplitError(f"split list {p} is empty (0 records)")
    dups = [" ".join(r) for r, n in Counter(records).items() if n > 1]
    if dups:
        raise SplitError(f"split list {p} has {len(dups)} duplicated record(s): {_first(dups)}")
    return records


def partition(samples: Sequence[Sample], n_labeled: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Draw ``n_labeled`` samples as labeled; the rest are unlabeled.

    Deterministic in (sample ids, n_labeled, seed) whatever the input order: samples are sorted by id,
    then ``numpy.random.default_rng(seed).choice(N, n_labeled, replace=False)`` picks the labeled
    indices. Both outputs are sorted by id.
    """
    if isinstance(n_labeled, bool) or not isinstance(n_labeled, int | np.integer):
        raise SplitError(f"n_labeled must be an int, got {n_labeled!r}")
    ordered = sorted(samples, key=lambda s: s.id)
    n = len(ordered)
    if not 1 <= n_labeled <= n:
        raise SplitError(f"n_labeled={n_labeled} but there are {n} samples; expected 1 <= n_labeled <= {n}")
    dup_ids = [i for i, c in Counter(s.id for s in ordered).items() if c > 1]
    if dup_ids:
        raise SplitError(f"cannot partition: {len(dup_ids)} sample id(s) occur twice: {_first(dup_ids)}")
    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.default_rng(seed).choice(n, size=int(n_labeled), replace=False)] = True
    labeled = [s for s, c in zip(ordered, chosen) if c]
    unlabeled = [s for s, c in zip(ordered, chosen) if not c]
    return labeled, unlabeled


def without_missing_masks(samples: Sequence[Sample]) -> list[Sample]:
    """Unlabeled samples need no mask: a named mask that does not exist becomes ``None`` (and so does
    its LUT); samples whose mask exists keep it (used only for pseudo-label diagnostics)."""
    return [s if s.mask is None or Path(s.mask).is_file() else s._replace(mask=None, lut=None) for s in samples]


def check_disjoint(
    labeled: Sequence[Sample], unlabeled: Sequence[Sample], labeled_src: str, unlabeled_src: str
) -> None:
    """Raise :class:`SplitError` if a sample id is in both lists, naming both lists and the shared ids."""
    unlabeled_ids = {s.id for s in unlabeled}
    shared = list(dict.fromkeys(s.id for s in labeled if s.id in unlabeled_ids))
    if shared:
        raise SplitError(
            f"labeled list {labeled_src} and unlabeled list {unlabeled_src} share {len(shared)} id(s): "
            f"{_first(shared)}; they must be disjoint"
        )


def check_unique_ids(samples: Sequence[Sample], source: PathLike) -> None:
    """Raise :class:`SplitError` if two records of one list name the same sample id (e.g. a bare id
    and an ``image mask`` pair of the same image), which would silently weight it twice."""
    dups = [i for i, n in Counter(s.id for s in samples).items() if n > 1]
    if dups:
        raise SplitError(f"{source} names {len(dups)} sample id(s) more than once: {_first(dups)}; "
                         "each image may appear once per list")


def check_utf8_names(samples: Sequence[Sample], source: PathLike) -> None:
    """Raise :class:`SplitError` naming the first file whose name is not valid UTF-8 (on Linux such
    bytes names arrive as surrogate escapes and break printing, logging and split lists)."""
    for s in samples:
        for f in (s.image, s.mask):
            if f is None:
                continue
            try:
                str(f).encode("utf-8")
            except UnicodeEncodeError:
                raw = os.fsencode(f)
                raise SplitError(
                    f"file name {raw!r} (from {source}) is not valid UTF-8; rename it, e.g. "
                    f"`convmv -f latin1 -t utf8 --notest <file>` (semiseg_lit needs UTF-8 file names)") from None


def check_files_exist(samples: Sequence[Sample], source: PathLike) -> None:
    """Raise :class:`SplitError` listing the first 5 missing image/mask files and their total count."""
    missing: list[str] = []
    for s in samples:
        for f in (s.image, s.mask):
            if f is not None and not Path(f).is_file():
                missing.append(str(f))
    if missing:
        raise SplitError(
            f"{len(missing)} file(s) named by split list {source} do not exist, e.g. {_first(missing)}"
        )
