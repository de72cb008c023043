"""EnsemblePredictor: the promoted booster and its run's logistic regression, blended, reweighted, shadowed.

Uses the two real runs of `test_infer.world` (tuned on the example market, run A promoted).
"""
import math, threading, time

import numpy as np
import pandas as pd
import pytest

from cryptoml.core import ArtifactError, ConfigError, DataError
from cryptoml.registry import Run, promote, run_dir
from cryptoml.infer import LGBMProd, LinkStamp
from cryptoml.ensemble import DynamicWeights, EnsemblePredictor, LinearLogit, LogRegMember, log_losses
from test_infer import copy_world, damage_truncate, world  # noqa: F401  (world is a fixture)


class Liar:
    "A member that peeks at each row's outcome and confidently says the opposite."
    def __init__(self, rows, y): self.opposite = {tuple(r): 0.1 if up else 0.9 for r, up in zip(rows.tolist(), y)}
    def predict_proba(self, X: dict): return self.opposite[tuple(X.values())]


def labels(w):
    return w.results[0].split.val["y"].to_numpy()


def test_the_logistic_regression_member_answers_what_its_pipeline_answers(world):
    member = LogRegMember(home=world.home)
    pipeline = Run.open(world.runs[0], world.home).logreg()
    proba = lambda X: pipeline.predict_proba(pd.DataFrame(X, columns=member.features))[:, 1]
    truth = proba(world.rows)
    np.testing.assert_allclose(member.predict_proba(world.rows), truth, rtol=0, atol=1e-12)
    singles = [member.predict_proba(dict(zip(member.features, r))) for r in world.rows[:500].tolist()]
    np.testing.assert_allclose(singles, truth[:500], rtol=0, atol=1e-12)
    holes = world.rows[:300].copy()
    holes[::2, 0] = np.nan
    np.testing.assert_allclose(member.predict_proba(holes), proba(holes), rtol=0, atol=1e-12)


def test_blends_add_up_from_their_contributions(world):
    lgbm, logreg = LGBMProd(home=world.home), LogRegMember(home=world.home)
    row = dict(zip(lgbm.features, world.rows[10].tolist()))
    pl, pr = lgbm.predict_proba(row), logreg.predict_proba(row)
    linear = EnsemblePredictor({"lgbm": lgbm, "logreg": logreg}, {"lgbm": 3.0, "logreg": 1.0}).predict(row)
    assert linear.p == pytest.approx(0.75 * pl + 0.25 * pr, abs=1e-15)
    assert sum(linear.contributions.values()) == pytest.approx(linear.p, abs=1e-15)
    assert linear.probs == {"lgbm": pl, "logreg": pr} and linear.weights == {"lgbm": 0.75, "logreg": 0.25}
    logodds = EnsemblePredictor({"lgbm": lgbm, "logreg": logreg}, blend="logit").predict(row)
    z = 0.5 * math.log(pl / (1 - pl)) + 0.5 * math.log(pr / (1 - pr))
    assert logodds.p == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-14)
    assert sum(logodds.contributions.values()) == pytest.approx(z, abs=1e-14)
    batch = EnsemblePredictor({"lgbm": lgbm, "logreg": logreg}, blend="logit").predict(world.rows)
    assert batch.p[10] == pytest.approx(logodds.p, abs=1e-12) and batch.p.shape == (len(world.rows),)
    assert ((batch.p > 0) & (batch.p < 1)).all()


def test_bad_settings_are_refused_with_their_names(world):
    lgbm = LGBMProd(home=world.home)
    with pytest.raises(ConfigError, match="'median'"): EnsemblePredictor({"lgbm": lgbm}, blend="median")
    with pytest.raises(ConfigError, match="'ghost'"): EnsemblePredictor({"lgbm": lgbm}, shadow=["ghost"])
    with pytest.raises(ConfigError, match="'other'"): EnsemblePredictor({"lgbm": lgbm}, {"other": 1.0})
    with pytest.raises(ConfigError, match="positive sum"): EnsemblePredictor({"lgbm": lgbm}, {"lgbm": 0.0})
    ensemble = EnsemblePredictor({"lgbm": lgbm})
    with pytest.raises(DataError, match="call predict"): ensemble.update(1.0)
    ensemble.predict(world.rows[:4])
    with pytest.raises(DataError, match="3 outcomes for 4 predictions"): ensemble.update([1.0, 0.0, 1.0])


def test_dynamic_weights_take_trust_away_from_a_member_that_keeps_losing(world):
    lgbm = LGBMProd(home=world.home)
    y = labels(world)
    ensemble = EnsemblePredictor({"lgbm": lgbm, "liar": Liar(world.rows, y)}, dynamic=DynamicWeights(window=300, halflife=60))
    bar = lambda i: dict(zip(lgbm.features, world.rows[i].tolist()))
    assert ensemble.predict(bar(0)).weights == {"lgbm": 0.5, "liar": 0.5}
    weights = []
    for i in range(400):  # the backend's loop: one bar's prediction, then its outcome
        ensemble.predict(bar(i))
        ensemble.update(y[i])
        weights.append(ensemble.weights["lgbm"])
    assert 0.5 < weights[0] < weights[5] < weights[20] and min(weights[20:]) > 0.999
    answer = ensemble.predict(bar(400))
    assert answer.p == pytest.approx(sum(w * p for w, p in zip(answer.weights.values(), answer.probs.values())), abs=1e-15)
    scores = ensemble.scores().set_index("member")
    assert scores.loc["liar", "log_loss"] == pytest.approx(-math.log(0.1)) and scores.loc["lgbm", "log_loss"] < 0.75
    assert scores["outcomes"].tolist() == [300, 300]  # the trailing window


def test_a_shadow_is_scored_but_never_moves_the_blend(world):
    lgbm, logreg = LGBMProd(home=world.home), LogRegMember(home=world.home)
    y = labels(world)
    oracle = type("Oracle", (), {"predict_proba": lambda self, X: np.clip(y[: len(X)], 0.01, 0.99)})()
    plain = EnsemblePredictor({"lgbm": lgbm, "logreg": logreg}, dynamic=DynamicWeights())
    shadowed = EnsemblePredictor({"lgbm": lgbm, "logreg": logreg, "oracle": oracle}, shadow=["oracle"], dynamic=DynamicWeights())
    for _ in range(3):
        answer, unshadowed = shadowed.predict(world.rows), plain.predict(world.rows)
        shadowed.update(y), plain.update(y)
    np.testing.assert_array_equal(answer.p, unshadowed.p)
    assert answer.weights == unshadowed.weights != {"lgbm": 0.5, "logreg": 0.5}
    np.testing.assert_allclose(answer.p, sum(answer.weights[m] * answer.probs[m] for m in ("lgbm", "logreg")), atol=1e-15)
    assert set(answer.weights) == {"lgbm", "logreg"} and set(answer.contributions) == {"lgbm", "logreg"}
    np.testing.assert_array_equal(answer.shadow["oracle"], np.clip(y, 0.01, 0.99))
    scores = shadowed.scores().set_index("member")
    assert scores.loc["oracle", "role"] == "shadow" and scores.loc["oracle", "weight"] == 0.0
    assert scores.loc["oracle", "log_loss"] < scores.loc["lgbm", "log_loss"]  # the best scorer, still not blended


def test_log_losses_stay_finite_at_certainty():
    np.testing.assert_allclose(log_losses([1.0, 0.0], [0.5, 0.5]), [math.log(2)] * 2)
    assert np.isfinite(log_losses([1.0, 0.0], [0.0, 1.0])).all()


def test_a_pipeline_that_does_not_fold_into_a_linear_model_is_refused():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures
    from sklearn.linear_model import LogisticRegression
    X, y = np.random.default_rng(0).normal(size=(200, 3)), np.arange(200) % 2
    with pytest.raises(ArtifactError, match="PolynomialFeatures"):
        LinearLogit.from_pipeline(make_pipeline(PolynomialFeatures(), LogisticRegression()).fit(X, y))


def test_members_follow_promotions_while_threads_predict(world, tmp_path):
    w = copy_world(world, tmp_path)
    lgbm, logreg = LGBMProd(home=w.home), LogRegMember(home=w.home)
    pipelines = [Run.open(run, w.home).logreg() for run in w.runs]
    expected_logreg = [p.predict_proba(pd.DataFrame(w.rows, columns=lgbm.features))[:, 1] for p in pipelines]
    ensemble = EnsemblePredictor({"lgbm": lgbm, "logreg": logreg})
    errors, seen, stop = [], set(), threading.Event()

    def predict_bars():
        i = 0
        while not stop.is_set():
            k = i % len(w.rows)
            try: answer = ensemble.predict(dict(zip(lgbm.features, w.rows[k].tolist())))
            except Exception as e: errors.append(repr(e)); continue
            run_l = [run for run in (0, 1) if answer.probs["lgbm"] == w.expected[run][k]]
            run_r = [run for run in (0, 1) if abs(answer.probs["logreg"] - expected_logreg[run][k]) < 1e-12]
            if not run_l or not run_r or abs(answer.p - 0.5 * (answer.probs["lgbm"] + answer.probs["logreg"])) > 1e-15:
                errors.append(f"row {k}: {answer}")
            seen.add((run_l[0] if run_l else None, run_r[0] if run_r else None))
            i += 1

    threads = [threading.Thread(target=predict_bars) for _ in range(4)]
    for t in threads: t.start()
    for i in range(10): promote(w.runs[(i + 1) % 2], home=w.home, force=True, n_boot=20)
    stop.set()
    for t in threads: t.join()
    assert errors == []
    assert {(0, 0), (1, 1)} <= seen  # both runs served, each member from its own run's artifact


def test_a_damaged_logistic_regression_is_refused_and_its_predecessor_keeps_serving(world, tmp_path):
    w = copy_world(world, tmp_path)
    lgbm, logreg = LGBMProd(home=w.home), LogRegMember(home=w.home)
    ensemble = EnsemblePredictor({"lgbm": lgbm, "logreg": logreg})
    before = ensemble.predict(w.rows[:50])
    promote(w.runs[1], home=w.home, force=True, n_boot=20)
    damage_truncate(run_dir(w.runs[1], w.home)/"logreg.pkl")
    after = ensemble.predict(w.rows[:50])
    np.testing.assert_allclose(after.probs["lgbm"], w.expected[1][:50], rtol=1e-12, atol=0)  # the booster of run B is sound
    np.testing.assert_array_equal(after.probs["logreg"], before.probs["logreg"])  # run A's regression keeps serving
    assert "logreg.pkl" in logreg.last_refusal and logreg.run_id == w.runs[0]


def test_the_ensemble_reads_each_link_at_most_once_a_millisecond_and_sees_a_move_after_it(world, tmp_path, monkeypatch):
    w = copy_world(world, tmp_path)
    lgbm, logreg = LGBMProd(home=w.home), LogRegMember(home=w.home)
    ensemble = EnsemblePredictor({"lgbm": lgbm, "logreg": logreg})
    row = dict(zip(lgbm.features, w.rows[7].tolist()))
    assert ensemble.predict(row).probs["lgbm"] == w.expected[0][7]
    promote(w.runs[1], home=w.home, force=True, n_boot=20)
    time.sleep(LinkStamp.recheck_ns / 1e9)
    moved = ensemble.predict(row)  # a call 1 ms or more after the move: the new run, for both members
    assert moved.probs["lgbm"] == w.expected[1][7] and (lgbm.run_id, logreg.run_id) == (w.runs[1], w.runs[1])
    monkeypatch.setattr(LinkStamp, "recheck_ns", 60 * 10**9)
    lgbm.current()  # looks at the link now; the hot path will not look again for a minute
    promote(w.runs[0], home=w.home, force=True, n_boot=20)
    assert ensemble.predict(row).probs["lgbm"] == w.expected[1][7], "within recheck_ns the link is not read again"
    assert logreg.current().run_id == w.runs[0]  # current() looks at once, for every user of the link
    assert ensemble.predict(row).probs == {"lgbm": w.expected[0][7], "logreg": logreg.predict_proba(row)}
