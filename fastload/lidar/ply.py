"""PLY (format 1.0, ascii and binary): read with numpy, every element checked."""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

import numpy as np

from .cloud import WHOLE_NUMBER, AsciiRows, PointCloud, PointCloudError, as_float32, check_columns, xyz_first

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_PLY_BYTE_ORDERS = {"binary_little_endian": "<", "binary_big_endian": ">"}
_STRUCT_CODES = {"i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I"}
# The names open3d gives to the vertex properties it groups, which this reader keeps.
_PLY_GROUPS = {("nx", "ny", "nz"): "normals", ("red", "green", "blue"): "colors"}


class _PlyProperty(NamedTuple):
    name: str
    type: str  # numpy type code without byte order, e.g. "f4"
    count_type: str | None  # a list's count prefix type; None for a scalar


class _PlyElement(NamedTuple):
    name: str
    count: int  # type: ignore[assignment]  # a field named as tuple's method
    properties: list[_PlyProperty]


def _ply_header(path: str, data: bytes) -> tuple[str, list[_PlyElement], int, int]:
    """The format, the elements, the offset of the data and the number of header lines."""
    if not (data.startswith(b"ply\n") or data.startswith(b"ply\r\n")):
        raise PointCloudError(f"{path}: not a PLY file (no 'ply' line first)")
    elements: list[_PlyElement] = []
    offset, number, encoding = data.index(b"\n") + 1, 1, None
    while True:
        end = data.find(b"\n", offset)
        if end < 0:
            raise PointCloudError(f"{path}: truncated PLY header (no end_header line)")
        line = data[offset:end].decode("ascii", errors="replace").strip()
        offset, number = end + 1, number + 1
        words = line.split()
        keyword = words[0] if words else ""
        if line == "end_header":
            break
        if keyword in ("", "comment", "obj_info"):
            continue
        if keyword == "format":
            if encoding is not None or elements:
                raise PointCloudError(f"{path}: PLY header line {number}: the format line must come once, before "
                                      f"the elements")
            if len(words) != 3 or words[1] not in ("ascii", *_PLY_BYTE_ORDERS) or words[2] != "1.0":
                raise PointCloudError(f"{path}: PLY format must be ascii, binary_little_endian or binary_big_endian "
                                      f"1.0, got {line!r}")
            encoding = words[1]
        elif keyword == "element":
            if len(words) != 3 or not WHOLE_NUMBER.fullmatch(words[2]):
                raise PointCloudError(f"{path}: PLY header line {number}: {line!r} is not 'element NAME COUNT' "
                                      f"with COUNT a whole number >= 0")
            if any(element.name == words[1] for element in elements):
                raise PointCloudError(f"{path}: PLY header declares element {words[1]!r} twice")
            elements.append(_PlyElement(words[1], int(words[2]), []))
        elif keyword == "property":
            if not elements:
                raise PointCloudError(f"{path}: PLY header line {number}: property {line!r} before any element")
            if len(words) == 3 and words[1] in _PLY_TYPES:
                prop = _PlyProperty(words[2], _PLY_TYPES[words[1]], None)
            elif len(words) == 5 and words[1] == "list" and _PLY_TYPES.get(words[2]) in _STRUCT_CODES \
                    and words[3] in _PLY_TYPES:
                prop = _PlyProperty(words[4], _PLY_TYPES[words[3]], _PLY_TYPES[words[2]])
            else:
                raise PointCloudError(
                    f"{path}: PLY header line {number}: {line!r} is not 'property TYPE NAME' or 'property list "
                    f"COUNT_TYPE TYPE NAME' (TYPE one of {', '.join(_PLY_TYPES)}; COUNT_TYPE an integer type)")
            if any(known.name == prop.name for known in elements[-1].properties):
                raise PointCloudError(f"{path}: PLY element {elements[-1].name!r} has two properties {prop.name!r}")
            elements[-1].properties.append(prop)
        else:
            raise PointCloudError(f"{path}: PLY header line {number}: unexpected {line[:80]!r}")
    if encoding is None:
        raise PointCloudError(f"{path}: PLY header has no format line")
    for element in elements:  # in ascii, its elements would be blank lines, which are skipped
        if not element.properties:
            raise PointCloudError(f"{path}: PLY element {element.name!r} has no properties")
    return encoding, elements, offset, number


def read_ply(path: str | os.PathLike[str]) -> PointCloud:
    """A PLY point cloud (format 1.0: ascii, binary little- or big-endian): the scalar
    properties of its ``vertex`` element as columns, x, y, z first.

    Other elements (faces, ...) are checked and stepped over; list properties of the vertex
    element are left out. nx, ny, nz become ``normals_0..2`` and red, green, blue
    ``colors_0..2``, the names open3d gives them. The data must hold exactly the elements
    the header announces: in ascii one line per element, ending in a newline.

    Raises:
        PointCloudError: the header is malformed (format, element counts, property types,
            repeated names), has no vertex element with x, y, z, or does not match the data
            (truncated, data left over, a list count, or an ascii vertex value its type or
            float32 cannot hold; the values of other elements, which are not read, are checked
            only for their number).
        OSError: the file cannot be read.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    encoding, elements, offset, header_lines = _ply_header(path, data)
    vertex = next((element for element in elements if element.name == "vertex"), None)
    if vertex is None:
        raise PointCloudError(f"{path}: PLY has no vertex element (elements: {[e.name for e in elements]})")
    properties = [prop.name for prop in vertex.properties if prop.count_type is None]
    columns = properties
    for group, name in _PLY_GROUPS.items():
        if all(member in columns for member in group):
            columns = [f"{name}_{group.index(c)}" if c in group else c for c in columns]
    check_columns(path, columns)
    if encoding == "ascii":
        table = _read_ply_ascii(path, data, offset, header_lines, elements)
    else:
        records = _read_ply_binary(path, data, offset, elements, _PLY_BYTE_ORDERS[encoding])
        table = np.stack([as_float32(path, name, records[name]) for name in properties], axis=1)
    return xyz_first(table, columns)


def _read_ply_binary(path: str, data: bytes, offset: int, elements: list[_PlyElement], endian: str) -> np.ndarray:
    """The vertex element's scalar properties as records, after checking that the elements
    fill the data exactly."""
    vertex: np.ndarray | None = None
    for element in elements:
        scalars = np.dtype([(p.name, endian + p.type) for p in element.properties if p.count_type is None])
        if all(prop.count_type is None for prop in element.properties):
            size = element.count * scalars.itemsize
            if len(data) - offset < size:
                raise PointCloudError(f"{path}: truncated: {element.count} {element.name} of {scalars.itemsize} "
                                      f"bytes need {size} bytes, the file has {len(data) - offset} left for them")
            if element.name == "vertex":
                vertex = np.frombuffer(data, dtype=scalars, count=element.count, offset=offset)
            offset += size
        else:
            offset, kept = _walk_ply_lists(path, data, offset, element, endian, keep=element.name == "vertex")
            if element.name == "vertex":
                vertex = np.frombuffer(kept, dtype=scalars, count=element.count)
    if offset != len(data):
        raise PointCloudError(f"{path}: data after the last element: the header's elements take "
                              f"{offset} bytes of the file, the file has {len(data)}")
    assert vertex is not None  # _ply_header requires a vertex element
    return vertex


def _walk_ply_lists(path: str, data: bytes, offset: int, element: _PlyElement, endian: str,
                    keep: bool) -> tuple[int, bytes]:
    """Steps over an element with list properties, whose size only its lists' count prefixes
    tell; returns the offset after it and, if ``keep``, its scalar values packed together."""
    steps = [(struct.Struct(endian + _STRUCT_CODES[p.count_type]) if p.count_type else None,
              np.dtype(p.type).itemsize, p.name) for p in element.properties]
    kept = bytearray()

    def truncated(index: int) -> PointCloudError:
        return PointCloudError(f"{path}: truncated: {element.name} {index} of {element.count} (with the counts "
                               f"of its lists) ends past the end of the file ({len(data)} bytes)")

    for index in range(element.count):
        for prefix, size, name in steps:
            if prefix is None:
                if keep:
                    kept += data[offset:offset + size]
                offset += size
                continue
            if offset + prefix.size > len(data):
                raise truncated(index)
            (count,) = prefix.unpack_from(data, offset)
            if count < 0:
                raise PointCloudError(f"{path}: {element.name} {index}: list {name!r} has count {count}")
            offset += prefix.size + count * size
        if offset > len(data):
            raise truncated(index)
    return offset, bytes(kept)


def _read_ply_ascii(path: str, data: bytes, offset: int, header_lines: int, elements: list[_PlyElement]) -> np.ndarray:
    """The vertex element's scalar properties as a float32 table, after checking every
    element's lines."""
    rows = AsciiRows(path, data[offset:], header_lines + 1)
    rows.expect(sum(element.count for element in elements), "elements (one per line)")
    first = 0
    table: np.ndarray | None = None
    for element in elements:
        if all(prop.count_type is None for prop in element.properties):
            values = rows.fixed(first, element.count, len(element.properties), element.name)
        else:
            values = _scalars_checking_lists(rows, first, element)
        if element.name == "vertex":
            scalars = [prop for prop in element.properties if prop.count_type is None]
            table = rows.table(first, values, [p.name for p in scalars], [np.dtype(p.type) for p in scalars])
        first += element.count
    assert table is not None  # _ply_header requires a vertex element
    return table


def _scalars_checking_lists(rows: AsciiRows, first: int, element: _PlyElement) -> list[bytes]:
    """The scalar values of ``element``'s rows, each row checked against its lists' counts."""
    scalars = []
    for j in range(first, first + element.count):
        row, at = rows.row(j), 0  # at runs past the row's end when values are missing: refused below
        for prop in element.properties:
            if prop.count_type is None:
                scalars.append(row[at] if at < len(row) else b"")
                at += 1
                continue
            count = row[at].decode("ascii", errors="replace") if at < len(row) else ""
            if not WHOLE_NUMBER.fullmatch(count) or int(count) > np.iinfo(prop.count_type).max:
                raise PointCloudError(f"{rows.path}: line {rows.line(j)}: list {prop.name!r} of "
                                      f"{element.name} has count {count!r}, not a whole number of its type "
                                      f"{np.dtype(prop.count_type).name}")
            at += 1 + int(count)
        if at != len(row):
            raise PointCloudError(f"{rows.path}: line {rows.line(j)} has {len(row)} values; one {element.name} "
                                  f"with the list counts it gives has {at}")
    return scalars
