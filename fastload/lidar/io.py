"""Reading point clouds: KITTI ``.bin``, PCD v0.7, PLY, as float32 ``(N, C)`` with field names.

KITTI, PLY and the ``ascii`` and ``binary`` PCD encodings are read with numpy: a binary PCD
or PLY is one ``np.frombuffer`` with the header's record layout (a binary PCD scan takes
about 1.5 ms where open3d takes 17–24 ms, after 70–185 MB of imports). ``binary_compressed``
PCD goes through open3d's tensor API (``o3d.t.io``, which keeps float32 and extra fields),
imported only then: its LZF data would decode several times slower in Python.

Every header field is checked, against the others and against the size of the data, before
any point is read, and a file that does not hold exactly what its header announces raises
``PointCloudError`` naming the file and the field at fault. That includes data left over
after the last point: a header that under-counts its points would otherwise lose them
silently. Files open3d would misread are refused before open3d sees them, because it only
logs its errors and returns whatever its buffers held.
"""

from __future__ import annotations

import os
import re
import struct
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

KITTI_FIELDS = ("x", "y", "z", "intensity")


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


def read_kitti_bin(path: str | os.PathLike[str], fields: tuple[str, ...] = KITTI_FIELDS) -> PointCloud:
    """A KITTI velodyne scan: float32 records of ``len(fields)`` values (x, y, z, intensity).

    Raises:
        ValueError: ``fields`` does not start with x, y, z or names a column twice.
        PointCloudError: the file's size is not a whole number of records.
        OSError: the file cannot be read.
    """
    path, fields = os.fspath(path), tuple(fields)
    if fields[:3] != ("x", "y", "z") or len(set(fields)) != len(fields):
        raise ValueError(f"fields must start with x, y, z and name each column once, got {fields}")
    size = os.path.getsize(path)
    record = 4 * len(fields)
    if size % record:
        raise PointCloudError(f"{path}: {size} bytes is not a whole number of {len(fields)}-float32 records "
                              f"({record} bytes each): truncated or not a KITTI .bin file")
    return PointCloud(np.fromfile(path, dtype=np.float32).reshape(-1, len(fields)), fields)


# --- PCD ---

_PCD_KEYS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS", "DATA")
_PCD_TYPES = {("F", "4"): "<f4", ("F", "8"): "<f8", ("I", "1"): "i1", ("I", "2"): "<i2", ("I", "4"): "<i4",
              ("I", "8"): "<i8", ("U", "1"): "u1", ("U", "2"): "<u2", ("U", "4"): "<u4", ("U", "8"): "<u8"}
_PCD_PADDING = "_"  # PCL's name for the bytes that align its binary records; not data
_WHOLE_NUMBER = re.compile(r"[0-9]+")


class _PcdLayout(NamedTuple):
    keys: list[str]  # the header's lines in their order
    fields: list[tuple[str, str, str, int]]  # name, TYPE, SIZE, COUNT as the header gives them
    record: np.dtype  # one point, packed as in the file: one numpy field per value
    columns: list[str | None]  # the column of each value of a record; None for padding
    points: int
    encoding: str


def _pcd_header(path: str, data: bytes) -> tuple[dict[str, list[str]], int]:
    """The header's lines by key, and the offset of the data after the DATA line."""
    header: dict[str, list[str]] = {}
    offset = number = 0
    while "DATA" not in header:
        if offset >= len(data):
            raise PointCloudError(f"{path}: PCD header has no DATA line")
        end = data.find(b"\n", offset)
        end = len(data) if end < 0 else end
        line = data[offset:end].decode("ascii", errors="replace").strip()
        offset, number = end + 1, number + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        if key not in _PCD_KEYS:
            raise PointCloudError(f"{path}: PCD header line {number} starts with none of {', '.join(_PCD_KEYS)}: "
                                  f"{line[:40]!r}")
        if key in header:
            raise PointCloudError(f"{path}: PCD header has two {key} lines")
        header[key] = values
    return header, min(offset, len(data))


def _pcd_whole_number(path: str, key: str, values: list[str]) -> int:
    if len(values) != 1 or not _WHOLE_NUMBER.fullmatch(values[0]):
        raise PointCloudError(f"{path}: PCD {key} must be one whole number >= 0, got {' '.join(values)!r}")
    return int(values[0])


def _pcd_points(path: str, header: dict[str, list[str]]) -> int:
    if ("WIDTH" in header) != ("HEIGHT" in header):
        present, absent = ("WIDTH", "HEIGHT") if "WIDTH" in header else ("HEIGHT", "WIDTH")
        raise PointCloudError(f"{path}: PCD header has {present} but no {absent}")
    if "POINTS" not in header and "WIDTH" not in header:
        raise PointCloudError(f"{path}: PCD header has neither POINTS nor WIDTH and HEIGHT")
    points = _pcd_whole_number(path, "POINTS", header["POINTS"]) if "POINTS" in header else None
    if "WIDTH" in header:
        width = _pcd_whole_number(path, "WIDTH", header["WIDTH"])
        height = _pcd_whole_number(path, "HEIGHT", header["HEIGHT"])
        if points is not None and points != width * height:
            raise PointCloudError(f"{path}: PCD POINTS is {points} but WIDTH x HEIGHT is "
                                  f"{width} x {height} = {width * height}")
        points = width * height
    return points


def _pcd_layout(path: str, header: dict[str, list[str]]) -> _PcdLayout:
    for key in ("FIELDS", "SIZE", "TYPE"):
        if key not in header:
            raise PointCloudError(f"{path}: PCD header has no {key} line")
    if header.get("VERSION", ["0.7"]) not in (["0.7"], [".7"]):
        raise PointCloudError(f"{path}: PCD VERSION {' '.join(header['VERSION'])!r} is not supported (fastload "
                              f"reads version 0.7)")
    names = header["FIELDS"]
    if not names:
        raise PointCloudError(f"{path}: PCD FIELDS names no field")
    counts = header.get("COUNT", ["1"] * len(names))  # the format's default when COUNT is left out
    for key, values in (("SIZE", header["SIZE"]), ("TYPE", header["TYPE"]), ("COUNT", counts)):
        if len(values) != len(names):
            raise PointCloudError(f"{path}: PCD {key} has {len(values)} values for the {len(names)} FIELDS {names}")
    if "VIEWPOINT" in header:
        viewpoint = header["VIEWPOINT"]
        try:
            finite = len(viewpoint) == 7 and all(np.isfinite(float(v)) for v in viewpoint)
        except ValueError:
            finite = False
        if not finite:
            raise PointCloudError(f"{path}: PCD VIEWPOINT must be 7 finite numbers (tx ty tz qw qx qy qz), "
                                  f"got {' '.join(viewpoint)!r}")
    fields, formats, columns = [], [], []
    for name, size, kind, count_text in zip(names, header["SIZE"], header["TYPE"], counts):
        if (kind, size) not in _PCD_TYPES:
            raise PointCloudError(f"{path}: PCD field {name!r} has TYPE {kind} SIZE {size}; supported are F with "
                                  f"SIZE 4 or 8, I and U with SIZE 1, 2, 4 or 8")
        if not _WHOLE_NUMBER.fullmatch(count_text) or int(count_text) == 0:
            raise PointCloudError(f"{path}: PCD field {name!r} has COUNT {count_text}: every field holds a whole "
                                  f"number >= 1 of values")
        count = int(count_text)
        fields.append((name, kind, size, count))
        formats += [_PCD_TYPES[(kind, size)]] * count
        columns += [None if name == _PCD_PADDING else name if count == 1 else f"{name}_{k}" for k in range(count)]
    _check_columns(path, [c for c in columns if c is not None])
    if len(header["DATA"]) != 1 or header["DATA"][0] not in ("ascii", "binary", "binary_compressed"):
        raise PointCloudError(f"{path}: PCD DATA must be ascii, binary or binary_compressed, "
                              f"got {' '.join(header['DATA'])!r}")
    record = np.dtype({"names": [f"f{i}" for i in range(len(formats))], "formats": formats})
    return _PcdLayout(list(header), fields, record, columns, _pcd_points(path, header), header["DATA"][0])


def read_pcd(path: str | os.PathLike[str]) -> PointCloud:
    """A PCD v0.7 file. ``ascii`` and ``binary`` are read here; ``binary_compressed`` needs open3d.

    Columns are the header's FIELDS (a field of COUNT k gives ``name_0`` … ``name_{k-1}``),
    x, y, z first; PCL's padding fields (``_``) are left out. The data must hold exactly
    POINTS points: one line of values per point for ``ascii`` (each line ending in a
    newline), ``POINTS`` records and nothing after them for ``binary``.

    Raises:
        PointCloudError: a header field is missing, repeated, malformed or inconsistent with
            the others or with the size of the data; an ascii line holds the wrong number of
            values or a value its field's TYPE cannot hold; a ``binary_compressed`` file
            open3d would not read exactly, or when open3d is not installed.
        OSError: the file cannot be read.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    header, offset = _pcd_header(path, data)
    layout = _pcd_layout(path, header)
    if layout.encoding == "binary_compressed":
        return _read_pcd_compressed(path, data, offset, layout)
    if layout.encoding == "binary":
        needed, held = layout.points * layout.record.itemsize, len(data) - offset
        if held != needed:
            raise PointCloudError(f"{path}: {'truncated' if held < needed else 'data after the last point'}: "
                                  f"POINTS {layout.points} x {layout.record.itemsize}-byte records (SIZE x COUNT) "
                                  f"need {needed} bytes of data, the file has {held}")
        records = np.frombuffer(data, dtype=layout.record, count=layout.points, offset=offset)
        kept = [name for name, column in zip(layout.record.names, layout.columns) if column is not None]
        table = np.stack([records[name].astype(np.float32) for name in kept], axis=1)
    else:
        rows = _AsciiRows(path, data[offset:], data[:offset].count(b"\n") + 1)
        rows.expect(layout.points, "POINTS (one line each)")
        values = rows.fixed(0, layout.points, len(layout.columns), "point (FIELDS x COUNT)")
        names = [c or _PCD_PADDING for c in layout.columns]
        table = rows.table(0, values, names, [layout.record[i] for i in range(len(layout.columns))])
        table = table[:, [i for i, column in enumerate(layout.columns) if column is not None]]
    return _xyz_first(table, [c for c in layout.columns if c is not None])


def _read_pcd_compressed(path: str, data: bytes, offset: int, layout: _PcdLayout) -> PointCloud:
    # The data is two little-endian uint32 (compressed, uncompressed size) and an LZF stream
    # that decompresses to each field's values for all points, one field after another.
    if len(data) - offset < 8:
        raise PointCloudError(f"{path}: truncated: binary_compressed data needs 8 bytes of sizes, "
                              f"the file has {len(data) - offset}")
    compressed, uncompressed = struct.unpack_from("<II", data, offset)
    needed, held = layout.points * layout.record.itemsize, len(data) - offset - 8
    if uncompressed != needed:
        raise PointCloudError(f"{path}: binary_compressed data announces {uncompressed} bytes uncompressed; POINTS "
                              f"{layout.points} x {layout.record.itemsize}-byte records (SIZE x COUNT) need {needed}")
    if held != compressed:
        raise PointCloudError(f"{path}: {'truncated' if held < compressed else 'data after the last point'}: "
                              f"binary_compressed data announces {compressed} compressed bytes, the file has {held}")
    reason = _open3d_misreads(layout, max(map(len, data[:offset].split(b"\n"))))
    if reason:
        raise PointCloudError(f"{path}: this binary_compressed PCD cannot be read exactly: {reason}; saved as "
                              f"binary or ascii PCD it can")
    if layout.points == 0:  # open3d refuses empty clouds
        columns = [column for column in layout.columns if column is not None]
        return _xyz_first(np.zeros((0, len(columns)), np.float32), columns)
    try:
        import open3d as o3d
    except (ImportError, OSError) as exc:  # OSError: open3d is there but a system library is not
        raise PointCloudError(f"{path}: reading binary_compressed PCD needs open3d (pip install open3d-cpu; "
                              f"it loads the system's libusb-1.0-0): {exc}") from exc
    cloud = o3d.t.io.read_point_cloud(path)
    attributes = {name: cloud.point[name].numpy() for name in cloud.point}
    if "positions" not in attributes or any(len(values) != layout.points for values in attributes.values()):
        raise PointCloudError(f"{path}: open3d could not read the binary_compressed data (corrupt LZF stream?)")
    columns, arrays = ["x", "y", "z"], [attributes.pop("positions").astype(np.float32)]
    for name, values in attributes.items():
        values = values.reshape(len(values), -1).astype(np.float32)
        columns += [name] if values.shape[1] == 1 else [f"{name}_{k}" for k in range(values.shape[1])]
        arrays.append(values)
    return PointCloud(np.ascontiguousarray(np.concatenate(arrays, axis=1)), tuple(columns))


def _open3d_misreads(layout: _PcdLayout, longest_line: int) -> str | None:
    """Why open3d's PCD reader (0.20) would not read this layout exactly, or None.

    It reads header lines into a 1024-byte buffer, counts points from the last of HEIGHT
    (WIDTH x HEIGHT, with the WIDTH read so far) and POINTS, keeps the first value of each
    field and makes one attribute per field name next to its own positions, normals and
    colors (a field named positions or colors, or two padding fields, made it write to freed
    memory). It needs one type for x, y and z, reads normals with the type of x (and wrote
    through a null pointer for an incomplete set) and colour as 4 bytes (zeros for another
    SIZE; rgba overwrites rgb).
    """
    if longest_line > 1022:
        return f"a header line of {longest_line} bytes, and open3d reads at most 1022"
    if "POINTS" not in layout.keys or layout.keys != [key for key in _PCD_KEYS if key in layout.keys]:
        return f"open3d needs POINTS and the header lines in the order {', '.join(_PCD_KEYS)}"
    types = {name: (kind, size) for name, kind, size, _ in layout.fields}
    for name, kind, size, count in layout.fields:
        if count != 1:
            return f"field {name!r} has COUNT {count} and open3d keeps only its first value"
        if name in (_PCD_PADDING, "positions", "normals", "colors"):
            return f"open3d mistakes a field named {name!r} for its own"
    if len({types[axis] for axis in "xyz"}) > 1:
        return "open3d needs x, y and z of one TYPE and SIZE"
    normals = [name for name in ("normal_x", "normal_y", "normal_z") if name in types]
    if normals and (len(normals) < 3 or any(types[name] != types["x"] for name in normals)):
        return "open3d reads normals only as normal_x, normal_y and normal_z of the TYPE and SIZE of x"
    colours = [name for name in ("rgb", "rgba") if name in types]
    if len(colours) > 1 or any(types[name][1] != "4" for name in colours):
        return "open3d reads colour only as one rgb or rgba field of SIZE 4"
    return None


# --- PLY ---

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
    count: int
    properties: list[_PlyProperty]


def _ply_header(path: str, data: bytes) -> tuple[str, list[_PlyElement], int, int]:
    """The format, the elements, the offset of the data and the number of header lines."""
    if not (data.startswith(b"ply\n") or data.startswith(b"ply\r\n")):
        raise PointCloudError(f"{path}: not a PLY file (no 'ply' line first)")
    offset, number, encoding, elements = data.index(b"\n") + 1, 1, None, []
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
            if len(words) != 3 or not _WHOLE_NUMBER.fullmatch(words[2]):
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
            (truncated, data left over, a list count or an ascii value its type cannot hold).
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
    _check_columns(path, columns)
    if encoding == "ascii":
        table = _read_ply_ascii(path, data, offset, header_lines, elements)
    else:
        records = _read_ply_binary(path, data, offset, elements, _PLY_BYTE_ORDERS[encoding])
        table = np.stack([records[name].astype(np.float32) for name in properties], axis=1)
    return _xyz_first(table, columns)


def _read_ply_binary(path: str, data: bytes, offset: int, elements: list[_PlyElement], endian: str) -> np.ndarray:
    """The vertex element's scalar properties as records, after checking that the elements
    fill the data exactly."""
    vertex = None
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
    rows = _AsciiRows(path, data[offset:], header_lines + 1)
    rows.expect(sum(element.count for element in elements), "elements (one per line)")
    first, table = 0, None
    for element in elements:
        if all(prop.count_type is None for prop in element.properties):
            values = rows.fixed(first, element.count, len(element.properties), element.name)
        else:
            values = rows.with_lists(first, element)
        if element.name == "vertex":
            scalars = [prop for prop in element.properties if prop.count_type is None]
            table = rows.table(first, values, [p.name for p in scalars], [np.dtype(p.type) for p in scalars])
        first += element.count
    return table


# --- shared ---

class _AsciiRows:
    """The non-blank lines of ascii data, checked block by block. Values are kept in one
    flat list with each row's width (a list per row costs more in garbage collection than
    parsing the numbers); the file's line numbers are worked out only for error messages."""

    def __init__(self, path: str, body: bytes, first_line: int):
        lines = body.split(b"\n")
        widths = np.fromiter(map(len, map(bytes.split, lines)), dtype=np.int64, count=len(lines))
        self._path, self._lines = path, np.flatnonzero(widths) + first_line
        self.values, self.widths = body.split(), widths[widths > 0]
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
            raise PointCloudError(f"{self._path}: truncated: the header announces {total} {what}, the file has "
                                  f"{len(self.widths)} lines of data")
        if len(self.widths) > total:
            raise PointCloudError(f"{self._path}: data after the last point: the header announces {total} {what}, "
                                  f"the file has {len(self.widths)} lines of data (line {self.line(total)} on)")

    def fixed(self, first: int, count: int, width: int, what: str) -> list[bytes]:
        """The values of ``count`` rows from ``first``, each checked to hold ``width``."""
        wrong = np.flatnonzero(self.widths[first:first + count] != width)
        if len(wrong):
            row = first + int(wrong[0])
            raise PointCloudError(f"{self._path}: line {self.line(row)} has {self.widths[row]} values; "
                                  f"{what} lines have {width}")
        return self.values[self._starts[first]:self._starts[first + count]]

    def with_lists(self, first: int, element: _PlyElement) -> list[bytes]:
        """The scalar values of ``element``'s rows, each row checked against its lists' counts."""
        scalars = []
        for j in range(first, first + element.count):
            row, at = self.row(j), 0  # at runs past the row's end when values are missing: refused below
            for prop in element.properties:
                if prop.count_type is None:
                    scalars.append(row[at] if at < len(row) else b"")
                    at += 1
                    continue
                count = row[at].decode("ascii", errors="replace") if at < len(row) else ""
                if not _WHOLE_NUMBER.fullmatch(count) or int(count) > np.iinfo(prop.count_type).max:
                    raise PointCloudError(f"{self._path}: line {self.line(j)}: list {prop.name!r} of "
                                          f"{element.name} has count {count!r}, not a whole number of its type "
                                          f"{np.dtype(prop.count_type).name}")
                at += 1 + int(count)
            if at != len(row):
                raise PointCloudError(f"{self._path}: line {self.line(j)} has {len(row)} values; one {element.name} "
                                      f"with the list counts it gives has {at}")
        return scalars

    def table(self, first: int, values: list[bytes], names: list[str], types: list[np.dtype]) -> np.ndarray:
        """``values``, the rows from ``first`` on, as a float32 table, checked to be numbers of ``types``."""
        width = len(names)
        try:
            table = np.array(values, dtype=np.float32).reshape(-1, width)
        except ValueError:
            bad = next(i for i, value in enumerate(values) if not _is_number(value))
            raise PointCloudError(f"{self._path}: line {self.line(first + bad // width)}: {names[bad % width]} is "
                                  f"{values[bad].decode(errors='replace')!r}, not a number") from None
        for k, (name, dtype) in enumerate(zip(names, types)):
            if dtype.kind in "iu":
                column, limits = np.array(values[k::width], dtype=np.float64), np.iinfo(dtype)
                bad = np.flatnonzero((column != np.floor(column)) | (column < limits.min) | (column > limits.max))
                if len(bad):
                    raise PointCloudError(f"{self._path}: line {self.line(first + int(bad[0]))}: {name} is "
                                          f"{values[k + width * int(bad[0])].decode()!r}, not a value of its type "
                                          f"{dtype.name}")
        return table


def _is_number(value: bytes) -> bool:
    try:
        np.array([value], dtype=np.float32)
    except ValueError:
        return False
    return True


def read_point_cloud(path: str | os.PathLike[str]) -> PointCloud:
    """By extension: ``.bin`` (KITTI), ``.pcd``, ``.ply``.

    Raises:
        PointCloudError: an unknown extension, or what the reader for it raises.
        OSError: the file cannot be read.
    """
    extension = os.path.splitext(os.fspath(path))[1].lower()
    readers = {".bin": read_kitti_bin, ".pcd": read_pcd, ".ply": read_ply}
    if extension not in readers:
        raise PointCloudError(f"{path}: unknown point-cloud extension {extension!r} (expected .bin, .pcd or .ply)")
    return readers[extension](path)


def _check_columns(path: str, columns: list[str]) -> None:
    """Raises unless x, y, z are among the columns and no name is given twice."""
    missing = [axis for axis in ("x", "y", "z") if axis not in columns]
    if missing:
        raise PointCloudError(f"{path}: no {', '.join(missing)} field(s) among {columns}")
    repeated = [column for column, times in Counter(columns).items() if times > 1]
    if repeated:
        raise PointCloudError(f"{path}: two columns would be named {repeated[0]!r} (fields {columns})")


def _xyz_first(table: np.ndarray, columns: list[str]) -> PointCloud:
    order = [columns.index(axis) for axis in ("x", "y", "z")] + \
        [i for i, column in enumerate(columns) if column not in ("x", "y", "z")]
    return PointCloud(np.ascontiguousarray(table[:, order], dtype=np.float32), tuple(columns[i] for i in order))
