"""Saving runs, the promotion gate, rollback, and what a bad run folder does to them.

The world: a feature table in a temporary data root where one column (`signal`) predicts the next bar and the
others are noise; small real `cryptoml.tune.tune` runs on it, saved as runs. A "weak" run sees only noise, a
"strong" one sees the signal, so the gate has a true answer to find.
"""
import json, os, pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from cryptoml.core import (ArtifactError, ConfigError, PromotionRefused, atomic_write_parquet, best_link, feature_path,
                           models_dir, sha256_file)
from cryptoml.registry import (CARD_SCHEMA, best_history, best_run_id, list_runs, load_booster, load_logreg, new_run_dir,
                               promote, read_card, read_promotions, rollback, run_dir, save_run, verify_artifacts)
from cryptoml.metrics import evaluate
from cryptoml.tune import TuneResult, tune

META = {"feature_set": "test", "version": 1, "horizon": 1, "dead_zone": None, "exchange": "testex", "symbol": "BTC/USDT",
        "timeframe": "1m", "funding_exchange": None}
WEAK, STRONG = ["noise", "ret1"], ["signal", "noise"]

def market_table(days: int = 2, seed: int = 0) -> pd.DataFrame:
    "A 1-minute feature table whose `signal` column predicts the next bar's return; the last row is unlabelled."
    rng, n = np.random.default_rng(seed), days * 1440
    signal = rng.normal(size=n)
    ret = 0.0003 * signal + 0.001 * rng.normal(size=n)  # from this bar's close to the next one's
    fwd_ret = np.r_[ret[:-1], np.nan]
    return pd.DataFrame({"ts": pd.date_range("2023-03-01", periods=n, freq="1min", tz="UTC").astype("datetime64[ms, UTC]"),
                         "signal": signal, "noise": rng.normal(size=n), "ret1": np.r_[0.0, ret[:-1]],
                         "fwd_ret": fwd_ret, "y": np.where(np.isnan(fwd_ret), np.nan, (fwd_ret > 0).astype(float))})

def tuned_run(table: pd.DataFrame, features: list, val_days: float = 0.25, seed: int = 0) -> TuneResult:
    "A real, small `cryptoml.tune.tune` of `features`, validated on the last `val_days` of `table` (made up: no bars to recompute from)."
    return tune(table, features=features, n_trials=2, val_days=val_days, seed=seed, n_boot=50, progress=False, guard=False,
                table_meta={**META, "rows": len(table)})

@pytest.fixture(scope="module")
def table(): return market_table()

@pytest.fixture(scope="module")
def tuned(table) -> dict:
    "The weak (noise only) and strong (signal) fits, and a second strong one validated on a longer window."
    return {"weak": tuned_run(table, WEAK), "strong": tuned_run(table, STRONG), "strong2": tuned_run(table, STRONG, 0.5, seed=1)}

@pytest.fixture
def world(tmp_path, table, tuned):
    "A data root holding the feature table and the three runs, none promoted: (home, {name: run_id})."
    atomic_write_parquet(feature_path(tmp_path, "BTC/USDT", "1m"), table, {**META, "rows": len(table)})
    return tmp_path, {name: save_run(result, home=tmp_path) for name, result in tuned.items()}

def link_state(home) -> tuple:
    "What a reader of the promotion state sees: the link's target and the log's bytes."
    log = models_dir(home)/"promotions.jsonl"
    return (os.readlink(best_link(home)) if best_link(home).is_symlink() else None), (log.read_bytes() if log.exists() else b"")


def test_save_run_writes_models_and_a_complete_card(world, tuned, table):
    home, runs = world
    folder = run_dir(runs["strong"], home)
    assert sorted(p.name for p in folder.iterdir()) == ["lgbm.pkl", "lgbm.txt", "logreg.pkl", "model_card.json"]
    card = read_card(runs["strong"], home=home)
    assert set(card) == set(CARD_SCHEMA)
    assert card["model"]["run_id"] == runs["strong"] and card["model"]["versions"]["lightgbm"] == lgb.__version__
    assert card["features"] == STRONG
    data = card["data"]
    assert (data["exchange"], data["symbol"], data["timeframe"], data["rows"]) == ("testex", "BTC/USDT", "1m", len(table))
    assert data["feature_table"] == "feature_store/BTCUSDT_1m.parquet"
    assert data["feature_table_sha256"] == sha256_file(feature_path(home, "BTC/USDT", "1m"))
    split = tuned["strong"].split
    assert pd.Timestamp(data["validation"][0]) == split.val.ts.iloc[0] and pd.Timestamp(data["train"][1]) == split.train.ts.iloc[-1]
    assert data["validation_rows"] == len(split.val) and card["split"]["purge"] == 1
    result = tuned["strong"]
    assert card["tuning"]["best_iteration"] == result.best_iteration and card["tuning"]["best_params"] == result.params
    assert (card["tuning"]["trials"], card["tuning"]["sampler"]) == (2, result.sampler)
    assert card["metrics"]["validation"]["log_loss"] < card["metrics"]["baselines"]["majority"]["log_loss"]
    assert card["artifacts"] == verify_artifacts(folder) == {n: sha256_file(folder/n) for n in ("lgbm.pkl", "lgbm.txt", "logreg.pkl")}
    assert card["promotion"]["decision"] == "pending"

def test_saved_models_predict_like_the_originals(world, tuned):
    home, runs = world
    X = tuned["strong"].split.val[STRONG].to_numpy()
    expected = tuned["strong"].booster.predict(X, num_threads=1)
    folder = run_dir(runs["strong"], home)
    np.testing.assert_allclose(load_booster(folder).predict(X, num_threads=1), expected)
    np.testing.assert_allclose(load_booster(folder/"lgbm.txt").predict(X, num_threads=1), expected, rtol=1e-12)
    rows = tuned["strong"].split.val[STRONG]
    np.testing.assert_allclose(load_logreg(folder).predict_proba(rows), tuned["strong"].logreg.predict_proba(rows))

def test_a_storage_password_never_reaches_the_card(world, tuned):
    home, _ = world
    run = save_run(replace(tuned["weak"], storage="postgresql://tuner:s3cret@db:5432/optuna"), home=home)
    assert read_card(run, home=home)["tuning"]["storage"] == "postgresql://tuner:***@db:5432/optuna"
    assert "s3cret" not in (run_dir(run, home)/"model_card.json").read_text()

def test_runs_saved_in_the_same_second_get_distinct_ids(world):
    home, runs = world
    assert len(set(runs.values())) == 3
    assert list(list_runs(home=home).run_id) == list(runs.values())

def test_run_folders_claimed_at_once_in_one_second_are_distinct_and_listed_in_order(tmp_path):
    now = datetime(2026, 11, 26, 10, 15, tzinfo=timezone.utc)
    with ThreadPoolExecutor(4) as pool: folders = list(pool.map(lambda _: new_run_dir(tmp_path, now), range(12)))
    assert len({f.name for f in folders}) == 12
    listed = list_runs(home=tmp_path)
    assert list(listed.run_id) == ["2026-11-26T101500", *(f"2026-11-26T101500-{n}" for n in range(1, 12))]
    assert listed.problem.str.contains("model_card.json is missing").all(), "a folder without a card is listed, with why"

def test_save_run_needs_the_feature_table(tmp_path, tuned):
    with pytest.raises(ArtifactError, match="BTCUSDT_1m.parquet"): save_run(tuned["weak"], home=tmp_path)
    assert not models_dir(tmp_path).exists() or not any(models_dir(tmp_path).iterdir())


def test_gate_promotes_better_refuses_worse_and_rolls_back(world):
    home, runs = world
    first = promote(runs["weak"], home=home)
    assert first.promoted and first.previous is None and best_run_id(home=home) == runs["weak"]

    better = promote(runs["strong"], home=home)
    assert better.promoted and better.previous == runs["weak"]
    cand, prev = better.scores["candidate"], better.scores["previous"]
    assert cand["log_loss"] < prev["log_loss"] and {"accuracy", "roc_auc"} <= cand.keys()
    assert os.readlink(best_link(home)) == f"{runs['strong']}/lgbm.pkl", "the link is relative, into the run folder"

    worse = promote(runs["weak"], home=home)
    assert not worse.promoted and "does not beat" in worse.reason and best_run_id(home=home) == runs["strong"]
    assert worse.scores["candidate"]["log_loss"] > worse.scores["previous"]["log_loss"]
    assert read_card(runs["weak"], home=home)["promotion"]["decision"] == "refused"

    forced = promote(runs["weak"], home=home, force=True)
    assert forced.promoted and best_run_id(home=home) == runs["weak"]
    card = read_card(runs["weak"], home=home)["promotion"]
    assert card["decision"] == "forced" and card["forced"] and "forced" in card["reason"] and "refuses" in card["reason"]

    assert rollback(home=home).best == runs["strong"] and best_run_id(home=home) == runs["strong"]
    assert read_card(runs["strong"], home=home)["promotion"]["decision"] == "restored"
    assert rollback(home=home).best == runs["weak"]
    assert best_history(home=home) == [runs["weak"]]
    with pytest.raises(PromotionRefused, match="nothing to roll back"): rollback(home=home)
    log = read_promotions(home=home)
    assert [(d["action"], d["run_id"], d["promoted"]) for d in log] == [
        ("promote", runs["weak"], True), ("promote", runs["strong"], True), ("promote", runs["weak"], False),
        ("promote", runs["weak"], True), ("rollback", runs["strong"], True), ("rollback", runs["weak"], True)]

def test_both_models_are_scored_on_the_candidates_window(world, tuned):
    home, runs = world
    promote(runs["strong"], home=home)
    d = promote(runs["strong2"], home=home)
    window = tuned["strong2"].split.val
    assert d.scores["rows"] == len(window) != len(tuned["strong"].split.val)
    for who, name in (("candidate", "strong2"), ("previous", "strong")):
        expected = evaluate(window.y.to_numpy(), tuned[name].booster.predict(window[STRONG].to_numpy(), num_threads=1))
        assert d.scores[who] == pytest.approx(expected)
    assert d.promoted == (d.scores["candidate"]["log_loss"] < d.scores["previous"]["log_loss"])

def test_min_improvement_holds_back_small_gains(world):
    home, runs = world
    promote(runs["weak"], home=home)
    d = promote(runs["strong"], home=home, min_improvement=1.0)
    assert not d.promoted and "at least 1 lower" in d.reason and best_run_id(home=home) == runs["weak"]

def test_list_runs_marks_the_best_and_reports_broken_runs(world):
    home, runs = world
    promote(runs["strong"], home=home)
    (run_dir(runs["weak"], home)/"model_card.json").write_text("{")
    table = list_runs(home=home).set_index("run_id")
    assert table.best.to_dict() == {runs["weak"]: False, runs["strong"]: True, runs["strong2"]: False}
    assert "not valid JSON" in table.problem[runs["weak"]]
    assert table.log_loss[runs["strong"]] < table.majority_log_loss[runs["strong"]]
    assert table.decision[runs["strong"]] == "promoted"


def truncate(path: Path): path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
def flip_a_byte(path: Path):
    data = bytearray(path.read_bytes()); data[len(data) // 2] ^= 1; path.write_bytes(bytes(data))
def drop_field(path: Path):
    card = json.loads(path.read_text()); del card["data"]["feature_table_sha256"]; path.write_text(json.dumps(card))
def wrong_type(path: Path):
    card = json.loads(path.read_text()); card["tuning"]["trials"] = "many"; path.write_text(json.dumps(card))

BREAKAGES = {  # what is done to the candidate's folder -> the words the error must contain
    "truncated model": ("lgbm.pkl", truncate, "lgbm.pkl fails its checksum"),
    "altered model": ("lgbm.pkl", flip_a_byte, "lgbm.pkl fails its checksum"),
    "missing baseline": ("logreg.pkl", Path.unlink, "logreg.pkl is missing"),
    "altered text model": ("lgbm.txt", flip_a_byte, "lgbm.txt fails its checksum"),
    "missing card": ("model_card.json", Path.unlink, "model_card.json is missing"),
    "card missing a field": ("model_card.json", drop_field, "card.data.feature_table_sha256 is missing"),
    "card field of the wrong type": ("model_card.json", wrong_type, "card.tuning.trials is str, expected int"),
}

@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_candidate_is_an_error_and_moves_nothing(world, breakage):
    home, runs = world
    promote(runs["weak"], home=home)
    before = link_state(home)
    name, breaks, message = BREAKAGES[breakage]
    breaks(run_dir(runs["strong"], home)/name)
    with pytest.raises(ArtifactError, match=message): promote(runs["strong"], home=home)
    assert link_state(home) == before

def test_unknown_or_malformed_run_ids_are_errors(world):
    home, runs = world
    with pytest.raises(ArtifactError, match="2023-01-01T000000"): promote("2023-01-01T000000", home=home)
    with pytest.raises(ConfigError, match="latest"): promote("latest", home=home)
    assert link_state(home) == (None, b"")

def test_a_changed_feature_table_is_an_error_unless_forced(world, table):
    home, runs = world
    promote(runs["weak"], home=home)
    before = link_state(home)
    atomic_write_parquet(feature_path(home, "BTC/USDT", "1m"), table.iloc[:-5], META)
    with pytest.raises(ArtifactError, match="BTCUSDT_1m.parquet changed since run"): promote(runs["strong"], home=home)
    assert link_state(home) == before
    forced = promote(runs["strong"], home=home, force=True)
    assert forced.promoted and "cannot be judged" in forced.reason and best_run_id(home=home) == runs["strong"]

def test_a_broken_current_best_refuses_the_gate_until_forced(world):
    home, runs = world
    promote(runs["weak"], home=home)
    truncate(run_dir(runs["weak"], home)/"lgbm.pkl")
    d = promote(runs["strong"], home=home)
    assert not d.promoted and f"current best {runs['weak']} cannot be scored" in d.reason and "lgbm.pkl" in d.reason
    assert promote(runs["strong"], home=home, force=True).promoted and best_run_id(home=home) == runs["strong"]
    with pytest.raises(ArtifactError, match="lgbm.pkl fails its checksum"): rollback(home=home)
    assert best_run_id(home=home) == runs["strong"]

class Exploit:
    "A pickle that would leave a file behind if it were ever unpickled."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (Path.touch, (Path(self.marker),))

def test_a_tampered_pickle_is_never_unpickled(world, tmp_path):
    home, runs = world
    promote(runs["strong"], home=home)
    marker = tmp_path/"pwned"
    (run_dir(runs["strong"], home)/"lgbm.pkl").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(ArtifactError, match="fails its checksum"): load_booster(best_link(home))
    assert not marker.exists()
