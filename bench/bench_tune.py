"""Tuning benchmark: 50 trials on 43,200 rows of 1-minute seed features (30 days of the synthetic market), `cryptoml.tune`
beside Optuna's own recipe for LightGBM on two cores, interleaved in one run and repeated; medians, and each way's spread.

The reference is Optuna's recipe: `study.optimize(n_jobs=2)` (two threads), LightGBM `num_threads=1`, `LightGBMPruningCallback`
reporting every round to `MedianPruner()` (5 start-up trials, no warm-up, every step) and a seeded `TPESampler`, on the same
rows, inner slice, search space, early stopping and round cap as ours, a fresh `lgb.Dataset` per trial. Ours: `n_jobs`
threads (two here, the default), one LightGBM thread each, trials windowed so that the same seed gives the same study;
beside it, the same through the window of width 2 that `tune` used before this stop, to show what the width costs.
"trials" rows time the 50 trials alone, like the reference; "tune()" rows time a whole call: the leakage guard's structural
checks (tables in memory, `guard=False`), the trials, the final fit and the 1000-resample bootstrap of the validation scores.
Repeat r runs every way with seed r (`--seed S`: all with S): what 50 trials cost depends on what they draw (a start-up
trial at a learning rate of 0.007 boosts for hundreds of rounds), so one seed measures one search, not the recipe.
On a shared machine the wall times move with the load; the CPU seconds (the process's, every thread) and the
thread-seconds trials spent waiting for their window (a counter kept by this script) move less.

    python bench/bench_tune.py [--trials 50] [--days 30] [--repeat 5] [--seed S]
"""
import argparse, os, subprocess, sys, tempfile, threading, time
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
from cryptoml.tune import (EARLY_STOPPING, MAX_ROUNDS, REPORT_EVERY, StudyFile, TrialWindow, base_params, inner_split,
                           open_study, run_trials, suggest_params, trial_objective, tune)

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

def tunes_study(n_jobs: int, window: int | None = None):
    "The in-memory study `tune` makes for `n_jobs` trials at a time (sampler, window, pruner); `window`: another width."
    return lambda seed: open_study(None, f"bench-{time.time_ns()}", "logloss", seed, "bench", n_jobs, window)

WAITED, COUNTING = [0.0], threading.Lock()

def count_waits(wait):
    "`TrialWindow._wait`, adding the seconds each call takes to `WAITED` (this script's counter; the library keeps none)."
    def counted(self, study, number):
        started = time.perf_counter()
        try: return wait(self, study, number)
        finally:
            with COUNTING: WAITED[0] += time.perf_counter() - started
    return counted

TrialWindow._wait = count_waits(TrialWindow._wait)

def our_trials(n_jobs: int, make_study=None):
    "Our trials alone, `n_jobs` at a time, in memory (by default in the study `tune` makes)."
    def run(table, inner, features, trials, scratch, seed) -> dict:
        study = (make_study or tunes_study(n_jobs))(seed)
        started = time.perf_counter()
        run_trials(study, trial_objective(inner, features, "logloss", base_params(seed)), trials,
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
        "cryptoml: 2 at a time through a window of 2, as before this stop (trials)": our_trials(2, tunes_study(2, window=2)),
        "cryptoml: 1 trial at a time (n_jobs=1), in memory (trials)": our_trials(1)}

def measured(way, *args) -> dict:
    "One run of `way`: what it returns, with the CPU seconds it took and the thread-seconds its trials waited."
    cpu, waited = time.process_time(), WAITED[0]
    run = way(*args)
    return {**run, "cpu": time.process_time() - cpu, "waited": WAITED[0] - waited}

def rounds(study: optuna.Study) -> int:
    "Boosting rounds the study's trials ran: to a trial's last report, or its best round + patience if it records that."
    return sum(max(max(t.intermediate_values, default=-1) + 1,
                   min(t.user_attrs.get("best_iteration", 0) + EARLY_STOPPING, MAX_ROUNDS) if t.state.name == "COMPLETE" else 0)
               for t in study.trials)

def summary(name: str, runs: list[dict], reference: list[dict]) -> dict:
    "One line of the table: medians over the repeats, the spread of the times and of the best inner log losses."
    seconds, ref = np.array([r["seconds"] for r in runs]), np.array([r["seconds"] for r in reference])
    best = np.array([r["study"].best_value for r in runs])
    val = [r["result"].metrics["log_loss"] for r in runs if "result" in r]
    return {"way": name, "median s": np.median(seconds), "min-max s": f"{seconds.min():.1f}-{seconds.max():.1f}",
            "ratio of medians": np.median(seconds) / np.median(ref), "median ratio": np.median(seconds / ref),
            "CPU s": np.median([r["cpu"] for r in runs]),
            "CPU ratio": np.median([r["cpu"] for r in runs]) / np.median([r["cpu"] for r in reference]),
            "waited s": np.median([r["waited"] for r in runs]),
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
                runs[name].append(measured(WAYS[name], table, inner, features, args.trials, Path(scratch), seed))
                loads.append(os.getloadavg()[0])
            print(f"repeat {rep + 1}/{args.repeat} done, load {loads[-1]:.1f}", file=sys.stderr)
    ours = tunes_study(2)(0)
    seeds = list(range(args.repeat)) if args.seed is None else [args.seed] * args.repeat
    print(f"$ python bench/bench_tune.py --trials {args.trials} --days {args.days:g} --repeat {args.repeat}"
          + ("" if args.seed is None else f" --seed {args.seed}"))
    print(f"{os.cpu_count()} cores; {len(table):,} rows x {len(features)} features ({len(inner.train):,} inner training rows, "
          f"{len(inner.val):,} inner validation rows); {args.trials} trials; {args.repeat} interleaved repeats per way, seeds {seeds}")
    print(f"before: {before}\nafter:  {uptime()}\n1-min load average over the run: median {np.median(loads):.1f}, "
          f"range {min(loads):.1f}-{max(loads):.1f}")
    print(f"pruning, reference: MedianPruner(n_startup_trials=5, n_warmup_steps=0, interval_steps=1), reports every round, "
          f"sees whichever trials have finished\npruning, cryptoml: {ours.pruner!r} (sampler {ours.sampler!r}), reports "
          f"every {REPORT_EVERY} round(s) (every 10 on a server), sees the trials numbered t-{ours.sampler.window.width} or "
          "less\nratio of medians: this way's median seconds / the reference's; median ratio: median over repeats of "
          "(this way's seconds / the reference's in the same repeat)\nCPU s: the process's CPU seconds, all threads; "
          "waited s: thread-seconds trials spent waiting for their window (medians over repeats)\n")
    print(markdown(pd.DataFrame([summary(name, runs[name], runs[names[0]]) for name in names]), digits=3))

if __name__ == "__main__": main()
