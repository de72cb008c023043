"""Walk-forward benchmark: `cryptoml.backtest.walk_forward_predictions` over six years of synthetic 2-hour bars
(26,280 bars of the ingest generator, seed features), retrained every 30 days (about 60 folds after the warm-up),
each fold guarded (point in time included), early-stopped on its inner slice, refitted, with its logistic
regression. Project: the folds on every core (worker processes, one LightGBM thread each). Reference: the same
folds one after another in this process, on one core. Both with fixed parameters, then both re-tuning (20 Optuna
trials) on the first of every 12 folds. Each way runs twice, alternated with the other, and the best time of each
is shown, so a burst of other work on the shared cores does not decide the ratio. Last, the report itself (scores with 1,000 bootstrap resamples per fold,
period and overall, and the trading backtest) on the fixed-parameter predictions.

    python bench/bench_backtest.py [--days 2190] [--trials 20] [--tune-every 12]
"""
import argparse, os, time

import pandas as pd

from cryptoml.backtest import FIXED_PARAMS, periods, score_predictions, trade_predictions, walk_forward_predictions
from cryptoml.features import add_labels, compute_features, features_asof
from cryptoml.ingest import synthetic_market
from cryptoml.split import bar_length


def market(days: float) -> tuple[pd.DataFrame, object]:
    "The labelled seed feature table of `days` of synthetic 2-hour bars, and its point-in-time feature function."
    bars = synthetic_market(days=days, seed=0, timeframe="2h")
    table = add_labels(compute_features(bars, "seed", timeframe="2h"), bars)
    table.attrs["cryptoml"] = {"horizon": 1}
    return table, features_asof(bars, "seed", timeframe="2h")


def timed(table, feature_fn, n_jobs: int, **kw) -> tuple[float, object]:
    "Seconds for one walk-forward, and its result."
    started = time.perf_counter()
    walk = walk_forward_predictions(table, retrain_days=30, feature_fn=feature_fn, n_jobs=n_jobs, progress=False, **kw)
    return time.perf_counter() - started, walk


def row(what: str, table, feature_fn, target: str, repeats: int, **kw) -> tuple[dict, object]:
    "One line: the project (every core) and the reference (one core, in order), alternated `repeats` times, best of each."
    times, walks = {n: [] for n in (os.cpu_count(), 1)}, []
    for _ in range(repeats):
        for n in times:
            seconds, walk = timed(table, feature_fn, n, **kw)
            times[n].append(seconds)
            walks.append(walk)
    assert all(w.predictions.equals(walks[0].predictions) for w in walks), "the ways disagree"
    project, reference, walk = min(times[os.cpu_count()]), min(times[1]), walks[0]
    return {"walk-forward": what, "bars": len(table), "folds": len(walk.folds), "predictions": len(walk.predictions),
            f"project s ({os.cpu_count()} processes)": project, "reference s (1 process, in order)": reference,
            "reference / project": reference / project, "target": target}, walk


def markdown(df: pd.DataFrame, digits: int = 4) -> str:
    "`df` as a Markdown table, floats to `digits` significant digits, integers with thousands separators."
    cells = df.map(lambda v: f"{v:.{digits}g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))
    return "\n".join("| " + " | ".join(line) + " |" for line in [list(df.columns), ["---"] * len(df.columns), *cells.values.tolist()])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=2190)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--tune-every", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2, help="alternated runs of each way; the best is reported")
    args = parser.parse_args()
    table, feature_fn = market(args.days)
    load_before = os.getloadavg()
    fixed, walk = row("fixed parameters", table, feature_fn, "<= 60 s", args.repeats, params=FIXED_PARAMS)
    tuned, _ = row(f"re-tuned ({args.trials} trials) every {args.tune_every} folds", table, feature_fn, "report", args.repeats,
                   tune_every=args.tune_every, n_trials=args.trials)
    started = time.perf_counter()
    labels = periods(walk.predictions.ts, walk.predictions.y.notna())[1]
    score_predictions(walk.predictions, 1000)
    trade_predictions(walk, bar_length(table), labels=labels)
    report = time.perf_counter() - started
    print(f"$ python bench/bench_backtest.py --days {args.days:g} --trials {args.trials} --tune-every {args.tune_every} "
          f"--repeats {args.repeats}")
    print(f"{os.cpu_count()} cores; load average {' '.join(f'{x:.2f}' for x in load_before)} before, "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after; synthetic 2h market, {args.days:g} days, monthly retraining; "
          f"each way run {args.repeats} times, alternated, best shown (the first project run includes starting the fork server)\n")
    print(markdown(pd.DataFrame([fixed, tuned])))
    print(f"\nReport on the fixed-parameter predictions (scores per fold, period and overall, 1,000 resamples each; "
          f"trading): {report:.1f} s, one process")


if __name__ == "__main__": main()
