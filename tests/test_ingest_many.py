"""Open interest, taker volume and many markets over the real ccxt.binance client and real HTTP (tests/exchange_emulator.py):
open interest arrives through every fault the bars survive (a rate limit, server errors, a slow or dropped answer, a
repeated or overlapping page, malformed JSON, null rows, a page out of order) and is refused by its time when it is
corrupt or from the future; the bars carry Binance's taker buy volume (through ccxt's raw kline endpoint, spot and
USDT-margined); an exchange without an open-interest endpoint is refused before any request; and many markets at
once lose none of the others' bars when one fails.
"""
from urllib.parse import urlsplit

import ccxt
import pandas as pd
import pytest

from cryptoml.core import ConfigError, DataError, ExchangeError, Market
from cryptoml.ingest import (OPEN_INTEREST_COLUMNS, as_open_interest, fetch_ohlcv, fetch_open_interest, ingest, ingest_many,
                             read_bars, read_open_interest, synthetic_interest, synthetic_market)
from exchange_emulator import BinanceEmulator, binance_client

FAST = dict(progress=False, retry_delay=0.01, limit=500)
SINCE = "2023-02-26"


@pytest.fixture(scope="module")
def source():
    "Five days of minute bars and their hourly open interest (120 samples: a page of 30 at Binance's default limit)."
    bars = synthetic_market(days=5, seed=8, start=SINCE)
    return bars, synthetic_interest(bars, seed=8)


@pytest.fixture
def exchange(source):
    bars, interest = source
    markets = {"BTC/USDT": bars, "ETH/USDT": bars.assign(**{c: (bars[c] * 0.07).round(8) for c in ("open", "high", "low", "close")})}
    with BinanceEmulator(bars=markets, open_interest={s: interest for s in markets}, slow_seconds=0.8) as emulator:
        yield emulator


@pytest.fixture
def client(exchange):
    return binance_client(exchange.url, timeout_ms=400)


def interest(home, symbol="BTC/USDT") -> pd.DataFrame:
    return read_open_interest(home, "binance", symbol)


def expected(source) -> pd.DataFrame:
    return as_open_interest(source[1])[OPEN_INTEREST_COLUMNS]


def test_open_interest_arrives_whole_and_resumes(exchange, client, source, tmp_path):
    first = ingest(client, "BTC/USDT", "1m", since=SINCE, until="2023-02-28", home=tmp_path, open_interest=True, **FAST)
    head = expected(source)[expected(source).ts < pd.Timestamp("2023-02-28", tz="UTC")]
    assert first.open_interest_added == len(head)
    asked = [params for path, params in exchange.requests if path.endswith("/openInterestHist")]
    assert {p["symbol"] for p in asked} == {"BTCUSDT"} and {p["period"] for p in asked} == {"5m"}   # the perpetual's; 5m for minute bars
    again = ingest(client, "BTC/USDT", "1m", home=tmp_path, open_interest=True, **FAST)
    assert first.open_interest_added + again.open_interest_added == len(source[1])
    pd.testing.assert_frame_equal(interest(tmp_path), expected(source))


@pytest.mark.parametrize("fault", ["429", "500", "502", "503", "slow", "drop", "repeat", "overlap", "418", "599", "garbled", "nulls",
                                   "shuffle"])
def test_open_interest_survives_the_faults_the_bars_survive(exchange, client, source, fault):
    exchange.inject("openInterestHist", "ok", fault, fault)
    got = fetch_open_interest(client, "BTC/USDT", since=SINCE, timeframe="1h", max_tries=3, progress=False, retry_delay=0.01, limit=30)
    pd.testing.assert_frame_equal(got, expected(source))


def test_open_interest_beyond_the_retry_budget_fails_clearly_and_the_store_keeps_what_it_had(exchange, client, source, tmp_path):
    ingest(client, "BTC/USDT", "1m", since=SINCE, until="2023-02-27", home=tmp_path, open_interest=True, **FAST)
    first_day = interest(tmp_path)
    exchange.inject("openInterestHist", "503", "503", "503")
    with pytest.raises(ExchangeError, match="BTC/USDT:USDT open interest from 2023-02-26 00:00:00\\+00:00: gave up after 3 tries"):
        ingest(client, "BTC/USDT", "1m", until="2023-02-28", home=tmp_path, open_interest=True, max_tries=3, **FAST)
    pd.testing.assert_frame_equal(first_day, expected(source)[expected(source).ts < pd.Timestamp("2023-02-27", tz="UTC")])
    pd.testing.assert_frame_equal(interest(tmp_path), first_day)              # nothing of the failed fetch stored
    assert len(read_bars(tmp_path, "binance", "BTC/USDT", "1m")) == 2 * 1440  # the bars fetched before it failed stay


@pytest.mark.parametrize("fault, words", [("corrupt", "NaN or infinite open interest [nan_interest]"), ("future", "2100-01-01 00:00:00+00:00: after now")])
def test_a_corrupt_or_future_open_interest_is_refused_by_its_time_and_nothing_of_it_stored(exchange, client, tmp_path, fault, words):
    ingest(client, "BTC/USDT", "1m", since=SINCE, until="2023-02-27", home=tmp_path, open_interest=True, **FAST)
    before = interest(tmp_path)
    exchange.inject("openInterestHist", fault)
    with pytest.raises(DataError) as refused:
        ingest(client, "BTC/USDT", "1m", home=tmp_path, open_interest=True, **FAST)
    assert words in str(refused.value)
    pd.testing.assert_frame_equal(interest(tmp_path), before)


def test_the_bars_carry_binances_taker_buy_volume_spot_and_perpetual(exchange, client, source, tmp_path):
    bars = source[0]
    ingest(client, "BTC/USDT", "1m", since=SINCE, home=tmp_path, **FAST)
    stored = read_bars(tmp_path, "binance", "BTC/USDT", "1m")
    assert {"quote_volume", "trades", "taker_buy_base"} <= set(stored.columns)
    pd.testing.assert_series_equal(stored.taker_buy_base, (bars.volume / 2).round(8), check_names=False, atol=1e-8, rtol=0)
    assert any(path == "/api/v3/klines" for path, _ in exchange.requests)
    perp = fetch_ohlcv(client, "BTC/USDT:USDT", "1m", since=SINCE, until="2023-02-26 06:00", **FAST)
    assert any(path == "/fapi/v1/klines" for path, _ in exchange.requests)
    pd.testing.assert_frame_equal(perp.reset_index(drop=True), stored.iloc[:360].reset_index(drop=True), check_dtype=False)


def test_klines_without_taker_come_from_ccxts_own_parser(exchange, client, tmp_path):
    bars = fetch_ohlcv(client, "BTC/USDT", "1m", since=SINCE, until="2023-02-26 01:00", taker=False, **FAST)
    assert list(bars.columns) == ["ts", "open", "high", "low", "close", "volume"] and len(bars) == 60


def test_an_exchange_without_an_open_interest_endpoint_is_refused_before_any_request(exchange, tmp_path):
    lacking = ccxt.binanceus({"timeout": 400, "options": {"fetchMarkets": {"types": ["spot"]}}})
    lacking.urls["api"] = {name: exchange.url + urlsplit(base).path for name, base in lacking.urls["api"].items()}
    assert not lacking.has.get("fetchOpenInterestHistory")
    with pytest.raises(ConfigError, match="binanceus does not offer fetchOpenInterestHistory"):
        ingest(lacking, "BTC/USDT", "1m", since=SINCE, home=tmp_path, open_interest=True, **FAST)
    assert exchange.requests == [] and not (tmp_path/"raw").exists()


def test_many_markets_one_failing_loses_none_of_the_others(exchange, client, source, tmp_path):
    exchange.inject("klines", "ok", "ok", "503", "503", "503", symbol="ETHUSDT")   # ETH's third page fails for good
    report = ingest_many(client, ["BTC/USDT", "ETH/USDT"], "1m", since=SINCE, home=tmp_path, open_interest=True, max_tries=3,
                         flush_rows=1000, **FAST)
    assert not report.ok and list(report.failures) == [Market("binance", "ETH/USDT", "1m")]
    assert "gave up after 3 tries" in report.failures[Market("binance", "ETH/USDT", "1m")]
    assert len(read_bars(tmp_path, "binance", "BTC/USDT", "1m")) == len(source[0]) and len(interest(tmp_path)) == len(source[1])
    assert len(read_bars(tmp_path, "binance", "ETH/USDT", "1m")) == 1000          # what ETH stored before it failed stays
    assert report.table().failure.tolist() == ["", report.failures[Market("binance", "ETH/USDT", "1m")]]
    again = ingest_many(client, ["BTC/USDT", "ETH/USDT"], "1m", home=tmp_path, open_interest=True, **FAST)   # resumes ETH
    assert again.ok and len(read_bars(tmp_path, "binance", "ETH/USDT", "1m")) == len(source[0])


def test_a_universe_with_an_unknown_symbol_is_refused_before_anything_is_fetched(exchange, client, tmp_path):
    with pytest.raises(ConfigError, match="binance has no market 'DOGE/USDT'"):
        ingest_many(client, ["BTC/USDT", "DOGE/USDT"], "1m", since=SINCE, home=tmp_path, **FAST)
    assert exchange.count("klines") == 0 and not (tmp_path/"raw").exists()
