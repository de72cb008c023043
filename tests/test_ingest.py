"""Ingest over the real ccxt.binance client and real HTTP: a local Binance (tests/exchange_emulator.py) serves the
bars and funding rates, fails on demand, and answers like a hostile server (malformed JSON, a teapot, null rows,
bars from the future or still forming, pages out of order, history rewritten): each ends in a correct retry, a
correct result, or a clear error with the store unchanged."""
import os, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest

from cryptoml.core import ConfigError, DataError, ExchangeError, Market, raw_dir
from cryptoml.ingest import (OHLCV_COLUMNS, as_bars, fetch_funding, fetch_ohlcv, ingest, make_exchange, read_bars,
                             read_csv_rows, read_funding, synthetic_funding, synthetic_market, validate_bars)
from exchange_emulator import BinanceEmulator, binance_client
from raw_store import digest

TESTS = Path(__file__).parent
FAST = dict(progress=False, retry_delay=0.01, limit=500)   # small pages, quick retries
GAPS = [100, 101, 102, 3000]                               # minutes the source itself lacks


@pytest.fixture(scope="module")
def source():
    "Five days of bars across a month boundary, with a few minutes missing at the source."
    bars = synthetic_market(days=5, seed=7, start="2023-02-26")
    return bars.drop(index=GAPS).reset_index(drop=True)


@pytest.fixture(scope="module")
def rates(source):
    return synthetic_funding(source, seed=7)


@pytest.fixture
def exchange(source, rates):
    with BinanceEmulator(bars={"BTC/USDT": source}, funding={"BTC/USDT": rates}, slow_seconds=0.8) as emulator:
        yield emulator


@pytest.fixture
def client(exchange):
    return binance_client(exchange.url, timeout_ms=400)


def stored(home, exchange_id="binance"):
    return read_bars(home, exchange_id, "BTC/USDT", "1m")[OHLCV_COLUMNS]


def expected(bars):
    return validate_bars(bars)[OHLCV_COLUMNS]


def test_full_history_arrives_in_order_without_duplicates_or_invented_gaps(exchange, client, source, tmp_path):
    exchange.inject("klines", "ok", "overlap", "ok", "repeat")
    report = ingest(client, "BTC/USDT", "1m", since="2023-02-26", home=tmp_path, **FAST)
    pd.testing.assert_frame_equal(stored(tmp_path), expected(source))
    assert report.rows_added == len(source)
    assert report.missing == len(GAPS)
    assert report.gaps.loc[pd.Timestamp("2023-02-26", tz="UTC"), "missing"] == 3
    assert sorted(p.name for p in report.paths) == ["2023-02.parquet", "2023-03.parquet"]


def test_the_shared_real_minutes_arrive_exactly(bars_csv, tmp_path):
    real = as_bars(read_csv_rows(bars_csv))
    with BinanceEmulator(bars={"BTC/USDT": real}) as exchange:
        report = ingest(binance_client(exchange.url, market_types=("spot",)), "BTC/USDT", "1m", since="2023-03-01", home=tmp_path, progress=False)
    pd.testing.assert_frame_equal(stored(tmp_path), real[OHLCV_COLUMNS])
    assert (report.rows_added, report.missing) == (30_240, 0)


def test_a_second_run_resumes_after_the_last_stored_bar(exchange, client, source, tmp_path):
    first = ingest(client, "BTC/USDT", "1m", since="2023-02-26", until="2023-02-28 12:00", home=tmp_path, **FAST)
    assert first.last == pd.Timestamp("2023-02-28 11:59", tz="UTC")
    exchange.requests.clear()
    second = ingest(client, "BTC/USDT", "1m", home=tmp_path, **FAST)
    klines = [params for path, params in exchange.requests if path.endswith("/klines")]
    assert int(klines[0]["startTime"]) == pd.Timestamp("2023-02-28 12:00", tz="UTC").value // 10**6
    assert first.rows_added + second.rows_added == len(source)
    pd.testing.assert_frame_equal(stored(tmp_path), expected(source))
    assert ingest(client, "BTC/USDT", "1m", home=tmp_path, **FAST).rows_added == 0


def test_the_bar_still_open_is_never_stored(tmp_path):
    now = pd.Timestamp.now(tz="UTC").floor("1min")
    live = synthetic_market(days=1 / 24, start=now - pd.Timedelta("59min"))
    assert live.ts.iloc[-1] == now                       # the emulator serves the bar forming right now
    with BinanceEmulator(bars={"BTC/USDT": live}) as exchange:
        ingest(binance_client(exchange.url), "BTC/USDT", "1m", since=live.ts.iloc[0], home=tmp_path, progress=False)
    last = stored(tmp_path).ts.iloc[-1]
    rolled_over = pd.Timestamp.now(tz="UTC").floor("1min") > now
    assert last == now - pd.Timedelta("1min") or (rolled_over and last == now)


@pytest.mark.parametrize("fault, extra_requests", [("429", 2), ("500", 2), ("502", 2), ("503", 2), ("slow", 2), ("drop", 2),
                                                    ("repeat", 2), ("overlap", 1)])
def test_faults_within_the_retry_budget_are_survived(exchange, client, source, tmp_path, fault, extra_requests):
    exchange.inject("klines", "ok", fault, fault)        # the second page fails twice; the third try succeeds
    ingest(client, "BTC/USDT", "1m", since="2023-02-26", home=tmp_path, max_tries=3, **FAST)
    pd.testing.assert_frame_equal(stored(tmp_path), expected(source))
    pages = len(source) // 500 + 1 + 1                   # full pages, the last part page, the empty answer that ends it
    assert exchange.count("klines") == pages + extra_requests   # two retries; two half-new overlapping pages


def test_faults_beyond_the_budget_fail_clearly_and_lose_nothing_stored(exchange, client, source, tmp_path):
    exchange.inject("klines", "ok", "ok", "ok", "ok", "503", "503", "503")
    with pytest.raises(ExchangeError) as failed:
        ingest(client, "BTC/USDT", "1m", since="2023-02-26", home=tmp_path, max_tries=3, flush_rows=1000, **FAST)
    assert str(failed.value).startswith(f"binance BTC/USDT 1m from {expected(source).ts[2000]}: gave up after 3 tries; last error ExchangeNotAvailable")
    pd.testing.assert_frame_equal(stored(tmp_path), expected(source).iloc[:2000])
    ingest(client, "BTC/USDT", "1m", home=tmp_path, **FAST)
    pd.testing.assert_frame_equal(stored(tmp_path), expected(source))


def test_a_corrupt_row_is_refused_with_its_time_and_the_store_keeps_what_it_had(exchange, client, source, tmp_path):
    exchange.inject("klines", "ok", "ok", "corrupt")
    with pytest.raises(DataError) as refused:
        ingest(client, "BTC/USDT", "1m", since="2023-02-26", home=tmp_path, flush_rows=1000, **FAST)
    assert f"{pd.Timestamp(exchange.corrupted[0], unit='ms', tz='UTC')}: high below open or close" in str(refused.value)
    pd.testing.assert_frame_equal(stored(tmp_path), expected(source).iloc[:1000])
    ingest(client, "BTC/USDT", "1m", home=tmp_path, **FAST)
    pd.testing.assert_frame_equal(stored(tmp_path), expected(source))


def test_permanent_failures_fail_at_once_with_the_reason(exchange, client, tmp_path):
    with pytest.raises(ConfigError, match="unknown exchange 'binanse'.*did you mean 'binance'"):
        ingest("binanse", "BTC/USDT", "1m", home=tmp_path)
    with pytest.raises(ConfigError, match="binance has no market 'DOGE/USDT'"):
        fetch_ohlcv(client, "DOGE/USDT", "1m", **FAST)
    with pytest.raises(ConfigError, match="binance has no '7m' bars"):
        fetch_ohlcv(client, "BTC/USDT", "7m", **FAST)
    assert exchange.count("klines") == 0
    with pytest.raises(ExchangeError, match="Invalid interval"):                # an interval this emulator lacks
        fetch_ohlcv(client, "BTC/USDT", "5m", since="2023-02-26", **FAST)
    exchange.inject("klines", "401")
    with pytest.raises(ExchangeError, match="authentication failed: AuthenticationError"):
        fetch_ohlcv(client, "BTC/USDT", "1m", since="2023-02-26", **FAST)
    assert exchange.count("klines") == 2                                       # neither was retried


def test_the_rate_limiter_is_on_and_spaces_requests(exchange, source):
    client = make_exchange(binance_client(exchange.url, enableRateLimit=False))
    assert client.enableRateLimit
    bars = fetch_ohlcv(client, "BTC/USDT", "1m", since="2023-03-02", limit=100, progress=False)   # small, quick pages
    assert len(bars) == 1440
    times = [t for (path, _), t in zip(exchange.requests, exchange.request_times) if path.endswith("/klines")]
    spacing = client.rateLimit * 0.4 / 1000                                    # Binance spot klines cost 0.4 of 50 ms
    assert times[-1] - times[0] >= 0.95 * spacing * (len(times) - 1)


def test_funding_rates_arrive_through_faults_and_resume(exchange, client, rates, tmp_path):
    exchange.inject("fundingRate", "429", "drop")
    report = ingest(client, "BTC/USDT", "1m", since="2023-02-26", until="2023-03-01", home=tmp_path, funding=True, **FAST)
    head = rates[rates.ts < pd.Timestamp("2023-03-01", tz="UTC")]
    assert (report.market, report.funding_added) == (Market("binance", "BTC/USDT", "1m"), len(head))
    report = ingest(client, "BTC/USDT", "1m", home=tmp_path, funding=True, **FAST)
    assert report.funding_added == len(rates) - len(head)
    pd.testing.assert_frame_equal(read_funding(tmp_path, "binance", "BTC/USDT"), rates)


def test_funding_pages_follow_the_irregular_stamps(exchange, client, rates):
    exchange.inject("fundingRate", "ok", "overlap", "repeat", "503")
    pd.testing.assert_frame_equal(fetch_funding(client, "BTC/USDT", since="2023-02-26", **FAST | {"limit": 4}), rates)
    assert len(rates) == 15
    assert exchange.count("fundingRate") == 8   # pages of 4, 2 new (overlap), 4, 4, 1 rows, the empty answer, two retries


def test_a_corrupt_funding_rate_is_refused(exchange, client):
    exchange.inject("fundingRate", "corrupt")
    with pytest.raises(DataError, match="NaN or infinite funding rate"):
        fetch_funding(client, "BTC/USDT", since="2023-02-26", **FAST)
    spot_only = binance_client(exchange.url, market_types=("spot",))
    with pytest.raises(ConfigError, match="lists no perpetual swap for 'BTC/USDT'"):
        fetch_funding(spot_only, "BTC/USDT", since="2023-02-26", **FAST)


@pytest.mark.parametrize("fault", ["418", "599", "garbled", "nulls"])
def test_hostile_answers_within_the_retry_budget_are_asked_again(exchange, client, source, tmp_path, fault):
    exchange.inject("klines", "ok", fault, fault)        # the second page is a teapot, an unknown 5xx, malformed JSON, null rows
    ingest(client, "BTC/USDT", "1m", since="2023-02-26", home=tmp_path, max_tries=3, **FAST)
    pd.testing.assert_frame_equal(stored(tmp_path), expected(source))
    assert exchange.count("klines") == len(source) // 500 + 2 + 2


@pytest.mark.parametrize("fault, last_error", [
    ("418", "DDoSProtection: binance 418 I'm a Teapot"),
    ("599", "ExchangeError: binance GET"),
    ("garbled", "MalformedAnswer: binance answered malformed JSON"),
    ("nulls", "StalePage: binance answered 500 row(s), none of them from"),
])
def test_hostile_answers_beyond_the_budget_fail_clearly_and_the_store_keeps_what_it_had(exchange, client, tmp_path, fault, last_error):
    ingest(client, "BTC/USDT", "1m", since="2023-02-26", until="2023-02-27", home=tmp_path, **FAST)
    before = digest(tmp_path)
    exchange.inject("klines", *[fault] * 3)
    with pytest.raises(ExchangeError) as failed:
        ingest(client, "BTC/USDT", "1m", home=tmp_path, max_tries=3, **FAST)
    assert f"from 2023-02-27 00:00:00+00:00: gave up after 3 tries; last error {last_error}" in str(failed.value)
    if fault == "599": assert str(failed.value).endswith("(HTTP 599)")
    assert digest(tmp_path) == before


def test_a_bar_from_the_future_is_refused_by_its_time_and_nothing_of_its_batch_is_stored(exchange, client, source, tmp_path):
    ingest(client, "BTC/USDT", "1m", since="2023-02-26", until="2023-02-27", home=tmp_path, **FAST)
    before = digest(tmp_path)
    exchange.inject("klines", "ok", "future")            # the second page's last bar opens on 2100-01-01
    with pytest.raises(DataError) as refused:
        ingest(client, "BTC/USDT", "1m", home=tmp_path, **FAST)
    assert "2100-01-01 00:00:00+00:00: after now" in str(refused.value) and "[future]" in str(refused.value)
    assert digest(tmp_path) == before
    ingest(client, "BTC/USDT", "1m", home=tmp_path, **FAST)   # the store still resumes where it ended
    pd.testing.assert_frame_equal(stored(tmp_path), expected(source))


def test_a_bar_still_forming_is_dropped_and_the_bar_it_displaced_comes_next(exchange, client, source, tmp_path):
    exchange.inject("klines", "ok", "open", "ok", "open")    # two pages end in the bar forming right now
    ingest(client, "BTC/USDT", "1m", since="2023-02-26", home=tmp_path, **FAST)
    pd.testing.assert_frame_equal(stored(tmp_path), expected(source))
    assert [fault for fault, _ in exchange.hostile] == ["open", "open"]


def test_pages_out_of_order_arrive_in_order(exchange, client, source, tmp_path):
    exchange.inject("klines", "shuffle", "ok", "shuffle")    # ccxt sorts a page by time; nothing is lost or repeated
    ingest(client, "BTC/USDT", "1m", since="2023-02-26", home=tmp_path, **FAST)
    pd.testing.assert_frame_equal(stored(tmp_path), expected(source))


def test_hostile_funding_answers_are_asked_again_or_refused(exchange, client, rates):
    exchange.inject("fundingRate", "garbled", "ok", "nulls", "shuffle", "599")
    pd.testing.assert_frame_equal(fetch_funding(client, "BTC/USDT", since="2023-02-26", **FAST | {"limit": 4}), rates)
    exchange.inject("fundingRate", "ok", "future")
    with pytest.raises(DataError, match=r"2100-01-01 00:00:00\+00:00: after now .*\[future\]"):
        fetch_funding(client, "BTC/USDT", since="2023-02-26", **FAST | {"limit": 4})


def test_an_exchange_that_rewrites_stored_history_is_refused_unless_replace(source, tmp_path):
    with BinanceEmulator(bars={"BTC/USDT": source}) as honest:
        ingest(binance_client(honest.url), "BTC/USDT", "1m", since="2023-02-26 12:00", until="2023-02-27", home=tmp_path, **FAST)
    before = digest(tmp_path)
    rewritten = source.assign(**{c: source[c] * 2 for c in ["open", "high", "low", "close"]})
    with BinanceEmulator(bars={"BTC/USDT": rewritten}) as rewriting:
        client = binance_client(rewriting.url)
        with pytest.raises(DataError, match=r"2023-02-26 12:00:00\+00:00: differs from the stored row: open \S+ stored, \S+ given"):
            ingest(client, "BTC/USDT", "1m", since="2023-02-26", home=tmp_path, **FAST)
        assert digest(tmp_path) == before
        report = ingest(client, "BTC/USDT", "1m", since="2023-02-26", home=tmp_path, replace=True, **FAST)
    assert report.replaced == 720
    pd.testing.assert_frame_equal(stored(tmp_path), expected(rewritten))
    assert '"rows": 720' in (tmp_path/"raw"/"replacements.jsonl").read_text()


CHILD = """
import sys
sys.path.insert(0, {tests!r})
from exchange_emulator import binance_client
from cryptoml.ingest import ingest
ingest(binance_client({url!r}), "BTC/USDT", "1m", since="2023-02-26", home={home!r}, progress=False, limit=100, flush_rows=200)
"""


def test_a_run_killed_mid_ingest_then_rerun_ends_with_exactly_the_source_rows(source, rates, tmp_path):
    folder = raw_dir(tmp_path, "binance", "BTC/USDT", "1m")
    with BinanceEmulator(bars={"BTC/USDT": source}, delay=0.01) as exchange:
        child = subprocess.Popen([sys.executable, "-c", CHILD.format(tests=str(TESTS), url=exchange.url, home=str(tmp_path))])
        try:
            deadline = time.monotonic() + 60
            while not list(folder.glob("*.parquet")) and child.poll() is None and time.monotonic() < deadline: time.sleep(0.01)
            time.sleep(0.3)
            assert child.poll() is None, "the ingest finished before it could be killed"
            os.kill(child.pid, signal.SIGKILL)
        finally: child.wait()
        assert child.returncode == -signal.SIGKILL
        partial = stored(tmp_path)
        assert 0 < len(partial) < len(source)
        pd.testing.assert_frame_equal(partial, expected(source).iloc[:len(partial)])
        ingest(binance_client(exchange.url), "BTC/USDT", "1m", since="2023-02-26", home=tmp_path, progress=False, limit=1000)
    pd.testing.assert_frame_equal(stored(tmp_path), expected(source))
