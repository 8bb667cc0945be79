"""Read the arrays of an .npz archive given as input, refusing damage before it costs anything.

np.load trusts an archive: a member's header may claim a 4 TB array (it tries to allocate
it), a damaged member surfaces as one of several exception types, and an .npy given for
an .npz loads as something else entirely. Here each member's header is checked against
the member's stored size before any array is allocated, the member is read whole (so
that zipfile verifies its CRC-32), and every failure is an InputError naming the file.
"""
from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import numpy as np

from albert_ref.errors import InputError

_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_npz(path) -> dict[str, np.ndarray]:
    """name -> array for every member of the .npz archive at `path`."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(np.lib.format.MAGIC_PREFIX))
        if magic == np.lib.format.MAGIC_PREFIX:
            raise InputError(f"{path}: a single .npy array, not an .npz archive (write one with numpy.savez)")
        if not zipfile.is_zipfile(path):
            raise InputError(f"{path}: not an .npz archive (no zip directory: truncated, or another kind of file)")
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            declared = _declared_members(path)
            if declared is not None and declared != len(members):
                # zipfile walks the central directory by its byte size, not by this count:
                # a damaged entry can hide the ones after it (an input_mask gone unnoticed)
                raise InputError(f"{path}: damaged .npz archive: its directory declares {declared} member(s), "
                                 f"{len(members)} could be read")
            return {info.filename.removesuffix(".npy"): _member(archive, info, path) for info in members}
    except InputError:
        raise
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not an .npz archive") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: a flag bit says the member is encrypted
        raise InputError(f"{path}: damaged .npz archive: {exc}") from None


def _declared_members(path: Path) -> int | None:
    """The member count in the zip's end-of-central-directory record (None for ZIP64,
    whose count zipfile reads from its own record)."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - (1 << 16) - 22))  # the record, after a comment of up to 64 KiB
        tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return None
    count = int.from_bytes(tail[at + 10:at + 12], "little")
    return None if count == 0xFFFF else count


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    where = f"{path}: member {info.filename}"
    if not info.filename.endswith(".npy"):
        raise InputError(f"{where} is not an .npy array")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version not in _HEADER_READERS:
            raise InputError(f"{where}: .npy format version {version} is not supported")
        shape, _, dtype = _HEADER_READERS[version](member)
        if dtype.hasobject:
            raise InputError(f"{where} holds Python objects, which are never loaded")
        claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if claimed != info.file_size - member.tell():
            raise InputError(f"{where}: its header claims a {'x'.join(map(str, shape)) or 'scalar'} {dtype} array "
                             f"({claimed:,} bytes) but the member holds {info.file_size - member.tell():,}: damaged")
    with archive.open(info) as member:
        data = member.read()  # whole, so that zipfile checks the CRC-32
    return np.load(io.BytesIO(data), allow_pickle=False)
