"""Staging files of the pseudo-labels stage, written batch by batch."""

import errno
import fcntl
import os

import h5py
import numpy as np
import pytest

from tedloc.artifacts.direct_io import (
    ALIGN,
    DirectRows,
    aligned_rows,
    open_direct_rows,
    row_chunk_offsets,
)
from tedloc.artifacts.io_strategy import GridRowWriter, IOStrategy
from tedloc.artifacts.staging import read_encoded, read_encoded_chunks, scan_encoded
from tedloc.artifacts.staging_writer import EncodedFileWriter
from tedloc.artifacts.store import ArtifactHeader
from tedloc.errors import ArtifactError

HEADER = ArtifactHeader(format="tedloc.pseudo_labels", format_version=1, config={}, config_hash="h")


def _batch(start: int, n: int) -> tuple[list[str], dict[str, np.ndarray]]:
    rng = np.random.default_rng(start)
    return [f"img{start + i}" for i in range(n)], {
        "label": np.arange(start, start + n, dtype=np.int64),
        "image_size": np.full((n, 2), 7, np.int32),
        "pooled": rng.random((n, 5), dtype=np.float32),
        "features": rng.random((n, 2, 3, 5)).astype(np.float16),
        "features_flip": rng.random((n, 2, 3, 5)).astype(np.float16),
    }


def test_batches_add_up_to_one_file_laid_out_like_a_shard(tmp_path):
    path = tmp_path / "encoded" / "part000of001-00000.h5"
    batches = [_batch(0, 3), _batch(3, 0), _batch(3, 2)]
    with EncodedFileWriter(path, HEADER, part=0, num_parts=1, seq=0,
                           dataset_attrs={"features": {"layout": "h,w,c"}}) as writer:
        for k, (ids, arrays) in enumerate(batches):
            writer.append(ids, arrays, {"bad.jpg": "unreadable"} if k == 1 else None)
        assert not path.exists()  # appears on close only
        assert writer.num_images == 6
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    [entry] = scan_encoded(tmp_path, HEADER.identity)
    assert entry.ids == [f"img{i}" for i in range(5)] and entry.skipped == {"bad.jpg": "unreadable"}
    assert entry.contents == ("features", "features_flip", "image_size", "label", "pooled")
    got = read_encoded(path, entry.contents)
    for name in entry.contents:
        np.testing.assert_array_equal(got[name], np.concatenate([b[1][name] for b in batches]))
    with h5py.File(path, "r") as handle:
        assert handle["features"].chunks == (1, 2, 3, 5) and handle["features"].compression is None
        assert handle["features"].attrs["layout"] == "h,w,c"


def test_an_exception_while_writing_leaves_nothing(tmp_path):
    path = tmp_path / "part000of001-00000.h5"
    with pytest.raises(KeyboardInterrupt):
        with EncodedFileWriter(path, HEADER, part=0, num_parts=1, seq=0) as writer:
            writer.append(*_batch(0, 2))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_rows_must_match_ids(tmp_path):
    with EncodedFileWriter(tmp_path / "x.h5", HEADER, part=0, num_parts=1, seq=0) as writer:
        ids, arrays = _batch(0, 2)
        with pytest.raises(ValueError, match="'label' has 2 rows for 1 ids"):
            writer.append(ids[:1], arrays)
        writer.abort()
    assert list(tmp_path.iterdir()) == []


def _direct_reads_work_here(path) -> bool:
    with h5py.File(path, "r") as handle:
        reader = open_direct_rows(path, handle["features"], [0], 1)
    if reader is None:
        return False
    with reader:
        try:
            reader.read(0, 1, np.empty((1, 2, 3, 5), np.float16))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("how", ["direct", "h5py", "direct refused"])
@pytest.mark.parametrize("rows", [list(range(7)), [2, 3, 4, 5], [0, 2, 3, 6], [5]])
def test_chunks_of_staged_rows_equal_the_whole_read(tmp_path, monkeypatch, rows, how):
    """Straight from the disk (rows of 60 bytes: nothing aligned), through h5py, and through
    h5py after a file system refuses the first direct read: the same rows."""
    path = tmp_path / "part000of001-00000.h5"
    with EncodedFileWriter(path, HEADER, part=0, num_parts=1, seq=0) as writer:
        writer.append(*_batch(0, 4))
        writer.append(*_batch(4, 3))
    whole = read_encoded(path, ["features"])["features"]
    if how == "direct" and not _direct_reads_work_here(path):
        pytest.skip("this file system does not take O_DIRECT reads")
    io = IOStrategy(direct_io=how != "h5py")
    if how == "direct refused":
        def refuse(self, start, stop, out):
            raise OSError(errno.EINVAL, "Invalid argument")
        monkeypatch.setattr(DirectRows, "read", refuse)
    got, starts, buffers = [], [], set()
    for start, chunk in read_encoded_chunks(path, "features", rows, chunk=3, io=io):
        starts.append(start)
        got.append(chunk.copy())  # a view of a reused buffer: valid until the next chunk
        buffers.add(chunk.base.ctypes.data if chunk.base is not None else chunk.ctypes.data)
    assert starts == list(range(0, len(rows), 3))
    # Direct reads alternate two buffers (a thread reads one chunk ahead); h5py reuses one.
    assert len(buffers) == (min(2, len(starts)) if how == "direct" else 1)
    np.testing.assert_array_equal(np.concatenate(got), whole[rows])
    assert list(read_encoded_chunks(path, "features", [], chunk=3)) == []
    with pytest.raises(ArtifactError, match="cannot read staged array 'nope'"):
        list(read_encoded_chunks(path, "nope", rows, chunk=3))


def test_direct_reads_only_where_hdf5_stores_plain_rows(tmp_path):
    """Compressed grids, several rows per chunk, contiguous layout, unwritten rows: None
    (the caller reads through h5py)."""
    path = tmp_path / "layouts.h5"
    data = np.arange(4 * 6, dtype=np.float16).reshape(4, 2, 3)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("plain", data=data, chunks=(1, 2, 3))
        handle.create_dataset("lzf", data=data, chunks=(1, 2, 3), compression="lzf")
        handle.create_dataset("two_rows", data=data, chunks=(2, 2, 3))
        handle.create_dataset("contiguous", data=data)
        sparse = handle.create_dataset("sparse", shape=(4, 2, 3), dtype=np.float16, chunks=(1, 2, 3))
        sparse[0] = data[0]
    with h5py.File(path, "r") as handle:
        offsets = row_chunk_offsets(handle["plain"], [0, 1, 3])
        assert offsets is not None and len(offsets) == 3
        for name in ("lzf", "two_rows", "contiguous"):
            assert row_chunk_offsets(handle[name], [0, 1]) is None, name
        assert row_chunk_offsets(handle["sparse"], [0]) is not None
        assert row_chunk_offsets(handle["sparse"], [0, 1]) is None


def test_a_file_cut_short_is_an_error_not_zeros(tmp_path):
    path = tmp_path / "part000of001-00000.h5"
    with EncodedFileWriter(path, HEADER, part=0, num_parts=1, seq=0) as writer:
        writer.append(*_batch(0, 4))
    if not _direct_reads_work_here(path):
        pytest.skip("this file system does not take O_DIRECT reads")
    with h5py.File(path, "r") as handle:
        offsets = row_chunk_offsets(handle["features"], [0, 1, 2, 3])
    reader = DirectRows(path, offsets + path.stat().st_size, 60, 4)  # rows past the end
    with reader, pytest.raises(OSError, match="short"):
        reader.read(0, 4, np.empty((4, 2, 3, 5), np.float16))


def test_background_grid_writes_give_the_same_file_and_wait_before_reuse(tmp_path, monkeypatch):
    """Two buffers alternate as the encode step alternates them: the writer holds one write
    in flight, so overwriting the buffer of the batch before last is safe."""
    batches = [_batch(0, 3), _batch(3, 3), _batch(6, 3)]
    path = tmp_path / "part000of001-00000.h5"
    buffers = [{name: np.empty((3, 2, 3, 5), np.float16) for name in ("features", "features_flip")}
               for _ in range(2)]
    with EncodedFileWriter(path, HEADER, part=0, num_parts=1, seq=0) as writer:
        for k, (ids, arrays) in enumerate(batches):
            buffer = buffers[k % 2]
            for name in buffer:  # overwrites the buffer of batch k - 2, written by now
                buffer[name][:] = arrays[name]
            writer.append(ids, {**arrays, **buffer})
    got = read_encoded(path, ["features", "features_flip", "label"])
    for name in got:
        np.testing.assert_array_equal(got[name], np.concatenate([b[1][name] for b in batches]))


def test_a_failed_background_grid_write_is_raised_and_leaves_nothing(tmp_path, monkeypatch):
    def failing(self, name, array, attrs=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GridRowWriter, "append", failing)
    path = tmp_path / "part000of001-00000.h5"
    with pytest.raises(OSError, match="No space left"):
        with EncodedFileWriter(path, HEADER, part=0, num_parts=1, seq=0) as writer:
            writer.append(*_batch(0, 2))  # fails in the writer's thread
            writer.append(*_batch(2, 2))  # waits for it: raises here
    assert list(tmp_path.iterdir()) == []


def test_close_in_background_publishes_the_file_when_its_future_is_done(tmp_path):
    path = tmp_path / "part000of001-00000.h5"
    writer = EncodedFileWriter(path, HEADER, part=0, num_parts=1, seq=0)
    writer.append(*_batch(0, 2))
    entry = writer.close_in_background().result()
    assert path.exists() and entry.ids == ["img0", "img1"] and "features" in entry.contents
    with pytest.raises(ValueError, match="already closed"):
        writer.close_in_background()


def _misaligned_rows(n: int) -> np.ndarray:
    """float16 (n, 3, 7, 200) rows none of which starts on a page: 2 bytes past a page, then
    steps of 8400 bytes (8400 % 4096 = 208), so that they can never be written directly
    (a plain array's rows land wherever the allocator puts them, on a page now and then)."""
    backing = aligned_rows(1, (n * 3 * 7 * 200 + 1,), np.float16).reshape(-1)
    return backing[1:].reshape(n, 3, 7, 200)


def _big_batch(start: int, n: int, buffer: np.ndarray | None = None) -> tuple[list[str], dict[str, np.ndarray]]:
    """Rows of 8400 bytes (two 4 KiB blocks and a 208-byte rest), in ``buffer`` if given, else
    in rows that start off a page (:func:`_misaligned_rows`)."""
    rng = np.random.default_rng(start)
    grids = rng.random((n, 3, 7, 200)).astype(np.float16)
    buffer = _misaligned_rows(n) if buffer is None else buffer
    buffer[:n] = grids
    grids = buffer[:n]
    return [f"img{start + i}" for i in range(n)], {
        "label": np.zeros(n, np.int64), "image_size": np.full((n, 2), 7, np.int32),
        "pooled": np.zeros((n, 5), np.float32), "features": grids}


@pytest.mark.parametrize("how", ["direct", "refused"])
def test_grids_written_past_the_page_cache_read_back_equal(tmp_path, monkeypatch, how):
    """Rows on page boundaries (aligned_rows) go straight to their chunks, others (a plain
    array) through ordinary writes, and all of them through ordinary writes once the file
    system refuses a direct write: the file reads back the same through h5py."""
    path = tmp_path / "part000of001-00000.h5"
    real_pwrite = os.pwrite
    if how == "refused":
        def pwrite(fd, data, offset):
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_pwrite(fd, data, offset)
        monkeypatch.setattr(os, "pwrite", pwrite)
    aligned = aligned_rows(4, (3, 7, 200), np.float16)
    assert all(row.ctypes.data % ALIGN == 0 for row in aligned) and aligned.shape == (4, 3, 7, 200)
    batches = [_big_batch(0, 4, aligned), _big_batch(4, 3), _big_batch(7, 0)]
    expected = np.concatenate([arrays["features"].copy() for _, arrays in batches])
    writer = EncodedFileWriter(path, HEADER, part=0, num_parts=1, seq=0, expected_grid_bytes=64 << 20)
    direct = writer._grids.direct
    if direct is None or (how == "direct" and direct._direct_fd < 0):
        writer.abort()
        pytest.skip("this file system does not take O_DIRECT writes")
    with writer:
        for ids, arrays in batches:
            writer.append(ids, arrays)
    assert direct.direct_rows == (4 if how == "direct" else 0)
    with h5py.File(path, "r") as handle:
        np.testing.assert_array_equal(handle["features"][()], expected)
        assert handle["features"].chunks == (1, 3, 7, 200) and handle["features"].compression is None
    assert read_encoded(path, ["label"])["label"].shape == (7,)
