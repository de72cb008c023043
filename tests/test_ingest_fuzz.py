"""`cryptoml import` fuzzed (issue 19): random bytes, random CSV-shaped text and random perturbations of a good file
are fed to the real command, over a store that already holds two hours of minute bars.

Every outcome must be one of two: a successful import of valid bars (every stored bar passes every rule, and
the bars stored before are unchanged), or exit 2 with one line on stderr naming the file, and the raw store byte
for byte what it was. Anything else, a traceback or exit 1, is a bug. The examples are bounded so that the
whole file runs in well under a minute; a few cases also go through the installed console script.
"""
import contextlib, io, os, random, re, shutil, subprocess, tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st
from hypothesis.errors import InvalidArgument

from cryptoml.cli import main
from cryptoml.ingest import OHLCV_COLUMNS, read_bars, synthetic_market, validate_bars
from raw_store import digest

MARKET = ["--exchange", "binance", "--symbol", "BTC/USDT", "--timeframe", "1m"]
MINUTES = synthetic_market(days=3 / 24, seed=19, start="2023-03-01")    # 180 bars
STORED, FED = MINUTES.iloc[:120], MINUTES.iloc[60:]                      # the fed file overlaps the store's second hour
GOOD = FED.to_csv(index=False).encode()
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    "A data root holding the first two hours, imported by the command itself."
    root = tmp_path_factory.mktemp("seeded")
    STORED.to_csv(root/"stored.csv", index=False)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["import", str(root/"stored.csv"), *MARKET, "--home", str(root/"home"), "--quiet"]) == 0
    return root/"home"


def imported(data: bytes, seeded: Path):
    "Feed `data` to `cryptoml import` over a copy of the seeded store, and check the outcome is one of the two allowed."
    with tempfile.TemporaryDirectory() as tmp:
        home, fed = Path(tmp)/"home", Path(tmp)/"fed.csv"
        shutil.copytree(seeded, home)
        fed.write_bytes(data)
        before, out, err = digest(home), io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["import", str(fed), *MARKET, "--home", str(home), "--quiet"])
        said = err.getvalue()
        outcome = ", ".join(re.findall(r"\[(\w+)\]", said)) or said.removeprefix(f"cryptoml import: error: {fed}: ").split(" (")[0]
        with contextlib.suppress(InvalidArgument): event(f"exit {status}: {outcome[:40]}")   # --hypothesis-show-statistics
        assert status in (0, 2), said                                   # 1 would be a bug: a traceback
        if status == 2:
            assert said.startswith("cryptoml import: error: ") and said.count("\n") == 1 and "fed.csv" in said, said
            assert digest(home) == before
            return
        stored = read_bars(home, "binance", "BTC/USDT", "1m")
        validate_bars(stored, "the store after a fuzzed import", "1m")      # every stored bar passes every rule
        kept = stored.set_index("ts").loc[STORED.ts, OHLCV_COLUMNS[1:]].reset_index()
        pd.testing.assert_frame_equal(kept, STORED[OHLCV_COLUMNS].reset_index(drop=True), check_dtype=False)


CELLS = st.one_of(
    st.sampled_from(["", "nan", "inf", "-inf", "-1", "0", "1e300", "-1e300", "1.5", "2023-03-01 00:00:00", "2023-03-01T01:30:00Z",
                     "2100-01-01", "1970-01-01", "1677628800000", "1677628800", "1677628800000000", "True", "abc", '"', "'", ";"]),
    st.integers(-10**20, 10**20).map(str),
    st.floats().map(repr),
    st.text(max_size=6),
)
HEADERS = st.lists(st.sampled_from(["ts", "open_time", "timestamp", "time", "Date", "open", "high", "low", "close", "volume", "trades",
                                    "quote_volume", "taker_buy_base", "funding_rate", "x", ""]), min_size=1, max_size=13)


MINUTE = st.integers(27_960_480, 27_960_720).map(lambda minute: str(minute * 60_000))   # 2023-03-01, in epoch ms
PRICE = st.floats(19_900, 20_100).map(lambda price: f"{price:.2f}")


@st.composite
def csv_shaped(draw) -> bytes:
    "Text with a CSV's shape: no header, the OHLCV header or plausible names; rows of times and prices, sometimes absurd."
    width = draw(st.sampled_from([6, 6, 12, 2]) | st.integers(1, 13))
    header = draw(st.sampled_from([None, OHLCV_COLUMNS, HEADERS]))
    header = draw(header) if header is HEADERS else header
    row = st.tuples(MINUTE | CELLS, st.lists(PRICE | CELLS, min_size=width - 1, max_size=width - 1))
    lines = ([",".join(header)] if header else []) + [",".join([ts, *cells]) for ts, cells in draw(st.lists(row, max_size=25))]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


EDITS = st.one_of(
    st.tuples(st.just("drop line"), st.integers(0, 130)),
    st.tuples(st.just("repeat line"), st.integers(0, 130), st.integers(0, 130)),
    st.tuples(st.just("swap lines"), st.integers(0, 130), st.integers(0, 130)),
    st.tuples(st.just("set cell"), st.integers(0, 130), st.integers(0, 7), CELLS),
    st.tuples(st.just("truncate"), st.integers(0, len(GOOD))),
    st.tuples(st.just("insert bytes"), st.integers(0, len(GOOD)), st.binary(min_size=1, max_size=6)),
)


def edited(data: bytes, edit: tuple) -> bytes:
    "`data` with one `edit` applied: lines dropped, repeated, swapped, a cell changed, the file cut short, bytes slipped in."
    kind, *at = edit
    if kind == "truncate": return data[:at[0]]
    if kind == "insert bytes": return data[:at[0]] + at[1] + data[at[0]:]
    lines = data.split(b"\n")
    i = at[0] % len(lines)
    if kind == "drop line": del lines[i]
    elif kind == "repeat line": lines.insert(at[1] % len(lines), lines[i])
    elif kind == "swap lines": j = at[1] % len(lines); lines[i], lines[j] = lines[j], lines[i]
    else:
        cells = lines[i].split(b",")
        cells[at[1] % len(cells)] = at[2].encode("utf-8", "surrogatepass")
        lines[i] = b",".join(cells)
    return b"\n".join(lines)


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes(seeded, data):
    imported(data, seeded)


@FUZZ
@given(csv_shaped())
def test_random_csv_shaped_text(seeded, data):
    imported(data, seeded)


@settings(FUZZ, max_examples=150)
@given(st.lists(EDITS, min_size=1, max_size=4))
def test_random_edits_of_a_good_file(seeded, edits):
    data = GOOD
    for edit in edits: data = edited(data, edit)
    imported(data, seeded)


def test_the_good_file_itself_imports(seeded):
    imported(GOOD, seeded)


@pytest.mark.parametrize("name, data", [("noise.csv", random.Random(7).randbytes(2000)),
                                        ("half.csv", GOOD[:len(GOOD) // 2 + 7] + b"\x00\xff" + GOOD[len(GOOD) // 2:])])
def test_the_console_script_refuses_garbage_in_one_line(seeded, tmp_path, name, data):
    home = tmp_path/"home"
    shutil.copytree(seeded, home)
    (tmp_path/name).write_bytes(data)
    before = digest(home)
    env = {k: v for k, v in os.environ.items() if k != "CRYPTOML_HOME"}
    done = subprocess.run(["cryptoml", "import", str(tmp_path/name), *MARKET, "--home", str(home), "--quiet"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"cryptoml import: error: {tmp_path/name}: not CSV text") and done.stderr.count("\n") == 1
    assert digest(home) == before
