"""Compiled models and the lean serving import (issue 16).

The story: a model is trained on a market's feature table (the shared real BTC/USDT bars, and the synthetic
market always), saved as a run and promoted. Saving compiles nothing; the served model answers through LightGBM's C
API at once and compiles itself in the background on first load, and must then give LightGBM's own probabilities for
every row of the table, through the run's calibrator as the C API path does; a machine without a C compiler serves
all the same. And a server that only imports `LGBMProd` loads none of the
training stack.
"""
import hashlib, json, logging, shutil, subprocess, sys, time

import lightgbm as lgb
import numpy as np
import pytest

from cryptoml.core import Market
from cryptoml.ingest import EXAMPLE_FILES, example_market, write_demo_market
from cryptoml.core import shared_data
from cryptoml.features import build_features, read_feature_table
from cryptoml.tune import tune
from cryptoml.registry import Run, promote, run_dir, run_folder_lock, save_run
from cryptoml.infer import (CODEGEN, COMPILED, CompiledBooster, CompilingBooster, FastBooster, LGBMProd, LinkStamp,
                            compile_flags, compile_model, compiled_model, probe_rows)

FORBIDDEN = ("scipy", "duckdb", "plotly", "ccxt", "optuna", "sklearn", "tqdm")


def test_importing_lgbmprod_loads_none_of_the_training_stack():
    code = f"import sys; from cryptoml.infer import LGBMProd; print([m for m in {FORBIDDEN!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def market_table(home, which: str):
    "The feature table of the shared real market (skipped where absent) or of the synthetic market, and its path."
    if which == "shared":
        if any(shared_data(name) is None for name in EXAMPLE_FILES): pytest.skip("the shared real data (../shared/data) is not here")
        market = example_market(home)
    else: market = write_demo_market(home, days=10)
    path = build_features(market, home=home, progress=False)
    return read_feature_table(path)[0], path


@pytest.mark.parametrize("which, params, trees", [
    ("shared", {"num_leaves": 31}, 120), ("synthetic", {"num_leaves": 31}, 120),
    ("synthetic", {"num_leaves": 100, "zero_as_missing": True}, 30)])  # > 64 leaves: walked row by row in a block
def test_a_compiled_model_gives_lightgbms_probabilities(which, params, trees, tmp_path):
    table, _ = market_table(tmp_path, which)
    features = [c for c in table.columns if c not in ("ts", "y", "fwd_ret")]
    train = table.dropna(subset=["y"])
    params = {"objective": "binary", "min_child_samples": 20, "verbose": -1, "num_threads": 1, "seed": 0, **params}
    booster = lgb.train(params, lgb.Dataset(train[features], train.y), trees)
    X = np.vstack([table[features].to_numpy(np.float64), probe_rows(booster.model_to_string())])
    library = compile_model(booster.model_to_string(), tmp_path/"model.so")
    compiled = CompiledBooster(library, hashlib.sha256(library.read_bytes()).hexdigest(), FastBooster(booster))
    expected = booster.predict(X, num_threads=1)
    assert np.max(np.abs(compiled.predict_batch(X, num_threads=2) - expected)) <= 1e-12
    assert np.max(np.abs(np.array([compiled.predict_row(r) for r in X[:3000].tolist()]) - expected[:3000])) <= 1e-12


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    "A small tuned model of the synthetic market: the data root, the feature table's path, the tune result and its rows."
    home = tmp_path_factory.mktemp("compiled")
    table, path = market_table(home, "synthetic")
    result = tune(table, home=home, n_trials=2, n_boot=20, val_days=2, seed=0, progress=False)
    return home, path, result, table[result.features].to_numpy(np.float64)

@pytest.fixture(scope="module")
def served_run(tuned):
    "The tuned model saved (with its calibrator) and promoted; the data root, market, run id and rows."
    home, path, result, rows = tuned
    run_id = save_run(result, home=home, table_path=path)
    promote(run_id, home=home, force=True, n_boot=20)
    return home, Market.of(result.table_meta), run_id, rows


def serving(model: LGBMProd):
    "The model answering for `model`'s run once any compiling in the background is over."
    served = model.current().model
    return served.wait() if isinstance(served, CompilingBooster) else served


def test_the_first_load_compiles_and_a_newer_generator_replaces_the_old_library(served_run):
    home, market, run_id, rows = served_run
    folder = run_dir(run_id, home)
    assert type(serving(LGBMProd(path=folder, home=home))) is CompiledBooster
    record = json.loads((folder/COMPILED).read_text())  # filed by the first load
    assert (record["codegen"], record["flags"]) == (CODEGEN, list(compile_flags())) and (folder/record["library"]).is_file()
    # the cache key: a library made by another generator, with other flags or from another lgbm.txt is made anew
    stale = folder/"lgbm-0123456789abcdef.so"
    for stale_key in ({"codegen": CODEGEN - 1}, {"flags": ["-O0"]}, {"lgbm.txt": "0" * 64}):
        stale.write_bytes(b"an older generator's library")
        (folder/COMPILED).write_text(json.dumps({**record, "library": stale.name, **stale_key}))
        if "codegen" in stale_key: model = serving(LGBMProd(path=folder/"lgbm.txt", home=home))  # a fresh instance
        else: model = compiled_model(Run.open(run_id, home), FastBooster((folder/"lgbm.txt").read_text()))
        assert type(model) is CompiledBooster
        assert sorted(p.name for p in folder.glob("lgbm-*.so")) == [record["library"]], "the replaced library is removed"
        assert json.loads((folder/COMPILED).read_text()) == record


def test_saving_compiles_nothing_and_the_first_load_answers_before_the_compiler(tuned):
    home, path, result, rows = tuned
    run_id = save_run(result, home=home, table_path=path)
    folder = run_dir(run_id, home)
    assert (folder/"model_card.json").is_file() and not (folder/COMPILED).exists()
    model = LGBMProd(path=folder, home=home)
    served = model.current().model
    assert type(served) is CompilingBooster, "no library yet: the C API answers while the run compiles"
    early = model.predict_proba(rows)
    assert type(served.wait()) is CompiledBooster and (folder/COMPILED).is_file()
    assert np.max(np.abs(model.predict_proba(rows) - early)) <= 1e-12


def test_predict_proba_follows_a_moved_link_within_recheck_ns(tuned, served_run):
    home, path, result, rows = tuned
    _, market, first, _ = served_run
    model = LGBMProd(market, home=home)
    promote(first, home=home, force=True, n_boot=20)
    model.predict_proba(rows[-1])
    second = save_run(result, home=home, table_path=path)
    promote(second, home=home, force=True, n_boot=20)
    time.sleep(LinkStamp.recheck_ns / 1e9)
    model.predict_proba(rows[-1])
    assert model._run.run_id == second, "a call recheck_ns after the move loaded the new run"
    promote(first, home=home, force=True, n_boot=20)  # as the other tests expect


def test_lgbmprod_serves_the_compiled_model_through_the_calibrator(served_run, monkeypatch):
    home, market, run_id, rows = served_run
    model = LGBMProd(market, home=home)
    assert type(serving(model)) is CompiledBooster
    record = json.loads((run_dir(run_id, home)/COMPILED).read_text())
    assert (run_dir(run_id, home)/record["library"]).is_file()
    monkeypatch.setattr(LGBMProd, "compiled", False)
    native = LGBMProd(path=run_dir(run_id, home)/"lgbm.pkl", home=home)  # another path: another instance, on the C API
    assert type(native.current().model) is FastBooster
    assert np.max(np.abs(model.predict_proba(rows) - native.predict_proba(rows))) <= 1e-12
    assert all(abs(model.predict_proba(r) - native.predict_proba(r)) <= 1e-12 for r in rows[-500:])


def test_no_compiler_never_stops_serving(served_run, monkeypatch, caplog):
    home, market, run_id, rows = served_run
    (run_dir(run_id, home)/COMPILED).unlink()
    monkeypatch.setenv("CC", "/nonexistent/cc")
    model = LGBMProd(path=run_dir(run_id, home)/"logreg.pkl", home=home)  # a fresh instance: loads (and compiles) anew
    with caplog.at_level(logging.WARNING, logger="cryptoml.infer"):
        p = model.predict_proba(rows[:10])
        served = serving(model)
    assert type(served) is FastBooster and len(p) == 10
    assert "not compiled" in caplog.text and "/nonexistent/cc" in caplog.text


def slow_compiler(folder) -> str:
    "A C compiler that waits a second before each call: a run's lazy compile then lasts long enough to be interrupted."
    cc = folder/"slow-cc"
    cc.write_text(f"#!/bin/sh\nsleep 1\nexec {shutil.which('cc')} \"$@\"\n")
    cc.chmod(0o755)
    return str(cc)


def test_a_run_folder_removed_during_its_lazy_compile_is_not_made_again(tuned, tmp_path, monkeypatch, caplog):
    home, path, result, rows = tuned
    run_id = save_run(result, home=home, table_path=path)
    folder = run_dir(run_id, home)
    monkeypatch.setenv("CC", slow_compiler(tmp_path))  # a compiler this process has not used: the model compiles anew
    model = LGBMProd(path=folder/"lgbm.txt", home=home)
    served = model.current().model
    assert type(served) is CompilingBooster
    early = model.predict_proba(rows)
    with caplog.at_level(logging.WARNING, logger="cryptoml.infer"):
        shutil.rmtree(folder)
        assert served._thread.is_alive(), "removed while the compiler ran"
        assert type(served.wait()) is FastBooster, "nothing compiled is served from a removed run"
    assert not folder.exists(), "the compile thread made the removed run folder again"
    assert "was removed while compiling: nothing filed" in caplog.text
    assert np.array_equal(model.predict_proba(rows), early) and model.predict_proba(rows[-1]) == early[-1]


def test_a_remover_holding_the_run_folders_lock_keeps_the_compiled_library_out(tuned, tmp_path, monkeypatch):
    home, path, result, rows = tuned
    run_id = save_run(result, home=home, table_path=path)
    folder = run_dir(run_id, home)
    monkeypatch.setenv("CC", slow_compiler(tmp_path))
    with run_folder_lock(folder):  # as a clean-up script does: from before the first load until the folder is gone
        model = LGBMProd(path=folder/"lgbm.pkl", home=home)
        served = model.current().model
        early = model.predict_proba(rows)
        served.wait(timeout=8)  # time enough for the slow compiler: the thread now waits to file the library
        assert served._thread.is_alive() and type(served.model) is FastBooster, "its filing waits for the lock"
        shutil.rmtree(folder)
    assert type(served.wait()) is FastBooster and not folder.exists()
    assert np.array_equal(model.predict_proba(rows), early)
