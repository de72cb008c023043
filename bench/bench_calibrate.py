"""What a calibrator adds to LGBMProd's single-row C path and to batch scoring.

Tunes a small model on the example market (the shared BTC/USDT bars, or the synthetic market on a fresh clone), fits
a Platt and an isotonic calibrator on its forecasts of bars it did not train on, stores each as JSON and loads it back
(as serving will), then times, in interleaved rounds over the same feature rows:

- the reference: LightGBM's single-row C API (`LGBM_BoosterPredictForMatSingleRowFast`, through `FastBooster`, the
  call LGBMProd makes), alone;
- the same call followed by `calibrator.apply(p)` (a float in, a float out) for identity, Platt, isotonic, an
  isotonic map with many breakpoints, and an `OnlineCalibrator` (`predict(ts, p)`: time checks, record, correction);
- batch scoring of `--batch-rows` rows (`Booster.predict`, one thread) with and without `apply(array)`;
- the whole served path, `LGBMProd.predict_proba(dict)` (one new bar's features, by name), on the market's champion
  saved through the registry: without a calibrator, with the Platt and the isotonic one as `calibrator.json` (as a run
  that earned one serves it), and with the market's online recalibration switched on (`ts=` each bar in turn).

    python bench/bench_calibrate.py [--calls 20000] [--rounds 5] [--batch-rows 1000000] [--trials 3]

Target (issue 15): a calibrator adds at most a couple of microseconds to the single-row path.
"""
import argparse, json, os, shlex, shutil, sys, tempfile
from pathlib import Path

import numpy as np

from cryptoml.calibrate import Identity, OnlineCalibrator, fit_isotonic, fit_platt, load_calibrator
from cryptoml.core import sha256_file
from cryptoml.features import build_features, read_feature_table
from cryptoml.infer import FastBooster, LGBMProd
from cryptoml.ingest import example_market
from cryptoml.registry import CALIBRATOR, CARD, promote, run_dir, save_run, switch_online_calibration
from cryptoml.split import time_split
from cryptoml.tune import tune

from bench_infer import latencies_us, seconds  # this folder: the single-row timing loop and the clock


def served(calibrator):
    "The calibrator as serving holds it: through JSON text and `load_calibrator`."
    return load_calibrator(json.loads(json.dumps(calibrator.to_json())))


def example_model(home: Path, trials: int):
    "A tuned booster on the example market, its forecasts and labels on bars it did not train on, and their feature rows."
    market = example_market(home)
    path = build_features(market, home=home, progress=False)
    table, meta = read_feature_table(path)
    result = tune(table, n_trials=trials, val_days=10, n_boot=20, progress=False, home=home, table_meta=meta)
    promote(save_run(result, home=home, table_path=path, calibration=None), home=home, force=True, n_boot=20)
    later = time_split(result.split.val, 5, horizon=1).train
    p = result.booster.predict(later[result.features], num_threads=1)
    return market, result, p, later.y.to_numpy(), later[result.features].to_numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="timed single-row calls per variant per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each variant once per round)")
    parser.add_argument("--batch-rows", type=int, default=1_000_000, help="rows in the batch measurement")
    parser.add_argument("--trials", type=int, default=3, help="Optuna trials for the benchmarked model")
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="bench_calibrate_"))
    try: report(home, args)
    finally: shutil.rmtree(home)


def report(home: Path, args):
    "Fit, store, load and time the calibrators; print the table."
    market, result, p, y, rows = example_model(home, args.trials)
    rng = np.random.default_rng(0)
    wide = rng.uniform(0.3, 0.7, 200_000)  # a finely resolved isotonic map: hundreds of breakpoints to bisect
    calibrators = {"identity": served(Identity()), "platt": served(fit_platt(p, y)), "isotonic": served(fit_isotonic(p, y)),
                   "isotonic, wide": served(fit_isotonic(wide, rng.uniform(size=wide.size) < wide))}
    fast = FastBooster(result.booster)
    inputs = rows.tolist()
    start_ms = int(result.split.val.ts.iloc[-1].value // 1_000_000)
    online, clock = OnlineCalibrator(market.timeframe, base=calibrators["platt"]), [start_ms]

    def with_online(x):
        clock[0] += 60_000  # the next bar, in order, as a live feed gives them
        return online.predict(clock[0], fast.predict_row(x))

    variants = {"raw C-API predict_row (reference)": fast.predict_row,
                **{f"raw + {name}.apply": (lambda c: lambda x: c.apply(fast.predict_row(x)))(c)
                   for name, c in calibrators.items()},
                "raw + OnlineCalibrator.predict": with_online,
                **served_variants(home, market, result, calibrators, start_ms)}
    floats = p.tolist()
    alone = {"timer and loop only (no call)": lambda q: q,
             **{f"{name}.apply(float) alone": c.apply for name, c in calibrators.items()}}
    for call in variants.values(): latencies_us(call, inputs, 2000, warmup=0)  # warm-up
    for call in alone.values(): latencies_us(call, floats, 2000, warmup=0)
    measured = {name: [] for name in [*variants, *alone]}
    for _ in range(args.rounds):
        for name, call in variants.items(): measured[name].append(latencies_us(call, inputs, args.calls, warmup=0))
        for name, call in alone.items(): measured[name].append(latencies_us(call, floats, args.calls, warmup=0))
    measured = {name: np.concatenate(t) for name, t in measured.items()}

    batch = np.resize(rows, (args.batch_rows, rows.shape[1]))
    booster_s = min(seconds(lambda: result.booster.predict(batch, num_threads=1)) for _ in range(3))
    p_batch = result.booster.predict(batch, num_threads=1)
    apply_s = {name: min(seconds(lambda: c.apply(p_batch)) for _ in range(3)) for name, c in calibrators.items()}

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"cryptoml calibration benchmark: {market.exchange} {market.symbol} {market.timeframe}, booster of "
          f"{result.best_iteration} trees on {len(result.features)} features; isotonic {len(calibrators['isotonic'].x)} "
          f"breakpoints, isotonic wide {len(calibrators['isotonic, wide'].x)}")
    print(f"machine: {os.cpu_count()} cores, load average {load} (shared: others' work inflates these figures)")
    reference = np.percentile(measured["raw C-API predict_row (reference)"], [50, 95, 99])
    print(f"\n{'single row (us)':40s} {'calls':>7s} {'p50':>7s} {'p95':>7s} {'p99':>7s} {'added p50':>10s} {'ratio p50':>10s}")
    for name, t in measured.items():
        p50, p95, p99 = np.percentile(t, [50, 95, 99])
        added = f"{p50 - reference[0]:+10.2f} {p50 / reference[0]:10.2f}" if name in variants else ""
        print(f"{name:40s} {len(t):7d} {p50:7.2f} {p95:7.2f} {p99:7.2f} {added}")
    print(f"\nbatch of {len(batch):,} rows, one thread: booster {len(batch) / booster_s / 1e3:,.0f} K rows/s "
          f"({booster_s * 1e9 / len(batch):.0f} ns/row)")
    for name, spent in apply_s.items():
        print(f"  + {name}.apply(array): {spent * 1e9 / len(batch):6.1f} ns/row added "
              f"({spent / booster_s:.1%} of the booster's time)")
    print(f"\ncommand: {shlex.join([sys.executable, *sys.argv])}")


def served_variants(home: Path, market, result, calibrators: dict, start_ms: int) -> dict:
    "LGBMProd.predict_proba(dict), each on its own saved run: raw, through a stored Platt or isotonic calibrator, online."
    def model(calibrator, online=False) -> LGBMProd:
        "A served copy of the tuned run, storing `calibrator` (None: raw), loaded with the market's online switch at `online`."
        folder = run_dir(save_run(result, home=home, calibration=None), home)
        if calibrator is not None:
            (folder/CALIBRATOR).write_text(json.dumps(calibrator.to_json()))
            card = json.loads((folder/CARD).read_text())
            card["artifacts"][CALIBRATOR] = sha256_file(folder/CALIBRATOR)
            (folder/CARD).write_text(json.dumps(card))
        switch_online_calibration(home, market, online)
        served = LGBMProd(path=folder/"lgbm.pkl", home=home)
        served.current()
        return served

    def asked(served, online=False):
        clock, features = [start_ms], served.features
        def call(x):
            clock[0] += 60_000  # the next bar, in order, as a live feed gives them
            return served.predict_proba(dict(zip(features, x)), ts=clock[0] if online else None)
        return call

    return {"LGBMProd, raw run (dict)": asked(model(None)), "LGBMProd, platt calibrator (dict)": asked(model(calibrators["platt"])),
            "LGBMProd, isotonic calibrator (dict)": asked(model(calibrators["isotonic"])),
            "LGBMProd, online over platt (dict, ts)": asked(model(calibrators["platt"], online=True), online=True)}


if __name__ == "__main__":
    main()
