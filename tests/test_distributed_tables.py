"""Pooled tables and their partitions keep the feature-table contract: every column required, an unknown value NaN.

The story: three synthetic markets' seed feature tables are stored, one of them as a table written before the
contract (nullable columns holding nulls). `pooled_table` stacks them and `write_partitions` splits the stack by market
and month. Every file written has required columns and not one null, only NaN where a value is unknown; pandas reads
the markets' rows back as they were, and `connect`'s DuckDB view of the pooled table counts as many known values (and
as many NULLs) per column as the markets' own views do together. Built twice, the files are the same bytes, so the
partitions' manifest names the same table. A market whose table has other columns, or none, is refused by name and
the pooled table stored before is kept.
"""
import json, shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryptoml.core import DataError, Market, feature_path, sha256_file
from cryptoml.features import build_features, connect, read_feature_table, table_view
from cryptoml.distributed import parts_dir, pooled_table, read_partitions, write_partitions, write_synthetic

SYMBOLS = ["AAA/USDT", "BBB/USDT", "CCC/USDT"]

def nulls(path) -> dict[str, int]:
    "Columns of the Parquet file `path` holding nulls, with how many."
    table = pq.read_table(path)
    return {name: table[name].null_count for name in table.column_names if table[name].null_count}

@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    "Three markets' seed tables on hourly bars; the last one rewritten as a table from before the contract (nulls)."
    home = tmp_path_factory.mktemp("pooled-tables")
    markets = [write_synthetic(Market("synthetic", s, "1h"), home, days=90) for s in SYMBOLS]
    paths = [build_features(m, home=home, progress=False) for m in markets]
    old, meta = read_feature_table(paths[-1])
    arrow = pa.Table.from_pandas(old, preserve_index=False)  # pandas' NaN becomes null, in nullable columns
    pq.write_table(arrow.replace_schema_metadata({**arrow.schema.metadata, b"cryptoml": json.dumps(meta).encode()}),
                   paths[-1])
    assert nulls(paths[-1]) and pq.read_schema(paths[-1]).field("vol_z").nullable
    return home, markets, paths

def stacked(paths) -> pd.DataFrame:
    "The markets' feature tables as pandas reads them, one after another, each with its `market` code first."
    return pd.concat([(t := read_feature_table(p)[0]).assign(market=float(code))[["market", *t.columns]]
                      for code, p in enumerate(paths)], ignore_index=True)

def test_a_pooled_table_has_required_columns_holding_nan_and_reads_as_its_markets(stored):
    home, markets, paths = stored
    path = pooled_table(home, markets)
    schema = pq.read_schema(path)
    assert [f.name for f in schema if f.nullable] == []
    assert nulls(path) == {}
    rows = pd.read_parquet(path)
    pd.testing.assert_frame_equal(rows, stacked(paths))
    assert rows.vol_z.isna().sum() > 0 and rows.y.isna().sum() == len(markets)  # unknown values, stored as NaN
    floats = [f.name for f in schema if pa.types.is_floating(f.type)]
    with connect(home) as con:
        counts = lambda p: con.execute(f"""SELECT count(*), {', '.join(f'count("{c}")' for c in floats[1:])}
                                           FROM "{table_view(p)}" """).fetchone()
        assert counts(path) == tuple(map(sum, zip(*map(counts, paths))))  # NaN read as NULL, as in each market's view
        unknown = con.execute(f'SELECT count(*) FROM "{table_view(path)}" WHERE vol_z IS NULL').fetchone()[0]
        assert unknown == rows.vol_z.isna().sum()

def test_its_partitions_have_required_columns_holding_nan_and_read_as_the_table(stored):
    home, markets, _ = stored
    path = pooled_table(home, markets)
    folder = write_partitions(path, progress=False)
    parts, manifest = read_partitions(folder)
    table = pd.read_parquet(path)
    assert [(f["market"], f["month"]) for f in manifest["files"]] == sorted(set(zip(table.market.astype(int),
                                                                                  table.ts.dt.strftime("%Y-%m"))))
    for f in manifest["files"]:
        file = pq.ParquetFile(folder/f["path"])
        assert [c.name for c in file.schema_arrow if c.nullable] == [] and nulls(folder/f["path"]) == {}, f
        assert (file.metadata.num_rows, file.num_row_groups) == (f["rows"], f["row_groups"])
    pd.testing.assert_frame_equal(parts.compute().reset_index(drop=True), table)

def test_building_twice_writes_the_same_bytes(stored):
    home, markets, _ = stored
    path = pooled_table(home, markets)
    first, manifest = sha256_file(path), read_partitions(write_partitions(path, progress=False))[1]
    files = {f["path"]: sha256_file(parts_dir(path)/f["path"]) for f in manifest["files"]}
    again = read_partitions(write_partitions(pooled_table(home, markets), progress=False))[1]
    assert sha256_file(path) == first == manifest["table_sha256"] == again["table_sha256"]
    assert {f["path"]: sha256_file(parts_dir(path)/f["path"]) for f in again["files"]} == files

def test_a_market_with_other_columns_or_no_table_is_refused_by_name_and_nothing_is_written(stored, tmp_path):
    home, markets, paths = stored
    other = tmp_path/"home"
    shutil.copytree(home, other)
    before = sha256_file(pooled_table(other, markets))
    moved = feature_path(other, markets[1], "seed", 1)
    table, meta = read_feature_table(moved)
    arrow = pa.Table.from_pandas(table.drop(columns="vol_z"), preserve_index=False)
    pq.write_table(arrow.replace_schema_metadata({b"cryptoml": json.dumps(meta).encode()}), moved)
    target = feature_path(other, Market("synthetic", "POOL/PANEL", "1h"), "seed", 1)
    with pytest.raises(DataError, match=f"{moved} has columns"): pooled_table(other, markets)
    with pytest.raises(DataError, match="no feature table at .*DDDUSDT"):
        pooled_table(other, [*markets, Market("synthetic", "DDD/USDT", "1h")])
    assert sha256_file(target) == before and not list(other.rglob("*.tmp"))  # the table stored before is kept
