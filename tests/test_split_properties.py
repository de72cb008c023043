"""Property tests of the time split, walk-forward folds and purged k-fold folds, on random tables.

Hypothesis draws a table (bar length, random gaps, random unknown labels), a label horizon, purge, embargo,
validation length and fold count. Whatever it draws, a split either is refused with a ConfigError because a set
would be empty, or it keeps training strictly before validation (k-fold: on both sides of it), drops exactly the
purged and embargoed rows, and loses no other labelled row. The leakage guard's structural checks agree with a
direct count.
"""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from cryptoml.core import ConfigError, LeakageError
from cryptoml.split import (LeakageGuard, Split, label_window_problems, lookback_problems, purged_kfold, time_order_problems,
                            time_split, walk_forward)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BARS = {"1m": pd.Timedelta("1min"), "5m": pd.Timedelta("5min"), "1h": pd.Timedelta("1h")}


@st.composite
def tables(draw):
    "A feature table on a random bar grid with gaps, a `horizon`-bar label, and some labels unknown (a dead zone)."
    bar = BARS[draw(st.sampled_from(sorted(BARS)))]
    n = draw(st.integers(30, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    horizon = draw(st.integers(1, 6))
    rng = np.random.default_rng(seed)
    grid = pd.date_range("2023-03-01", periods=n + n // 5, freq=bar, tz="UTC")
    keep = np.sort(rng.choice(len(grid), n, replace=False)) if draw(st.booleans()) else np.arange(n)
    close = pd.Series(100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(keep)))))
    fwd = close.shift(-horizon) / close - 1
    y = (fwd > 0).astype(float).where(fwd.notna() & (rng.random(len(keep)) > 0.1))
    table = pd.DataFrame({"ts": grid[keep].astype("datetime64[ms, UTC]"), "f": rng.normal(size=len(keep)), "fwd_ret": fwd, "y": y})
    return table, bar, horizon


def expected_sets(table, val_start, val_end, train_start, purge, embargo) -> dict:
    "The timestamps each set must hold, by row position: `purge` rows, then `embargo` rows, dropped before validation."
    ts, labelled = table.ts, table.y.notna()
    t0, v0, v1 = (int((ts < t).sum()) for t in (train_start, val_start, val_end))
    pick = lambda a, b: list(ts.iloc[a:b][labelled.iloc[a:b]])
    gap0, gap1 = max(t0, v0 - purge - embargo), max(t0, v0 - purge)
    return {"train": pick(t0, gap0), "val": pick(v0, v1), "purged": pick(gap1, v0), "embargoed": pick(gap0, gap1)}


def check_split(split, want, table, train_start, val_end):
    "`split` holds exactly the expected sets, keeps training before validation, and loses no labelled row."
    got = {k: list(getattr(split, k).ts) for k in want}
    assert got == want
    every = [t for v in got.values() for t in v]
    assert len(every) == len(set(every))
    assert set(every) == set(table.ts[table.y.notna() & (table.ts >= train_start) & (table.ts < val_end)])
    assert split.train.ts.max() < split.val.ts.min()
    assert split.summary()["rows"] == {k: len(v) for k, v in got.items()}


def refused(make, wants) -> bool:
    "Call `make()`; if it raises ConfigError, some expected set must be empty (returns True)."
    try: make()
    except ConfigError as e:
        assert any(not w["train"] or not w["val"] for w in wants), e
        event("refused: a set would be empty")
        return True
    assert all(w["train"] and w["val"] for w in wants)
    return False


def windows_joining(split: Split, table, lookback: int = 1) -> tuple[bool, bool, bool]:
    "Counted directly: training label window holds validation; validation label window holds training; training look-back holds validation."
    pos = {t: i for i, t in enumerate(table.ts)}
    train, val, h = {pos[t] for t in split.train.ts}, {pos[t] for t in split.val.ts}, split.horizon
    return (any(p + k in val for p in train for k in range(1, h + 1)), any(q + k in train for q in val for k in range(1, h + 1)),
            any(p - k in val for p in train for k in range(1, lookback)))


def kfold_expected(table, n_folds: int, purge: int, embargo: int) -> list[dict]:
    "Each fold's timestamps by part, row by row: `n_folds` equal blocks validate; `purge` rows before a block and `embargo` after it drop."
    n, labelled = len(table), table.y.notna().to_numpy()
    edges = [k * n // n_folds for k in range(n_folds + 1)]
    def part(p, v0, v1):
        return "val" if v0 <= p < v1 else "purged" if v0 - purge <= p < v0 else "embargoed" if v1 <= p < v1 + embargo else "train"
    return [{k: [table.ts.iloc[p] for p in range(n) if labelled[p] and part(p, v0, v1) == k] for k in ("train", "val", "purged", "embargoed")}
            for v0, v1 in zip(edges, edges[1:])]


@SETTINGS
@given(tables(), st.floats(0.05, 0.9), st.one_of(st.none(), st.integers(0, 8)), st.one_of(st.none(), st.integers(0, 8)))
def test_time_split_keeps_order_and_drops_exactly_the_purged_rows(drawn, val_share, purge, embargo):
    table, bar, horizon = drawn
    start, end = table.ts.iloc[0], table.ts.iloc[-1] + bar
    val_days = (end - start) / pd.Timedelta(days=1) * val_share
    want = expected_sets(table, end - pd.Timedelta(days=val_days), end, start, horizon if purge is None else purge, embargo or 0)
    make = lambda: time_split(table, val_days, purge, embargo, horizon=horizon)
    if refused(make, [want]): return
    split = make()
    check_split(split, want, table, start, end)
    assert (split.horizon, split.purge, split.embargo) == (horizon, horizon if purge is None else purge, embargo or 0)
    # the guard's label check flags the split exactly when a label window crosses; a purge >= horizon never crosses
    crossing, priced, _ = windows_joining(split, table)
    assert bool(label_window_problems(split, table)) == crossing and not priced
    if split.purge >= horizon: assert not crossing


@SETTINGS
@given(tables(), st.integers(1, 5), st.sampled_from(["expanding", "rolling"]), st.booleans(),
       st.one_of(st.none(), st.integers(0, 8)), st.one_of(st.none(), st.integers(0, 8)))
def test_walk_forward_folds_tile_the_end_and_train_only_on_the_past(drawn, n_folds, mode, given_days, purge, embargo):
    table, bar, horizon = drawn
    start, end = table.ts.iloc[0], table.ts.iloc[-1] + bar
    span_days = (end - start) / pd.Timedelta(days=1)
    val_days = span_days / (n_folds + 2) if given_days else None
    train_days = span_days / 3 if mode == "rolling" and given_days else None
    val = pd.Timedelta(days=val_days) if given_days else (end - start) / (n_folds + 1)
    first = end - n_folds * val
    train = pd.Timedelta(days=train_days) if train_days else first - start
    windows = [(vs - train if mode == "rolling" else start, vs, vs + val) for vs in (first + k * val for k in range(n_folds))]
    wants = [expected_sets(table, vs, ve, t0, horizon if purge is None else purge, embargo or 0) for t0, vs, ve in windows]
    make = lambda: walk_forward(table, n_folds, val_days, mode=mode, train_days=train_days, purge=purge, embargo=embargo, horizon=horizon)
    if refused(make, wants): return
    folds = make()
    assert len(folds) == n_folds
    for fold, want, (train_start, _, val_end) in zip(folds, wants, windows): check_split(fold, want, table, train_start, val_end)
    assert folds[-1].val.ts.iloc[-1] == table.ts[table.y.notna()].iloc[-1]
    for a, b in zip(folds, folds[1:]): assert a.val.ts.max() < b.val.ts.min()


@SETTINGS
@given(tables(), st.floats(0.1, 0.5))
def test_a_shuffled_split_never_passes_the_guard(drawn, val_share):
    "A random (not time-ordered) split of the same rows is always caught by the structural checks."
    table, _, horizon = drawn
    labelled = table[table.y.notna()]
    val = labelled.sample(frac=val_share, random_state=0).sort_values("ts")
    train = labelled.drop(val.index)
    if val.empty or train.empty or train.ts.max() < val.ts.min():
        event("skipped: the shuffle happened to keep time order")
        return
    with pytest.raises(LeakageError, match="not strictly before validation"):
        LeakageGuard().check(Split(train, val, horizon=horizon, purge=horizon), table)


@SETTINGS
@given(tables(), st.integers(2, 6), st.integers(0, 10), st.one_of(st.none(), st.integers(0, 8)), st.one_of(st.none(), st.integers(0, 12)))
def test_purged_kfold_partitions_the_labels_and_drops_exactly_the_purged_and_embargoed_rows(drawn, n_folds, warm_up, purge, embargo):
    "Validation blocks partition the labelled rows; each fold holds every labelled row once; the guard agrees with a direct count."
    table, _, horizon = drawn
    table = table.assign(slow=table.f.where(np.arange(len(table)) >= warm_up))  # a feature needing warm_up + 1 bars
    purge_bars = horizon if purge is None else purge
    embargo_bars = max(horizon, warm_up) if embargo is None else embargo
    wants = kfold_expected(table, n_folds, purge_bars, embargo_bars)
    make = lambda: purged_kfold(table, n_folds, purge=purge, embargo=embargo, horizon=horizon)
    if refused(make, wants): return
    folds = make()
    labelled = list(table.ts[table.y.notna()])
    assert [t for fold in folds for t in fold.val.ts] == labelled
    for fold, want in zip(folds, wants):
        got = {k: list(getattr(fold, k).ts) for k in want}
        assert got == want
        assert sorted(t for rows in got.values() for t in rows) == labelled, "each labelled row in exactly one set"
        assert (fold.kind, fold.horizon, fold.purge, fold.embargo) == ("kfold", horizon, purge_bars, embargo_bars)
        assert fold.summary()["rows"] == {k: len(v) for k, v in got.items()}
        crossing, priced, looking = windows_joining(fold, table, lookback=warm_up + 1)
        assert bool(label_window_problems(fold, table)) == (crossing or priced)
        assert bool(lookback_problems(fold, table)) == looking
        assert time_order_problems(fold, table) == []
        if len(fold.train_after):  # training resumes `gap` bars after the window: an embargo one bar longer is broken
            gap = table.ts.searchsorted(fold.train_after.ts.iloc[0]) - table.ts.searchsorted(fold.val.ts.iloc[-1]) - 1
            assert gap >= fold.embargo and not time_order_problems(replace(fold, embargo=gap), table)
            assert "inside the split's embargo" in time_order_problems(replace(fold, embargo=gap + 1), table)[0]
        if purge_bars >= horizon and embargo_bars >= max(horizon, warm_up): assert not (crossing or priced or looking)
