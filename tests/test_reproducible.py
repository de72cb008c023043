"""Reproducible feature tables on the shared real data.

The same bars must give the same table bytes, in any process and any data root: a run's card pins its table by
sha256, and five rebuilds used to give five sha256s. A run trains on an immutable snapshot of its table, which
keeps its bytes however often the table is rebuilt; the retention rule removes only snapshots no run references.
And the point-in-time check built from a stored table refuses to run on bars that changed since the build.
"""
import errno, os, shutil, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

from cryptoml.core import ConfigError, DataError, sha256_file, shared_data
from cryptoml.features import (FEATURES, Feature, build_features, content_digest, feature_code_sha256, prune_snapshots,
                               read_feature_table, sma_gap, snapshot_dir, snapshot_table, table_asof)
from cryptoml.core import Market
from cryptoml.ingest import example_market, funding_exchange, import_csv, read_bars, read_funding, write_bars

ETH = "binance_perp_ETHUSDT_1h_2021-2022.csv"
DAY = 86_400


def build_in_a_fresh_process(home, market: Market, feature_set: str, hash_seed: int) -> str:
    "sha256 of the table `build_features` writes in a new Python process with PYTHONHASHSEED=`hash_seed`."
    code = ("from cryptoml.core import sha256_file; from cryptoml.features import build_features; "
            "from cryptoml.core import Market; "
            f"print(sha256_file(build_features(Market(*{tuple(market)!r}), home={str(home)!r}, feature_set={feature_set!r}, "
            "progress=False)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": str(hash_seed)})
    return out.stdout.strip()


@pytest.fixture(scope="module")
def btc(bars_csv, funding_csv, tmp_path_factory):
    "A data root with the shared 1-minute BTC/USDT bars and the perpetual's funding rates; its market."
    home = tmp_path_factory.mktemp("btc")
    return home, example_market(home)


@pytest.fixture(scope="module")
def eth(tmp_path_factory):
    "A data root with the shared 1-hour ETH/USDT perpetual bars (2021-2022, no funding); its market."
    path = shared_data(ETH)
    if path is None: pytest.skip(f"real market data {ETH} is not on this machine")
    home = tmp_path_factory.mktemp("eth")
    import_csv(path, "binance", "ETH/USDT", "1h", home=home)
    return home, Market("binance", "ETH/USDT", "1h")


@pytest.mark.parametrize("feature_set", ["seed", "rich"])
def test_building_twice_from_the_same_bars_gives_the_same_bytes(btc, eth, feature_set):
    "Two fresh processes with different hash seeds, on the 1-minute BTC bars (with funding) and the 1-hour ETH perpetual."
    for home, market in (btc, eth):
        shas = [build_in_a_fresh_process(home, market, feature_set, seed) for seed in (1, 2)]
        print(f"\n{market.symbol} {market.timeframe} {feature_set}: {shas}")
        assert shas[0] == shas[1]


def test_another_data_root_with_the_same_bars_builds_the_same_bytes(btc, tmp_path):
    "Nothing of where or when a table was built is in it: a second root importing the same CSVs gets the same bytes."
    home, market = btc
    other = tmp_path/"other"
    assert example_market(other) == market
    first, second = (build_features(market, home=h, feature_set="rich", progress=False) for h in (home, other))
    assert sha256_file(first) == sha256_file(second)


def test_the_metadata_says_what_the_table_was_built_from(btc):
    home, market = btc
    table, meta = read_feature_table(build_features(market, home=home, progress=False))
    bars, funding = read_bars(home, *market[:3]), read_funding(home, funding_exchange(market), market.symbol)
    assert meta["bars"] == content_digest(bars) and meta["bars"]["rows"] == len(bars) == 30_240
    assert meta["bars"]["first"] == "2023-03-01T00:00:00+00:00" and meta["bars"]["last"] == "2023-03-21T23:59:00+00:00"
    assert meta["funding"] == content_digest(funding) and meta["funding"]["rows"] == 135
    assert meta["code_sha256"] == feature_code_sha256(meta["features"]) and "built_at" not in meta
    assert table.attrs["cryptoml"] == meta


def test_a_changed_formula_changes_the_code_hash(monkeypatch):
    "The seed set's sma20_gap redefined over 21 bars: same name, same function body, other closure, other hash."
    before = feature_code_sha256(["close", "sma20_gap"])
    monkeypatch.setitem(FEATURES, "sma20_gap", Feature("sma20_gap", 20, sma_gap(21), FEATURES["sma20_gap"].doc))
    assert feature_code_sha256(["close", "sma20_gap"]) != before
    assert feature_code_sha256(["close"]) == feature_code_sha256(["close"])


def test_a_snapshot_keeps_the_bytes_a_run_trained_on_through_rebuilds(btc):
    home, market = btc
    path = build_features(market, home=home, progress=False)
    trained_on = sha256_file(path)
    snap = snapshot_table(path, home)
    assert snap == snapshot_dir(home)/f"{trained_on}.parquet"
    assert os.stat(snap).st_ino == os.stat(path).st_ino, "a hard link: no bytes copied"
    assert os.stat(snap).st_mode & 0o222 == 0, "read-only"
    rebuilt = build_features(market, home=home, dead_zone=0.5, progress=False)
    assert rebuilt == path and sha256_file(path) != trained_on
    assert sha256_file(snap) == trained_on and read_feature_table(snap)[1]["dead_zone"] is None
    build_features(market, home=home, progress=False)  # the next-bar table again: the same bytes, the same snapshot
    assert sha256_file(path) == trained_on and snapshot_table(path, home) == snap
    assert not list(snapshot_dir(home).glob(".*.tmp"))


def test_a_snapshot_is_copied_where_hard_links_are_refused(btc, tmp_path, monkeypatch):
    home, market = btc
    path = build_features(market, home=home, feature_set="rich", horizon=2, progress=False)
    def refuse(*args, **kwargs): raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", refuse)
    snap = snapshot_table(path, tmp_path/"elsewhere")
    assert snap.name == f"{sha256_file(path)}.parquet" and sha256_file(snap) == snap.stem
    assert os.stat(snap).st_ino != os.stat(path).st_ino and os.stat(snap).st_mode & 0o222 == 0


def test_concurrent_snapshots_of_one_table_agree(btc):
    home, market = btc
    path = build_features(market, home=home, horizon=4, progress=False)
    with ThreadPoolExecutor(8) as pool: snaps = set(pool.map(lambda _: snapshot_table(path, home), range(16)))
    assert snaps == {snapshot_dir(home)/f"{sha256_file(path)}.parquet"}
    assert not list(snapshot_dir(home).glob(".*.tmp"))


def test_the_retention_rule_keeps_what_runs_reference_and_what_is_young(btc, tmp_path):
    home, market = btc
    root = tmp_path/"root"
    snaps = [snapshot_table(build_features(market, home=home, horizon=h, progress=False), root) for h in (1, 6, 7)]
    referenced, unreferenced, young = snaps
    old = time.time() - 40 * DAY
    for snap in (referenced, unreferenced): os.utime(snap, (old, old))
    (snapshot_dir(root)/".0123abcd.tmp").write_bytes(b"left by a killed snapshot")
    (snapshot_dir(root)/"notes.txt").write_text("not a snapshot: never touched")
    later = time.time() + 2 * 3600  # the temporary file is then two hours old
    doomed = prune_snapshots(root, keep={referenced.stem}, now=later, dry_run=True)
    assert doomed == [snapshot_dir(root)/".0123abcd.tmp", unreferenced] and unreferenced.exists()
    assert prune_snapshots(root, keep={referenced.stem}, now=later) == doomed
    assert sorted(p.name for p in snapshot_dir(root).iterdir()) == sorted([referenced.name, young.name, "notes.txt"])
    assert prune_snapshots(root, keep={referenced.stem}, now=time.time() + 31 * DAY) == [young]
    with pytest.raises(ConfigError, match="'abc.parquet'"): prune_snapshots(root, keep={"abc.parquet"})
    assert prune_snapshots(tmp_path/"empty") == []


def test_the_point_in_time_check_refuses_bars_changed_since_the_build(btc, tmp_path):
    "Corrected bars would make honest features look like leaks; bars added after the table's span change nothing."
    home, market = btc
    meta = read_feature_table(build_features(market, home=home, progress=False))[1]
    copy = tmp_path/"copy"
    shutil.copytree(home/"raw", copy/"raw")
    later = read_bars(copy, *market[:3]).tail(1).assign(ts=lambda b: b.ts + pd.Timedelta("1min"))
    write_bars(later, copy, *market[:3])
    assert len(table_asof(meta, copy)(later.ts.iloc[0] + pd.Timedelta("2min"))) == 30_241  # the new bar is simply known
    corrected = read_bars(copy, *market[:3]).iloc[[12_345]]
    write_bars(corrected.assign(close=corrected.close * 1.0001, high=corrected.high * 1.0001), copy, *market[:3], replace=True)
    with pytest.raises(DataError, match="the stored bars of binanceus BTC/USDT 1m changed since the feature table was built"):
        table_asof(meta, copy)
    with pytest.raises(DataError, match="no bars in"): table_asof(meta, tmp_path/"empty")
    with pytest.raises(ConfigError, match="names no timeframe"): table_asof({**meta, "timeframe": None}, home)
