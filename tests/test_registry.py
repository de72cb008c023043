"""Saving runs, the honest promotion gate, aliases per market, rollback, and what a bad run folder does to them.

The world: feature tables in a temporary data root where one column (`signal`) moves the next bar through a
non-linear rule (its size, not its sign, says which way: a tree finds it, a logistic regression cannot) and the
others are noise; small real `cryptoml.tune.tune` runs on it, saved as runs. A "weak" run sees only noise, a
"strong" one sees the signal, so the gate has a true answer to find, and the strong run genuinely beats both
baselines while the weak one beats neither.
"""
import json, os, pickle, re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from cryptoml.core import (ArtifactError, ConfigError, Market, PromotionRefused, atomic_write_parquet, best_link, feature_path,
                           market_dir, sha256_file)
from cryptoml.registry import (CALIBRATOR, CARD_SCHEMA, Run, best_history, best_run_id, compare, fresh_start, list_runs,
                               new_run_dir, promote, read_promotions, rollback, run_dir, save_run, validation_halves)
from cryptoml.metrics import evaluate
from cryptoml.tune import TuneResult, tune

MARKET = Market("testex", "BTC/USDT", "1m")
META = {"feature_set": "test", "version": 1, "horizon": 1, "dead_zone": None, "exchange": "testex", "symbol": "BTC/USDT",
        "timeframe": "1m", "funding_exchange": None}
WEAK, STRONG = ["noise", "ret1"], ["signal", "noise"]
DAYS, VAL_DAYS = 4, 1  # one day of validation: 1440 fresh rows, over the gate's default of 1000

def market_table(days: int = DAYS, seed: int = 0) -> pd.DataFrame:
    "A 1-minute feature table where a large `signal` (either sign) makes an up bar likelier; the last row is unlabelled."
    rng, n = np.random.default_rng(seed), days * 1440
    signal = rng.normal(size=n)
    ret = 0.0004 * (np.abs(signal) - 0.8) + 0.001 * rng.normal(size=n)  # from this bar's close to the next one's
    fwd_ret = np.r_[ret[:-1], np.nan]
    return pd.DataFrame({"ts": pd.date_range("2023-03-01", periods=n, freq="1min", tz="UTC").astype("datetime64[ms, UTC]"),
                         "signal": signal, "noise": rng.normal(size=n), "ret1": np.r_[0.0, ret[:-1]],
                         "fwd_ret": fwd_ret, "y": np.where(np.isnan(fwd_ret), np.nan, (fwd_ret > 0).astype(float))})

def tuned_run(table: pd.DataFrame, features: list, val_days: float = VAL_DAYS, seed: int = 0, meta: dict = META) -> TuneResult:
    "A real, small `cryptoml.tune.tune` of `features`, validated on the last `val_days` of `table` (made up: no bars to recompute from)."
    return tune(table, features=features, n_trials=2, val_days=val_days, seed=seed, n_boot=50, progress=False, guard=False,
                table_meta={**meta, "rows": len(table)})

@pytest.fixture(scope="module")
def table(): return market_table()

@pytest.fixture(scope="module")
def tuned(table) -> dict:
    "The weak (noise only) and strong (signal) fits, and a second strong one validated on a longer window (trained earlier)."
    return {"weak": tuned_run(table, WEAK), "strong": tuned_run(table, STRONG), "strong2": tuned_run(table, STRONG, 2, seed=1)}

def write_table(home, table, meta=META) -> Path:
    "Write `table` as its market's current feature table in `home`."
    return atomic_write_parquet(feature_path(home, Market.of(meta), meta["feature_set"], 1), table, {**meta, "rows": len(table)})

@pytest.fixture
def world(tmp_path, table, tuned):
    "A data root holding the feature table and the three runs, none promoted: (home, {name: run_id})."
    write_table(tmp_path, table)  # without calibrators: the gate's fresh rows start right after each training window
    return tmp_path, {name: save_run(result, home=tmp_path, calibration=None) for name, result in tuned.items()}

def link_state(home, market=MARKET) -> tuple:
    "What a reader of the market's promotion state sees: the champion link's target and the log's bytes."
    link, log = best_link(home, market), market_dir(home, market)/"promotions.jsonl"
    return (os.readlink(link) if link.is_symlink() else None), (log.read_bytes() if log.exists() else b"")

GATE = dict(n_boot=200)


def test_save_run_writes_models_and_a_complete_card_in_its_market(world, tuned, table):
    home, runs = world
    folder = run_dir(runs["strong"], home)
    assert folder.parent == (market_dir(home, MARKET)/"runs").resolve()
    names = sorted(p.name for p in folder.iterdir())
    compiled = [n for n in names if n == "compiled.json" or re.fullmatch(r"lgbm-[0-9a-f]{16}\.so", n)]
    assert len(compiled) in (0, 2), names  # not by save_run: by the run's first load in serving, if a test served it
    assert [n for n in names if n not in compiled] == ["lgbm.pkl", "lgbm.txt", "logreg.pkl", "model_card.json"]
    card = Run.open(runs["strong"], home).card
    assert set(CARD_SCHEMA) <= set(card) <= {*CARD_SCHEMA, "manifest", "calibration"}
    assert card["model"]["run_id"] == runs["strong"] and card["model"]["versions"]["lightgbm"] == lgb.__version__
    assert card["features"] == STRONG
    data = card["data"]
    assert (data["exchange"], data["symbol"], data["timeframe"], data["rows"]) == ("testex", "BTC/USDT", "1m", len(table))
    current = feature_path(home, MARKET, "test", 1)
    assert data["feature_table_source"] == str(current.relative_to(home))
    assert data["feature_table"] == f"feature_store/snapshots/{sha256_file(current)}.parquet"
    assert data["feature_table_sha256"] == sha256_file(current) == sha256_file(home/data["feature_table"])
    split = tuned["strong"].split
    assert pd.Timestamp(data["validation"][0]) == split.val.ts.iloc[0] and pd.Timestamp(data["train"][1]) == split.train.ts.iloc[-1]
    assert data["validation_rows"] == len(split.val) and card["split"]["purge"] == 1
    result = tuned["strong"]
    assert card["tuning"]["best_iteration"] == result.best_iteration and card["tuning"]["best_params"] == result.params
    assert (card["tuning"]["trials"], card["tuning"]["sampler"]) == (2, result.sampler)
    assert card["metrics"]["validation"]["log_loss"] < card["metrics"]["baselines"]["majority"]["log_loss"]
    assert card["artifacts"] == Run.open(runs["strong"], home).verify() == {n: sha256_file(folder/n) for n in ("lgbm.pkl", "lgbm.txt", "logreg.pkl")}
    assert card["promotion"]["decision"] == "pending"

def test_saved_models_predict_like_the_originals(world, tuned):
    home, runs = world
    rows = tuned["strong"].split.val[STRONG]
    expected = tuned["strong"].booster.predict(rows.to_numpy(), num_threads=1)
    run = Run.open(runs["strong"], home)
    np.testing.assert_allclose(run.predict(rows), expected, rtol=1e-12)
    np.testing.assert_allclose(run.logreg().predict_proba(rows), tuned["strong"].logreg.predict_proba(rows))

def test_a_run_serves_a_calibrator_only_where_it_earns_it_and_counts_its_check_window_as_seen(tmp_path, table, tuned):
    write_table(tmp_path, table)
    params = {**tuned["strong"].params, "num_leaves": 63, "learning_rate": 0.05, "min_child_samples": 20}
    split = tuned["strong"].split
    booster = lgb.train(params, lgb.Dataset(split.train[STRONG], split.train.y), 200)  # deep: overconfident on later bars
    overconfident = replace(tuned["strong"], booster=booster, params=params, best_iteration=200)
    run = Run.open(save_run(overconfident, home=tmp_path, n_boot=100), tmp_path)
    c = run.card["calibration"]
    assert c["served"] and c["kind"] in ("platt", "isotonic") and CALIBRATOR in run.card["artifacts"] == run.verify()
    assert c["check"]["log_loss"]["calibrated"] <= c["check"]["log_loss"]["raw"]
    check = validation_halves(overconfident).train
    assert run.seen_until == check.ts.iloc[-1] > run.train_end  # the check window is the run's, not the gate's
    assert fresh_start([run]) == run.seen_until + pd.Timedelta(minutes=2)
    rows = split.val[STRONG]
    raw = booster.predict(rows.to_numpy(), num_threads=1)
    np.testing.assert_array_equal(run.predict(rows, calibrated=False), raw)
    np.testing.assert_array_equal(run.predict(rows), run.calibrator().apply(raw))
    later = c["validation"]  # the half nothing was fitted or checked on
    assert later["rows"] == len(validation_halves(overconfident).val) and later["change"]["calibrated"]["log_loss"]["value"] < 0
    assert later["metrics"]["calibrated"]["ece"] < later["metrics"]["raw"]["ece"]
    plain = Run.open(save_run(tuned["weak"], home=tmp_path, n_boot=100), tmp_path)
    assert not plain.card["calibration"]["served"] and plain.calibrator() is None and plain.seen_until == plain.train_end
    assert CALIBRATOR not in plain.card["artifacts"] and plain.card["calibration"]["reason"]

def test_a_storage_password_never_reaches_the_card(world, tuned):
    home, _ = world
    run = save_run(replace(tuned["weak"], storage="postgresql://tuner:s3cret@db:5432/optuna"), home=home)
    assert Run.open(run, home).card["tuning"]["storage"] == "postgresql://tuner:***@db:5432/optuna"
    assert "s3cret" not in (run_dir(run, home)/"model_card.json").read_text()

def test_runs_saved_in_the_same_second_get_distinct_ids(world):
    home, runs = world
    assert len(set(runs.values())) == 3
    assert list(list_runs(home=home).run_id) == list(runs.values())

def test_run_ids_claimed_at_once_in_one_second_are_distinct_across_markets_and_listed_in_order(tmp_path):
    now, other = datetime(2026, 11, 26, 10, 15, tzinfo=timezone.utc), Market("testex", "ETH/USDT", "1m")
    with ThreadPoolExecutor(4) as pool: folders = list(pool.map(lambda i: new_run_dir((MARKET, other)[i % 2], tmp_path, now), range(12)))
    assert len({f.name for f in folders}) == 12
    assert {f.parents[2].name for f in folders} == {"BTCUSDT", "ETHUSDT"}
    listed = list_runs(home=tmp_path)
    assert list(listed.run_id) == ["2026-11-26T101500", *(f"2026-11-26T101500-{n}" for n in range(1, 12))]
    assert listed.problem.str.contains("model_card.json is missing").all(), "a folder without a card is listed, with why"
    assert len(list_runs(home=tmp_path, symbol="ETH/USDT")) == 6

def test_save_run_needs_the_feature_table(tmp_path, tuned):
    with pytest.raises(ArtifactError, match="test-h1.parquet"): save_run(tuned["weak"], home=tmp_path)
    assert not (tmp_path/"models").exists() or not any((tmp_path/"models").rglob("model_card.json"))


def test_a_first_run_worse_than_the_baselines_is_not_promoted(world):
    home, runs = world
    refused = promote(runs["weak"], home=home, **GATE)
    assert not refused.promoted and best_run_id(home=home, market=MARKET) is None
    assert refused.reason.startswith("does not beat ") and "champion" not in refused.reason
    logged = read_promotions(home=home, market=MARKET)[-1]
    assert logged["scores"]["rows"] == 1439 and logged["scores"]["window"][0] > str(Run.open(runs["weak"], home).train_end)
    assert {"candidate", "majority", "logreg"} == set(logged["scores"]["metrics"])
    first = promote(runs["strong"], home=home, **GATE)
    assert first.promoted and first.previous is None and first.reason.startswith("beats majority, logreg on 1439 fresh rows")
    gains = {(g["baseline"], g["metric"]): g for g in first.scores["gains"]}
    assert gains[("logreg", "log_loss")]["lo"] > 0 and gains[("majority", "log_loss")]["lo"] > 0
    assert first.scores["metrics"]["candidate"]["accuracy"] < 0.6

def test_gate_promotes_better_refuses_worse_and_rolls_back(world):
    home, runs = world
    assert promote(runs["weak"], home=home, force=True, **GATE).promoted and best_run_id(home=home, market=MARKET) == runs["weak"]

    better = promote(runs["strong"], home=home, **GATE)
    assert better.promoted and better.previous == runs["weak"]
    cand, prev = better.scores["metrics"]["candidate"], better.scores["metrics"]["champion"]
    assert cand["log_loss"] < prev["log_loss"] and {"accuracy", "roc_auc", "ci95"} <= cand.keys()
    assert os.readlink(best_link(home, MARKET)) == f"runs/{runs['strong']}/lgbm.pkl", "the link is relative, into the run folder"

    worse = promote(runs["weak"], home=home, **GATE)
    assert not worse.promoted and "does not beat champion" in worse.reason and best_run_id(home=home, market=MARKET) == runs["strong"]
    assert worse.scores["metrics"]["candidate"]["log_loss"] > worse.scores["metrics"]["champion"]["log_loss"]
    assert Run.open(runs["weak"], home).card["promotion"]["decision"] == "refused"

    forced = promote(runs["weak"], home=home, force=True, **GATE)
    assert forced.promoted and best_run_id(home=home, market=MARKET) == runs["weak"]
    card = Run.open(runs["weak"], home).card["promotion"]
    assert card["decision"] == "forced" and card["forced"] and "forced" in card["reason"] and "refuses" in card["reason"]

    assert rollback(home=home, market=MARKET).best == runs["strong"] and best_run_id(home=home, market=MARKET) == runs["strong"]
    assert Run.open(runs["strong"], home).card["promotion"]["decision"] == "restored"
    assert rollback(home=home, market=MARKET).best == runs["weak"]
    assert best_history(home=home, market=MARKET) == [runs["weak"]]
    with pytest.raises(PromotionRefused, match="nothing to roll back"): rollback(home=home, market=MARKET)
    log = read_promotions(home=home, market=MARKET)
    assert [(d["action"], d["run_id"], d["promoted"]) for d in log] == [
        ("promote", runs["weak"], True), ("promote", runs["strong"], True), ("promote", runs["weak"], False),
        ("promote", runs["weak"], True), ("rollback", runs["strong"], True), ("rollback", runs["weak"], True)]
    assert {d["market"] for d in log} == {str(MARKET)}

def test_both_models_are_scored_on_rows_neither_trained_on(world, tuned):
    "The overlap case of issue 13: the champion trained later than the candidate; the candidate's window is mostly its training."
    home, runs = world
    promote(runs["strong"], home=home, **GATE)  # trained until the last day
    d = promote(runs["strong2"], home=home, **GATE)  # trained a day earlier, validated on two days
    champion_end = Run.open(runs["strong"], home).train_end
    candidate_window = tuned["strong2"].split.val
    assert (candidate_window.ts <= champion_end).mean() > 0.45, "most of the candidate's own window is the champion's training"
    fresh = candidate_window[candidate_window.ts >= champion_end + pd.Timedelta(minutes=2)]  # after the champion's window + purge
    assert d.scores["rows"] == len(fresh) == 1439 and pd.Timestamp(d.scores["window"][0]) == fresh.ts.iloc[0]
    for who, name in (("candidate", "strong2"), ("champion", "strong")):
        expected = evaluate(fresh.y.to_numpy(), tuned[name].booster.predict(fresh[STRONG].to_numpy(), num_threads=1))
        assert {k: d.scores["metrics"][who][k] for k in expected} == pytest.approx(expected)
    assert d.promoted == (d.scores["metrics"]["candidate"]["log_loss"] < d.scores["metrics"]["champion"]["log_loss"]
                          and all(g["lo"] > 0 for g in d.scores["gains"] if g["metric"] == "log_loss"))

def test_too_few_fresh_rows_are_refused_and_said(world):
    home, runs = world
    promote(runs["strong"], home=home, **GATE)
    before = link_state(home)
    d = promote(runs["strong2"], home=home, min_rows=2000, **GATE)
    assert not d.promoted and d.reason.startswith("too few rows to judge: 1439 labelled rows") and "min_rows" in d.reason
    assert link_state(home)[0] == before[0]
    assert read_promotions(home=home, market=MARKET)[-1]["scores"] == {**d.scores}

def test_min_improvement_holds_back_small_gains(world):
    home, runs = world
    promote(runs["weak"], home=home, force=True, **GATE)
    d = promote(runs["strong"], home=home, min_improvement=1.0, **GATE)
    assert not d.promoted and "not above 1" in d.reason and best_run_id(home=home, market=MARKET) == runs["weak"]

def test_an_implausible_score_is_refused_as_a_suspected_leak(tmp_path, table):
    rng = np.random.default_rng(1)  # three weak leaks of the label's own return: each alone passes the guard's AUC check
    leaks = {f"leak{i}": table.fwd_ret + 3.5 * table.fwd_ret.std() * rng.normal(size=len(table)) for i in range(3)}
    leaky = table.assign(**leaks)
    write_table(tmp_path, leaky)
    run = save_run(tuned_run(leaky, list(leaks)), home=tmp_path)
    d = promote(run, home=tmp_path, **GATE)
    assert not d.promoted and d.reason.startswith("implausible scores on 1439 fresh rows, a suspected leak: validation accuracy")
    assert best_run_id(home=tmp_path, market=MARKET) is None

def test_two_markets_keep_two_champions(tmp_path, table, tuned):
    other_meta = {**META, "exchange": "otherex"}
    write_table(tmp_path, table); write_table(tmp_path, table, other_meta)
    here = save_run(tuned["strong"], home=tmp_path)
    there = save_run(replace(tuned["strong"], table_meta={**tuned["strong"].table_meta, **other_meta}), home=tmp_path)
    other = Market.of(other_meta)
    assert promote(here, home=tmp_path, **GATE).promoted and promote(there, home=tmp_path, **GATE).promoted
    assert (best_run_id(home=tmp_path, market=MARKET), best_run_id(home=tmp_path, market=other)) == (here, there)
    assert [d["run_id"] for d in read_promotions(home=tmp_path, market=other)] == [there]
    with pytest.raises(ConfigError, match=f"is a run of {other}, not of {MARKET}"): promote(there, home=tmp_path, market=MARKET)
    assert best_run_id(home=tmp_path, market=MARKET) == here
    assert set(list_runs(home=tmp_path).query("best").run_id) == {here, there}

def test_aliases_challenger_and_shadow_need_no_gate_and_leave_the_champion(world):
    home, runs = world
    promote(runs["strong"], home=home, **GATE)
    shadow, challenger = promote(runs["weak"], home=home, alias="shadow"), promote(runs["strong2"], home=home, alias="challenger")
    assert shadow.promoted and challenger.promoted and shadow.scores == {} and "the gate judges champions only" in shadow.reason
    assert os.readlink(market_dir(home, MARKET)/"shadow_lgbm.pkl") == f"runs/{runs['weak']}/lgbm.pkl"
    assert best_run_id(home=home, market=MARKET) == runs["strong"] and best_history(home=home, market=MARKET) == [runs["strong"]]
    listed = list_runs(home=home).set_index("run_id").aliases
    assert listed.to_dict() == {runs["weak"]: "shadow", runs["strong"]: "champion", runs["strong2"]: "challenger"}
    with pytest.raises(ConfigError, match="unknown alias 'best'"): promote(runs["weak"], home=home, alias="best")

def test_compare_reports_two_runs_on_the_same_fresh_rows(world, tuned, table):
    home, runs = world
    c = compare(runs["strong2"], runs["strong"], home=home, n_boot=200)
    assert c.scores["rows"] == 1439 and list(c.table.index) == [runs["strong2"], runs["strong"], "majority", "logreg"]
    fresh = tuned["strong"].split.val
    for name in ("strong", "strong2"):
        expected = evaluate(fresh.y, tuned[name].booster.predict(fresh[STRONG].to_numpy(), num_threads=1))["log_loss"]
        assert c.table.loc[runs[name], "log_loss"] == pytest.approx(expected)
    gain = c.gains[(c.gains.baseline == runs["strong2"]) & (c.gains.metric == "log_loss")].iloc[0]
    assert gain.gain == pytest.approx(c.table.loc[runs["strong2"], "log_loss"] - c.table.loc[runs["strong"], "log_loss"])
    assert 0.5 < c.scores["agreement"] <= 1 and f"log-loss gain of {runs['strong']} over {runs['strong2']}" in c.summary()
    other_meta = {**META, "exchange": "otherex"}
    write_table(home, table, other_meta)
    there = save_run(replace(tuned["weak"], table_meta={**tuned["weak"].table_meta, **other_meta}), home=home)
    with pytest.raises(ConfigError, match="do not forecast the same thing"): compare(runs["strong"], there, home=home)

def test_list_runs_marks_the_champion_and_reports_broken_runs(world):
    home, runs = world
    promote(runs["strong"], home=home, **GATE)
    (run_dir(runs["weak"], home)/"model_card.json").write_text("{")
    table = list_runs(home=home).set_index("run_id")
    assert table.best.to_dict() == {runs["weak"]: False, runs["strong"]: True, runs["strong2"]: False}
    assert "not valid JSON" in table.problem[runs["weak"]]
    assert table.log_loss[runs["strong"]] < table.majority_log_loss[runs["strong"]]
    assert table.decision[runs["strong"]] == "promoted" and table.market[runs["strong"]] == str(MARKET)


def truncate(path: Path): path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
def flip_a_byte(path: Path):
    data = bytearray(path.read_bytes()); data[len(data) // 2] ^= 1; path.write_bytes(bytes(data))
def drop_field(path: Path):
    card = json.loads(path.read_text()); del card["data"]["feature_table_sha256"]; path.write_text(json.dumps(card))
def wrong_type(path: Path):
    card = json.loads(path.read_text()); card["tuning"]["trials"] = "many"; path.write_text(json.dumps(card))
def other_market(path: Path):
    card = json.loads(path.read_text()); card["data"]["exchange"] = "otherex"; path.write_text(json.dumps(card))

BREAKAGES = {  # what is done to the candidate's folder -> the words the error must contain
    "truncated model": ("lgbm.pkl", truncate, "lgbm.pkl fails its checksum"),
    "altered model": ("lgbm.pkl", flip_a_byte, "lgbm.pkl fails its checksum"),
    "missing baseline": ("logreg.pkl", Path.unlink, "logreg.pkl is missing"),
    "altered text model": ("lgbm.txt", flip_a_byte, "lgbm.txt fails its checksum"),
    "missing card": ("model_card.json", Path.unlink, "model_card.json is missing"),
    "card missing a field": ("model_card.json", drop_field, "card.data.feature_table_sha256 is missing"),
    "card field of the wrong type": ("model_card.json", wrong_type, "card.tuning.trials is str, expected int"),
    "card of another market": ("model_card.json", other_market, "card.data names market otherex/BTCUSDT/1m, the run sits in testex/BTCUSDT/1m"),
}

@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_candidate_is_an_error_and_moves_nothing(world, breakage):
    home, runs = world
    promote(runs["weak"], home=home, force=True, **GATE)
    before = link_state(home)
    name, breaks, message = BREAKAGES[breakage]
    breaks(run_dir(runs["strong"], home)/name)
    with pytest.raises(ArtifactError, match=message): promote(runs["strong"], home=home)
    assert link_state(home) == before

def test_unknown_or_malformed_run_ids_are_errors(world):
    home, runs = world
    with pytest.raises(ArtifactError, match="2023-01-01T000000"): promote("2023-01-01T000000", home=home)
    for bad in ("latest", "../2023-01-01T000000", "2023-01-01T000000/x"):
        with pytest.raises(ConfigError, match="malformed run id"): promote(bad, home=home)
    assert link_state(home) == (None, b"")

def test_rebuilding_the_current_table_leaves_every_run_verifying_and_scoring(world, table):
    home, runs = world
    write_table(home, table.iloc[:-5])  # the market's current table changes...
    d = promote(runs["strong"], home=home, **GATE)  # ...the run still reads its own snapshot
    assert d.promoted and d.scores["rows"] == 1439

def test_a_changed_snapshot_is_an_error_unless_forced(world, table):
    home, runs = world
    promote(runs["weak"], home=home, force=True, **GATE)
    before = link_state(home)
    snapshot = home/Run.open(runs["strong"], home).card["data"]["feature_table"]
    snapshot.unlink(); atomic_write_parquet(snapshot, table.iloc[:-5], META)  # a snapshot must never change: here it did
    with pytest.raises(ArtifactError, match=f"{snapshot.name} changed since run"): promote(runs["strong"], home=home)
    assert link_state(home) == before
    forced = promote(runs["strong"], home=home, force=True)
    assert forced.promoted and "cannot be judged" in forced.reason and best_run_id(home=home, market=MARKET) == runs["strong"]

def test_a_broken_champion_refuses_the_gate_until_forced(world):
    home, runs = world
    promote(runs["weak"], home=home, force=True, **GATE)
    truncate(run_dir(runs["weak"], home)/"lgbm.pkl")
    d = promote(runs["strong"], home=home, **GATE)
    assert not d.promoted and f"current champion {runs['weak']} cannot be scored" in d.reason and "lgbm.pkl" in d.reason
    assert promote(runs["strong"], home=home, force=True, **GATE).promoted and best_run_id(home=home, market=MARKET) == runs["strong"]
    with pytest.raises(ArtifactError, match="lgbm.pkl fails its checksum"): rollback(home=home, market=MARKET)
    assert best_run_id(home=home, market=MARKET) == runs["strong"]

class Exploit:
    "A pickle that would leave a file behind if it were ever unpickled."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (Path.touch, (Path(self.marker),))

def test_a_tampered_pickle_is_never_unpickled(world, tmp_path):
    home, runs = world
    promote(runs["strong"], home=home, **GATE)
    marker = tmp_path/"pwned"
    (run_dir(runs["strong"], home)/"lgbm.pkl").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(ArtifactError, match="fails its checksum"): Run.open(runs["strong"], home).verify()
    Run.open(runs["strong"], home).booster()  # serving reads lgbm.txt with LightGBM's parser: no pickle at all
    assert not marker.exists()

def test_fresh_rows_start_after_the_latest_training_window_and_its_purge(world):
    home, runs = world
    a, b = Run.open(runs["strong"], home), Run.open(runs["strong2"], home)
    assert fresh_start([a, b]) == fresh_start([b, a]) == a.train_end + pd.Timedelta(minutes=2)
