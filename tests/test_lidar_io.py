"""Point-cloud readers: round trips, field order, and clear errors naming the file and the
header field at fault for every file that does not hold exactly what its header says."""

from __future__ import annotations

import importlib.util
import struct
import sys

import numpy as np
import pytest

from fastload.lidar.io import PointCloudError, read_kitti_bin, read_pcd, read_ply, read_point_cloud
from fastload.lidar.synthetic import make_scan

needs_open3d = pytest.mark.skipif(importlib.util.find_spec("open3d") is None,
                                  reason="open3d is not installed (the README's set-up installs it)")


def lzf_literals(raw: bytes) -> bytes:
    """LZF made only of literal runs (up to 32 bytes each): a valid stream for any LZF decoder."""
    return b"".join(bytes([len(raw[i:i + 32]) - 1]) + raw[i:i + 32] for i in range(0, len(raw), 32))


def write_pcd(path, columns, encoding: str) -> None:
    """A PCD v0.7 writer for the tests. ``columns`` maps field names to arrays (or is a list of
    (name, array) pairs, names may repeat): ``(N,)`` for COUNT 1, ``(N, k)`` for COUNT k, any
    numpy numeric dtype."""
    items = [(name, np.asarray(values)) for name, values in (columns.items() if isinstance(columns, dict)
                                                                else columns)]
    n = len(items[0][1])
    kinds = {"f": "F", "i": "I", "u": "U"}
    header = "\n".join([
        "# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7", "FIELDS " + " ".join(name for name, _ in items),
        "SIZE " + " ".join(str(v.dtype.itemsize) for _, v in items),
        "TYPE " + " ".join(kinds[v.dtype.kind] for _, v in items),
        "COUNT " + " ".join(str(1 if v.ndim == 1 else v.shape[1]) for _, v in items),
        f"WIDTH {n}", "HEIGHT 1", "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {n}", f"DATA {encoding}", "",
    ]).encode()
    if encoding == "binary":
        records = np.zeros(n, dtype=[(f"f{i}", v.dtype.newbyteorder("<"), v.shape[1:]) for i, (_, v) in enumerate(items)])
        for i, (_, v) in enumerate(items):
            records[f"f{i}"] = v
        body = records.tobytes()
    elif encoding == "binary_compressed":  # each field's values for all points, one field after another
        raw = b"".join(np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<")).tobytes() for _, v in items)
        compressed = lzf_literals(raw)
        body = struct.pack("<II", len(compressed), len(raw)) + compressed
    else:
        body = b"".join((" ".join(repr(x.item()) for _, v in items for x in np.atleast_1d(v[i])) + "\n").encode()
                        for i in range(n))
    with open(path, "wb") as f:
        f.write(header + body)


PLY_TYPE_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
                  "f4": "float", "f8": "double"}


def write_ply(path, encoding: str, vertex: dict[str, np.ndarray], faces=(), faces_first: bool = False) -> None:
    """A PLY writer for the tests: the vertex element's scalar properties (any dtype PLY has)
    and, if ``faces`` is given, a face element of ``list uchar int vertex_indices``."""
    names, n = list(vertex), len(next(iter(vertex.values())))
    order = {"ascii": "<", "binary_little_endian": "<", "binary_big_endian": ">"}[encoding]
    vertex_header = [f"element vertex {n}"] + [f"property {PLY_TYPE_NAMES[vertex[c].dtype.str[1:]]} {c}" for c in names]
    face_header = [f"element face {len(faces)}", "property list uchar int vertex_indices"] if len(faces) else []
    if encoding == "ascii":
        vertex_body = b"".join((" ".join(repr(vertex[c][i].item()) for c in names) + "\n").encode() for i in range(n))
        face_body = b"".join((" ".join(map(str, [len(f), *f])) + "\n").encode() for f in faces)
    else:
        records = np.zeros(n, dtype=[(c, vertex[c].dtype.newbyteorder(order)) for c in names])
        for c in names:
            records[c] = vertex[c]
        vertex_body = records.tobytes()
        face_body = b"".join(struct.pack(f"{order}B{len(f)}i", len(f), *f) for f in faces)
    parts = [(face_header, face_body), (vertex_header, vertex_body)] if faces_first else \
        [(vertex_header, vertex_body), (face_header, face_body)]
    header = "\n".join(["ply", f"format {encoding} 1.0", "comment written by the tests",
                        *parts[0][0], *parts[1][0], "end_header", ""]).encode()
    with open(path, "wb") as f:
        f.write(header + parts[0][1] + parts[1][1])


def edit(path, old: bytes, new: bytes) -> None:
    """Replaces the one occurrence of ``old`` in the file."""
    data = path.read_bytes()
    assert data.count(old) == 1, (old, data[:400])
    path.write_bytes(data.replace(old, new))


def refused(path, *fragments: str) -> PointCloudError:
    """Reads ``path``, expecting a PointCloudError naming it and containing every fragment."""
    with pytest.raises(PointCloudError) as caught:
        read_point_cloud(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and all(fragment in message for fragment in fragments), message
    return caught.value


@pytest.fixture(scope="module")
def scan():
    return make_scan(3, beams=16, azimuth_steps=360)


def xyzi(n: int = 5) -> dict[str, np.ndarray]:
    points = np.arange(4 * n, dtype=np.float32).reshape(n, 4) + 0.25
    return {"x": points[:, 0], "y": points[:, 1], "z": points[:, 2], "intensity": points[:, 3]}


# --- KITTI ---

def test_kitti_bin_round_trip_and_truncation(tmp_path, scan):
    path = tmp_path / "000001.bin"
    scan.tofile(path)
    cloud = read_point_cloud(path)
    assert cloud.fields == ("x", "y", "z", "intensity") and np.array_equal(cloud.points, scan)
    assert np.array_equal(cloud.field("intensity"), scan[:, 3]) and cloud.xyz.shape == (len(scan), 3)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 6)
    with pytest.raises(PointCloudError, match=f"{path}.*not a whole number"):
        read_kitti_bin(path)


@pytest.mark.parametrize("fields", [(), ("intensity", "x", "y", "z"), ("x", "y", "z", "x")])
def test_kitti_fields_must_start_with_x_y_z_and_not_repeat(tmp_path, fields):
    path = tmp_path / "000001.bin"
    np.zeros((2, 4), np.float32).tofile(path)
    with pytest.raises(ValueError, match="fields must start with x, y, z"):
        read_kitti_bin(path, fields)


# --- PCD: valid files ---

@pytest.mark.parametrize("encoding", ["ascii", "binary"])
def test_pcd_round_trip_with_extra_fields_and_any_field_order(tmp_path, scan, encoding):
    columns = {
        "intensity": scan[:, 3],
        "x": scan[:, 0], "y": scan[:, 1], "z": scan[:, 2],
        "ring": (np.arange(len(scan)) % 16).astype(np.uint16),
        "t": np.linspace(0, 0.1, len(scan)).astype(np.float64),
    }
    path = tmp_path / f"scan_{encoding}.pcd"
    write_pcd(path, columns, encoding)
    cloud = read_pcd(path)
    assert cloud.fields == ("x", "y", "z", "intensity", "ring", "t")
    assert cloud.points.dtype == np.float32
    assert np.array_equal(cloud.xyz, scan[:, :3]) and np.array_equal(cloud.field("intensity"), scan[:, 3])
    assert np.array_equal(cloud.field("ring"), columns["ring"].astype(np.float32))


@pytest.mark.parametrize("encoding", ["ascii", "binary", pytest.param("binary_compressed", marks=needs_open3d)])
def test_pcd_with_zero_points_reads_as_an_empty_cloud(tmp_path, encoding):
    path = tmp_path / "empty.pcd"
    write_pcd(path, {name: values[:0] for name, values in xyzi().items()}, encoding)
    cloud = read_pcd(path)
    assert cloud.points.shape == (0, 4) and cloud.fields == ("x", "y", "z", "intensity")


@pytest.mark.parametrize("encoding", ["ascii", "binary"])
def test_pcd_field_of_count_k_reads_as_k_numbered_columns(tmp_path, encoding):
    histogram = np.arange(15, dtype=np.float32).reshape(5, 3) * 10
    path = tmp_path / "count3.pcd"
    write_pcd(path, {**xyzi(), "h": histogram}, encoding)
    cloud = read_pcd(path)
    assert cloud.fields == ("x", "y", "z", "intensity", "h_0", "h_1", "h_2")
    assert np.array_equal(cloud.points[:, 4:], histogram) and np.array_equal(cloud.field("x"), xyzi()["x"])


def test_pcl_padding_fields_are_left_out(tmp_path):
    # PCL names the bytes that align its binary records "_", as often as it needs them.
    path = tmp_path / "padded.pcd"
    columns = xyzi()
    write_pcd(path, [("x", columns["x"]), ("y", columns["y"]), ("z", columns["z"]),
                     ("_", np.full((5, 4), 0xEE, np.uint8)), ("intensity", columns["intensity"]),
                     ("_", np.full((5, 12), 0xEE, np.uint8))], "binary")
    cloud = read_pcd(path)
    assert cloud.fields == ("x", "y", "z", "intensity")
    assert np.array_equal(cloud.points, np.stack(list(columns.values()), axis=1))


@pytest.mark.parametrize("old, new", [
    (b"COUNT 1 1 1 1\n", b""),  # COUNT left out: 1 each, as the format says
    (b"WIDTH 5\nHEIGHT 1\n", b""),  # POINTS alone
    (b"POINTS 5\n", b""),  # WIDTH x HEIGHT alone
    (b"WIDTH 5\nHEIGHT 1\n", b"WIDTH 1\nHEIGHT 5\n"),  # an organized cloud
    (b"VIEWPOINT 0 0 0 1 0 0 0\n", b""),
    (b"VERSION 0.7", b"VERSION .7"),
    (b"\n", b"\r\n"),  # Windows line ends
])
def test_pcd_header_variants_that_say_the_same_read_the_same(tmp_path, old, new):
    path = tmp_path / "variant.pcd"
    write_pcd(path, xyzi(), "ascii")
    path.write_bytes(path.read_bytes().replace(old, new))
    cloud = read_pcd(path)
    assert np.array_equal(cloud.points, np.stack(list(xyzi().values()), axis=1))


def test_a_field_named_xy_is_not_taken_for_x_y_z(tmp_path):
    path = tmp_path / "xy.pcd"
    write_pcd(path, {**xyzi(), "xy": np.full(5, 7.0, np.float32)}, "binary")
    assert read_pcd(path).fields == ("x", "y", "z", "intensity", "xy")


# --- PCD: header fields ---

@pytest.mark.parametrize("encoding", ["ascii", "binary"])
@pytest.mark.parametrize("count", ["0", "-1", "1.5", "one"])
def test_pcd_with_a_count_that_is_not_a_whole_number_of_at_least_one_is_refused(tmp_path, encoding, count):
    path = tmp_path / "count.pcd"
    write_pcd(path, xyzi(), encoding)
    edit(path, b"COUNT 1 1 1 1\n", f"COUNT 1 1 1 {count}\n".encode())
    refused(path, "field 'intensity' has COUNT", count)


@pytest.mark.parametrize("points", ["-5", "2.5", "five", "0x5", "5 5", ""])
def test_pcd_points_must_be_one_whole_number(tmp_path, points):
    path = tmp_path / "points.pcd"
    write_pcd(path, xyzi(), "binary")
    edit(path, b"POINTS 5\n", f"POINTS {points}\n".encode())
    refused(path, "PCD POINTS must be one whole number >= 0")


@pytest.mark.parametrize("key, old", [("WIDTH", b"WIDTH 5\n"), ("HEIGHT", b"HEIGHT 1\n")])
@pytest.mark.parametrize("value", ["-1", "1.0", "many"])
def test_pcd_width_and_height_must_be_whole_numbers(tmp_path, key, old, value):
    path = tmp_path / "size.pcd"
    write_pcd(path, xyzi(), "binary")
    edit(path, old, f"{key} {value}\n".encode())
    refused(path, f"PCD {key} must be one whole number >= 0")


@pytest.mark.parametrize("width, height", [(4, 1), (5, 2), (1, 1)])
def test_pcd_points_disagreeing_with_width_times_height_is_refused(tmp_path, width, height):
    path = tmp_path / "organized.pcd"
    write_pcd(path, xyzi(), "binary")
    edit(path, b"WIDTH 5\nHEIGHT 1\n", f"WIDTH {width}\nHEIGHT {height}\n".encode())
    refused(path, f"PCD POINTS is 5 but WIDTH x HEIGHT is {width} x {height} = {width * height}")


@pytest.mark.parametrize("old, message", [
    (b"WIDTH 5\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 5\n", "neither POINTS nor WIDTH and HEIGHT"),
    (b"HEIGHT 1\n", "has WIDTH but no HEIGHT"),
    (b"WIDTH 5\n", "has HEIGHT but no WIDTH"),
    (b"FIELDS x y z intensity\n", "no FIELDS line"),
    (b"SIZE 4 4 4 4\n", "no SIZE line"),
    (b"TYPE F F F F\n", "no TYPE line"),
])
def test_pcd_with_a_header_line_missing_is_refused(tmp_path, old, message):
    path = tmp_path / "missing.pcd"
    write_pcd(path, xyzi(), "binary")
    edit(path, old, b"")
    refused(path, message)


def test_pcd_without_a_data_line_is_refused(tmp_path):
    path = tmp_path / "nodata.pcd"
    write_pcd(path, {name: values[:0] for name, values in xyzi().items()}, "binary")
    edit(path, b"DATA binary\n", b"")
    refused(path, "PCD header has no DATA line")


@pytest.mark.parametrize("line", ["VERSION 0.7", "FIELDS a b c d", "SIZE 4 4 4 4", "TYPE F F F F", "COUNT 1 1 1 1",
                                  "WIDTH 5", "HEIGHT 1", "VIEWPOINT 0 0 0 1 0 0 0", "POINTS 5"])
def test_pcd_with_a_header_line_repeated_is_refused(tmp_path, line):
    path = tmp_path / "repeated.pcd"
    write_pcd(path, xyzi(), "binary")
    edit(path, b"DATA binary\n", f"{line}\nDATA binary\n".encode())
    refused(path, f"PCD header has two {line.split()[0]} lines")


@pytest.mark.parametrize("line", ["ORIGIN 0 0 0", "points 5"])
def test_pcd_with_an_unknown_header_line_is_refused(tmp_path, line):
    # Keys are case-sensitive, as in PCL and open3d, which ignore a "points" line.
    path = tmp_path / "unknown.pcd"
    write_pcd(path, xyzi(), "binary")
    edit(path, b"VIEWPOINT 0 0 0 1 0 0 0\n", f"VIEWPOINT 0 0 0 1 0 0 0\n{line}\n".encode())
    refused(path, "PCD header line 10 starts with none of VERSION, FIELDS, SIZE, TYPE, COUNT, WIDTH, HEIGHT, "
                  f"VIEWPOINT, POINTS, DATA: {line!r}")


@pytest.mark.parametrize("version", ["0.6", "0.8", "7", "0.7 0.7"])
def test_pcd_of_another_version_is_refused(tmp_path, version):
    path = tmp_path / "version.pcd"
    write_pcd(path, xyzi(), "binary")
    edit(path, b"VERSION 0.7\n", f"VERSION {version}\n".encode())
    refused(path, f"PCD VERSION {version!r} is not supported")


@pytest.mark.parametrize("key, old", [("SIZE", b"SIZE 4 4 4 4\n"), ("TYPE", b"TYPE F F F F\n"),
                                      ("COUNT", b"COUNT 1 1 1 1\n")])
@pytest.mark.parametrize("values", [3, 5])
def test_pcd_size_type_and_count_must_have_one_value_per_field(tmp_path, key, old, values):
    path = tmp_path / "lengths.pcd"
    write_pcd(path, xyzi(), "binary")
    edit(path, old, (key + f" {old.split()[1].decode()}" * values + "\n").encode())
    refused(path, f"PCD {key} has {values} values for the 4 FIELDS")


@pytest.mark.parametrize("kind, size", [("F", "2"), ("I", "3"), ("U", "16"), ("f", "4"), ("D", "8"), ("F", "four")])
def test_pcd_field_of_an_unsupported_type_or_size_is_refused(tmp_path, kind, size):
    path = tmp_path / "types.pcd"
    write_pcd(path, xyzi(), "binary")
    edit(path, b"SIZE 4 4 4 4\nTYPE F F F F\n", f"SIZE 4 4 4 {size}\nTYPE F F F {kind}\n".encode())
    refused(path, f"PCD field 'intensity' has TYPE {kind} SIZE {size}")


@pytest.mark.parametrize("extra, column", [
    ([("x", np.zeros(5, np.float32))], "x"),
    ([("h", np.zeros((5, 2), np.uint16)), ("h_1", np.zeros(5, np.float32))], "h_1"),  # h's second value is h_1
])
def test_pcd_giving_two_columns_one_name_is_refused(tmp_path, extra, column):
    path = tmp_path / "twice.pcd"
    write_pcd(path, list(xyzi().items()) + extra, "binary")
    refused(path, f"two columns would be named {column!r}")


def test_pcd_without_x_y_z_is_refused(tmp_path, scan):
    path = tmp_path / "noxyz.pcd"
    write_pcd(path, {"a": scan[:, 0], "b": scan[:, 1]}, "ascii")
    refused(path, "no x, y, z field")


@pytest.mark.parametrize("viewpoint", ["0 0 0 1 0 0", "0 0 0 1 0 0 0 0", "0 0 nan 1 0 0 0", "0 0 0 one 0 0 0"])
def test_pcd_viewpoint_must_be_seven_finite_numbers(tmp_path, viewpoint):
    path = tmp_path / "viewpoint.pcd"
    write_pcd(path, xyzi(), "binary")
    edit(path, b"VIEWPOINT 0 0 0 1 0 0 0\n", f"VIEWPOINT {viewpoint}\n".encode())
    refused(path, "PCD VIEWPOINT must be 7 finite numbers")


@pytest.mark.parametrize("data", ["binary_lzma", "", "binary ascii", "Binary"])
def test_pcd_data_of_an_unknown_encoding_is_refused(tmp_path, data):
    path = tmp_path / "encoding.pcd"
    write_pcd(path, xyzi(), "binary")
    edit(path, b"DATA binary\n", f"DATA {data}\n".encode())
    refused(path, "PCD DATA must be ascii, binary or binary_compressed")


def test_garbage_named_pcd_is_refused(tmp_path):
    path = tmp_path / "garbage.pcd"
    path.write_bytes(np.random.default_rng(0).bytes(8192))
    refused(path)


# --- PCD: binary data ---

def test_binary_pcd_shorter_than_its_points_is_refused(tmp_path, scan):
    path = tmp_path / "cut.pcd"
    write_pcd(path, {"x": scan[:, 0], "y": scan[:, 1], "z": scan[:, 2]}, "binary")
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    refused(path, "truncated", f"POINTS {len(scan)} x 12-byte records")


def test_binary_pcd_with_data_after_its_last_point_is_refused(tmp_path):
    # Read as it stands, the header's 4 points would silently drop the fifth.
    path = tmp_path / "long.pcd"
    write_pcd(path, xyzi(), "binary")
    edit(path, b"WIDTH 5\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 5\n",
         b"WIDTH 4\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 4\n")
    refused(path, "data after the last point", "need 64 bytes of data, the file has 80")


def test_binary_pcd_whose_count_hides_a_field_is_refused(tmp_path):
    # COUNT 0 used to drop the field from the record and read every later point misaligned.
    path = tmp_path / "count0.pcd"
    write_pcd(path, xyzi(), "binary")
    edit(path, b"COUNT 1 1 1 1\n", b"COUNT 1 1 1 0\n")
    refused(path, "field 'intensity' has COUNT 0")


# --- PCD: ascii data ---

@pytest.mark.parametrize("row2, row3", [
    ("2.25 3.25 4.25", "6.25 7.25 8.25 9.25 10.25"),  # a value missing, one too many on the next line
    ("2.25 3.25 4.25 5.25 6.25", "7.25 8.25 9.25"),
    ("2.25 3.25 4.25", "6.25 7.25 8.25 9.25"),
])
def test_ascii_pcd_line_with_the_wrong_number_of_values_is_refused(tmp_path, row2, row3):
    path = tmp_path / "shifted.pcd"
    write_pcd(path, xyzi(), "ascii")
    edit(path, b"4.25 5.25 6.25 7.25\n8.25 9.25 10.25 11.25\n", f"{row2}\n{row3}\n".encode())
    refused(path, "line 13 has", "point (FIELDS x COUNT) lines have 4")


@pytest.mark.parametrize("lines, message", [(4, "truncated: the header announces 5 POINTS"),
                                            (6, "data after the last point: the header announces 5 POINTS")])
def test_ascii_pcd_with_another_number_of_lines_than_points_is_refused(tmp_path, lines, message):
    path = tmp_path / "lines.pcd"
    write_pcd(path, xyzi(), "ascii")
    data = path.read_bytes()
    path.write_bytes(data[:data.rindex(b"16.25")] if lines == 4 else data + b"1 2 3 4\n")
    refused(path, message, f"the file has {lines} lines of data")


def test_ascii_pcd_cut_inside_its_last_line_is_refused(tmp_path):
    # Cut after "19.2", the last line would read as the number 19.2 instead of 19.25.
    path = tmp_path / "cut.pcd"
    write_pcd(path, xyzi(), "ascii")
    path.write_bytes(path.read_bytes()[:-2])
    refused(path, "truncated: line 16, the last, does not end in a newline")


def test_ascii_pcd_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "blank.pcd"
    write_pcd(path, xyzi(), "ascii")
    edit(path, b"8.25 9.25 10.25 11.25\n", b"\n8.25 9.25 10.25 11.25\n  \n")
    assert np.array_equal(read_pcd(path).points, np.stack(list(xyzi().values()), axis=1))


@pytest.mark.parametrize("kind, size, value", [("U", 1, "256"), ("U", 2, "-1"), ("I", 4, "1.5"), ("I", 1, "-129"),
                                               ("U", 1, "nan")])
def test_ascii_pcd_value_its_integer_type_cannot_hold_is_refused(tmp_path, kind, size, value):
    path = tmp_path / "range.pcd"
    write_pcd(path, {**xyzi(), "ring": np.arange(5, dtype=f"{kind.lower()}{size}")}, "ascii")
    edit(path, b"16.25 17.25 18.25 19.25 4\n", f"16.25 17.25 18.25 19.25 {value}\n".encode())
    refused(path, f"line 16: ring is {value!r}, not a value of its type")


def test_ascii_pcd_value_that_is_not_a_number_is_refused(tmp_path):
    path = tmp_path / "nan.pcd"
    write_pcd(path, xyzi(), "ascii")
    edit(path, b"8.25 9.25 ", b"8.25 9,25 ")
    refused(path, "line 14: y is '9,25', not a number")


# --- PCD: binary_compressed ---

@needs_open3d
def test_binary_compressed_pcd_reads_exactly(tmp_path):
    path = tmp_path / "compressed.pcd"
    write_pcd(path, {**xyzi(), "ring": np.arange(5, dtype=np.uint16)}, "binary_compressed")
    cloud = read_pcd(path)
    assert cloud.fields[:3] == ("x", "y", "z") and sorted(cloud.fields[3:]) == ["intensity", "ring"]
    assert np.array_equal(cloud.xyz, np.stack([xyzi()[a] for a in "xyz"], axis=1))
    assert np.array_equal(cloud.field("ring"), np.arange(5, dtype=np.float32))


def size_words(path) -> tuple[int, int, int]:
    data = path.read_bytes()
    offset = data.index(b"DATA binary_compressed\n") + len(b"DATA binary_compressed\n")
    return (offset, *struct.unpack_from("<II", data, offset))


def test_binary_compressed_pcd_whose_uncompressed_size_disagrees_with_points_is_refused(tmp_path):
    # open3d trusts POINTS and reads past its buffer: garbage points.
    path = tmp_path / "points.pcd"
    write_pcd(path, xyzi(), "binary_compressed")
    edit(path, b"WIDTH 5\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 5\n",
         b"WIDTH 50\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 50\n")
    refused(path, "binary_compressed data announces 80 bytes uncompressed; POINTS 50 x 16-byte records", "need 800")


@pytest.mark.parametrize("change, message", [
    (+1, "truncated: binary_compressed data announces {} compressed bytes, the file has {}"),
    (-1, "data after the last point: binary_compressed data announces {} compressed bytes, the file has {}"),
])
def test_binary_compressed_pcd_whose_compressed_size_disagrees_with_the_file_is_refused(tmp_path, change, message):
    path = tmp_path / "compressed.pcd"
    write_pcd(path, xyzi(), "binary_compressed")
    offset, compressed, uncompressed = size_words(path)
    data = bytearray(path.read_bytes())
    data[offset:offset + 4] = struct.pack("<I", compressed + change)
    path.write_bytes(bytes(data))
    refused(path, message.format(compressed + change, compressed))


def test_binary_compressed_pcd_without_its_size_words_is_refused(tmp_path):
    path = tmp_path / "nowords.pcd"
    write_pcd(path, xyzi(), "binary_compressed")
    offset, _, _ = size_words(path)
    path.write_bytes(path.read_bytes()[:offset + 5])
    refused(path, "truncated: binary_compressed data needs 8 bytes of sizes, the file has 5")


@needs_open3d
def test_binary_compressed_pcd_with_a_corrupt_lzf_stream_is_refused(tmp_path):
    path = tmp_path / "corrupt.pcd"
    write_pcd(path, xyzi(), "binary_compressed")
    offset, _, _ = size_words(path)
    data = bytearray(path.read_bytes())
    data[offset + 8] = 0xFF  # a back-reference before the start of the output
    path.write_bytes(bytes(data))
    refused(path, "open3d could not read the binary_compressed data (corrupt LZF stream?)")


@pytest.mark.parametrize("extra, message", [
    ({"h": np.zeros((5, 2), np.float32)}, "field 'h' has COUNT 2 and open3d keeps only its first value"),
    ({"_": np.zeros(5, np.uint8)}, "open3d mistakes a field named '_' for its own"),
    ({"positions": np.zeros(5, np.float32)}, "open3d mistakes a field named 'positions' for its own"),
    ({"colors": np.zeros(5, np.float32)}, "open3d mistakes a field named 'colors' for its own"),
    ({"z": np.zeros(5, np.float64)}, "open3d needs x, y and z of one TYPE and SIZE"),
    ({"normal_x": np.zeros(5, np.float32)}, "open3d reads normals only as normal_x, normal_y and normal_z"),
    ({"normal_x": np.zeros(5, np.float64), "normal_y": np.zeros(5, np.float64), "normal_z": np.zeros(5, np.float64)},
     "open3d reads normals only as normal_x, normal_y and normal_z of the TYPE and SIZE of x"),
    ({"rgb": np.zeros(5, np.uint8)}, "open3d reads colour only as one rgb or rgba field of SIZE 4"),
    ({"rgb": np.zeros(5, np.uint32), "rgba": np.zeros(5, np.uint32)}, "open3d reads colour only as one rgb or rgba"),
])
def test_binary_compressed_pcd_that_open3d_would_misread_is_refused(tmp_path, extra, message):
    # Each of these makes open3d 0.20 lose values, return zeros or garbage, or crash the process.
    path = tmp_path / "misread.pcd"
    write_pcd(path, {**xyzi(), **extra}, "binary_compressed")
    refused(path, "this binary_compressed PCD cannot be read exactly", message)


@pytest.mark.parametrize("old, new, message", [
    (b"WIDTH 5\nHEIGHT 1\n", b"HEIGHT 1\nWIDTH 5\n", "open3d needs POINTS and the header lines in the order"),
    (b"POINTS 5\n", b"", "open3d needs POINTS and the header lines in the order"),
])
def test_binary_compressed_pcd_header_that_open3d_would_misparse_is_refused(tmp_path, old, new, message):
    # With HEIGHT before WIDTH and no POINTS, open3d counts points with a WIDTH it has not read.
    path = tmp_path / "header.pcd"
    write_pcd(path, xyzi(), "binary_compressed")
    edit(path, old, new)
    refused(path, "this binary_compressed PCD cannot be read exactly", message)


def test_binary_compressed_pcd_with_a_header_line_open3d_would_cut_is_refused(tmp_path):
    path = tmp_path / "wide.pcd"
    write_pcd(path, {**xyzi(), **{f"extra_field_{k:03d}": np.zeros(5, np.float32) for k in range(80)}},
              "binary_compressed")
    refused(path, "a header line of 1302 bytes, and open3d reads at most 1022")


@needs_open3d
def test_binary_compressed_pcd_normals_and_colour_read_as_open3d_names_them(tmp_path):
    path = tmp_path / "normals.pcd"
    colour = np.array([0x102030, 0x405060, 0x708090, 0xA0B0C0, 0xD0E0F0], np.uint32)
    write_pcd(path, {**xyzi(), "normal_x": np.full(5, 0.5, np.float32), "normal_y": np.zeros(5, np.float32),
                     "normal_z": np.ones(5, np.float32), "rgb": colour.view(np.float32)}, "binary_compressed")
    cloud = read_pcd(path)
    assert np.array_equal(cloud.field("normals_0"), np.full(5, 0.5, np.float32))
    assert np.array_equal(cloud.field("normals_2"), np.ones(5, np.float32))
    assert np.array_equal(cloud.field("colors_0"), ((colour >> 16) & 0xFF).astype(np.float32))
    assert np.array_equal(cloud.field("colors_2"), (colour & 0xFF).astype(np.float32))


def test_binary_compressed_pcd_says_how_to_get_open3d(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open3d", None)  # as if it were not installed
    path = tmp_path / "scan.pcd"
    write_pcd(path, xyzi(), "binary_compressed")
    refused(path, "reading binary_compressed PCD needs open3d (pip install open3d-cpu")


# --- PLY: valid files ---

@pytest.mark.parametrize("encoding", ["ascii", "binary_little_endian", "binary_big_endian"])
@pytest.mark.parametrize("faces_first", [False, True])
def test_ply_with_faces_reads_its_vertices(tmp_path, encoding, faces_first):
    path = tmp_path / "mesh.ply"
    write_ply(path, encoding, xyzi(), faces=[[0, 1, 2], [1, 2, 3, 4], []], faces_first=faces_first)
    cloud = read_ply(path)
    assert cloud.fields == ("x", "y", "z", "intensity")
    assert np.array_equal(cloud.points, np.stack(list(xyzi().values()), axis=1))


@pytest.mark.parametrize("encoding", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_ply_vertex_properties_of_every_type_are_kept(tmp_path, encoding):
    # open3d 0.20 silently leaves out char, short, ushort and uint properties.
    values = {f"p_{code}": np.array([0, 1, 2, 3, 100], dtype=code) for code in PLY_TYPE_NAMES}
    path = tmp_path / "types.ply"
    write_ply(path, encoding, {"z": xyzi()["z"], **values, "y": xyzi()["y"], "x": xyzi()["x"]})
    cloud = read_ply(path)
    assert cloud.fields == ("x", "y", "z", *values)
    for name, column in values.items():
        assert np.array_equal(cloud.field(name), column.astype(np.float32))


@pytest.mark.parametrize("encoding", ["ascii", "binary_little_endian"])
def test_ply_vertex_list_properties_are_left_out(tmp_path, encoding):
    lists, points = [[], [1.5], [2.5, 3.5]], np.arange(9, dtype=np.float32).reshape(3, 3) + 0.25
    header = (f"ply\nformat {encoding} 1.0\nelement vertex 3\nproperty list uchar float neighbours\n"
              f"property float x\nproperty float y\nproperty float z\nend_header\n").encode()
    if encoding == "ascii":
        body = b"".join(" ".join(map(str, [len(l), *l, *p.tolist()])).encode() + b"\n" for l, p in zip(lists, points))
    else:
        body = b"".join(struct.pack(f"<B{len(l)}f3f", len(l), *l, *p) for l, p in zip(lists, points))
    path = tmp_path / "vertex_lists.ply"
    path.write_bytes(header + body)
    cloud = read_ply(path)
    assert cloud.fields == ("x", "y", "z") and np.array_equal(cloud.points, points)


@needs_open3d
@pytest.mark.parametrize("write_ascii", [False, True])
def test_ply_normals_and_colours_read_as_open3d_names_them(tmp_path, scan, write_ascii):
    import open3d as o3d

    path = tmp_path / "normals.ply"
    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(np.ascontiguousarray(scan[:, :3])))
    cloud.point["normals"] = o3d.core.Tensor(np.ascontiguousarray(scan[:, [1, 2, 0]] / 100))
    cloud.point["colors"] = o3d.core.Tensor((np.arange(3 * len(scan)) % 256).astype(np.uint8).reshape(-1, 3))
    cloud.point["intensity"] = o3d.core.Tensor(np.ascontiguousarray(scan[:, 3:4]))
    assert o3d.t.io.write_point_cloud(str(path), cloud, write_ascii=write_ascii)
    ours, theirs = read_ply(path), o3d.t.io.read_point_cloud(str(path))
    assert sorted(ours.fields) == sorted(["x", "y", "z", "intensity"] + [f"{a}_{k}" for a in ("normals", "colors")
                                                                         for k in range(3)])
    np.testing.assert_array_equal(ours.xyz, theirs.point["positions"].numpy())
    for attribute in ("normals", "colors"):
        np.testing.assert_array_equal(ours.points[:, [ours.fields.index(f"{attribute}_{k}") for k in range(3)]],
                                      theirs.point[attribute].numpy().astype(np.float32))


# --- PLY: header ---

def valid_ply(tmp_path, encoding: str = "binary_little_endian", faces=((0, 1, 2), (2, 3, 4))):
    path = tmp_path / "scan.ply"
    write_ply(path, encoding, xyzi(), faces=list(faces))
    return path


@pytest.mark.parametrize("format_line", ["format binary_little_endian 2.0", "format binary_middle_endian 1.0",
                                         "format ascii", "format ascii 1.0 1.0"])
def test_ply_format_other_than_the_three_of_version_1_0_is_refused(tmp_path, format_line):
    path = valid_ply(tmp_path)
    edit(path, b"format binary_little_endian 1.0\n", f"{format_line}\n".encode())
    refused(path, "PLY format must be ascii, binary_little_endian or binary_big_endian 1.0")


def test_ply_without_a_format_line_is_refused(tmp_path):
    path = valid_ply(tmp_path)
    edit(path, b"format binary_little_endian 1.0\n", b"")
    refused(path, "PLY header has no format line")


def test_ply_with_a_second_format_line_is_refused(tmp_path):
    path = valid_ply(tmp_path)
    edit(path, b"element face 2\n", b"format ascii 1.0\nelement face 2\n")
    refused(path, "the format line must come once, before the elements")


@pytest.mark.parametrize("count", ["-5", "2.5", "two", ""])
def test_ply_element_count_must_be_a_whole_number(tmp_path, count):
    path = valid_ply(tmp_path)
    edit(path, b"element face 2\n", f"element face {count}\n".encode())
    refused(path, "is not 'element NAME COUNT' with COUNT a whole number >= 0")


@pytest.mark.parametrize("line", ["property int64 t", "property float", "property list float int vertex_indices",
                                  "property list uchar vertex_indices", "property list uchar int64 vertex_indices",
                                  "property string name"])
def test_ply_property_of_an_unknown_type_or_form_is_refused(tmp_path, line):
    path = valid_ply(tmp_path)
    edit(path, b"property list uchar int vertex_indices\n", f"{line}\n".encode())
    refused(path, f"{line!r} is not 'property TYPE NAME' or 'property list COUNT_TYPE TYPE NAME'")


@pytest.mark.parametrize("old, new, message", [
    (b"property float intensity\n", b"property float intensity\nproperty float x\n",
     "PLY element 'vertex' has two properties 'x'"),
    (b"element face 2\n", b"element vertex 0\nproperty float x\nelement face 2\n",
     "PLY header declares element 'vertex' twice"),
    (b"element vertex 5\n", b"property float t\nelement vertex 5\n", "property 'property float t' before any element"),
    (b"comment written by the tests\n", b"commentary\n", "unexpected 'commentary'"),
    (b"element face 2\nproperty list uchar int vertex_indices\n", b"element face 2\n",
     "PLY element 'face' has no properties"),
])
def test_ply_header_with_a_repeated_misplaced_or_unknown_line_is_refused(tmp_path, old, new, message):
    path = valid_ply(tmp_path)
    edit(path, old, new)
    refused(path, message)


@pytest.mark.parametrize("old, new, message", [
    (b"element vertex 5\nproperty float x\nproperty float y\nproperty float z\nproperty float intensity\n", b"",
     "PLY has no vertex element (elements: ['face'])"),
    (b"property float z\n", b"", "no z field(s) among ['x', 'y', 'intensity']"),
    (b"property float x\n", b"property list uchar float x\n", "no x field(s)"),
])
def test_ply_without_a_vertex_element_with_x_y_z_is_refused(tmp_path, old, new, message):
    path = valid_ply(tmp_path)
    edit(path, old, new)
    refused(path, message)


def test_ply_property_named_like_a_grouped_normal_is_refused(tmp_path):
    path = tmp_path / "normals.ply"
    write_ply(path, "ascii", {**xyzi(), "nx": np.zeros(5, np.float32), "ny": np.zeros(5, np.float32),
                              "nz": np.zeros(5, np.float32), "normals_0": np.zeros(5, np.float32)})
    refused(path, "two columns would be named 'normals_0'")


def test_ply_without_end_header_is_refused(tmp_path):
    path = valid_ply(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"end_header")])
    refused(path, "truncated PLY header (no end_header line)")


def test_file_named_ply_without_the_magic_is_refused(tmp_path):
    path = tmp_path / "scan.ply"
    path.write_bytes(b"PLY\nformat ascii 1.0\nend_header\n")
    refused(path, "not a PLY file")


# --- PLY: binary data ---

@pytest.mark.parametrize("faces_first", [False, True])
@pytest.mark.parametrize("cut", [1, 10, 30, 100])
def test_truncated_binary_ply_with_faces_is_refused(tmp_path, faces_first, cut):
    # With a list element the size check used to be skipped, and open3d returned
    # uninitialised memory for the missing points.
    path = tmp_path / "mesh.ply"
    write_ply(path, "binary_little_endian", xyzi(), faces=[[0, 1, 2], [1, 2, 3, 4]], faces_first=faces_first)
    path.write_bytes(path.read_bytes()[:-cut])
    refused(path, "truncated")


def test_binary_ply_with_data_after_its_last_element_is_refused(tmp_path):
    path = valid_ply(tmp_path)
    path.write_bytes(path.read_bytes() + b"\0" * 4)
    refused(path, "data after the last element")


def test_binary_ply_with_a_negative_list_count_is_refused(tmp_path):
    path = valid_ply(tmp_path)
    edit(path, b"property list uchar int", b"property list char int")
    data = bytearray(path.read_bytes())
    data[-13] = 0xFF  # the second face's count, now a char: -1
    path.write_bytes(bytes(data))
    refused(path, "face 1: list 'vertex_indices' has count -1")


# --- PLY: ascii data ---

@pytest.mark.parametrize("lines, message", [(6, "truncated: the header announces 7 elements (one per line)"),
                                            (8, "data after the last point: the header announces 7 elements")])
def test_ascii_ply_with_another_number_of_lines_than_elements_is_refused(tmp_path, lines, message):
    path = valid_ply(tmp_path, "ascii")
    data = path.read_bytes()
    path.write_bytes(data[:data.rindex(b"3 2 3 4\n")] if lines == 6 else data + b"3 0 0 0\n")
    refused(path, message, f"the file has {lines} lines of data")


@pytest.mark.parametrize("old, new, message", [
    (b"4.25 5.25 6.25 7.25\n8.25 9.25 10.25 11.25\n", b"4.25 5.25 6.25\n7.25 8.25 9.25 10.25 11.25\n",
     "line 13 has 3 values; vertex lines have 4"),
    (b"3 0 1 2\n", b"3 0 1\n", "line 17 has 3 values; one face with the list counts it gives has 4"),
    (b"3 0 1 2\n", b"2 0 1 2\n", "line 17 has 4 values; one face with the list counts it gives has 3"),
    (b"3 0 1 2\n", b"-3 0 1 2\n", "line 17: list 'vertex_indices' of face has count '-3', not a whole number"),
    (b"3 0 1 2\n", b"256 0 1 2\n", "count '256', not a whole number of its type uint8"),
    (b"8.25 9.25 ", b"8.25 nine ", "line 14: y is 'nine', not a number"),
])
def test_ascii_ply_line_that_does_not_make_its_element_is_refused(tmp_path, old, new, message):
    path = valid_ply(tmp_path, "ascii")
    edit(path, old, new)
    refused(path, message)


def test_ascii_ply_cut_inside_its_last_line_is_refused(tmp_path):
    path = valid_ply(tmp_path, "ascii", faces=())
    path.write_bytes(path.read_bytes()[:-2])
    refused(path, "truncated: line 14, the last, does not end in a newline")


@pytest.mark.parametrize("value", ["256", "-1", "1.5", "nan"])
def test_ascii_ply_value_its_integer_type_cannot_hold_is_refused(tmp_path, value):
    path = tmp_path / "range.ply"
    write_ply(path, "ascii", {**xyzi(), "ring": np.arange(5, dtype=np.uint8)})
    edit(path, b"16.25 17.25 18.25 19.25 4\n", f"16.25 17.25 18.25 19.25 {value}\n".encode())
    refused(path, f"line 15: ring is {value!r}, not a value of its type uint8")


# --- every format: a strict prefix of a file is never read as a smaller cloud ---

@pytest.mark.parametrize("name, write", [
    ("ascii.pcd", lambda p: write_pcd(p, {**xyzi(3), "h": np.ones((3, 2), np.uint8)}, "ascii")),
    ("binary.pcd", lambda p: write_pcd(p, {**xyzi(3), "h": np.ones((3, 2), np.uint8)}, "binary")),
    ("compressed.pcd", lambda p: write_pcd(p, xyzi(3), "binary_compressed")),
    ("ascii.ply", lambda p: write_ply(p, "ascii", xyzi(3), faces=[[0, 1, 2]])),
    ("binary.ply", lambda p: write_ply(p, "binary_little_endian", xyzi(3), faces=[[0, 1, 2], [2, 1]])),
    ("faces_first.ply", lambda p: write_ply(p, "binary_big_endian", xyzi(3), faces=[[0, 1, 2]], faces_first=True)),
])
def test_every_strict_prefix_of_a_point_cloud_file_is_refused(tmp_path, name, write):
    whole = tmp_path / name
    write(whole)
    data = whole.read_bytes()
    if "compressed" not in name or importlib.util.find_spec("open3d"):
        assert len(read_point_cloud(whole)) == 3
    path = tmp_path / f"cut_{name}"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(PointCloudError, match=str(path)):
            read_point_cloud(path)


# --- files written by open3d ---

def write_with_open3d(path, points: np.ndarray, **options) -> None:
    import open3d as o3d

    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(np.ascontiguousarray(points[:, :3])))
    cloud.point["intensity"] = o3d.core.Tensor(np.ascontiguousarray(points[:, 3:4]))
    assert o3d.t.io.write_point_cloud(str(path), cloud, **options)


@needs_open3d
@pytest.mark.parametrize("name, options", [
    ("scan.ply", {"write_ascii": False}),
    ("scan.ply", {"write_ascii": True}),
    ("scan.pcd", {"write_ascii": False, "compressed": True}),  # binary_compressed
])
def test_open3d_formats_keep_float32_and_intensity(tmp_path, scan, name, options):
    write_with_open3d(tmp_path / name, scan, **options)
    cloud = read_point_cloud(tmp_path / name)
    assert cloud.fields == ("x", "y", "z", "intensity") and cloud.points.dtype == np.float32
    if options["write_ascii"]:
        np.testing.assert_allclose(cloud.points, scan, rtol=1e-5)  # open3d writes 6 significant digits
    else:
        np.testing.assert_array_equal(cloud.points, scan)


@needs_open3d
@pytest.mark.parametrize("name, options", [
    ("scan.ply", {"write_ascii": False}),
    ("scan.ply", {"write_ascii": True}),
    ("scan.pcd", {"write_ascii": False, "compressed": True}),
])
def test_truncated_open3d_formats_name_the_file(tmp_path, scan, name, options):
    # open3d itself only logs a truncated PLY and returns the cloud half-filled.
    whole = tmp_path / name
    write_with_open3d(whole, scan, **options)
    data = whole.read_bytes()
    for cut in (len(data) // 2, len(data) - 40, 40):
        path = tmp_path / f"cut{cut}_{name}"
        path.write_bytes(data[:cut])
        with pytest.raises(PointCloudError, match=str(path)):
            read_point_cloud(path)


def test_unknown_extension_is_refused(tmp_path):
    with pytest.raises(PointCloudError, match="unknown point-cloud extension '.xyz'"):
        read_point_cloud(tmp_path / "scan.xyz")


def ascii_pcd_with(tmp_path, fields: str, types: str, row: str):
    path = tmp_path / "scan.pcd"
    count = len(fields.split())
    path.write_bytes((f"VERSION 0.7\nFIELDS {fields}\nSIZE {' '.join(t[1] for t in types.split())}\n"
                      f"TYPE {' '.join(t[0] for t in types.split())}\nCOUNT {' '.join(['1'] * count)}\n"
                      f"WIDTH 1\nHEIGHT 1\nPOINTS 1\nDATA ascii\n{row}\n").encode())
    return path


@pytest.mark.parametrize("types, row, message", [
    ("F4 F4 F4", "1e39 0 0", "x is '1e39', beyond the float32 range"),
    ("F8 F4 F4", "1e300 0 0", "x is '1e300', beyond the float32 range"),
    ("F4 F4 F4", "1_000 0 0", "x is '1_000', not a number"),
    ("F4 F4 F4 I8", "0 0 0 9223372036854775808", "t is '9223372036854775808', not a value of its type int64"),
    ("F4 F4 F4 U8", "0 0 0 -1", "t is '-1', not a value of its type uint64"),
])
def test_ascii_values_their_type_or_float32_cannot_hold_are_refused(tmp_path, types, row, message):
    fields = "x y z t" if len(types.split()) == 4 else "x y z"
    refused(ascii_pcd_with(tmp_path, fields, types, row), message)


def test_written_infinities_and_64_bit_extremes_read_as_such(tmp_path):
    path = ascii_pcd_with(tmp_path, "x y z t", "F4 F4 F8 I8", "inf -Infinity nan -9223372036854775808")
    cloud = read_pcd(path)
    assert np.isposinf(cloud.points[0, 0]) and np.isneginf(cloud.points[0, 1]) and np.isnan(cloud.points[0, 2])
    assert cloud.points[0, 3] == np.float32(-2.0**63)


@pytest.mark.parametrize("writer", ["pcd", "ply"])
def test_binary_doubles_beyond_float32_are_refused(tmp_path, writer):
    x = np.array([0.0, 1e300], dtype=np.float64)
    columns = {"x": x, "y": np.zeros(2, np.float32), "z": np.zeros(2, np.float32)}
    path = tmp_path / f"scan.{writer}"
    if writer == "pcd":
        write_pcd(path, columns, "binary")
        refused(path, "x holds 1e+300, beyond the float32 range")
    else:
        write_ply(path, "binary_little_endian", columns)
        refused(path, "x holds 1e+300, beyond the float32 range")
