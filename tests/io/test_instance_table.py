"""The instance table written a batch at a time: row groups in order, renamed into place only when whole."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from geoseg.io.instances import InstanceTableWriter, read_instance_table, table_from_columns

CLASSES = ["background", "building", "tree"]


def rows(first: int, n: int) -> pd.DataFrame:
    ids = list(range(first, first + n))
    boxes = [[i, i, i + 2, i + 3] for i in ids]
    return table_from_columns(ids, [1 + i % 2 for i in ids], CLASSES, [0.5] * n, boxes, [6] * n, 0.25)


def test_batches_are_row_groups_in_order_and_read_back_whole(tmp_path):
    path = tmp_path / "instances.parquet"
    with InstanceTableWriter(path) as writer:
        writer.write(rows(1, 3))
        writer.write(rows(4, 0))
        writer.write(rows(4, 2))
        assert not path.exists()  # only the partial file while writing
    assert writer.rows == 5
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    pd.testing.assert_frame_equal(read_instance_table(path), rows(1, 5).astype({"class": object}))


def test_an_exception_leaves_no_table_and_no_partial_file(tmp_path):
    path = tmp_path / "instances.parquet"
    with pytest.raises(RuntimeError), InstanceTableWriter(path) as writer:
        writer.write(rows(1, 2))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_batch_without_a_column_is_refused(tmp_path):
    with pytest.raises(ValueError, match="area_m2"), InstanceTableWriter(tmp_path / "t.parquet") as writer:
        writer.write(rows(1, 1).drop(columns="area_m2"))
