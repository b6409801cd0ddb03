"""Staging files of the pseudo-labels stage, written batch by batch."""

import h5py
import numpy as np
import pytest

from tedloc.artifacts.staging import read_encoded, read_encoded_chunks, scan_encoded
from tedloc.artifacts.staging_writer import EncodedFileWriter, GridRowWriter
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


@pytest.mark.parametrize("rows", [list(range(7)), [2, 3, 4, 5], [0, 2, 3, 6], [5]])
def test_chunks_of_staged_rows_equal_the_whole_read(tmp_path, rows):
    """Consecutive rows (read straight into the buffer) and scattered ones: the same rows,
    chunk by chunk, in one reused buffer."""
    path = tmp_path / "part000of001-00000.h5"
    with EncodedFileWriter(path, HEADER, part=0, num_parts=1, seq=0) as writer:
        writer.append(*_batch(0, 4))
        writer.append(*_batch(4, 3))
    whole = read_encoded(path, ["features"])["features"]
    got, starts, buffers = [], [], set()
    for start, chunk in read_encoded_chunks(path, "features", rows, chunk=3):
        starts.append(start)
        got.append(chunk.copy())  # a view of a reused buffer: valid until the next chunk
        buffers.add(chunk.base.ctypes.data if chunk.base is not None else chunk.ctypes.data)
    assert starts == list(range(0, len(rows), 3))
    assert len(buffers) == 1
    np.testing.assert_array_equal(np.concatenate(got), whole[rows])
    assert list(read_encoded_chunks(path, "features", [], chunk=3)) == []
    with pytest.raises(ArtifactError, match="cannot read staged array 'nope'"):
        list(read_encoded_chunks(path, "nope", rows, chunk=3))


def test_a_failed_grid_write_is_raised_and_leaves_nothing(tmp_path, monkeypatch):
    def failing(self, name, array, attrs=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GridRowWriter, "append", failing)
    path = tmp_path / "part000of001-00000.h5"
    with pytest.raises(OSError, match="No space left"):
        with EncodedFileWriter(path, HEADER, part=0, num_parts=1, seq=0) as writer:
            writer.append(*_batch(0, 2))
    assert list(tmp_path.iterdir()) == []


def test_a_closed_file_cannot_be_closed_again(tmp_path):
    path = tmp_path / "part000of001-00000.h5"
    writer = EncodedFileWriter(path, HEADER, part=0, num_parts=1, seq=0)
    writer.append(*_batch(0, 2))
    entry = writer.close()
    assert path.exists() and entry.ids == ["img0", "img1"] and "features" in entry.contents
    with pytest.raises(ValueError, match="already closed"):
        writer.close()
