"""The one guarded way :mod:`weights_import` touches an HDF5 file.

A weights file is untrusted input: h5py and libhdf5 answer a damaged or
hostile file with ``OSError``, ``RuntimeError``, ``KeyError``, ``TypeError``,
``UnicodeDecodeError``, ``AttributeError`` (a group where a dataset should be)
and more. Every access here runs under :func:`guard`, which turns any of them
into a one-line :class:`WeightsError` naming the file and the object.

Before anything is read, the layer refuses what a weights file written by
Keras, torch or :mod:`weights_import.torch_to_h5` never holds, because each of
these either loads values that are not in the file or makes libhdf5 misbehave:

- soft and external links, and objects linked more than once (a hard link that
  leaves the expected tree, or a cycle);
- names that are not UTF-8;
- attributes of the wrong type or rank (``layer_names`` must be a 1-D list of
  strings, ``format`` a single string), or with more than :data:`MAX_NAMES` items;
- datasets with a null dataspace, virtual datasets, raw data in external files,
  and any datatype other than the standard little-endian IEEE floats and
  standard integers (strings, arrays, compounds, enums, references, ...);

and, when an array is read (:func:`read_dataset`), datasets never written (no
storage allocated: they would read as fill values) or written only in part.
The caller checks the declared shape against the model before reading, so the
only array allocated is one the model predicts. Before a variable-length
string is read, the file's global heaps are walked (:func:`check_global_heaps`):
libhdf5 loops forever on a heap object of size 0.

What no check can catch: the default HDF5 format has no checksums on object
headers, so a changed data address that still points inside the file reads
other bytes of it (docs/index.md, "Damaged or hostile files").
"""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np

from .errors import WeightsError

#: Most items a name-list attribute (``layer_names``, ``weight_names``) may hold, and most members a group may have.
MAX_NAMES = 100_000
#: Deepest group nesting walked in a state-dict file (``layer1/0/conv1/weight`` is 4).
MAX_DEPTH = 32

#: What h5py and libhdf5 raise on a damaged file (WeightsError, a ValueError, is re-raised as it is).
_HDF5_ERRORS = (OSError, RuntimeError, KeyError, TypeError, ValueError, UnicodeError, AttributeError,
                IndexError, OverflowError, SystemError, NotImplementedError)


def one_line(err) -> str:
    """``str(err)`` on one line, at most 200 characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def guard(origin: str, what: str):
    """Turn any h5py/libhdf5 error raised in the block into a one-line WeightsError about ``what``."""
    try:
        yield
    except WeightsError:
        raise
    except _HDF5_ERRORS as err:
        raise WeightsError(f"{origin}: {what}: expected a readable HDF5 object, found an HDF5 error "
                           f"({type(err).__name__}: {one_line(err)})") from None


def _show(path: str) -> str:
    return repr(path) if len(path) <= 80 else repr(path[:77] + "...")


def _is_utf8(name) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes that were not UTF-8
        return False
    return True


def check_name(name, origin: str, where: str) -> str:
    """A member name as str; h5py hands back names that are not UTF-8 as bytes (or with surrogates)."""
    if isinstance(name, str) and _is_utf8(name):
        return name
    shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
    raise WeightsError(f"{origin}: {_show(where)}: expected member names in UTF-8, found {shown}")


def members(group, origin: str, path: str) -> list[str]:
    """The link names of ``group`` (checked UTF-8 names, at most :data:`MAX_NAMES`)."""
    with guard(origin, f"group {_show(path)}"):
        count = len(group)
    if count > MAX_NAMES:
        raise WeightsError(f"{origin}: group {_show(path)}: expected at most {MAX_NAMES} members, found {count}")
    with guard(origin, f"group {_show(path)}"):
        names = list(group)
    return [check_name(n, origin, path) for n in names]


def _join(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}" if path else name


def child(group, name: str, origin: str, path: str, kind: str | None = None):
    """The object at ``name`` (one path component) of ``group``, or None when there is no such link.

    ``path`` names the group in messages. ``kind`` is ``"group"``, ``"dataset"``
    or None (either). Soft and external links, and objects with more than one
    hard link, are refused without being followed.
    """
    import h5py

    full = _join(path, name)
    if not name or name in (".", "..") or "/" in name:
        raise WeightsError(f"{origin}: {_show(full)}: expected a plain member name, found {name!r}")
    raw = name.encode("utf-8")
    with guard(origin, _show(full)):
        # the link itself, not followed: `name in group` would open the file an external link names
        if not group.id.links.exists(raw):
            return None
        link_type = group.id.links.get_info(raw).type
        target = group.id.links.get_val(raw) if link_type != h5py.h5l.TYPE_HARD else None
    if link_type == h5py.h5l.TYPE_SOFT:
        raise WeightsError(f"{origin}: {_show(full)}: expected an object stored in the file, found a soft link to "
                           f"{_show(target.decode('utf-8', 'replace'))}")
    if link_type == h5py.h5l.TYPE_EXTERNAL:
        filename, path_in = (t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in target)
        raise WeightsError(f"{origin}: {_show(full)}: expected an object stored in the file, found an external link "
                           f"to {_show(filename)}:{_show(path_in)}")
    if link_type != h5py.h5l.TYPE_HARD:
        raise WeightsError(f"{origin}: {_show(full)}: expected an object stored in the file, found a user-defined link")
    with guard(origin, _show(full)):
        obj = group[name]
        links = h5py.h5o.get_info(obj.id).rc
    if links != 1:
        raise WeightsError(f"{origin}: {_show(full)}: expected an object linked once in the file, found it hard-linked "
                           f"{links} times (a link that leaves its tree, or a cycle)")
    is_group, is_dataset = isinstance(obj, h5py.Group), isinstance(obj, h5py.Dataset)
    found = "a group" if is_group else "a dataset" if is_dataset else f"a {type(obj).__name__}"
    if (kind == "group" and not is_group) or (kind == "dataset" and not is_dataset) or not (is_group or is_dataset):
        raise WeightsError(f"{origin}: {_show(full)}: expected {'a ' + kind if kind else 'a group or dataset'}, found {found}")
    return obj


def resolve(group, relpath: str, origin: str, path: str, kind: str | None = None):
    """``group[relpath]`` one checked component at a time (see :func:`child`); None when a link is missing."""
    parts = relpath.split("/")
    obj, where = group, path
    for i, part in enumerate(parts):
        obj = child(obj, part, origin, where, kind if i == len(parts) - 1 else "group")
        if obj is None:
            return None
        where = _join(where, part)
    return obj


def has_attr(obj, name: str, origin: str, path: str) -> bool:
    with guard(origin, f"{_show(path)} attribute {name!r}"):
        return name in obj.attrs


def _attr_id(obj, name: str, origin: str, what: str):
    import h5py

    with guard(origin, what):
        if name not in obj.attrs:
            return None, None, None
        aid = h5py.h5a.open(obj.id, name.encode("utf-8"))
        shape = aid.shape
        tclass = aid.get_type().get_class()
    return aid, shape, tclass


def _decode(value, origin: str, what: str) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise WeightsError(f"{origin}: {what}: expected UTF-8 text, found {bytes(value)[:60]!r}") from None
    if isinstance(value, str):
        return check_name(value, origin, what)
    raise WeightsError(f"{origin}: {what}: expected text, found a {type(value).__name__}")


def attr_strings(obj, name: str, origin: str, path: str) -> list[str] | None:
    """A string attribute holding a list of names (scalar or 1-D), decoded as UTF-8; None when absent."""
    import h5py

    what = f"{_show(path)} attribute {name!r}"
    aid, shape, tclass = _attr_id(obj, name, origin, what)
    if aid is None:
        return None
    if shape is None:
        raise WeightsError(f"{origin}: {what}: expected text (a string or a 1-D list of strings), found an empty (null) attribute")
    if len(shape) > 1:
        raise WeightsError(f"{origin}: {what}: expected text (a string or a 1-D list of strings), found an attribute of shape {tuple(shape)}")
    if math.prod(shape) == 0:
        return []  # h5py writes an empty Python list as an empty float array
    if tclass != h5py.h5t.STRING:
        raise WeightsError(f"{origin}: {what}: expected text (a string or a 1-D list of strings), found a non-string attribute")
    if math.prod(shape) > MAX_NAMES:
        raise WeightsError(f"{origin}: {what}: expected at most {MAX_NAMES} names, found {math.prod(shape)}")
    with guard(origin, what):
        variable = aid.get_type().is_variable_str()
    if variable:
        check_global_heaps(obj, origin)
    with guard(origin, what):
        value = obj.attrs[name]
    values = [value] if np.ndim(value) == 0 else list(np.asarray(value, dtype=object).ravel())
    return [_decode(v, origin, what) for v in values]


#: ``{(path, size, mtime): None or the error}`` of :func:`check_global_heaps`, so one load scans a file once.
_HEAP_CHECKS: dict = {}


def check_global_heaps(obj, origin: str) -> None:
    """Refuse a file whose global heap would make libhdf5 loop forever, before a variable-length string is read.

    Variable-length strings (h5py's ``str`` attributes: Keras 3's ``name``,
    the state dict's ``format``) live in global heap collections (signature
    ``GCOL``). libhdf5 walks a collection object by object, each step moving by
    the object's recorded size; an object of index 0 and size 0 (a zeroed range)
    or a size that wraps the pointer never moves, and the read hangs forever.
    This walks every collection in the file the same way first (a bounded
    loop) and refuses one that does not advance or runs past its own end.
    """
    import mmap

    try:
        stat = os.stat(origin)
    except OSError as err:
        raise WeightsError(f"{origin}: expected a readable file, found {one_line(err)}") from None
    key = (origin, stat.st_size, stat.st_mtime_ns)
    if key not in _HEAP_CHECKS:
        with guard(origin, "file"):
            length_size = obj.file.id.get_create_plist().get_sizes()[1]
        if len(_HEAP_CHECKS) > 64:
            _HEAP_CHECKS.clear()
        error = None
        if stat.st_size:
            with open(origin, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                error = _global_heap_error(mm, length_size)
        _HEAP_CHECKS[key] = error
    if _HEAP_CHECKS[key]:
        raise WeightsError(f"{origin}: expected intact global heaps (they hold the variable-length strings), found "
                           f"{_HEAP_CHECKS[key]}, on which libhdf5 would loop forever")


def _global_heap_error(mm, length_size: int) -> str | None:
    """The first defect of any global heap collection in ``mm`` (walked as libhdf5 walks it), or None."""
    header = 8 + length_size  # "GCOL", version, 3 reserved bytes, collection size
    object_header = 8 + length_size  # index (2), reference count (2), reserved (4), object size
    pos = mm.find(b"GCOL")
    while pos != -1:
        if mm[pos + 4] == 1 and mm[pos + 5:pos + 8] == b"\0\0\0":
            size = int.from_bytes(mm[pos + 8:pos + 8 + length_size], "little")
            end = pos + size
            if size >= 4096 and end <= len(mm):
                p = pos + header
                while p < end:
                    if p + object_header > end:
                        break  # a tail too small for an object is free space
                    index = int.from_bytes(mm[p:p + 2], "little")
                    obj_size = int.from_bytes(mm[p + 8:p + 8 + length_size], "little")
                    need = (object_header + ((obj_size + 7) & ~7)) % 2**64 if index else obj_size
                    if need == 0 or need >= 2**63:
                        return f"a global heap collection at byte {pos} with an object of index {index} and size {obj_size} at byte {p}"
                    if p + need > end and index:
                        return f"a global heap collection at byte {pos} whose object at byte {p} runs past the collection's end"
                    p += need
        pos = mm.find(b"GCOL", pos + 1)
    return None


def attr_string(obj, name: str, origin: str, path: str) -> str | None:
    """A single string attribute (scalar or one item), decoded as UTF-8; None when absent."""
    values = attr_strings(obj, name, origin, path)
    if values is None:
        return None
    if len(values) != 1:
        raise WeightsError(f"{origin}: {_show(path)} attribute {name!r}: expected one string, found {len(values)}")
    return values[0]


def _standard_types():
    import h5py

    floats = {h5py.h5t.IEEE_F16LE: "float16", h5py.h5t.IEEE_F32LE: "float32", h5py.h5t.IEEE_F64LE: "float64"}
    ints = [getattr(h5py.h5t, f"STD_{s}{b}{e}") for s in "IU" for b in (8, 16, 32, 64) for e in ("LE", "BE")]
    return floats, ints


def dataset_info(ds, origin: str, key: str) -> tuple[tuple, np.dtype]:
    """``(shape, dtype)`` of a dataset that may be read (see the module docstring for what is refused)."""
    import h5py

    what = f"dataset {_show(key)}"
    with guard(origin, what):
        shape = ds.id.shape
        dcpl = ds.id.get_create_plist()
        layout = dcpl.get_layout()
        external = dcpl.get_external_count()
        ftype = ds.id.get_type()
        tclass = ftype.get_class()
    if shape is None:
        raise WeightsError(f"{origin}: {what}: expected an array, found a dataset with a null (empty) dataspace")
    if layout == h5py.h5d.VIRTUAL:
        raise WeightsError(f"{origin}: {what}: expected an array stored in the file, found a virtual dataset (its values live elsewhere)")
    if external:
        raise WeightsError(f"{origin}: {what}: expected an array stored in the file, found raw data in {external} external file(s)")
    floats, ints = _standard_types()
    with guard(origin, what):
        name = next((n for t, n in floats.items() if ftype.equal(t)), None)
        if name is None and tclass == h5py.h5t.INTEGER and any(ftype.equal(t) for t in ints):
            name = ftype.dtype.str
    if name is None:
        kinds = {h5py.h5t.FLOAT: "a non-standard or big-endian float", h5py.h5t.INTEGER: "a non-standard integer",
                 h5py.h5t.STRING: "strings", h5py.h5t.ARRAY: "an array datatype", h5py.h5t.COMPOUND: "a compound datatype",
                 h5py.h5t.ENUM: "an enum", h5py.h5t.VLEN: "variable-length data", h5py.h5t.REFERENCE: "references",
                 h5py.h5t.OPAQUE: "opaque data", h5py.h5t.BITFIELD: "a bitfield"}
        raise WeightsError(f"{origin}: {what}: expected a little-endian IEEE float (or integer) dataset, found "
                           f"{kinds.get(tclass, 'an unknown datatype')}")
    return tuple(int(n) for n in shape), np.dtype(name)


def extents(ds, origin: str, key: str) -> tuple:
    """``((start, end, what), ...)``: the file bytes holding a dataset's contiguous values and its object header.

    In a sound file no two of these overlap; a damaged data address usually
    lands on another dataset's values or header (see :func:`check_disjoint`).
    """
    import h5py

    out = []
    with guard(origin, f"dataset {_show(key)}"):
        offset = ds.id.get_offset()
        if offset is not None:
            out.append((int(offset), int(offset) + int(ds.id.get_storage_size()), f"the values of {_show(key)}"))
        info = h5py.h5o.get_info(ds.id)
        if info.hdr.nchunks == 1:
            out.append((int(info.addr), int(info.addr) + int(info.hdr.space.total), f"the header of {_show(key)}"))
    return tuple(out)


def check_disjoint(spans, origin: str) -> None:
    """Refuse two of ``spans`` (from :func:`extents`) that share bytes of the file."""
    ordered = sorted(spans)
    for (start, end, what), (next_start, next_end, next_what) in zip(ordered, ordered[1:]):
        if next_start < end:
            raise WeightsError(f"{origin}: expected {what} and {next_what} in separate bytes of the file, found both at "
                               f"bytes {next_start}..{min(end, next_end)} (a damaged data address)")


def read_dataset(ds, origin: str, key: str, dtype) -> np.ndarray:
    """Read a dataset accepted by :func:`dataset_info` into a new array of ``dtype``.

    Refuses a dataset never written (no storage allocated) or written in part
    (contiguous storage smaller than the array, missing chunks), and one whose
    contiguous storage lies beyond the end of the file.
    """
    import h5py

    what = f"dataset {_show(key)}"
    shape, stored = dataset_info(ds, origin, key)
    out = None
    with guard(origin, what):
        size = math.prod(shape)
        if size:
            dsid = ds.id
            dcpl = dsid.get_create_plist()
            layout = dcpl.get_layout()
            storage = dsid.get_storage_size()
            status = dsid.get_space_status()
            if status == h5py.h5d.SPACE_STATUS_NOT_ALLOCATED or storage == 0:
                raise WeightsError(f"{origin}: {what}: expected stored values, found a dataset that was never written "
                                   f"(no storage allocated for its {size} values)")
            if status != h5py.h5d.SPACE_STATUS_ALLOCATED:
                raise WeightsError(f"{origin}: {what}: expected stored values, found a dataset written in part "
                                   f"(storage allocated for some of its {size} values only)")
            if layout == h5py.h5d.CHUNKED:
                chunks = dcpl.get_chunk()
                expected = math.prod(-(-n // c) for n, c in zip(shape, chunks))
                written = dsid.get_num_chunks()
                if written != expected:
                    raise WeightsError(f"{origin}: {what}: expected {expected} stored chunks, found {written} (written in part)")
            else:
                nbytes = size * stored.itemsize
                if storage < nbytes:
                    raise WeightsError(f"{origin}: {what}: expected {nbytes} bytes of storage, found {storage}")
                if layout == h5py.h5d.CONTIGUOUS:
                    file_size = os.path.getsize(origin)
                    offset = dsid.get_offset()
                    if offset is None or offset + nbytes > file_size:
                        raise WeightsError(f"{origin}: {what}: expected its values inside the file, found them at "
                                           f"byte {offset} beyond the end ({file_size} bytes)")
        out = np.empty(shape, dtype=dtype)
        if size:
            ds.read_direct(out)
    return out
