"""PCD v0.7 (PCL's format): ``ascii`` and ``binary`` read with numpy, ``binary_compressed``
through open3d after checking that it would read the file exactly."""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

import numpy as np

from .cloud import WHOLE_NUMBER, AsciiRows, PointCloud, PointCloudError, as_float32, check_columns, xyz_first

_PCD_KEYS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS", "DATA")
_PCD_TYPES = {("F", "4"): "<f4", ("F", "8"): "<f8", ("I", "1"): "i1", ("I", "2"): "<i2", ("I", "4"): "<i4",
              ("I", "8"): "<i8", ("U", "1"): "u1", ("U", "2"): "<u2", ("U", "4"): "<u4", ("U", "8"): "<u8"}
_PCD_PADDING = "_"  # PCL's name for the bytes that align its binary records; not data


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
    if len(values) != 1 or not WHOLE_NUMBER.fullmatch(values[0]):
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
    assert points is not None  # POINTS, or WIDTH and HEIGHT: checked above
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
        if not WHOLE_NUMBER.fullmatch(count_text) or int(count_text) == 0:
            raise PointCloudError(f"{path}: PCD field {name!r} has COUNT {count_text}: every field holds a whole "
                                  f"number >= 1 of values")
        count = int(count_text)
        fields.append((name, kind, size, count))
        formats += [_PCD_TYPES[(kind, size)]] * count
        columns += [None if name == _PCD_PADDING else name if count == 1 else f"{name}_{k}" for k in range(count)]
    check_columns(path, [c for c in columns if c is not None])
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
        names = layout.record.names or ()  # a structured dtype: always has names
        kept = [name for name, column in zip(names, layout.columns) if column is not None]
        table = np.stack([as_float32(path, layout.columns[names.index(name)] or name, records[name])
                          for name in kept], axis=1)
    else:
        rows = AsciiRows(path, data[offset:], data[:offset].count(b"\n") + 1)
        rows.expect(layout.points, "POINTS (one line each)")
        values = rows.fixed(0, layout.points, len(layout.columns), "point (FIELDS x COUNT)")
        column_names = [c or _PCD_PADDING for c in layout.columns]
        table = rows.table(0, values, column_names, [layout.record[i] for i in range(len(layout.columns))])
        table = table[:, [i for i, column in enumerate(layout.columns) if column is not None]]
    return xyz_first(table, [c for c in layout.columns if c is not None])


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
        return xyz_first(np.zeros((0, len(columns)), np.float32), columns)
    try:
        import open3d as o3d
    except (ImportError, OSError) as exc:  # OSError: open3d is there but a system library is not
        raise PointCloudError(f"{path}: reading binary_compressed PCD needs open3d (pip install open3d-cpu; "
                              f"it loads the system's libusb-1.0-0): {exc}") from exc
    cloud = o3d.t.io.read_point_cloud(path)  # type: ignore[arg-type]  # open3d takes str too
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
