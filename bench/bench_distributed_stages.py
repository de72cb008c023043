"""Where the distributed pipeline's time goes: each stage's wall and CPU seconds, one process in turn vs a LocalCluster.

The tasks of `cryptoml pipeline --demo --symbols ...` (`cryptoml.cli.pipeline_market`: a market each, its trials one at
a time on one thread) run in this process one after another (reference) and as Dask tasks on a LocalCluster of N workers (project, its start-up
and shutdown included). Each stage of a market's task is timed where it runs: its bars (acquire), features, tuning,
save (model files and card), the gate. CPU seconds are the process's own (all its threads) plus its finished
children's.

Linux shares the cores fairly between sessions (autogroups), not processes: on a machine others use, the workers of
one command together get about the cores one process would. So the table gives the work (CPU seconds) and the cores
each run got (CPU / wall) beside the wall time: wall ratio = CPU ratio / cores-got ratio.

    python bench/bench_distributed_stages.py [--markets 8] [--days 30] [--trials 20] [--workers 2]
"""
import functools, os, tempfile, time
from collections import defaultdict
from functools import partial

import pandas as pd

from cryptoml import cli
from cryptoml import distributed as dist
from bench_backtest import markdown  # this folder's: a table of figures
from bench_distributed import arguments, load, market_symbols

STAGES = ("acquire", "build_features", "tune", "save_run", "promote")
TIMES: list[dict] = []  # this process's stage timings


def cpu() -> float:
    "CPU seconds of this process and its finished children."
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(stage: str, fn):
    "`fn`, its wall and CPU seconds added to `TIMES` under `stage` on each call."
    if getattr(fn, "stage", None): return fn
    @functools.wraps(fn)
    def run(*args, **kwargs):
        wall, used = time.perf_counter(), cpu()
        try: return fn(*args, **kwargs)
        finally: TIMES.append({"stage": stage, "pid": os.getpid(), "wall": time.perf_counter() - wall, "cpu": cpu() - used})
    run.stage = stage
    return run


def install() -> int:
    "Time the pipeline task's stages in this process (by their names in `cryptoml.cli`); its PID."
    for name in STAGES: setattr(cli, name, timed(name, getattr(cli, name)))
    return os.getpid()


def collected() -> list[dict]: return TIMES


def run(markets: int, days: float, trials: int, cluster: str | None) -> tuple[float, float, list[dict]]:
    "Wall and CPU seconds of the markets' pipeline tasks (with the cluster's start and stop), and each stage's timing."
    home = tempfile.mkdtemp(prefix="bench-stages-")
    symbols = market_symbols(markets)
    args = cli.parser().parse_args(["pipeline", "--demo", "--symbols", ",".join(symbols), "--timeframe", "1m", "--days",
                                    f"{days:g}", "--trials", str(trials), "--home", home, "--quiet",
                                    *(["--cluster", cluster] if cluster else [])])
    TIMES.clear()
    wall, used = time.perf_counter(), cpu()
    with dist.connect(args.scheduler, args.cluster) as client:
        started = time.perf_counter()
        if client: client.run(install)
        outcomes = dist.run_markets(partial(cli.pipeline_market, args, dist.invocation_id()), cli.markets_of(args), client,
                                    progress=False)
        times = [t for ts in client.run(collected).values() for t in ts] if client else list(TIMES)
        stopping = time.perf_counter()
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    ends = defaultdict(float)  # each worker's last task's end
    for o in outcomes: ends[o.worker] = max(ends[o.worker], o.started + o.seconds)
    overhead = [{"stage": "cluster start + stop", "pid": os.getpid(), "wall": started - wall + time.perf_counter() - stopping,
                 "cpu": 0.0},
                {"stage": "tail (a worker idle at the end)", "pid": os.getpid(), "wall": max(ends.values()) - min(ends.values()),
                 "cpu": 0.0}] if cluster else []
    return time.perf_counter() - wall, cpu() - used, times + overhead


def main():
    args = arguments(__doc__.splitlines()[0])
    install()
    loads, results = [load()], {}
    for name, cluster in (("reference", None), ("project", f"local[{args.workers}]")):
        results[name] = run(args.markets, args.days, args.trials, cluster)
        loads.append(load())
    rows = defaultdict(dict)
    for name, (_, _, times) in results.items():
        for t in times:
            rows[t["stage"]][f"{name} wall s"] = rows[t["stage"]].get(f"{name} wall s", 0) + t["wall"]
            rows[t["stage"]][f"{name} CPU s"] = rows[t["stage"]].get(f"{name} CPU s", 0) + t["cpu"]
    table = pd.DataFrame.from_dict(rows, orient="index").fillna(0)
    table.loc["whole run (wall: the command's; CPU: every process's)"] = {
        f"{name} {what}": value for name, (wall, used, _) in results.items() for what, value in (("wall s", wall), ("CPU s", used))}
    table["CPU project / reference"] = table["project CPU s"] / table["reference CPU s"]
    print(markdown(table.rename_axis("stage (wall, CPU summed over markets)").reset_index()))
    (ref_wall, ref_cpu, _), (wall, used, _) = results["reference"], results["project"]
    print(f"\nwall: project {wall:.1f} s / reference {ref_wall:.1f} s = {wall / ref_wall:.2f} (target <= 0.6); "
          f"CPU ratio {used / ref_cpu:.2f}; cores got: reference {ref_cpu / ref_wall:.2f}, project {used / wall:.2f}; "
          f"load before, after reference, after project: {', '.join(loads)}")
    print(f"\npython bench/bench_distributed_stages.py --markets {args.markets} --days {args.days:g} --trials {args.trials} "
          f"--workers {args.workers}")


if __name__ == "__main__":
    import bench_distributed_stages  # by name, as the workers import it: one TIMES a process, and the same one
    bench_distributed_stages.main()
