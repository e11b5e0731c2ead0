import pandas as pd
import pytest

from actsparse.io import atomic_path
from actsparse.tables import LINEARS, METRICS, TableError, read_table, write_table


def _linears():
    return pd.DataFrame(
        {
            "layer": [0],
            "site": ["ffn_in"],
            "linear": ["model.layers.0.mlp.up_proj"],
            "in_features": [8],
            "out_features": [16],
        }
    )


def test_roundtrip_checks_schema(tmp_path):
    write_table(_linears(), tmp_path / "l.parquet", LINEARS)
    back = read_table(tmp_path / "l.parquet", LINEARS)
    assert back.to_dict("records") == _linears().to_dict("records")
    with pytest.raises(TableError, match="missing column 'stage'"):
        read_table(tmp_path / "l.parquet", METRICS)


def test_writer_refuses_wrong_columns(tmp_path):
    with pytest.raises(TableError, match="missing.*out_features"):
        write_table(_linears().drop(columns="out_features"), tmp_path / "x.parquet", LINEARS)
    assert not (tmp_path / "x.parquet").exists()


def test_corrupted_and_truncated_files_name_the_file(tmp_path):
    path = tmp_path / "l.parquet"
    write_table(_linears(), path, LINEARS)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(TableError, match="l.parquet"):
        read_table(path, LINEARS)
    with pytest.raises(TableError, match="not found: .*nope.parquet"):
        read_table(tmp_path / "nope.parquet", LINEARS)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
