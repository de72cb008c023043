"""How good can an honest model of the next bars look? The measurement behind `cryptoml.metrics.PLAUSIBLE`.

On the shared real data (three weeks of 1-minute BTC/USDT, the same bars on a coarse $15 price tick that leaves
about 44% of the bars flat as BTCUSDC's do, and six 1-hour perpetuals over 2021-2022), for each label horizon:
the rich feature table, four expanding walk-forward folds, and in each fold a real `tune` (Optuna + LightGBM on
an inner slice) judged once on the fold's window beside the logistic, momentum and reversal baselines. Every
model's out-of-sample accuracy above the fold's majority rate, and its ROC AUC, are recorded; the table gives
the best of each per horizon, with the fold's rows, and the largest single-feature |AUC - 0.5| the guard sees.

    python bench/honest_ceiling.py [--trials 8] [--folds 4] [--out honest_ceiling.csv]
"""
import argparse, tempfile, time, warnings
from pathlib import Path

import pandas as pd

from cryptoml.core import shared_data
from cryptoml.features import add_labels, compute_features
from cryptoml.ingest import EXAMPLE, example_market, funding_exchange, import_csv, read_bars, read_funding
from cryptoml.split import feature_auc, walk_forward
from cryptoml.tune import tune

PERPS = ("BTC", "ETH", "SOL", "BNB", "DOGE", "LINK")
HORIZONS = {"1m": (1, 5, 15, 60), "1h": (1, 4, 24)}
COARSE_TICK = 15.0  # dollars: rounds about 44% of the 1-minute bars flat
warnings.filterwarnings("ignore", message="Skipping features without any observed values")  # taker/funding: NaN on 1h


def coarse(bars: pd.DataFrame, tick: float) -> pd.DataFrame:
    "`bars` with prices on a `tick` grid, as on a market with a coarse tick (many flat bars)."
    prices = ["open", "high", "low", "close"]
    return bars.assign(**{c: (bars[c] / tick).round() * tick for c in prices})


def markets(home: Path):
    "(name, timeframe, bars, funding) of every market measured."
    example_market(home)
    bars = read_bars(home, *EXAMPLE[:3])
    funding = read_funding(home, funding_exchange(EXAMPLE), EXAMPLE.symbol)
    yield "BTCUSDT 1m", "1m", bars, funding
    flat = coarse(bars, COARSE_TICK)
    yield f"BTCUSDT 1m ${COARSE_TICK:g} tick ({(flat.close.diff() == 0).mean():.0%} flat)", "1m", flat, funding
    for coin in PERPS:
        import_csv(shared_data(f"binance_perp_{coin}USDT_1h_2021-2022.csv"), "binance", f"{coin}/USDT", "1h", home=home)
        yield f"{coin}USDT perp 1h", "1h", read_bars(home, "binance", f"{coin}/USDT", "1h"), None


def fold_rows(name: str, timeframe: str, horizon: int, fold: int, table: pd.DataFrame, split, trials: int) -> list[dict]:
    "One walk-forward fold: a real `tune` on the rows up to the fold's end, judged on its window; one row per model."
    upto = table[table.ts <= split.val.ts.max()]
    result = tune(upto, val_days=split.val_days, n_trials=trials, n_boot=20, progress=False, guard=False,
                  table_meta={"horizon": horizon})
    single = (feature_auc(pd.concat([result.split.train, result.split.val])).auc - 0.5).abs()
    scores = {"lgbm": result.metrics, **result.baselines}
    return [{"market": name, "timeframe": timeframe, "horizon": horizon, "fold": fold, "model": model,
             "rows": len(result.split.val), "base_rate": s["base_rate"],
             "acc_over_majority": s["accuracy"] - max(s["base_rate"], 1 - s["base_rate"]), "auc": s["roc_auc"],
             "single_feature_gap": single.max(), "single_feature": single.idxmax()} for model, s in scores.items()]


def measure(trials: int, folds: int) -> pd.DataFrame:
    "Every market, horizon, fold and model."
    rows = []
    with tempfile.TemporaryDirectory() as home:
        for name, timeframe, bars, funding in markets(Path(home)):
            features = compute_features(bars, "rich", funding=funding, timeframe=timeframe)
            for horizon in HORIZONS[timeframe]:
                table = add_labels(features, bars, horizon=horizon)
                for k, split in enumerate(walk_forward(table, n_folds=folds, horizon=horizon)):
                    rows += fold_rows(name, timeframe, horizon, k, table, split, trials)
                print(f"{name} h={horizon}: done", flush=True)
    return pd.DataFrame(rows)


def lopsided_slope(runs: pd.DataFrame) -> float:
    "AUC an honest model gains per unit of |base rate - 0.5|: the steepest rise from the best ordinary-market AUC at a horizon to a coarse-tick fold's."
    runs = runs.assign(lop=(runs.base_rate - 0.5).abs(), flat=runs.market.str.contains("tick"))
    slopes = []
    for _, g in runs.groupby("horizon"):
        ordinary, flat = g[~g.flat], g[g.flat]
        best = ordinary.loc[ordinary.auc.idxmax()]
        rise = flat[flat.lop > best.lop]
        slopes += list((rise.auc - best.auc) / (rise.lop - best.lop))
    return max(slopes)


def summary(runs: pd.DataFrame, slope: float) -> pd.DataFrame:
    "Per horizon (bars): the best accuracy over majority and the best AUC of any honest model, where, and the edges the alarm uses."
    runs = runs.assign(lop=(runs.base_rate - 0.5).abs())
    out = []
    for horizon, g in runs.groupby("horizon"):
        acc, auc = g.loc[g.acc_over_majority.idxmax()], g.loc[g.auc.idxmax()]
        out.append({"horizon": horizon, "folds": len(g.groupby(["market", "fold"])), "min_rows": g.rows.min(),
                    "acc_over_majority": acc.acc_over_majority, "acc_where": f"{acc.market} fold {acc.fold} {acc.model}",
                    "auc": auc.auc, "auc_base_rate": auc.base_rate, "auc_where": f"{auc.market} fold {auc.fold} {auc.model}",
                    "auc_edge": (g.auc - 0.5 - slope * g.lop).max(), "median_lgbm_auc": g[g.model == "lgbm"].auc.median(),
                    "max_single_feature_gap": g.single_feature_gap.max()})
    return pd.DataFrame(out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--out", default=None, help="also write every fold's scores to this CSV")
    p.add_argument("--from-csv", default=None, help="summarise the scores a previous run wrote with --out instead of measuring")
    args = p.parse_args()
    started = time.perf_counter()
    runs = pd.read_csv(args.from_csv) if args.from_csv else measure(args.trials, args.folds)
    if args.out: runs.to_csv(args.out, index=False)
    pd.set_option("display.width", 250)
    slope = lopsided_slope(runs)
    print(summary(runs, slope).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\nAUC per unit of |base rate - 0.5| (lopsided labels, e.g. flat bars): {slope:.4f}")
    print(f"{len(runs)} scores in {time.perf_counter() - started:.0f} s; "
          f"command: python bench/honest_ceiling.py --trials {args.trials} --folds {args.folds}")
