"""The raw store: CSV imports of the shared real data and of Binance's dump formats, validation that refuses a bad
write and leaves the store untouched, merges in any order (a property test), and concurrent writers."""
import zipfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cryptoml.core import DataError, raw_dir, sha256_file, shared_data
from exchange_emulator import binance_klines
from cryptoml.ingest import (EXAMPLE, EXAMPLE_FILES, OHLCV_COLUMNS, SYNTHETIC, example_market, funding_exchange, gap_report, import_csv, import_funding_csv,
                             read_bars, read_csv_rows, read_funding, synthetic_market, validate_bars, write_bars,
                             write_demo_market)

MARCH = pd.Timestamp("2023-03-01", tz="UTC")


@pytest.fixture(scope="module")
def minutes():
    "The shared real minute bars where this machine has them, else synthetic ones: the format tests need any minutes."
    path = shared_data(EXAMPLE_FILES[0])
    return validate_bars(read_csv_rows(path) if path else synthetic_market(days=7), timeframe="1m")


def test_the_shared_real_csv_imports_whole_and_only_once(bars_csv, tmp_path):
    report = import_csv(bars_csv, "binanceus", "BTC/USDT", "1m", home=tmp_path)
    assert (report.rows_added, report.first, report.last, report.missing) == (30_240, MARCH, pd.Timestamp("2023-03-21 23:59", tz="UTC"), 0)
    assert (report.gaps.expected == 1440).all() and len(report.gaps) == 21
    bars = read_bars(tmp_path, "binanceus", "BTC/USDT", "1m")
    assert (bars.volume == 0).sum() == 658                        # the data README's zero-volume minutes survive
    digest = sha256_file(report.paths[0])
    assert import_csv(bars_csv, "binanceus", "BTC/USDT", "1m", home=tmp_path).rows_added == 0
    assert sha256_file(report.paths[0]) == digest                 # nothing new: the month file is not even rewritten


def test_binance_dumps_in_every_layout_import_to_the_same_rows(minutes, tmp_path):
    week = minutes.iloc[:7 * 1440]
    dump = binance_klines(week)
    with zipfile.ZipFile(tmp_path/"BTCUSDT-1m-2023-03.zip", "w") as z:
        z.writestr("BTCUSDT-1m-2023-03.csv", dump.to_csv(index=False, header=False))
    dump.to_csv(tmp_path/"with_header.csv", index=False)
    binance_klines(week, time_unit="us").to_csv(tmp_path/"microseconds.csv", index=False, header=False)
    week.to_csv(tmp_path/"plain.csv", index=False)
    for name in ["BTCUSDT-1m-2023-03.zip", "with_header.csv", "microseconds.csv", "plain.csv"]:
        home = tmp_path/name.split(".")[0]
        assert import_csv(tmp_path/name, "binance", "BTC/USDT", "1m", home=home).rows_added == len(week), name
        pd.testing.assert_frame_equal(read_bars(home, "binance", "BTC/USDT", "1m")[OHLCV_COLUMNS], week.reset_index(drop=True))
    assert read_bars(tmp_path/"with_header", "binance", "BTC/USDT", "1m").trades.eq(10).all()


def test_overlapping_dumps_with_repeated_rows_import_without_duplicates(minutes, tmp_path):
    days = [minutes.iloc[i * 1440:(i + 2) * 1440] for i in range(3)]      # each file overlaps the next by a day
    for i, part in enumerate(days): pd.concat([part, part.iloc[:5]]).to_csv(tmp_path/f"part{i}.csv", index=False)
    report = import_csv([tmp_path/f"part{i}.csv" for i in range(3)], "binance", "BTC/USDT", "1m", home=tmp_path)
    pd.testing.assert_frame_equal(read_bars(tmp_path, "binance", "BTC/USDT", "1m")[OHLCV_COLUMNS], minutes.iloc[:4 * 1440].reset_index(drop=True))
    assert (report.rows_added, report.missing) == (4 * 1440, 0)


def test_the_shared_funding_csv_imports(funding_csv, tmp_path):
    assert import_funding_csv(funding_csv, "binance", "BTC/USDT", home=tmp_path) == 135
    rates = read_funding(tmp_path, "binance", "BTC/USDT")
    assert rates.ts.iloc[0] == pd.Timestamp("2023-02-15 00:00:00.011", tz="UTC")
    assert rates.ts.is_monotonic_increasing and rates.funding_rate.abs().max() < 0.01
    assert len(read_funding(tmp_path, "binance", "BTC/USDT", start="2023-03-01", end="2023-03-02")) == 3


def test_the_example_market_is_the_real_one_here_and_idempotent(bars_csv, funding_csv, tmp_path):
    assert example_market(tmp_path) == EXAMPLE
    files = {p: sha256_file(p) for p in (tmp_path/"raw").rglob("*.parquet")}
    assert example_market(tmp_path) == EXAMPLE
    assert {p: sha256_file(p) for p in (tmp_path/"raw").rglob("*.parquet")} == files
    assert len(read_bars(tmp_path, *EXAMPLE[:3])) == 30_240
    assert len(read_funding(tmp_path, funding_exchange(EXAMPLE), EXAMPLE.symbol)) == 135


def test_without_the_shared_data_the_example_market_is_the_synthetic_one(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYPTOML_SHARED_DATA", str(tmp_path/"no-shared-data"))
    assert example_market(tmp_path/"home") == SYNTHETIC
    assert len(read_bars(tmp_path/"home", *SYNTHETIC[:3])) == 30 * 1440
    assert example_market(tmp_path/"home") == SYNTHETIC


def test_the_demo_market_is_synthetic_everywhere(tmp_path):
    assert write_demo_market(tmp_path, days=2) == SYNTHETIC
    assert (tmp_path/"raw"/"synthetic"/"SYNTHUSDT"/"1m").is_dir() and (tmp_path/"raw"/"synthetic"/"SYNTHUSDT"/"funding").is_dir()
    bars = read_bars(tmp_path, *SYNTHETIC[:3])
    assert len(bars) == 2 * 1440 and gap_report(bars, "1m").missing.sum() == 0
    assert synthetic_market(days=2).attrs["source"] == "synthetic"


BAD_ROWS = {  # reason -> how to break row 5 of a good frame
    "high below open or close": lambda b: b.assign(high=b.high.where(b.index != 5, b.low - 1)),
    "low above open or close": lambda b: b.assign(low=b.low.where(b.index != 5, b.high + 1)),
    "negative volume": lambda b: b.assign(volume=b.volume.where(b.index != 5, -1.0)),
    "NaN or infinite price": lambda b: b.assign(close=b.close.where(b.index != 5, np.nan)),
    "given twice with different values": lambda b: b.assign(ts=b.ts.where(b.index != 5, b.ts[4])),
    "before the previous row (out of order)": lambda b: b.assign(ts=b.ts.where(b.index != 5, b.ts[3])),
    "not on the 1m grid": lambda b: b.assign(ts=b.ts.where(b.index != 5, b.ts[5] + pd.Timedelta("1s"))),
}


@pytest.mark.parametrize("reason", BAD_ROWS)
def test_a_bad_row_is_refused_by_ts_and_reason_and_the_store_is_untouched(tmp_path, reason):
    bars = synthetic_market(days=2, start="2023-02-28")
    write_bars(bars.iloc[:1000], tmp_path, "x", "BTC/USDT", "1m")
    folder = raw_dir(tmp_path, "x", "BTC/USDT", "1m")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    bad = BAD_ROWS[reason](bars)
    with pytest.raises(DataError) as refused:
        write_bars(bad, tmp_path, "x", "BTC/USDT", "1m")
    assert f"refused 1 bad row(s): {bad.ts[5]}: " in str(refused.value) and reason in str(refused.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


BARS = synthetic_market(days=3, seed=5, start="2023-02-27")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(BARS) - 1), st.integers(1, 2000)), min_size=1, max_size=6))
def test_writes_in_any_order_and_overlap_store_the_union(tmp_path_factory, slices):
    home = tmp_path_factory.mktemp("store")
    parts = [BARS.iloc[start:start + size] for start, size in slices]
    added = sum(write_bars(part, home, "x", "BTC/USDT", "1m") for part in parts)
    union = pd.concat(parts).drop_duplicates("ts").sort_values("ts").reset_index(drop=True)
    pd.testing.assert_frame_equal(read_bars(home, "x", "BTC/USDT", "1m")[OHLCV_COLUMNS], validate_bars(union)[OHLCV_COLUMNS])
    assert added == len(union)


def _write_every_other(args):
    home, first = args
    for i in range(first, 40, 2): write_bars(BARS.iloc[i * 100:(i + 1) * 100], home, "x", "BTC/USDT", "1m")


def test_concurrent_writers_of_one_month_lose_no_rows(tmp_path):
    with ProcessPoolExecutor(2) as pool: list(pool.map(_write_every_other, [(tmp_path, 0), (tmp_path, 1)]))
    pd.testing.assert_frame_equal(read_bars(tmp_path, "x", "BTC/USDT", "1m")[OHLCV_COLUMNS], validate_bars(BARS.iloc[:4000])[OHLCV_COLUMNS])


def _grow(home):
    for i in range(40): write_bars(BARS.iloc[i * 100:(i + 1) * 100], home, "x", "BTC/USDT", "1m")


def test_readers_never_see_a_half_replaced_month_while_a_writer_grows_it(tmp_path):
    reads = 0
    with ProcessPoolExecutor(1) as pool:
        writing = pool.submit(_grow, tmp_path)
        while not writing.done():
            bars = validate_bars(read_bars(tmp_path, "x", "BTC/USDT", "1m"), timeframe="1m")
            assert bars.ts.isin(BARS.ts).all()
            reads += 1
        writing.result()
    assert reads > 3
    assert len(read_bars(tmp_path, "x", "BTC/USDT", "1m")) == 4000
