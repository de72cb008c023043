"""How `fit_calibrator` chooses, against the rule it replaced, over seeds of the synthetic market.

For each seed: 30 synthetic days, the notebook's windows (a booster trained on 20 days, a calibrator fitted and
chosen on the next 5, the last 5 held back), and two boosters on the seed set's stationary features (an
overconfident one: 63 leaves, 200 rounds; a tuned-like one: 4 leaves, 79 rounds, min 619 rows a leaf). Each
booster's calibrator is chosen by
- the reference, the earlier rule: candidates fitted on the first 70% of the window (isotonic row by row), chosen by
  log loss on the last 30%, refitted on all;
- ours, `fit_calibrator`: candidates scored forward in time over 4 later parts of 5 (isotonic on bins of about
  `MIN_ROWS` forecasts).
It prints, per rule and booster: the held-back ECE (mean, share <= 0.01), the change in held-back log loss against
the raw booster (mean, worst) and how often the identity was kept for a booster whose held-back ECE was above 0.03.

    python bench/calibration_choice.py [--seeds 0 1 2 3 4 5 6 7 8 9]
"""
import argparse, shlex, sys

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from cryptoml.calibrate import EPS, FITTERS, Isotonic, fit_calibrator
from cryptoml.features import add_labels, compute_features, stationary
from cryptoml.ingest import synthetic_market
from cryptoml.metrics import evaluate
from cryptoml.split import feature_columns, time_split
from cryptoml.tune import base_params

BOOSTERS = {"overconfident": ({"num_leaves": 63, "learning_rate": 0.05, "min_child_samples": 20}, 200),
            "tuned-like": ({"num_leaves": 4, "learning_rate": 0.194, "feature_fraction": 0.97, "bagging_fraction": 0.87,
                            "min_child_samples": 619}, 79)}


def isotonic_by_row(p, y, eps=EPS):
    model = IsotonicRegression(y_min=eps, y_max=1 - eps, out_of_bounds="clip").fit(p, y)
    return Isotonic(model.X_thresholds_, model.y_thresholds_, eps)


def one_split(p, y, choose_share=0.3, gap=1):
    "The earlier rule: fit on the first 70% (less the gap), choose by log loss on the last 30%, refit on all."
    fitters = {**FITTERS, "isotonic": isotonic_by_row}
    cut = len(p) - round(len(p) * choose_share)
    scores = {k: evaluate(y[cut:], f(p[:cut - gap], y[:cut - gap]).many(p[cut:]))["log_loss"] for k, f in fitters.items()}
    chosen = min(scores, key=scores.get)
    return fitters[chosen](p, y)


def rows_for(seed: int):
    bars = synthetic_market(days=30, seed=seed)
    table = add_labels(compute_features(bars, "seed"), bars)
    outer = time_split(table, 10, horizon=1)
    windows = time_split(outer.val, 5, horizon=1)
    features = [f for f in feature_columns(table) if stationary(f)]
    for name, (params, rounds) in BOOSTERS.items():
        booster = lgb.train({**base_params(), **params}, lgb.Dataset(outer.train[features], outer.train.y), rounds)
        p_fit, p_out = (booster.predict(w[features], num_threads=1) for w in (windows.train, windows.val))
        y_fit, y_out = windows.train.y.to_numpy(), windows.val.y.to_numpy()
        raw = evaluate(y_out, np.clip(p_out, EPS, 1 - EPS))
        for rule, choose in (("one split (reference)", one_split), ("forward parts (ours)", fit_calibrator)):
            calibrator = choose(p_fit, y_fit)
            scored = evaluate(y_out, calibrator.apply(p_out))
            yield {"seed": seed, "booster": name, "rule": rule, "kept": calibrator.kind, "raw ECE": raw["ece"],
                   "ECE": scored["ece"], "log loss change": scored["log_loss"] - raw["log_loss"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    args = parser.parse_args(argv)
    rows = pd.DataFrame([row for seed in args.seeds for row in rows_for(seed)])
    summary = rows.groupby(["booster", "rule"]).apply(lambda g: pd.Series({
        "seeds": len(g), "held-back ECE": g.ECE.mean(), "ECE <= 0.01": (g.ECE <= 0.01).mean(),
        "log loss change, mean": g["log loss change"].mean(), "worst": g["log loss change"].max(),
        "identity kept at raw ECE > 0.03": int(((g.kept == "identity") & (g["raw ECE"] > 0.03)).sum())}), include_groups=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(rows.pivot_table(index=["seed", "booster"], columns="rule", values=["ECE", "log loss change"]).round(4))
        print(summary.round(4))
    print("command:", shlex.join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
