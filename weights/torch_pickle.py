"""Read a `torch.save` state dict (pytorch_model.bin) without torch and without running
code from the file.

A .bin is a pickle, and unpickling calls whatever the file names. This reader unpickles
with an allow-list of the few globals a state dict of tensors uses, each replaced by a
small stand-in defined here, so a hostile file can only fail to load. Both containers
torch.save writes are read:

* zip (torch >= 1.6): `<archive>/data.pkl` and one raw record `<archive>/data/<key>` per
  storage, in the byte order named by `<archive>/byteorder` (little when absent);
* legacy: consecutive pickles (magic number, protocol version, sys_info, the object, the
  sorted list of storage keys), then each storage as an 8-byte little-endian element
  count followed by its little-endian raw data.

Tensors come back as C-ordered numpy arrays; float16 and bfloat16 are widened to float32
exactly, every other dtype is kept.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from albert_ref.errors import ConversionError

__all__ = ["load_torch_state_dict", "bfloat16_to_float32"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch dtype name -> numpy layout of one stored element (bfloat16 as its raw bits).
_LAYOUTS = {
    "float32": "f4", "float64": "f8", "float16": "f2", "bfloat16": "u2",
    "int64": "i8", "int32": "i4", "int16": "i2", "int8": "i1", "uint8": "u1", "bool": "?",
    "uint16": "u2", "uint32": "u4", "uint64": "u8",
}
# Pickled storage class -> element dtype. UntypedStorage holds bytes; a tensor over it
# (_rebuild_tensor_v3) names its own dtype.
_STORAGE_CLASSES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 values given as uint16 bit patterns: they are float32's top half."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


# -- stand-ins for the torch objects a state dict pickle refers to ----------------------
# All immutable: a pickle's BUILD opcode sets attributes on whatever it is given, and the
# allowed globals are shared by every load in the process.

class _DType(NamedTuple):
    """A torch dtype or storage class: just the name of its element type."""
    name: str


class _Storage(NamedTuple):
    """A storage named by a persistent id; its bytes are found after unpickling."""
    key: str
    dtype: _DType
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(_LAYOUTS[self.dtype.name]).itemsize


class _TensorRef(NamedTuple):
    """A view of a storage, materialised once its name and the storage bytes are known."""
    storage: object
    offset: object
    size: object
    stride: object
    dtype: object


class _Call(NamedTuple):
    """An allowed function, wrapped so that a pickle cannot reach its attributes."""
    func: Callable

    def __call__(self, *args):
        return self.func(*args)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, storage_offset, size, stride, getattr(storage, "dtype", None))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _Call(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor_v3"): _Call(_rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
    ("torch.storage", "UntypedStorage"): _DType("uint8"),
    **{(module, cls): _DType(dtype) for cls, dtype in _STORAGE_CLASSES.items()
       for module in ("torch", "torch.cuda")},  # cuda storages are saved as CPU bytes
    **{("torch", dtype): _DType(dtype) for dtype in _LAYOUTS},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes | io.BytesIO, where: str, storages: dict[str, _Storage] | None):
        super().__init__(io.BytesIO(data) if isinstance(data, bytes) else data)
        self.where = where
        self.storages = storages

    def find_class(self, module, name):
        # Protocol 2 writes Python 2 names (builtins.eval as __builtin__.eval); translate
        # them as pickle itself would, so the error names what would really have run.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise ConversionError(f"pickle in {self.where} tries to load {module}.{name}, which a state dict "
                                  "of tensors never needs; refusing to run it") from None

    def persistent_load(self, pid):
        if self.storages is None or not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise ConversionError(f"pickle in {self.where} has an unexpected persistent id {pid!r:.100}")
        _, dtype, key, _location, numel, *view = pid
        if view and view[0] is not None:
            raise ConversionError(f"{self.where}: storage {key!r} is a storage view (torch < 0.4), not supported")
        if not isinstance(dtype, _DType) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise ConversionError(f"pickle in {self.where} has a malformed storage record {pid!r:.100}")
        storage = self.storages.setdefault(key, _Storage(key, dtype, numel))
        if storage != (key, dtype, numel):
            raise ConversionError(f"{self.where}: storage {key!r} is described twice, differently")
        return storage


def _unpickle(data: bytes | io.BytesIO, where: str, storages: dict[str, _Storage] | None = None):
    """Unpickle untrusted bytes: any failure, whatever its type, means a corrupt file."""
    try:
        return _RestrictedUnpickler(data, where, storages).load()
    except ConversionError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged pickle can raise almost anything
        raise ConversionError(f"corrupt pickle in {where}: {type(exc).__name__}: {exc}") from None


# -- the two containers -------------------------------------------------------------------

def _load_zip(path: Path, data: bytes) -> tuple[object, dict[str, bytes], str]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            pickles = [n for n in infos if n.count("/") == 1 and n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ConversionError(f"{path} is a zip file but not a torch.save checkpoint (no <archive>/data.pkl)")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = archive.read(prefix + "byteorder") if prefix + "byteorder" in infos else b"little"
            if byteorder not in (b"little", b"big"):
                raise ConversionError(f"{path}: unknown byte order record {byteorder[:20]!r}")
            storages: dict[str, _Storage] = {}
            obj = _unpickle(archive.read(pickles[0]), f"{path} ({pickles[0]})", storages)
            blobs = {}
            for key, storage in storages.items():
                record = f"{prefix}data/{key}"
                if record not in infos:
                    raise ConversionError(f"{path}: data record {record} of storage {key!r} is missing")
                if infos[record].file_size != storage.nbytes:  # checked before reading: no zip bombs
                    raise ConversionError(f"{path}: storage {key!r} has {infos[record].file_size} bytes, "
                                          f"expected {storage.nbytes} ({storage.numel} x {storage.dtype.name})")
                blobs[key] = archive.read(record)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, OverflowError,
            RuntimeError, zlib.error) as exc:  # RuntimeError: a flag bit says "encrypted"
        raise ConversionError(f"{path}: corrupt or truncated zip archive: {exc}") from None
    return obj, blobs, byteorder.decode()


def _load_legacy(path: Path, data: bytes) -> tuple[object, dict[str, memoryview], str]:
    stream = io.BytesIO(data)
    if _unpickle(stream, f"{path} (magic number)") != _LEGACY_MAGIC:
        raise ConversionError(f"{path} is neither a zip nor a legacy torch.save checkpoint (bad magic number)")
    version = _unpickle(stream, f"{path} (protocol version)")
    if version != _LEGACY_PROTOCOL:
        raise ConversionError(f"{path}: unsupported legacy protocol version {version!r}")
    _unpickle(stream, f"{path} (sys_info)")  # the writer's byte order does not matter: data is little-endian
    storages: dict[str, _Storage] = {}
    obj = _unpickle(stream, f"{path} (state dict)", storages)
    keys = _unpickle(stream, f"{path} (storage keys)")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ConversionError(f"{path}: the storage key list is malformed")
    view = memoryview(data)
    pos = stream.tell()
    blobs = {}
    for key in keys:
        if key not in storages:
            raise ConversionError(f"{path}: storage {key!r} is listed but no tensor uses it")
        if pos + 8 > len(data):
            raise ConversionError(f"{path} is truncated before storage {key!r}")
        count = int.from_bytes(view[pos:pos + 8], "little", signed=True)
        if count != storages[key].numel:
            raise ConversionError(f"{path}: storage {key!r} header says {count} elements, "
                                  f"expected {storages[key].numel}")
        pos += 8
        nbytes = storages[key].nbytes
        if pos + nbytes > len(data):
            raise ConversionError(f"{path} is truncated inside storage {key!r} "
                                  f"({len(data) - pos} of {nbytes} bytes present)")
        blobs[key] = view[pos:pos + nbytes]
        pos += nbytes
    return obj, blobs, "little"


# -- from views to arrays -------------------------------------------------------------------

def _is_index_tuple(value) -> bool:
    return isinstance(value, tuple) and all(type(v) is int and v >= 0 for v in value)


def _materialise(ref: _TensorRef, name: str, blobs: dict, byteorder: str, path: Path) -> np.ndarray:
    storage, offset, size, stride = ref.storage, ref.offset, ref.size, ref.stride
    where = f"{path}: tensor {name!r}"
    if not isinstance(storage, _Storage) or not isinstance(ref.dtype, _DType):
        raise ConversionError(f"{where} is not built from a storage")
    if type(offset) is not int or offset < 0 or not _is_index_tuple(size) or not _is_index_tuple(stride) \
            or len(size) != len(stride):
        raise ConversionError(f"{where} has a malformed view (offset {offset!r:.40}, size {size!r:.60}, "
                              f"stride {stride!r:.60})")
    if storage.key not in blobs:
        raise ConversionError(f"{where}: the data of storage {storage.key!r} is missing")
    layout = np.dtype(_LAYOUTS[ref.dtype.name]).newbyteorder("<" if byteorder == "little" else ">")
    if len(blobs[storage.key]) % layout.itemsize:
        raise ConversionError(f"{where}: storage {storage.key!r} is not a whole number of {ref.dtype.name}")
    flat = np.frombuffer(blobs[storage.key], layout)
    needed = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if needed > flat.size:
        raise ConversionError(f"{where} (size {size}, stride {stride}, offset {offset}) needs {needed} elements "
                              f"but storage {storage.key!r} holds {flat.size}")
    try:  # zero strides can make a view far larger than its storage
        view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                               strides=[s * layout.itemsize for s in stride], writeable=False)
        array = np.array(view, dtype=layout.newbyteorder("="), order="C")
    except (MemoryError, ValueError, OverflowError) as exc:
        raise ConversionError(f"{where}: cannot build an array of size {size}: {exc}") from None
    if ref.dtype.name == "bfloat16":
        return bfloat16_to_float32(array)
    if ref.dtype.name == "float16":
        return array.astype(np.float32)
    return array


def load_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a torch.save'd dict of tensors (zip or legacy format) into numpy arrays."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from None
    obj, blobs, byteorder = (_load_zip if data.startswith(b"PK") else _load_legacy)(path, data)
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict")
    tensors = {}
    for name, ref in obj.items():
        if not isinstance(name, str) or not isinstance(ref, _TensorRef):
            raise ConversionError(f"{path}: entry {name!r:.80} is a {type(ref).__name__}, not a tensor")
        tensors[name] = _materialise(ref, name, blobs, byteorder, path)
    return tensors
