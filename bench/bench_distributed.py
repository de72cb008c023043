"""Distributed benchmark: many markets' pipelines, and one market's walk-forward folds, on a Dask LocalCluster.

1. The whole pipeline (synthetic bars, features, leak-checked split, 20 Optuna trials, save, the gate) of 8 synthetic
   markets of 30 days of 1-minute bars. Project: `cryptoml pipeline --demo --symbols ... --cluster local[2]` (a task a
   market on a LocalCluster of 2 worker processes, its start-up included). Reference: the same command without
   `--cluster`, the markets one after another in one process. Both run each market's tasks the same way: its trials one
   at a time on one LightGBM thread (a many-market pipeline runs each market with `--jobs 1`). Each in a fresh data
   root, as a user runs it (wall time of the whole command). Target: project <= 0.6 x reference.
   A third run sends the same command to a standing cluster (`--scheduler tcp://...`): the same LocalCluster, started
   and its workers' imports done before the clock starts, as on a cluster that served a job before.
2. The walk-forward folds of the first market (retrained every 2 days, fixed parameters, the point-in-time guard on):
   project on the LocalCluster (`cluster_pool`, the cluster's start-up included), reference on the walk-forward's own
   in-process pool of as many worker processes. The two must give the same predictions.

The load average (`uptime`) is printed beside each figure: on a machine shared with other work, figures move with it.
So are the CPU seconds each command used (itself, its workers and their compilers) and the cores that makes on
average (CPU seconds / wall seconds): the cluster can only be quicker when it gets more cores than the one-process run.
Linux shares the cores fairly between sessions (autogroups), not processes: with other sessions busy, the workers of one
command together get about what one process would.

    python bench/bench_distributed.py [--markets 8] [--days 30] [--trials 20] [--workers 2]
"""
import argparse, importlib, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

import pandas as pd

from cryptoml.backtest import FIXED_PARAMS, walk_forward_predictions
from cryptoml.core import Market, feature_path
from cryptoml.distributed import cluster_pool, connect
from cryptoml.features import read_feature_table, table_asof
from bench_backtest import markdown  # this folder's: a table of figures


def load() -> str:
    "The 1-minute load average."
    return f"{os.getloadavg()[0]:.1f}"


def children_cpu() -> float:
    "CPU seconds of this process's finished children (and theirs) so far."
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pipeline(home: Path, symbols: list[str], days: float, trials: int, *where: str) -> tuple[float, str, list[str], float]:
    "Seconds of one `cryptoml pipeline` over `symbols` (`where`: its cluster options), the load when it ended, its command line and its CPU seconds."
    command = ["cryptoml", "pipeline", "--demo", "--symbols", ",".join(symbols), "--timeframe", "1m", "--days", str(days),
               "--trials", str(trials), "--home", str(home), "--quiet", *where]
    started, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1): sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("synthetic ")]
    assert len(lines) == len(symbols) and not any(" failed " in line for line in lines), done.stdout
    return seconds, load(), command, children_cpu() - cpu


def warm():
    "Import what a market's task needs, as a standing cluster's workers did on their first job."
    importlib.import_module("cryptoml.cli")


def folds(table: pd.DataFrame, feature_fn, workers: int, on_cluster: bool) -> tuple[float, str, object]:
    "Seconds of one walk-forward of `table` on a LocalCluster of `workers` or on as many in-process workers; load; result."
    started = time.perf_counter()
    kw = dict(retrain_days=2, params=FIXED_PARAMS, feature_fn=feature_fn, progress=False)
    if on_cluster:
        with connect(cluster=f"local[{workers}]") as client: walk = walk_forward_predictions(table, pool=cluster_pool(client), **kw)
    else: walk = walk_forward_predictions(table, n_jobs=workers, **kw)
    return time.perf_counter() - started, load(), walk


def market_symbols(markets: int) -> list[str]:
    "The synthetic markets' symbols: AAA/USDT, BBB/USDT, ..."
    return [f"{chr(65 + i) * 3}/USDT" for i in range(markets)]


def arguments(description: str) -> argparse.Namespace:
    "The distributed benchmarks' options: --markets, --days, --trials, --workers."
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--markets", type=int, default=8)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    return parser.parse_args()


def main():
    args = arguments(__doc__.splitlines()[0])
    symbols = market_symbols(args.markets)
    cluster, rows = f"local[{args.workers}]", []
    print(f"load before: {load()}", flush=True)
    with tempfile.TemporaryDirectory() as reference_home, tempfile.TemporaryDirectory() as project_home:
        reference, reference_load, command, reference_cpu = pipeline(Path(reference_home), symbols, args.days, args.trials)
        project, project_load, cluster_command, project_cpu = pipeline(Path(project_home), symbols, args.days, args.trials,
                                                                      "--cluster", cluster)
        rows.append({"what": f"pipeline, {args.markets} markets x {args.days:g} days of 1m, {args.trials} trials",
                     f"project s (LocalCluster, {args.workers} workers)": project, "reference s (one process, in turn)": reference,
                     "project / reference": project / reference, "target": "<= 0.6", "load (ref, proj)": f"{reference_load}, {project_load}",
                     "CPU s (ref, proj)": f"{reference_cpu:.0f}, {project_cpu:.0f}",
                     "cores got (ref, proj)": f"{reference_cpu / reference:.2f}, {project_cpu / project:.2f}"})
        with tempfile.TemporaryDirectory() as standing_home, connect(cluster=cluster) as client:
            client.run(warm)
            standing, standing_load, standing_command, _ = pipeline(Path(standing_home), symbols, args.days, args.trials,
                                                                    "--scheduler", client.scheduler.address)
        rows.append({"what": "the same, sent to a standing LocalCluster (`--scheduler`)",
                     f"project s (LocalCluster, {args.workers} workers)": standing, "reference s (one process, in turn)": reference,
                     "project / reference": standing / reference, "target": "<= 0.6", "load (ref, proj)": f"{reference_load}, {standing_load}",
                     "CPU s (ref, proj)": f"{reference_cpu:.0f}, -", "cores got (ref, proj)": f"{reference_cpu / reference:.2f}, -"})
        path = feature_path(reference_home, Market("synthetic", symbols[0], "1m"), "seed", 1)
        table, meta = read_feature_table(path)
        feature_fn = table_asof(meta, reference_home)
        in_process, in_process_load, inline = folds(table, feature_fn, args.workers, on_cluster=False)
        on_cluster, on_cluster_load, walk = folds(table, feature_fn, args.workers, on_cluster=True)
        pd.testing.assert_frame_equal(walk.predictions, inline.predictions)
        rows.append({"what": f"walk-forward of {symbols[0]}: {len(walk.folds)} folds, every 2 days, fixed parameters",
                     f"project s (LocalCluster, {args.workers} workers)": on_cluster,
                     "reference s (one process, in turn)": f"{in_process:.4g} ({args.workers} in-process workers)",
                     "project / reference": on_cluster / in_process, "target": "report", "load (ref, proj)": f"{in_process_load}, {on_cluster_load}"})
    print(markdown(pd.DataFrame(rows)))
    print(f"\nproject:   {' '.join(cluster_command)}\nstanding:  {' '.join(standing_command)}\nreference: {' '.join(command)}")
    print(f"walk-forward: walk_forward_predictions(table, pool=cluster_pool(client)) vs (table, n_jobs={args.workers})")
    print(f"\npython bench/bench_distributed.py --markets {args.markets} --days {args.days:g} --trials {args.trials} --workers {args.workers}")


if __name__ == "__main__":
    main()
