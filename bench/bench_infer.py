"""Latency and throughput of production inference: LGBMProd and EnsemblePredictor.

Tunes a small real model on the example market (the shared BTC/USDT bars, or the synthetic market on a fresh
clone), makes it its market's champion, then measures single-row latency (p50/p95/p99 over --calls calls after a
warm-up) for LGBMProd (also with the shadow's answers logged: `log_shadow()`, the reference being the same calls
without it) and for EnsemblePredictor (the booster and its run's logistic regression, linear blend), each from a
ready feature dict, from a frame of raw bars through `online_features`, and from one raw bar at a time pushed into
a live `OnlineFeatures` feed (ccxt's [ms, open, high, low, close, volume] lists), and batch scoring in rows per second.

    python bench/bench_infer.py [--calls 20000] [--batch-rows 1000000] [--trials 3]

Targets (issue 8): LGBMProd p95 <= 100 us; <= 1 ms with online features; the ensemble within 2x of
LGBMProd; batch >= 500 K rows/s.
"""
import argparse, os, shlex, shutil, sys, tempfile, time
from pathlib import Path

import numpy as np

from cryptoml.ingest import example_market, funding_exchange, read_bars, read_funding
from cryptoml.features import build_features, read_feature_table
from cryptoml.tune import tune
from cryptoml.registry import promote, save_run
from cryptoml.infer import LGBMProd, OnlineFeatures, online_features
from cryptoml.ensemble import EnsemblePredictor, LogRegMember


def latencies_us(call, inputs: list, calls: int, warmup: int = 2000) -> np.ndarray:
    "Wall time of each of `calls` calls `call(x)`, cycling through `inputs`, after `warmup` untimed calls; microseconds."
    for i in range(warmup): call(inputs[i % len(inputs)])
    times, clock = np.empty(calls), time.perf_counter_ns
    for i in range(calls):
        x = inputs[i % len(inputs)]
        start = clock()
        call(x)
        times[i] = clock() - start
    return times / 1000


def batch_rows_per_s(model: LGBMProd, rows: np.ndarray, num_threads: int, repeat: int = 3) -> float:
    "Best of `repeat` timings of one `predict_proba` over all `rows`, as rows per second."
    best = min(seconds(lambda: model.predict_proba(rows, num_threads=num_threads)) for _ in range(repeat))
    return len(rows) / best


def seconds(fn) -> float:
    "Wall seconds of one call `fn()`."
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def serve_example_model(home: Path, trials: int):
    "Tune and save a small model on the example market, make it champion and shadow; its market, result, bars and funding."
    market = example_market(home)
    table_path = build_features(market, home=home, progress=False)
    table, _ = read_feature_table(table_path)
    result = tune(table, home=home, n_trials=trials, n_boot=20, seed=0, progress=False)
    run_id = save_run(result, home=home, table_path=table_path)
    promote(run_id, home=home, force=True, n_boot=20)  # forced: a quick model, served to be timed
    promote(run_id, home=home, alias="shadow")  # its own shadow, to time the champion while the shadow's answers are logged
    bars = read_bars(home, *market)
    funding = read_funding(home, funding_exchange(market), market.symbol)
    return market, result, bars, funding


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="timed single-row calls per measurement")
    parser.add_argument("--batch-rows", type=int, default=1_000_000, help="rows in the batch measurement")
    parser.add_argument("--trials", type=int, default=3, help="Optuna trials for the benchmarked model")
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="bench_infer_"))
    try: report(home, args)
    finally: shutil.rmtree(home)


def report(home: Path, args):
    "Serve the example model from `home`, measure it and print the table."
    market, result, bars, funding = serve_example_model(home, args.trials)
    lgbm, logreg = LGBMProd(market, home=home), LogRegMember(market, home=home)
    ensemble = EnsemblePredictor({"lgbm": lgbm, "logreg": logreg})
    val = result.split.val[lgbm.features].to_numpy()
    dicts = [dict(zip(lgbm.features, r)) for r in val.tolist()]
    feature_set = result.table_meta.get("feature_set", "seed")
    ends = (np.searchsorted(bars["ts"].to_numpy(), result.split.val["ts"].to_numpy()) + 1).tolist()

    def online(model_call):
        "A call that takes the raw bars up to a bar (as a live caller holds them), computes its features and asks `model_call`."
        return lambda end: model_call(online_features(bars.iloc[:end], feature_set, funding=funding, timeframe=market.timeframe))

    ohlcv = [[int(ts), *values] for ts, *values in  # the bars as ccxt gives them
             bars[["ts", "open", "high", "low", "close", "volume"]].assign(ts=bars["ts"].array.as_unit("ms").asi8).to_numpy().tolist()]
    first = ends[0] - 1

    def pushed(model_call):
        "A call that pushes bar `i` into a live feed (bars come in order; a new feed starts at the first) and asks `model_call`."
        feed = []
        def call(i):
            if i == first: feed[:] = [OnlineFeatures(feature_set, funding=funding, timeframe=market.timeframe, bars=bars.iloc[:first])]
            return model_call(feed[0].push(ohlcv[i]))
        return call

    lgbm.log_shadow()
    logged = latencies_us(lgbm.predict_proba, dicts, args.calls)
    lgbm.log_shadow(False)
    measured = {
        "LGBMProd, feature dict": latencies_us(lgbm.predict_proba, dicts, args.calls),
        "LGBMProd, feature dict, shadow logged": logged,
        "LGBMProd, 1-D array": latencies_us(lgbm.predict_proba, list(val), args.calls),
        "EnsemblePredictor, feature dict": latencies_us(ensemble.predict, dicts, args.calls),
        "LGBMProd + online features": latencies_us(online(lgbm.predict_proba), ends, args.calls, warmup=200),
        "EnsemblePredictor + online features": latencies_us(online(ensemble.predict), ends, args.calls, warmup=200),
        "LGBMProd + OnlineFeatures.push": latencies_us(pushed(lgbm.predict_proba), [e - 1 for e in ends], args.calls, warmup=200),
        "EnsemblePredictor + OnlineFeatures.push": latencies_us(pushed(ensemble.predict), [e - 1 for e in ends], args.calls, warmup=200),
    }
    rows = np.resize(val, (args.batch_rows, val.shape[1]))
    batch = {threads: batch_rows_per_s(lgbm, rows, threads) for threads in sorted({1, os.cpu_count() or 1})}

    print(f"cryptoml inference benchmark: model {lgbm.run_id} ({result.best_iteration} trees, {len(lgbm.features)} features, "
          f"feature set {feature_set!r}), market {market.exchange} {market.symbol} {market.timeframe}")
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (shared: others' work inflates these figures)")
    print(f"\n{'single row':40s} {'calls':>7s} {'p50 us':>9s} {'p95 us':>9s} {'p99 us':>9s}")
    for name, t in measured.items():
        p50, p95, p99 = np.percentile(t, [50, 95, 99])
        print(f"{name:40s} {len(t):7d} {p50:9.1f} {p95:9.1f} {p99:9.1f}")
    ratio = np.percentile(measured["EnsemblePredictor, feature dict"], 95) / np.percentile(measured["LGBMProd, feature dict"], 95)
    print(f"\nensemble / LGBMProd at p95: {ratio:.2f}x (target <= 2x)")
    for threads, rate in batch.items():
        print(f"batch, {len(rows):,} rows, num_threads={threads}: {rate / 1e3:,.0f} K rows/s (target >= 500 K)")
    print(f"\ncommand: {shlex.join([sys.executable, *sys.argv])}")


if __name__ == "__main__":
    main()
