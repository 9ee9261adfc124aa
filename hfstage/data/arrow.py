"""Reading the columns of a ``datasets.Dataset`` for training: batches gathered straight from Arrow.

A split of any source is a ``datasets.Dataset`` whose table lives in Arrow files of the ``datasets`` cache.
``ArrayColumn`` reads a fixed-shape numeric column (``Array2D``/``Array3D`` features, fixed-size or regular
nested lists) a batch of rows at a time, tens of times faster than ``dataset[indices]`` (which formats row
by row and widens uint8 to int64):

- for a table memory-mapped from a file, each row is read with ``pread`` at its offset in that file, into the
  batch's own buffer. The file's pages stay in the kernel's page cache, shared by every process of a run,
  and a process holds only its batches: touching rows through the memory map instead would map whole page
  cache folios around each row (measured: 60 random batches over 1M pairs put 1.1 GB of the file into each
  process's resident memory);
- for a table in memory (``Dataset.from_dict``), rows are gathered from zero-copy numpy views of its chunks.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hfstage.errors import DataError


def row_ids(dataset) -> np.ndarray | None:
    """The table rows a dataset's rows are (after ``select``/``shuffle``/``filter``), or None when they coincide."""
    indices = getattr(dataset, "_indices", None)
    return None if indices is None else indices.column(0).to_numpy().astype(np.int64)


def _unwrap(array: pa.Array) -> pa.Array:
    return array.storage if isinstance(array, pa.ExtensionArray) else array


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _flatten_regular(array: pa.Array, where: str) -> tuple[pa.Array, tuple[int, ...]]:
    """A chunk of nested lists -> (its values, the shape of one row); refuses ragged rows and nulls."""
    shape = []
    known = getattr(array.type, "shape", None)  # datasets' Array2D..5D: the shape is in the type, rows are regular
    array = _unwrap(array)
    rows = len(array)
    if known is not None:
        if array.null_count:
            raise DataError(f"{where}: holds a missing (null) value")
        while _is_list(array.type):
            array = _unwrap(array.flatten())  # zero-copy: offsets are read only at the ends
        return array, tuple(int(d) for d in known)
    while _is_list(array.type):
        if array.null_count:
            raise DataError(f"{where}: holds a missing (null) value")
        if pa.types.is_fixed_size_list(array.type):
            size = array.type.list_size
        else:
            lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
            size = int(lengths[0]) if len(lengths) else 0
            if len(lengths) and (lengths != size).any():
                i = int(np.argmax(lengths != size))
                raise DataError(f"{where}: rows have different shapes (a row has length {int(lengths[i])} where "
                                f"others have {size}); pad them or store a lengths column")
        shape.append(size)
        array = _unwrap(array.flatten())
    if array.null_count:
        raise DataError(f"{where}: holds a missing (null) value")
    expected = rows * math.prod(shape)
    if len(array) != expected:  # cannot happen for well-formed lists; guards the reshape below
        raise DataError(f"{where}: {len(array)} values for {rows} rows of shape {tuple(shape)}")
    return array, tuple(shape)


_FILES: dict[tuple[str, int], int] = {}  # (path, inode) -> a read-only descriptor, shared by every column


def _file_mappings() -> list[tuple[int, int, int, str, int]] | None:
    """(start, end, file offset, path, inode) of this process's file mappings (Linux), or None."""
    try:
        with open("/proc/self/maps") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            start, end = (int(v, 16) for v in parts[0].split("-"))
            out.append((start, end, int(parts[2], 16), parts[5], int(parts[4])))
    return out


def _unmap_pages(view: np.ndarray) -> None:
    """``madvise(MADV_DONTNEED)`` over a view of a file mapping: its pages leave this process's resident memory
    and stay in the page cache (a later access maps them again). Only on Linux, and never fails."""
    import ctypes
    import mmap

    start = view.ctypes.data - view.ctypes.data % mmap.PAGESIZE
    try:
        ctypes.CDLL(None).madvise(ctypes.c_void_p(start), ctypes.c_size_t(view.ctypes.data + view.nbytes - start), 4)
    except (OSError, AttributeError):
        pass


class ArrayColumn:
    """A numeric column of fixed shape per row: rows read from its Arrow file with ``pread``, or gathered from
    zero-copy numpy views of its chunks when the table is in memory."""

    def __init__(self, dataset, column: str, where: str):
        self.where = where
        self.rows = row_ids(dataset)
        chunks = dataset.data.column(column).chunks
        self.views, starts, shape = [], [0], None
        for chunk in chunks:
            if not len(chunk):
                continue
            values, row_shape = _flatten_regular(chunk, where)
            if shape is not None and row_shape != shape:
                raise DataError(f"{where}: rows have different shapes ({shape} and {row_shape})")
            shape = row_shape
            if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
                raise DataError(f"{where}: must hold numbers, got {values.type}")
            view = values.to_numpy(zero_copy_only=False)  # zero-copy for numbers without nulls
            self.views.append(view.reshape((len(chunk),) + row_shape))
            starts.append(starts[-1] + len(chunk))
        if not self.views:
            raise DataError(f"{where}: is empty (the split has no samples)")
        self.starts = np.asarray(starts)
        self.shape = shape
        self.dtype = self.views[0].dtype
        self.row_bytes = math.prod(shape) * self.dtype.itemsize
        self.files = self._locate_in_files()  # [(fd, offset of the chunk's first row)] or None

    def _locate_in_files(self) -> list[tuple[int, int]] | None:
        mappings = _file_mappings()
        if not mappings:
            return None
        located = []
        for view in self.views:
            address = view.ctypes.data
            found = next(((path, inode, address - start + offset) for start, end, offset, path, inode in mappings
                          if start <= address and address + view.nbytes <= end), None)
            if found is None:
                return None  # held in memory, not mapped from a file
            path, inode, offset = found
            if (path, inode) not in _FILES:  # a file replaced at the same path has another inode
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    return None
                if os.fstat(fd).st_ino != inode:
                    os.close(fd)
                    return None
                _FILES[(path, inode)] = fd
            located.append((_FILES[(path, inode)], offset))
        probe = np.empty(self.shape, dtype=self.dtype)  # the file holds what the map shows (one row checked)
        if os.preadv(located[0][0], [memoryview(probe).cast("B")], located[0][1]) != self.row_bytes or \
                not np.array_equal(probe, self.views[0][0]):
            return None
        for view in self.views:  # rows are read with pread from now on: give back what finding them mapped
            _unmap_pages(view)
        return located

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else int(self.starts[-1])

    def gather(self, indices) -> np.ndarray:
        """The rows ``indices`` (of the dataset) as one array ``(len(indices),) + shape``."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.rows is not None:
            idx = self.rows[idx]
        if self.files is not None:
            return self._pread(idx)
        if len(self.views) == 1:
            return self.views[0][idx]
        chunk = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty((len(idx),) + self.shape, dtype=self.dtype)
        for c in np.unique(chunk).tolist():
            chosen = chunk == c
            out[chosen] = self.views[c][idx[chosen] - int(self.starts[c])]
        return out

    def _pread(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx),) + self.shape, dtype=self.dtype)
        rows = memoryview(out.reshape(len(idx), -1)).cast("B")  # one writable byte row per sample
        chunk = np.searchsorted(self.starts, idx, side="right") - 1
        size = self.row_bytes
        for i, (c, row) in enumerate(zip(chunk.tolist(), idx.tolist())):
            fd, offset = self.files[c]
            if os.preadv(fd, [rows[i * size:(i + 1) * size]], offset + (row - int(self.starts[c])) * size) != size:
                raise DataError(f"{self.where}: the data file ended early (was it changed while training?)")
        return out

    def blocks(self):
        """The whole column, chunk by chunk (in dataset order when the rows coincide with the table's)."""
        if self.rows is None and self.files is not None:
            for c, view in enumerate(self.views):  # one chunk at a time in a buffer of its own: nothing stays mapped
                yield self._pread(np.arange(int(self.starts[c]), int(self.starts[c + 1])))
        elif self.rows is None:
            yield from self.views
        else:
            for start in range(0, len(self.rows), 4096):
                yield self.gather(np.arange(start, min(start + 4096, len(self.rows))))


class InMemoryColumn:
    """Arrays already in memory (tests, benchmarks, in-memory comparisons), read like an ``ArrayColumn``."""

    def __init__(self, x: np.ndarray):
        self.x = np.ascontiguousarray(x)
        self.shape, self.dtype = self.x.shape[1:], self.x.dtype
        self.native = None

    def gather(self, indices) -> np.ndarray:
        return self.x[np.asarray(indices, dtype=np.int64)]

    def blocks(self):
        yield self.x


def scalar_column(dataset, column: str) -> np.ndarray:
    """A column of one value per row (labels, lengths) as a numpy array, in dataset order."""
    values = dataset.data.column(column)
    if values.null_count:
        raise DataError(f"column {column!r} holds a missing (null) value")
    array = values.to_numpy()
    rows = row_ids(dataset)
    return array if rows is None else array[rows]


class RaggedColumn:
    """Rows of different lengths, each step a fixed-shape vector (a clip of T_i frames of F features): a
    gathered batch is padded with zeros to its longest row, and the rows' lengths come with it."""

    def __init__(self, dataset, column: str, where: str):
        self.rows = row_ids(dataset)
        self.views, self.offsets, starts, shape = [], [], [0], None
        for chunk in dataset.data.column(column).chunks:
            if not len(chunk):
                continue
            outer = _unwrap(chunk)
            if not _is_list(outer.type) or pa.types.is_fixed_size_list(outer.type):
                raise DataError(f"{where}: expected a list of frames per row, got {outer.type}")
            if outer.null_count:
                raise DataError(f"{where}: holds a missing (null) value")
            offsets = outer.offsets.to_numpy()
            values, step_shape = _flatten_regular(outer.flatten(), where)
            if shape is not None and step_shape != shape:
                raise DataError(f"{where}: frames have different shapes ({shape} and {step_shape})")
            shape = step_shape
            if not pa.types.is_floating(values.type) and not pa.types.is_integer(values.type):
                raise DataError(f"{where}: must hold numbers, got {values.type}")
            self.views.append(values.to_numpy(zero_copy_only=False).reshape((-1,) + step_shape))
            self.offsets.append(offsets - offsets[0])
            starts.append(starts[-1] + len(chunk))
        if not self.views:
            raise DataError(f"{where}: is empty (the split has no samples)")
        self.starts, self.shape, self.dtype = np.asarray(starts), shape, self.views[0].dtype
        self.lengths = np.concatenate([np.diff(o) for o in self.offsets])
        if self.rows is not None:
            self.lengths = self.lengths[self.rows]
        if (self.lengths < 1).any():
            raise DataError(f"{where}: row {int(np.argmax(self.lengths < 1))} has no frames")

    def gather(self, indices) -> np.ndarray:
        """``(len(indices), longest, *step shape)``, zero-padded."""
        idx = np.asarray(indices, dtype=np.int64)
        table_rows = self.rows[idx] if self.rows is not None else idx
        lengths = self.lengths[idx]
        out = np.zeros((len(idx), int(lengths.max()), *self.shape), dtype=self.dtype)
        chunks = np.searchsorted(self.starts, table_rows, side="right") - 1
        for i, (row, c) in enumerate(zip(table_rows.tolist(), chunks.tolist())):
            local = row - int(self.starts[c])
            begin, end = self.offsets[c][local], self.offsets[c][local + 1]
            out[i, : end - begin] = self.views[c][begin:end]
        return out

    def blocks(self):
        for start in range(0, len(self.lengths), 1024):
            yield self.gather(np.arange(start, min(start + 1024, len(self.lengths))))


def is_ragged(dataset, column: str) -> bool:
    """Whether a list column's rows have different lengths (read from the offsets alone)."""
    seen = set()
    for chunk in dataset.data.column(column).chunks:
        outer = _unwrap(chunk)
        if not (pa.types.is_list(outer.type) or pa.types.is_large_list(outer.type)) or not len(outer):
            return False
        seen.update(np.unique(np.diff(outer.offsets.to_numpy())).tolist())
        if len(seen) > 1:
            return True
    return False
