"""Tuning benchmark: `cryptoml.tune` with 50 Optuna trials on 30 days of 1-minute seed features (43,200 rows of the
synthetic market, the seed's own scale), four ways of using 2 cores, and the default way on the shared real BTC bars.
Each figure is one whole `tune` call: the leakage guard's structural checks (the tables are in memory, so
`guard=False`: no point-in-time recomputation), trials, final fit, and the bootstrap of the validation metrics.

    python bench/bench_tune.py [--trials 50] [--days 30]
"""
import argparse, os, subprocess, sys, tempfile, time
from pathlib import Path

import pandas as pd

from cryptoml.features import add_labels, compute_features
from cryptoml.ingest import SYNTHETIC, example_market, read_bars, synthetic_market
from cryptoml.tune import tune


def labelled(bars: pd.DataFrame) -> pd.DataFrame:
    "The labelled seed feature table of `bars`."
    return add_labels(compute_features(bars, "seed"), bars)


def real_table(home: Path) -> pd.DataFrame | None:
    "The shared real 1-minute BTC/USDT bars as a seed feature table, or None on a fresh clone."
    market = example_market(home)
    return None if market == SYNTHETIC else labelled(read_bars(home, market.exchange, market.symbol, market.timeframe))


def one_process(table: pd.DataFrame, trials: int, **kw) -> dict:
    "One `tune` call in this process."
    started = time.perf_counter()
    result = tune(table, n_trials=trials, progress=False, guard=False, **kw)  # tables in memory: the structural checks only
    return dict(seconds=time.perf_counter() - started, result=result)


def two_workers(table: pd.DataFrame, trials: int, scratch: Path) -> dict:
    "Two worker processes, one thread per fit each, adding trials to one SQLite study until it holds `trials`."
    table.to_parquet(scratch/"table.parquet")
    storage = f"sqlite:///{scratch/'two.db'}"
    start_at = time.time() + 8  # both tune together, after their imports
    cmd = [sys.executable, __file__, "--worker", str(scratch/"table.parquet"), storage, str(trials), str(start_at)]
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    ends = [float(w.communicate()[0].split()[-1]) for w in workers]
    assert all(w.returncode == 0 for w in workers), "a worker failed"
    import optuna
    study = optuna.load_study(study_name="two", storage=storage)
    return dict(seconds=max(ends) - start_at, result=None, study=study)


def worker(table_file: str, storage: str, trials: str, start_at: str):
    "The body of one of `two_workers`' processes: prints the time it finished."
    rows = pd.read_parquet(table_file)
    time.sleep(max(0.0, float(start_at) - time.time()))
    tune(rows, n_trials=int(trials), storage=storage, study_name="two", progress=False, guard=False)
    print(time.time())


def row(way: str, rows: int, trials: int, run: dict) -> dict:
    "One line of the table."
    study = run["result"].study if run["result"] else run["study"]
    states = [t.state.name for t in study.trials]
    r = run["result"]
    return {"way": way, "rows": rows, "trials": len(states), "pruned": states.count("PRUNED"), "wall s": run["seconds"],
            "trials/s": len(states) / run["seconds"], "val log loss": r.metrics["log_loss"] if r else None,
            "val accuracy": r.metrics["accuracy"] if r else None, "best iteration": r.best_iteration if r else None}


def markdown(df: pd.DataFrame) -> str:
    "`df` as a Markdown table, numbers to 4 significant digits."
    cells = df.map(lambda v: "-" if v is None or v != v else f"{v:.4g}" if isinstance(v, float) else str(v))
    lines = [list(df.columns), ["---"] * len(df.columns), *cells.values.tolist()]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker: return worker(*args.worker)
    synthetic, t = labelled(synthetic_market(days=args.days, seed=0)), args.trials
    n = len(synthetic)
    with tempfile.TemporaryDirectory(prefix="bench_tune_") as scratch:
        real = real_table(Path(scratch)/"home")
        lines = [row("1 trial at a time, 1 thread per fit, in memory (default)", n, t, one_process(synthetic, t)),
                 row("1 trial at a time, 1 thread per fit, SQLite (CLI default)", n, t,
                     one_process(synthetic, t, storage=f"sqlite:///{scratch}/one.db")),
                 row("1 trial at a time, 2 threads per fit, in memory", n, t, one_process(synthetic, t, num_threads=2)),
                 row("2 worker processes x 1 thread, one SQLite study", n, t, two_workers(synthetic, t, Path(scratch)))]
        if real is not None:
            lines.append(row("real BTC 1m bars: 1 trial at a time, 1 thread, in memory", len(real), t, one_process(real, t)))
    print(f"$ python bench/bench_tune.py --trials {args.trials} --days {args.days:g}")
    print(f"{os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"rows: synthetic market ({args.days:g} days) unless marked real; validation: the last 14 days; target <= 30 s\n")
    print(markdown(pd.DataFrame(lines)))


if __name__ == "__main__": main()
