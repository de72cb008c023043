"""Hostile input to `cryptoml import` (issue 19), as a user types it: each row of the issue's table is a test.

The story: a good minute import is stored first; then files that are empty, binary, in the wrong timeframe,
from the future, at odds with the store or with themselves, or absurd are fed to the command. Each is refused
with exit status 2 and one line on stderr naming the file and the problem, and the raw store stays byte for
byte what it was (a checksum of every file under `raw/` before and after). A deliberate correction goes
through with `--replace`, and is logged. The shared real data imports without a false alarm.
"""
import json, random, re
from pathlib import Path

import pandas as pd
import pytest

import cryptoml.cli as cli
from cryptoml.cli import main
from cryptoml.core import shared_data
from cryptoml.ingest import read_bars, read_funding, synthetic_funding, synthetic_market
from raw_store import digest

MARKET = ["--exchange", "binance", "--symbol", "BTC/USDT", "--timeframe", "1m"]
GOOD = synthetic_market(days=2, seed=11, start="2023-03-01")     # stored first, in every test
NEXT = synthetic_market(days=3, seed=11, start="2023-03-01").iloc[len(GOOD):].reset_index(drop=True)   # the day after
REAL = ["binanceus_BTCUSDT_1m_2023-03-01_2023-03-21.csv", *(f"binance_perp_{c}USDT_1h_2021-2022.csv"
                                                            for c in ["BTC", "ETH", "SOL", "BNB", "DOGE", "LINK"])]


def cryptoml(capsys, *args, home) -> tuple[int, str, str]:
    "Exit status, stdout and stderr of `cryptoml ARGS --home HOME --quiet`, run in-process as the console script runs it."
    status = main([*map(str, args), "--home", str(home), "--quiet"])
    out, err = capsys.readouterr()
    return status, out, err


def csv(path: Path, bars: pd.DataFrame) -> Path:
    bars.to_csv(path, index=False)
    return path


@pytest.fixture
def home(tmp_path, capsys):
    "A data root holding a good import of two days of minute bars, and funding rates for them."
    home = tmp_path/"home"
    rates = synthetic_funding(GOOD, seed=11).rename(columns={"ts": "timestamp"})
    status, _, err = cryptoml(capsys, "import", csv(tmp_path/"good.csv", GOOD), *MARKET,
                              "--funding-csv", csv(tmp_path/"rates.csv", rates), home=home)
    assert status == 0, err
    return home


def refused(capsys, file: Path, home: Path, *words: str, args=MARKET) -> str:
    "Import `file`, check it is refused (exit 2, one line naming the file and `words`) and the store unchanged; the line."
    before = digest(home)
    status, out, err = cryptoml(capsys, "import", file, *args, home=home)
    assert (status, out) == (2, ""), err
    assert err.startswith("cryptoml import: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert file.name in err, err
    for word in words: assert word in err, (word, err)
    assert digest(home) == before
    return err


# | empty file; random bytes; a binary (PNG-like) file | exit 2, one line naming the file and the problem |
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00\x1f\xf3\xffa"


@pytest.mark.parametrize("name, content, problem", [
    ("empty.csv", b"", "empty file"),
    ("noise.csv", random.Random(19).randbytes(4096), "not CSV text"),
    ("chart.png", PNG + random.Random(20).randbytes(2048), "not CSV text"),
    ("latin1.csv", "ts,open,high,low,close,volume\n2023-03-03 00:00,1,2,0.5,1.5,3 \xa3\n".encode("latin-1"), "not CSV text"),
])
def test_unreadable_files_are_refused_by_name(home, tmp_path, capsys, name, content, problem):
    (tmp_path/name).write_bytes(content)
    refused(capsys, tmp_path/name, home, problem)


# | a 1h file imported as --timeframe 1m | refused: the bars' spacing does not match the timeframe |
def test_an_hourly_file_imported_as_minutes_is_refused_naming_the_spacing(home, tmp_path, capsys):
    real = shared_data(REAL[1])
    hourly = pd.read_csv(real).iloc[:48] if real else synthetic_market(days=2, timeframe="1h", start="2023-03-05")
    err = refused(capsys, csv(tmp_path/"hours.csv", hourly), home, "1h apart", "not 1m", "[spacing]")
    assert err.count("[") == 1                                        # one reason, not one per bar


def test_minutes_with_gaps_still_import_as_minutes(home, tmp_path, capsys):
    holey = NEXT.drop(index=[*range(0, len(NEXT), 3), *range(100, 220)])   # every third minute and two hours missing
    status, out, err = cryptoml(capsys, "import", csv(tmp_path/"holey.csv", holey), *MARKET, home=home)
    assert status == 0, err
    assert f"{len(holey)} new bars" in out


# | one bar dated 2100-01-01 | refused: a bar that opens after now (or not closed yet) is never stored |
def test_a_bar_from_2100_is_refused(home, tmp_path, capsys):
    future = pd.concat([NEXT.iloc[:10], NEXT.iloc[[10]].assign(ts=pd.Timestamp("2100-01-01", tz="UTC"))])
    refused(capsys, csv(tmp_path/"future.csv", future), home, "2100-01-01 00:00:00+00:00: after now", "[future]")


def test_a_bar_not_closed_yet_is_refused(home, tmp_path, capsys):
    now = pd.Timestamp.now(tz="UTC").floor("1min")
    live = synthetic_market(days=1 / 24, seed=3, start=now - pd.Timedelta("59min"))
    assert live.ts.iloc[-1] == now                                    # the last bar is the one forming right now
    refused(capsys, csv(tmp_path/"live.csv", live), home, "still open", "[still_open]")


# | bars already stored, re-imported with different prices (x2) | refused by default, naming the first conflicting
# bar and both values; an explicit --replace (logged) for a deliberate correction |
def test_stored_bars_reimported_with_other_prices_are_refused_unless_replaced(home, tmp_path, capsys):
    doubled = GOOD.iloc[:1440].assign(**{c: GOOD[c].iloc[:1440] * 2 for c in ["open", "high", "low", "close"]})
    file = csv(tmp_path/"doubled.csv", doubled)
    first = GOOD.iloc[0]
    refused(capsys, file, home, f"{first.ts}: differs from the stored row: open {first.open:g} stored, {2 * first.open:g} given",
            "--replace", "[conflict]")
    status, out, err = cryptoml(capsys, "import", file, *MARKET, "--replace", home=home)
    assert status == 0, err
    assert "1440 stored bars replaced" in out and "replaced 1440 stored row(s)" in err
    stored = read_bars(home, "binance", "BTC/USDT", "1m")
    assert stored.close.iloc[:1440].tolist() == doubled.close.tolist() and stored.close.iloc[1440:].tolist() == GOOD.close.iloc[1440:].tolist()
    log = [json.loads(line) for line in (home/"raw"/"replacements.jsonl").read_text().splitlines()]
    assert [(e["rows"], e["first"], e["last"], e["source"]) for e in log] == [(1440, str(first.ts), str(GOOD.ts[1439]), str(file))]


def test_an_identical_reimport_adds_nothing_and_rewrites_nothing(home, tmp_path, capsys):
    before = digest(home)
    status, out, err = cryptoml(capsys, "import", csv(tmp_path/"again.csv", GOOD), *MARKET, home=home)
    assert (status, err) == (0, "")
    assert out.startswith("binance BTC/USDT 1m: 0 new bars")
    assert digest(home) == before


def test_a_refused_write_touches_no_month_not_even_a_new_one(home, tmp_path, capsys):
    february = synthetic_market(days=1, seed=4, start="2023-02-28")                 # new bars in a month not yet stored
    changed = GOOD.iloc[5:10].assign(volume=GOOD.volume.iloc[5:10] + 1)             # and five that differ from the store
    refused(capsys, csv(tmp_path/"mixed.csv", pd.concat([february, changed])), home, "[conflict]")
    assert not (home/"raw"/"binance"/"BTCUSDT"/"1m"/"2023-02.parquet").exists()


# | the same timestamp twice in one file with different values | refused, naming the timestamp |
def test_one_timestamp_twice_with_different_values_is_refused_by_its_time(home, tmp_path, capsys):
    twice = pd.concat([NEXT.iloc[:20], NEXT.iloc[[7]].assign(close=NEXT.close[7] + 1, high=NEXT.high[7] + 1)])
    refused(capsys, csv(tmp_path/"twice.csv", twice), home, f"{NEXT.ts[7]}: given twice with different values", "[duplicate]")


def test_identical_repeats_are_dropped_and_counted(home, tmp_path, capsys):
    repeated = pd.concat([NEXT.iloc[:20], NEXT.iloc[[3, 7, 7]]])
    status, out, err = cryptoml(capsys, "import", csv(tmp_path/"repeated.csv", repeated), *MARKET, home=home)
    assert status == 0, err
    assert "20 new bars" in out and "3 repeated rows dropped" in out


# | a price of 1e300, a volume of 1e300 | refused as implausible (bound documented) |
@pytest.mark.parametrize("change, words", [
    (dict(high=1e300), ["implausible price", "[price_range]"]),
    (dict(volume=1e300), ["implausible volume", "[volume_range]"]),
    (dict(close=2e6, high=2e6), ["implausible price: high 2e+06", "orders of magnitude", "[spike]"]),   # 100x its neighbours
])
def test_implausible_prices_and_volumes_are_refused(home, tmp_path, capsys, change, words):
    absurd = NEXT.iloc[:60].copy()
    for column, value in change.items(): absurd.loc[30, column] = value
    refused(capsys, csv(tmp_path/"absurd.csv", absurd), home, str(absurd.ts[30]), *words)


# | a header-only file | fine, or a warning; must not write anything |
def test_a_header_only_file_writes_nothing_and_says_so(home, tmp_path, capsys):
    (tmp_path/"header.csv").write_text("open_time,open,high,low,close,volume\n")
    for root in (home, tmp_path/"fresh"):
        before = digest(root) if root.exists() else None
        status, out, err = cryptoml(capsys, "import", tmp_path/"header.csv", *MARKET, home=root)
        assert status == 0 and "0 new bars" in out
        assert "header.csv holds no rows" in err
        assert (digest(root) if before else list((root/"raw").rglob("*"))) == (before or [])


# Funding rates: the same spirit
@pytest.mark.parametrize("change, words", [
    (dict(ts=pd.Timestamp("2100-01-01", tz="UTC")), ["2100-01-01 00:00:00+00:00: after now", "[future]"]),
    (dict(funding_rate=5.0), ["implausible funding rate", "[rate_range]"]),
    (dict(funding_rate=0.0042), ["differs from the stored row: funding_rate", "[conflict]"]),
])
def test_bad_funding_rates_are_refused(home, tmp_path, capsys, change, words):
    rates = synthetic_funding(GOOD, seed=11)
    for column, value in change.items(): rates.loc[len(rates) - 1, column] = value
    bars = csv(tmp_path/"bars.csv", GOOD)   # stored already: the funding file is what is refused
    before = digest(home)
    status, out, err = cryptoml(capsys, "import", bars, *MARKET, "--funding-csv", csv(tmp_path/"rates.csv", rates), home=home)
    assert (status, out) == (2, ""), err
    assert "rates.csv" in err and err.count("\n") == 1
    for word in words: assert word in err, (word, err)
    assert digest(home) == before
    assert len(read_funding(home, "binance", "BTC/USDT")) == len(rates)


# The shared real data: a crash, a rally, pumps and LUNA/FTX-era hours, and not one false alarm
@pytest.mark.parametrize("name", REAL)
def test_the_shared_real_data_imports_without_a_false_alarm(tmp_path, capsys, name):
    path = shared_data(name)
    if path is None: pytest.skip(f"real market data {name} is not on this machine (../shared/data); CI has it")
    symbol, timeframe = re.search(r"_([A-Z]+)USDT_", name)[1] + "/USDT", "1m" if "_1m_" in name else "1h"
    status, out, err = cryptoml(capsys, "import", path, "--symbol", symbol, "--timeframe", timeframe, home=tmp_path)
    assert status == 0, err
    rows = len(pd.read_csv(path))
    assert f"{rows} new bars" in out and "0 missing" in out


# The command itself: a user's error is one line and exit 2, a bug a traceback, exit 1 and a plea to report it
def test_a_bug_is_a_traceback_exit_1_and_a_request_to_report_it(tmp_path, capsys, monkeypatch):
    def broken(args): return {}["no such key"]
    monkeypatch.setitem(cli.COMMANDS, "runs", (broken, *cli.COMMANDS["runs"][1:]))
    status, out, err = cryptoml(capsys, "runs", home=tmp_path)
    assert (status, out) == (1, "")
    assert "Traceback" in err and "KeyError" in err
    assert err.rstrip().splitlines()[-1].startswith("cryptoml runs: internal error") and "please report" in err
