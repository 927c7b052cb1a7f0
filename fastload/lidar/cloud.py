"""What every point-cloud reader returns and raises, and the checks they share."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: A count or size in a header: digits only (no sign, no decimal point).
WHOLE_NUMBER = re.compile(r"[0-9]+")


class PointCloudError(ValueError):
    """A point-cloud file that cannot be read; the message names the file."""


@dataclass
class PointCloud:
    """``points`` ``(N, C)`` float32 whose columns are ``fields`` (x, y, z first)."""

    points: np.ndarray
    fields: tuple[str, ...]

    def field(self, name: str) -> np.ndarray:
        try:
            return self.points[:, self.fields.index(name)]
        except ValueError:
            raise KeyError(f"no field {name!r}; fields are {self.fields}") from None

    @property
    def xyz(self) -> np.ndarray:
        return self.points[:, :3]

    def __len__(self) -> int:
        return len(self.points)


class AsciiRows:
    """The non-blank lines of ascii data, checked block by block. Values are kept in one
    flat list with each row's width (a list per row costs more in garbage collection than
    parsing the numbers); the file's line numbers are worked out only for error messages."""

    def __init__(self, path: str, body: bytes, first_line: int):
        lines = body.split(b"\n")
        widths = np.fromiter(map(len, map(bytes.split, lines)), dtype=np.int64, count=len(lines))
        self.path, self._lines = path, np.flatnonzero(widths) + first_line
        self.values, self.widths = body.split(), widths[widths > 0]
        self._underscores = b"_" in body  # numpy reads "1_000" as 1000; no point-cloud format writes that
        self._starts = np.concatenate(([0], np.cumsum(self.widths)))
        # A cut in the middle of the last number would otherwise read as a shorter number.
        if len(self.widths) and not body.rstrip(b" \t\r").endswith(b"\n"):
            raise PointCloudError(f"{path}: truncated: line {self.line(len(self.widths) - 1)}, the last, does not "
                                  f"end in a newline")

    def line(self, row: int) -> int:
        """The file's line number of row ``row``."""
        return int(self._lines[row])

    def row(self, row: int) -> list[bytes]:
        return self.values[self._starts[row]:self._starts[row + 1]]

    def expect(self, total: int, what: str) -> None:
        if len(self.widths) < total:
            raise PointCloudError(f"{self.path}: truncated: the header announces {total} {what}, the file has "
                                  f"{len(self.widths)} lines of data")
        if len(self.widths) > total:
            raise PointCloudError(f"{self.path}: data after the last point: the header announces {total} {what}, "
                                  f"the file has {len(self.widths)} lines of data (line {self.line(total)} on)")

    def fixed(self, first: int, count: int, width: int, what: str) -> list[bytes]:
        """The values of ``count`` rows from ``first``, each checked to hold ``width``."""
        wrong = np.flatnonzero(self.widths[first:first + count] != width)
        if len(wrong):
            row = first + int(wrong[0])
            raise PointCloudError(f"{self.path}: line {self.line(row)} has {self.widths[row]} values; "
                                  f"{what} lines have {width}")
        return self.values[self._starts[first]:self._starts[first + count]]

    def table(self, first: int, values: list[bytes], names: list[str], types: list[np.dtype]) -> np.ndarray:
        """``values``, the rows from ``first`` on, as a float32 table, checked to be numbers of ``types``."""
        width = len(names)

        def refuse(position: int, why: str) -> PointCloudError:
            return PointCloudError(f"{self.path}: line {self.line(first + position // width)}: "
                                   f"{names[position % width]} is {values[position].decode(errors='replace')!r}, {why}")

        try:
            if self._underscores and any(b"_" in value for value in values):
                raise ValueError
            with np.errstate(over="ignore"):
                table = np.array(values, dtype=np.float32).reshape(-1, width)
        except ValueError:
            raise refuse(next(i for i, value in enumerate(values) if not is_number(value)), "not a number") from None
        overflowed = np.flatnonzero(np.isinf(table.ravel()))
        for position in overflowed:  # an inf that the file did not write is a value float32 cannot hold
            if b"inf" not in values[position].lower():
                raise refuse(int(position), "beyond the float32 range the points are read into")
        for k, (name, dtype) in enumerate(zip(names, types)):
            if dtype.kind in "iu":
                column, limits = np.array(values[k::width], dtype=np.float64), np.iinfo(dtype)
                bad: Sequence[int] = np.flatnonzero(  # type: ignore[assignment]  # an array of indices
                    (column != np.floor(column)) | (column < limits.min) | (column > limits.max))
                if dtype.itemsize == 8 and not len(bad):  # float64 rounds 64-bit limits: compare exactly
                    bad = [j for j, value in enumerate(values[k::width])
                           if not limits.min <= int(float(value) if b"." in value or b"e" in value.lower()
                                                    else int(value)) <= limits.max]
                if len(bad):
                    raise refuse(k + width * int(bad[0]), f"not a value of its type {dtype.name}")
        return table


def is_number(value: bytes) -> bool:
    try:
        with np.errstate(over="ignore"):
            np.array([value], dtype=np.float32)
    except ValueError:
        return False
    return b"_" not in value


def as_float32(path: str, name: str, values: np.ndarray) -> np.ndarray:
    """``values`` as float32, the type points are read into: a finite value beyond its
    range (it would read as inf) is refused."""
    if values.dtype.kind == "f" and values.dtype.itemsize > 4:
        finite = np.abs(values[np.isfinite(values)])
        if finite.size and finite.max() > np.finfo(np.float32).max:
            raise PointCloudError(f"{path}: {name} holds {float(finite.max())!r}, beyond the float32 range the "
                                  "points are read into")
    return values.astype(np.float32)


def check_columns(path: str, columns: list[str]) -> None:
    """Raises unless x, y, z are among the columns and no name is given twice."""
    missing = [axis for axis in ("x", "y", "z") if axis not in columns]
    if missing:
        raise PointCloudError(f"{path}: no {', '.join(missing)} field(s) among {columns}")
    repeated = [column for column, times in Counter(columns).items() if times > 1]
    if repeated:
        raise PointCloudError(f"{path}: two columns would be named {repeated[0]!r} (fields {columns})")


def xyz_first(table: np.ndarray, columns: list[str]) -> PointCloud:
    order = [columns.index(axis) for axis in ("x", "y", "z")] + \
        [i for i, column in enumerate(columns) if column not in ("x", "y", "z")]
    return PointCloud(np.ascontiguousarray(table[:, order], dtype=np.float32), tuple(columns[i] for i in order))

