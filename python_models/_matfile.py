"""Numeric matrices from MATLAB v5 .mat files (MARS ships its split as such files), without
scipy: the level-5 format's miMATRIX elements, plain or zlib-compressed (miCOMPRESSED),
real numeric classes only. ``save_mat`` writes the same subset (used by the tests)."""

import struct
import zlib

import numpy as np

_MI = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MI_CODE = {np.dtype(v).str[1:]: k for k, v in _MI.items()}
_MX_CLASS = {"f8": 6, "f4": 7, "i1": 8, "u1": 9, "i2": 10, "u2": 11, "i4": 12, "u4": 13, "i8": 14, "u8": 15}
_MI_MATRIX, _MI_COMPRESSED = 14, 15


def _elements(buf: bytes, endian: str):
    """Yield (type, payload) of the data elements in buf."""
    pos = 0
    while pos + 8 <= len(buf):
        first, second = struct.unpack_from(endian + "II", buf, pos)
        if first >> 16:  # small data element: type and size share the first word, data in the second
            yield first & 0xFFFF, buf[pos + 4: pos + 4 + (first >> 16)]
            pos += 8
            continue
        yield first, buf[pos + 8: pos + 8 + second]
        pos += 8 + second
        if first != _MI_COMPRESSED:
            pos += (-second) % 8


def _matrix(payload: bytes, endian: str):
    parts = list(_elements(payload, endian))
    dims = np.frombuffer(parts[1][1], dtype=endian + "i4")
    name = parts[2][1].decode("latin-1")
    mi_type, data = parts[3]
    if mi_type not in _MI:
        raise ValueError(f"load_mat: unsupported data type {mi_type} for {name!r}")
    values = np.frombuffer(data, dtype=endian + _MI[mi_type])
    return name, values.reshape(tuple(dims), order="F")


def load_mat(path) -> dict:
    """{variable name: numpy array} for the real numeric matrices of a v5 .mat file."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 128 or raw[126:128] not in (b"IM", b"MI"):
        raise ValueError(f"load_mat: {path} is not a MATLAB v5 .mat file (v7.3/HDF5 files need h5py)")
    endian = "<" if raw[126:128] == b"IM" else ">"
    out, pending = {}, [raw[128:]]
    while pending:
        for mi_type, payload in _elements(pending.pop(), endian):
            if mi_type == _MI_COMPRESSED:
                pending.append(zlib.decompress(payload))
            elif mi_type == _MI_MATRIX:
                name, array = _matrix(payload, endian)
                out[name] = array
    return out


def _element(mi_type: int, data: bytes) -> bytes:
    return struct.pack("<II", mi_type, len(data)) + data + b"\0" * ((-len(data)) % 8)


def save_mat(path, arrays: dict, compress: bool = False) -> None:
    """Write real numeric 2-D arrays as a little-endian v5 .mat file."""
    body = b""
    for name, array in arrays.items():
        array = np.atleast_2d(np.asarray(array))
        code = array.dtype.str[1:]
        flags = _element(6, struct.pack("<II", _MX_CLASS[code], 0))
        dims = _element(5, struct.pack(f"<{array.ndim}i", *array.shape))
        element = _element(_MI_MATRIX, flags + dims + _element(1, name.encode()) +
                           _element(_MI_CODE[code], array.astype("<" + code).tobytes(order="F")))
        body += struct.pack("<II", _MI_COMPRESSED, len(c := zlib.compress(element))) + c if compress else element
    header = b"MATLAB 5.0 MAT-file, written by python_models".ljust(116) + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    with open(path, "wb") as f:
        f.write(header + body)
