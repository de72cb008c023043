"""The monitor as cron runs it, through the `cryptoml` command: a market that goes on as it was trained raises no
alarm, one whose regime switches after training raises one that names the drifted features, a price level never
raises one, a feature the source never sends is reported instead of crashing the monitor, a champion whose log loss
turns worse than its card's is demoted on request, and bad input is a clear error or a "not enough data" result.

The market is the synthetic one, written in a single regime (`REGIMES` narrowed to one row), so that "the training
regime" is one thing: its last weeks come from it, or from a regime the training never saw (four times the
volatility), or from one where the edge the model learnt is reversed. A run is tuned once on 30 days of it through
the command and forced in as champion (the gate is not under test here); each test copies that data root.
"""
import contextlib, io, json, shutil, threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import rankdata

import cryptoml.ingest as ingest
from cryptoml.core import ArtifactError, DataError, atomic_write_parquet, feature_path, parquet_metadata, sha256_file
from cryptoml.calibrate import Platt
from cryptoml.cli import main
from cryptoml.features import read_feature_table
from cryptoml.ingest import SYNTHETIC, read_bars, synthetic_market
from cryptoml.registry import CALIBRATOR, CARD, best_run_id, list_runs, read_promotions, run_dir, switch_online_calibration
from cryptoml.monitor import LEVELS, latest_report, monitor, psi
from test_cli import cryptoml  # the installed console script, run with --home

SYNTH = ["--exchange", SYNTHETIC.exchange, "--symbol", SYNTHETIC.symbol, "--timeframe", SYNTHETIC.timeframe]
DAYS, VAL_DAYS, WINDOW = 30, 14, 7
TRAINING_REGIME = {"drift": 0.0, "vol": 1.0}

def in_process(*args, home) -> tuple[int, str, str]:
    "Exit status, stdout and stderr of `cryptoml.cli.main`, as the console script calls it."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([*map(str, args), "--home", str(home), "--quiet"])
    return status, out.getvalue(), err.getvalue()

def regime_bars(days: float, seed: int, start, *, drift: float, vol: float, bounce: float = ingest.BOUNCE,
                level: float | None = None) -> pd.DataFrame:
    "Synthetic bars from one regime (`drift`, `vol`) and the given bounce, prices scaled to open at `level`."
    regimes, original = pd.DataFrame({"drift": [drift], "vol": [vol], "weight": [1.0]}, index=["only"]), (ingest.REGIMES, ingest.BOUNCE)
    ingest.REGIMES, ingest.BOUNCE = regimes, bounce
    try: bars = synthetic_market(days, seed, start=start)
    finally: ingest.REGIMES, ingest.BOUNCE = original
    if level: bars[["open", "high", "low", "close"]] = (bars[["open", "high", "low", "close"]] * level / bars.open.iloc[0]).round(2)
    return bars

def append(home, tmp_path, bars: pd.DataFrame):
    "Import `bars` into the synthetic market through the command and rebuild its feature table."
    dump = tmp_path/"later.csv"
    bars.to_csv(dump, index=False)
    assert in_process("import", dump, *SYNTH, home=home)[0] == 0
    assert in_process("features", *SYNTH, home=home)[0] == 0

def later_bars(home, days: float = WINDOW, seed: int = 9, level: float | None = None, **regime) -> pd.DataFrame:
    "Bars that go on from the stored market's last bar, at its last price (or at `level`)."
    stored = read_bars(home, *SYNTHETIC)
    return regime_bars(days, seed, stored.ts.iloc[-1] + pd.Timedelta(minutes=1), level=level or stored.close.iloc[-1], **regime)

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "A data root holding 30 days of the one-regime market, and two runs tuned on it through the command, the second champion."
    home, folder = tmp_path_factory.mktemp("trained"), tmp_path_factory.mktemp("dump")
    regime_bars(DAYS, 1, "2023-03-01", **TRAINING_REGIME).to_csv(folder/"bars.csv", index=False)
    assert cryptoml("import", folder/"bars.csv", *SYNTH, home=home).returncode == 0
    assert cryptoml("features", *SYNTH, home=home).returncode == 0
    runs = []
    for seed in (1, 0):
        done = cryptoml("tune", *SYNTH, "--trials", 8, "--val-days", VAL_DAYS, "--seed", seed, home=home)
        assert done.returncode == 0, done.stderr
        runs.append(done.stdout.strip())
        assert cryptoml("promote", runs[-1], "--force", home=home).returncode == 0
    return home, runs

@pytest.fixture
def home(trained, tmp_path):
    "A private copy of the trained data root."
    copy = tmp_path/"home"
    shutil.copytree(trained[0], copy, symlinks=True)
    return copy

def findings(out: str) -> list[str]:
    "The findings lines the command printed after its status."
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("status:"))
    return [line.strip() for line in lines[start + 1:] if line.startswith("  ")]


finite = st.floats(-1e6, 1e6, allow_nan=False, width=64)

@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(5, 300), elements=finite), arrays(np.float64, st.integers(5, 300), elements=finite))
def test_psi_is_nonnegative_zero_on_itself_and_depends_only_on_ranks(ref, cur):
    assert psi(ref, ref) == 0
    value = psi(ref, cur)
    assert value >= 0
    ranks = rankdata(np.r_[ref, cur])  # the values replaced by their ranks in the pooled sample, ties kept
    assert psi(ranks[:len(ref)], ranks[len(ref):]) == value


def test_a_market_that_goes_on_as_it_was_trained_raises_no_alarm(home, trained):
    # the seed set's booster learns the price level, so its calibration drifts with the price even where the market's
    # process does not change (nbs/08_calibrate.ipynb); the market's online recalibration, as production would run it,
    # follows that drift
    switch_online_calibration(home, SYNTHETIC)
    done = cryptoml("monitor", "--window-days", WINDOW, home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    report = latest_report(home=home)
    assert report["run_id"] == trained[1][1] and report["status"] in ("ok", "warn") and report["served"]["online"]
    assert all(f["level"] != "alert" for f in report["features"]) and report["realised"]["log_loss_level"] == "ok"
    assert f"report: {run_dir(trained[1][1], home)/'monitor'}" in done.stdout


def test_a_regime_switched_after_training_raises_an_alarm_naming_the_drifted_features(home, tmp_path):
    append(home, tmp_path, later_bars(home, drift=0.0, vol=4.0))  # four times the volatility training saw
    done = cryptoml("monitor", "--window-days", WINDOW, home=home)
    assert done.returncode == 1, done.stdout + done.stderr
    named = {line.split(":")[0] for line in findings(done.stdout) if "(alert" in line}
    assert {"ret1", "sma20_gap", "sma50_gap"} <= named and not named & {"close", "vol_z"}
    assert "status: alert" in done.stdout


def test_a_price_level_never_raises_an_alarm(home, tmp_path):
    append(home, tmp_path, later_bars(home, level=3 * read_bars(home, *SYNTHETIC).close.max(), **TRAINING_REGIME))
    report = monitor(home=home, window_days=WINDOW, n_boot=200)
    close = next(f for f in report["features"] if f["feature"] == "close")
    assert close["level"] == "ok" and close["judged_on"] == "rolling z-score over 60 bars"
    assert close["outside_training_range"] == 1.0  # every bar above anything training saw: reported, not an alarm
    assert not any(f.startswith("close") for f in report["findings"])


def test_a_fresh_demo_raises_no_alarm_from_its_price_level(tmp_path):
    home = tmp_path/"demo"
    assert cryptoml("pipeline", "--demo", "--trials", 8, home=home).returncode in (0, 1)
    if best_run_id(home=home, market=SYNTHETIC) is None:
        assert cryptoml("promote", list_runs(home=home).run_id.iloc[-1], "--force", home=home).returncode == 0
    done = cryptoml("monitor", home=home)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr
    assert not any(line.startswith("close") for line in findings(done.stdout))
    assert next(f for f in latest_report(home=home)["features"] if f["feature"] == "close")["level"] == "ok"


def test_a_feature_the_source_never_sends_is_reported_not_a_crash(tmp_path):
    # the rich set's taker_imbalance needs taker volume, which the synthetic market (like the ccxt path) does not have
    home = tmp_path/"rich"
    assert cryptoml("pipeline", "--demo", "--days", 12, "--feature-set", "rich", "--trials", 3, "--val-days", 4,
                    home=home).returncode in (0, 1)
    if best_run_id(home=home, market=SYNTHETIC) is None:
        assert cryptoml("promote", list_runs(home=home).run_id.iloc[-1], "--force", home=home).returncode == 0
    done = cryptoml("monitor", "--window-days", 2, home=home)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
    taker = next(f for f in latest_report(home=home)["features"] if f["feature"] == "taker_imbalance")
    assert (taker["level"], taker["psi"], taker["missing"]) == ("ok", None, [1.0, 1.0])
    assert taker["note"] == "no finite values in either window: the source does not provide it"
    assert "no finite values in either window" in done.stdout


def test_a_champion_whose_log_loss_turns_worse_than_its_card_is_demoted_on_request(home, trained, tmp_path):
    first, second = trained[1]
    append(home, tmp_path, later_bars(home, bounce=-ingest.BOUNCE, **TRAINING_REGIME))  # the edge it learnt, reversed
    status, out, _ = in_process("monitor", "--window-days", WINDOW, home=home)
    assert status == 1 and "log loss" in out and best_run_id(home=home, market=SYNTHETIC) == second  # no demotion unasked
    status, out, _ = in_process("monitor", "--window-days", WINDOW, "--demote-on-alert", home=home)
    assert status == 1 and best_run_id(home=home, market=SYNTHETIC) == first
    last = read_promotions(home=home, market=SYNTHETIC)[-1]
    assert (last["action"], last["previous"], last["best"]) == ("rollback", second, first)
    assert "monitor: realised log loss" in last["reason"] and "demotion: done" in out
    assert latest_report(second, home=home)["demotion"]["demoted"]
    status, out, _ = in_process("monitor", "--run", first, "--window-days", WINDOW, "--demote-on-alert", home=home)
    assert best_run_id(home=home, market=SYNTHETIC) == first  # nothing earlier to go back to from the first: it stays
    assert "demotion: none" in out or status == 0


@pytest.mark.parametrize("days, says", [(0.0005, "1 bars in the window"), (0.005, "8 bars in the window")])
def test_a_window_too_short_or_without_labels_is_not_enough_data(home, days, says):
    status, out, err = in_process("monitor", "--window-days", days, home=home)
    assert (status, err) == (0, "")
    assert f"status: not enough data ({says}; drift over 10 bins needs 100)" in out


def test_bad_input_is_one_line_on_stderr_with_exit_status_2(home, tmp_path):
    status, _, err = in_process("monitor", "--exchange", "nowhere", "--symbol", "BTC/USDT", "--timeframe", "1m", home=home)
    assert status == 2 and "no promoted model" in err and "Traceback" not in err
    status, _, err = in_process("monitor", "--window-days", 0, home=home)
    assert (status, err.strip()) == (2, "cryptoml monitor: error: window_days must be a positive number of days, not 0.0")
    status, _, err = in_process("monitor", home=tmp_path/"empty")
    assert status == 2 and "no promoted model" in err


def test_a_calibrator_that_fails_its_checksum_is_refused_by_name(home, trained):
    folder = run_dir(trained[1][1], home)
    (folder/CALIBRATOR).write_text(json.dumps(Platt(0.8, 0.01).to_json()))  # the run now serves a calibrator
    card = json.loads((folder/CARD).read_text())
    card["artifacts"][CALIBRATOR] = sha256_file(folder/CALIBRATOR)
    (folder/CARD).write_text(json.dumps(card))
    assert monitor(home=home, window_days=WINDOW, n_boot=100)["served"]["calibrator"] == "platt"
    (folder/CALIBRATOR).write_text(json.dumps(Platt(0.5, 0.01).to_json()))
    status, _, err = in_process("monitor", home=home)
    assert status == 2 and f"{folder/CALIBRATOR} fails its checksum" in err


def test_the_report_is_written_under_the_run_and_names_every_check(home, trained):
    report = monitor(home=home, window_days=WINDOW, n_boot=200)
    assert report["run_id"] == trained[1][1] and report["status"] in LEVELS
    path = Path(report["path"])
    assert path.parent == run_dir(trained[1][1], home)/"monitor"
    on_disk = json.loads(path.read_text())
    assert on_disk == {k: v for k, v in report.items() if k != "path"} and latest_report(home=home) == on_disk
    assert [f["feature"] for f in report["features"]] == ["close", "ret1", "sma20_gap", "sma50_gap", "vol_z"]
    table, _ = read_feature_table(feature_path(home, SYNTHETIC))
    assert report["current"]["end"] == str(table.ts.max()) and report["current"]["rows"] == WINDOW * 1440
    assert report["realised"]["rows"] == WINDOW * 1440 - 1  # the newest bar has no label yet
    assert report["label_free"]["unlabelled"]["rows"] == 1 and 0.5 < report["label_free"]["all"]["expected_accuracy"] < 0.6
    assert len(report["daily"]) == WINDOW and {"metrics", "change", "curves"} <= set(report["online"])
    assert report["status"] == max([f["level"] for f in report["features"]] + [report["predictions"]["level"],
                                   report["realised"]["level"]], key=LEVELS.index)


def test_a_table_missing_a_model_feature_is_refused_by_name(home):
    path = feature_path(home, SYNTHETIC)
    table, meta = read_feature_table(path)
    atomic_write_parquet(path, table.drop(columns=["vol_z"]), parquet_metadata(path))
    with pytest.raises(DataError, match="vol_z"): monitor(home=home)


def test_a_tampered_model_is_refused_before_it_is_loaded(home, trained):
    pkl = run_dir(trained[1][1], home)/"lgbm.pkl"
    pkl.write_bytes(pkl.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="lgbm.pkl"): monitor(home=home)
    assert latest_report(home=home) is None


def test_monitors_running_at_once_each_keep_their_report(home):
    reports, errors = [], []
    def run():
        try: reports.append(monitor(home=home, window_days=1, n_boot=100))
        except Exception as e: errors.append(e)
    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert not errors
    assert len({r["path"] for r in reports}) == 3
    assert all(json.loads(Path(r["path"]).read_text())["status"] == r["status"] for r in reports)
