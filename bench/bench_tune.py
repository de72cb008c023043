"""Tuning benchmark: 50 trials on 43,200 rows of 1-minute seed features (30 days of the synthetic market), `cryptoml.tune`
beside Optuna's own recipe for LightGBM on two cores, interleaved in one run and repeated; medians, and each way's spread.

The reference is Optuna's recipe: `study.optimize(n_jobs=2)` (two threads), LightGBM `num_threads=1`, `LightGBMPruningCallback`
reporting every round to `MedianPruner()` (5 start-up trials, no warm-up, every step) and a seeded `TPESampler`, on the same
rows, inner slice, search space, early stopping and round cap as ours, a fresh `lgb.Dataset` per trial. Ours: `n_jobs`
threads (two here, the default), one LightGBM thread each, trials windowed so that the same seed gives the same study.
"trials" rows time the 50 trials alone, like the reference; "tune()" rows time a whole call: the leakage guard's structural
checks (tables in memory, `guard=False`), the trials, the final fit and the 1000-resample bootstrap of the validation scores.
Repeat r runs every way with seed r (`--seed S`: all with S): what 50 trials cost depends on what they draw (a start-up
trial at a learning rate of 0.007 boosts for hundreds of rounds), so one seed measures one search, not the recipe.

    python bench/bench_tune.py [--trials 50] [--days 30] [--repeat 5] [--seed S]
"""
import argparse, os, subprocess, sys, tempfile, time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import optuna
import pandas as pd
from optuna_integration import LightGBMPruningCallback

from cryptoml.features import add_labels, compute_features
from cryptoml.ingest import synthetic_market
from cryptoml.metrics import evaluate
from cryptoml.split import feature_columns, time_split
from cryptoml.tune import (EARLY_STOPPING, MAX_ROUNDS, REPORT_EVERY, StudyFile, TrialSeededTPE, TrialWindow, WindowPruner,
                           base_params, inner_split, open_study, run_trials, suggest_params, trial_objective, tune)

from bench_backtest import markdown  # this folder's: a table of figures

VAL_DAYS = 14

def labelled(bars: pd.DataFrame) -> pd.DataFrame:
    "The labelled seed feature table of `bars`."
    return add_labels(compute_features(bars, "seed"), bars)

def reference_objective(inner, features: list[str], seed: int):
    "Optuna's LightGBM recipe on our search space: a fresh Dataset per trial, the pruning callback reporting every round."
    X_train, y_train, X_val, y_val = inner.train[features], inner.train.y, inner.val[features], inner.val.y.to_numpy()
    base_rate = y_train.mean()

    def run(trial: optuna.Trial) -> float:
        params = {**base_params(seed, 1), "metric": "binary_logloss", **suggest_params(trial, base_rate)}
        train = lgb.Dataset(X_train, y_train)
        booster = lgb.train(params, train, MAX_ROUNDS, valid_sets=[lgb.Dataset(X_val, y_val, reference=train)], valid_names=["inner"],
                            callbacks=[lgb.early_stopping(EARLY_STOPPING, verbose=False),
                                       LightGBMPruningCallback(trial, "binary_logloss", valid_name="inner")])
        return evaluate(y_val, booster.predict(X_val, num_iteration=booster.best_iteration))["log_loss"]
    return run

def reference(table, inner, features, trials, scratch, seed) -> dict:
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed), pruner=optuna.pruners.MedianPruner())
    started = time.perf_counter()
    study.optimize(reference_objective(inner, features, seed), n_trials=trials, n_jobs=2)
    return dict(seconds=time.perf_counter() - started, study=study)

def tunes_study(n_jobs: int):
    "The in-memory study `tune` makes for `n_jobs` trials at a time: its sampler, window and pruner."
    return lambda seed: open_study(None, f"bench-{time.time_ns()}", "logloss", seed, "bench", n_jobs)

def before_this_stop(seed: int) -> optuna.Study:
    "Two at a time as before this stop: every trial waits for its window, and trial 7 (not 5) is the first pruned."
    seen = TrialWindow(2)
    return optuna.create_study(sampler=TrialSeededTPE(seed, seen), pruner=WindowPruner(optuna.pruners.MedianPruner(), seen))

def todays_pruner(seed: int) -> optuna.Study:
    "One at a time with this project's pruning before issue 16: every 5 rounds after a 20-round warm-up."
    seen = TrialWindow(1)
    median = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=20, interval_steps=5)
    return optuna.create_study(sampler=TrialSeededTPE(seed, seen), pruner=WindowPruner(median, seen))

def our_trials(n_jobs: int, make_study=None, report_every: int = REPORT_EVERY):
    "Our trials alone, `n_jobs` at a time, in memory (by default in the study `tune` makes)."
    def run(table, inner, features, trials, scratch, seed) -> dict:
        study = (make_study or tunes_study(n_jobs))(seed)
        started = time.perf_counter()
        run_trials(study, trial_objective(inner, features, "logloss", base_params(seed), report_every), trials,
                   progress=False, n_jobs=n_jobs)
        return dict(seconds=time.perf_counter() - started, study=study)
    return run

def our_tune(n_jobs: int, on_file: bool = False):
    "A whole `tune` call, `n_jobs` trials at a time, in memory or on an SQLite study file (the command line's storage)."
    def run(table, inner, features, trials, scratch, seed) -> dict:
        storage = f"sqlite:///{scratch/'optuna.db'}" if on_file else None  # made before the first repeat, as a data root's is
        started = time.perf_counter()
        result = tune(table, n_trials=trials, val_days=VAL_DAYS, progress=False, guard=False, storage=storage, seed=seed,
                      study_name=f"bench-{time.time_ns()}", n_jobs=n_jobs)
        return dict(seconds=time.perf_counter() - started, study=result.study, result=result)
    return run

WAYS = {"reference: Optuna n_jobs=2 threads x LightGBM 1 thread, in memory (trials)": reference,
        "cryptoml: 2 trials at a time (n_jobs=2, the default here), in memory (trials)": our_trials(2),
        "cryptoml: tune(), n_jobs=2, in memory (whole call)": our_tune(2),
        "cryptoml: tune(), n_jobs=2, on the SQLite study file the CLI uses (whole call)": our_tune(2, on_file=True),
        "cryptoml: 2 at a time as before this stop: every trial waits, pruned from trial 7 (trials)":
            our_trials(2, before_this_stop),
        "cryptoml: 1 trial at a time (n_jobs=1), in memory (trials)": our_trials(1),
        "before issue 16's search: 1 at a time, pruning every 5 rounds after 20 (trials)": our_trials(1, todays_pruner, 5)}

def rounds(study: optuna.Study) -> int:
    "Boosting rounds the study's trials ran: to a trial's last report, or its best round + patience if it records that."
    return sum(max(max(t.intermediate_values, default=-1) + 1,
                   min(t.user_attrs.get("best_iteration", 0) + EARLY_STOPPING, MAX_ROUNDS) if t.state.name == "COMPLETE" else 0)
               for t in study.trials)

def summary(name: str, runs: list[dict], reference_seconds: list[float]) -> dict:
    "One line of the table: medians over the repeats, the spread of the times and of the best inner log losses."
    seconds = np.array([r["seconds"] for r in runs])
    best = np.array([r["study"].best_value for r in runs])
    val = [r["result"].metrics["log_loss"] for r in runs if "result" in r]
    return {"way": name, "median s": np.median(seconds), "min-max s": f"{seconds.min():.1f}-{seconds.max():.1f}",
            "ratio": np.median(seconds / np.array(reference_seconds)),
            "pruned": int(np.median([sum(t.state.name == "PRUNED" for t in r["study"].trials) for r in runs])),
            "rounds": int(np.median([rounds(r["study"]) for r in runs])),
            "best inner log loss, median (min-max)": f"{np.median(best):.5f} ({best.min():.5f}-{best.max():.5f})",
            "val log loss": f"{np.median(val):.5f}" if val else "-"}

def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=None, help="one seed for every repeat (default: repeat r uses seed r)")
    args = parser.parse_args()
    table = labelled(synthetic_market(days=args.days, seed=0))
    table.attrs["cryptoml"] = {"feature_set": "seed", "horizon": 1}
    features, split = feature_columns(table), time_split(table, VAL_DAYS, horizon=1)
    inner, names = inner_split(split), list(WAYS)
    before, loads, runs = uptime(), [], {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench_tune_") as scratch:
        StudyFile(f"sqlite:///{Path(scratch)/'optuna.db'}")  # the study file's tables, as an earlier run leaves them
        for rep in range(args.repeat):
            for name in names[rep % len(names):] + names[:rep % len(names)]:  # each repeat starts with another way
                seed = rep if args.seed is None else args.seed
                runs[name].append(WAYS[name](table, inner, features, args.trials, Path(scratch), seed))
                loads.append(os.getloadavg()[0])
            print(f"repeat {rep + 1}/{args.repeat} done, load {loads[-1]:.1f}", file=sys.stderr)
    ref, ours = [r["seconds"] for r in runs[names[0]]], tunes_study(2)(0)
    seeds = list(range(args.repeat)) if args.seed is None else [args.seed] * args.repeat
    print(f"$ python bench/bench_tune.py --trials {args.trials} --days {args.days:g} --repeat {args.repeat}"
          + ("" if args.seed is None else f" --seed {args.seed}"))
    print(f"{os.cpu_count()} cores; {len(table):,} rows x {len(features)} features ({len(inner.train):,} inner training rows, "
          f"{len(inner.val):,} inner validation rows); {args.trials} trials; {args.repeat} interleaved repeats per way, seeds {seeds}")
    print(f"before: {before}\nafter:  {uptime()}\n1-min load average over the run: median {np.median(loads):.1f}, "
          f"range {min(loads):.1f}-{max(loads):.1f}")
    print(f"pruning, reference: MedianPruner(n_startup_trials=5, n_warmup_steps=0, interval_steps=1), reports every round, "
          f"sees whichever trials have finished\npruning, cryptoml: {ours.pruner!r} (sampler {ours.sampler!r}), reports "
          f"every {REPORT_EVERY} round(s) (every 10 on a server), sees the trials numbered t-n_jobs or less\n"
          "ratio: median over repeats of (this way's seconds / the reference's seconds in the same repeat)\n")
    print(markdown(pd.DataFrame([summary(name, runs[name], ref) for name in names]), digits=3))

if __name__ == "__main__": main()
