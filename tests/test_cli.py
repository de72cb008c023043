"""The `cryptoml` command end to end, as a user runs it: real processes, a private --home, real market data.

The story: import the shared minute bars and run the whole pipeline (the honest gate refuses a quick model
that does not beat the baselines, and `promote --force` puts it in, logged), ask the champion for a probability,
monitor it for drift, list, show and compare runs; run the offline demo (README's main job exactly as written,
and a rerun that says why it did not promote), and the live form against a local Binance (the real ccxt client
over HTTP on 127.0.0.1); migrate a data root from cryptoml 0.1's layout; then feed the command bad input and check
it says what is wrong, on stderr, with exit status 2 and no traceback. Some checks call `cryptoml.cli.main` in-process, exactly as
the console script does, where a new process would only add start-up time.
"""
import json, os, shutil, subprocess
from pathlib import Path

import pandas as pd
import pytest

from cryptoml.core import Market, best_link, feature_path, legacy_layout, market_dir
from cryptoml.features import read_feature_table
import cryptoml.ingest as ingest_module
from cryptoml.ingest import SYNTHETIC, make_exchange, read_funding, synthetic_market
from cryptoml.registry import Run, best_run_id, list_runs, read_promotions, run_dir
from cryptoml.cli import COMMANDS, main
from exchange_emulator import BinanceEmulator, binance_client

MARKET = ["--exchange", "binanceus", "--symbol", "BTC/USDT", "--timeframe", "1m"]
BTC = Market("binanceus", "BTC/USDT", "1m")

def cryptoml(*args, home, timeout=600) -> subprocess.CompletedProcess:
    "Run the installed `cryptoml` console script with `--home home`."
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("CRYPTOML_HOME", None)
    return subprocess.run(["cryptoml", *map(str, args), "--home", str(home), "--quiet"], capture_output=True, text=True,
                          timeout=timeout, env=env)

@pytest.fixture(scope="module")
def piped(bars_csv, tmp_path_factory):
    "A data root after `cryptoml pipeline --import` of the shared minute bars, that command's result, and the forced promotion."
    home = tmp_path_factory.mktemp("piped")
    done = cryptoml("pipeline", "--import", bars_csv, *MARKET, "--trials", 4, "--val-days", 7, home=home)
    run_id = list_runs(home=home).run_id.iloc[-1]
    forced = cryptoml("promote", run_id, "--force", home=home)
    return home, done, forced

def test_pipeline_imports_tunes_and_refuses_a_model_that_does_not_beat_the_baselines(piped):
    home, done, forced = piped
    assert done.returncode == 1, done.stderr  # a quick model on real minute bars is no better than the logistic regression
    run_id = list_runs(home=home).run_id.iloc[-1]
    card = Run.open(run_id, home).card
    assert card["data"]["exchange"] == "binanceus" and card["data"]["rows"] > 30_000 - 100
    assert card["data"]["validation"][1].startswith("2023-03-21T23:5")
    assert card["tuning"]["trials"] == 4
    out = done.stdout
    assert f"run {run_id}: binanceus BTC/USDT 1m" in out
    for name in ["lgbm", "majority", "momentum", "reversal", "logreg", "log_loss", "roc_auc", "verdict:", "promotion: refused (does not beat"]:
        assert name in out, name
    assert f"{card['metrics']['validation']['log_loss']:.4f}" in out
    assert "[5/5] model card" in done.stderr
    refused, last = read_promotions(home=home, market=BTC)
    assert refused["scores"]["rows"] == card["data"]["validation_rows"] and "logreg" in refused["scores"]["metrics"]
    assert forced.returncode == 0 and "forced by the caller; the gate alone refuses it" in forced.stdout
    assert (last["forced"], best_run_id(home=home, market=BTC)) == (True, run_id)

def test_predict_gives_the_same_probability_as_the_offline_features(piped):
    home, *_ = piped
    newest = cryptoml("predict", home=home)
    assert newest.returncode == 0, newest.stderr
    answer = json.loads(newest.stdout)
    assert answer["bar"] == "2023-03-21 23:59:00+00:00" and 0 < answer["p_up"] < 1
    at = "2023-03-15 12:00"
    past = json.loads(cryptoml("predict", "--at", at, home=home).stdout)
    assert past["bar"] == "2023-03-15 12:00:00+00:00"
    run = Run.open(past["run_id"], home)
    table, _ = read_feature_table(feature_path(home, BTC))
    row = table.loc[table.ts == pd.Timestamp(at, tz="UTC"), run.features].to_numpy(dtype=float)
    offline = run.booster().predict(row)[0]
    assert past["p_up"] == pytest.approx(offline, abs=1e-9)

def test_monitor_writes_a_report_and_its_exit_status_follows_the_alerts(piped):
    home, *_ = piped
    done = cryptoml("monitor", "--window-days", 3, home=home)
    assert done.returncode in (0, 1), done.stderr
    path = Path(done.stdout.strip().splitlines()[-1].removeprefix("report: "))
    report = json.loads(path.read_text())
    assert path.parent.parent == run_dir(report["run_id"], home)
    assert done.returncode == (1 if report["status"] == "alert" else 0)
    assert f"status: {report['status']}" in done.stdout
    for feature in Run.open(report["run_id"], home).features:
        assert f"feature {feature}" in done.stdout
    assert report["current"]["rows"] == 3 * 1440 and report["current"]["end"] == "2023-03-21 23:59:00+00:00"

def in_process(*args, home, capsys) -> tuple[int, str, str]:
    "Exit status, stdout and stderr of `cryptoml.cli.main` called as the console script calls it."
    status = main([*map(str, args), "--home", str(home), "--quiet"])
    out, err = capsys.readouterr()
    return status, out, err

def test_runs_lists_the_champion_in_100_columns_and_promoting_it_again_is_refused(piped, capsys):
    home, *_ = piped
    run_id = best_run_id(home=home, market=BTC)
    status, out, _ = in_process("runs", home=home, capsys=capsys)
    assert status == 0 and run_id in out and "champion" in out and max(map(len, out.splitlines())) <= 100
    status, out, _ = in_process("runs", "--exchange", "binance", home=home, capsys=capsys)
    assert status == 0 and run_id not in out
    status, out, _ = in_process("promote", run_id, home=home, capsys=capsys)
    assert status == 1 and "already the champion" in out
    status, out, _ = in_process("show", run_id, home=home, capsys=capsys)
    assert status == 0 and out.startswith(f"run {run_id}: binanceus BTC/USDT 1m") and "aliases    champion" in out

def test_the_readme_main_job_promotes_on_a_fresh_root_and_a_rerun_says_why_not(tmp_path):
    "README.md's main job exactly as written (CI runs it with `set -e`): 30 synthetic days, 50 trials."
    first = subprocess.run(["cryptoml", "pipeline", "--demo"], capture_output=True, text=True, timeout=900,
                           env={**os.environ, "CRYPTOML_HOME": str(tmp_path)})
    assert first.returncode == 0, first.stderr[-2000:]
    assert "promotion: promoted (beats majority, logreg on 20159 fresh rows" in first.stdout
    card = Run.open(best_run_id(home=tmp_path, market=SYNTHETIC), tmp_path).card
    assert 0.5 < card["metrics"]["validation"]["accuracy"] < 0.6
    again = subprocess.run(["cryptoml", "pipeline", "--demo"], capture_output=True, text=True, timeout=900,
                           env={**os.environ, "CRYPTOML_HOME": str(tmp_path)})
    assert again.returncode == 1 and "promotion: refused (does not beat champion on 20159 fresh rows" in again.stdout

def test_the_demo_pipeline_runs_offline_and_a_rerun_says_whether_it_promoted(tmp_path, capsys):
    first = cryptoml("pipeline", "--demo", "--days", 12, "--trials", 6, "--val-days", 4, home=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "synthetic SYNTH/USDT 1m" in first.stdout and "promotion: promoted" in first.stdout
    status, out, _ = in_process("pipeline", "--demo", "--days", 12, "--trials", 6, "--val-days", 4, "--seed", 1, home=tmp_path, capsys=capsys)
    assert status in (0, 1)
    assert ("promotion: promoted" in out) == (status == 0) and ("promotion: refused" in out) == (status == 1)
    runs = list_runs(home=tmp_path).run_id.tolist()
    status, out, _ = in_process("promote", runs[1], "--shadow", home=tmp_path, capsys=capsys)
    assert status == 0 and os.readlink(market_dir(tmp_path, SYNTHETIC)/"shadow_lgbm.pkl") == f"runs/{runs[1]}/lgbm.pkl"
    status, out, _ = in_process("compare", *runs, home=tmp_path, capsys=capsys)
    figure = Path(out.strip().splitlines()[-1].removeprefix("figure: "))
    assert status == 0 and f"log-loss gain of {runs[1]} over {runs[0]}" in out and figure.is_file()
    assert figure.parent == market_dir(tmp_path, SYNTHETIC)/"compare" and "plotly" in figure.read_text()[:5000].lower()

def test_the_live_pipeline_fetches_from_the_exchange_and_trains(tmp_path, capsys, monkeypatch):
    bars = synthetic_market(days=4, seed=3)
    with BinanceEmulator(bars={"BTC/USDT": bars}) as exchange:
        # the exchange id 'binance' reaches the local Binance: the real ccxt client, only its URLs moved to 127.0.0.1
        monkeypatch.setattr(ingest_module, "make_exchange", lambda _: make_exchange(binance_client(exchange.url, market_types=("spot",))))
        status, out, err = in_process("pipeline", "--exchange", "binance", "--symbol", "BTC/USDT", "--timeframe", "1m",
                                      "--since", "2023-03-01", "--until", "2023-03-05", "--trials", 2, "--val-days", 1,
                                      home=tmp_path, capsys=capsys)
        assert status in (0, 1) and ("promotion: promoted" in out) == (status == 0), err
        assert exchange.count("klines") >= len(bars) // 1000
        status, again, _ = in_process("ingest", "--symbol", "BTC/USDT", "--timeframe", "1m", "--until", "2023-03-05", home=tmp_path, capsys=capsys)
        assert status == 0 and again.startswith("binance BTC/USDT 1m: 0 new bars")
    card = Run.open(list_runs(home=tmp_path).run_id.iloc[-1], tmp_path).card
    assert (card["data"]["exchange"], card["data"]["symbol"]) == ("binance", "BTC/USDT")
    assert card["data"]["rows"] == len(bars)
    assert "run " in out and "binance BTC/USDT 1m" in out

def test_a_funding_dump_is_stored_where_the_markets_features_read_it(bars_csv, funding_csv, tmp_path, capsys):
    status, *_ = in_process("import", bars_csv, *MARKET, "--funding-csv", funding_csv, home=tmp_path, capsys=capsys)
    assert status == 0 and len(read_funding(tmp_path, "binance", "BTC/USDT")) == 135  # Binance.US pairs take Binance's funding
    status, out, _ = in_process("features", *MARKET, "--feature-set", "rich", home=tmp_path, capsys=capsys)
    table, meta = read_feature_table(Path(out.strip()))
    assert status == 0 and meta["funding_exchange"] == "binance" and table.funding_rate.notna().mean() > 0.99

def legacy_root(home: Path, old: Path) -> str:
    "A copy of `home`'s raw bars and BTC champion, laid out as cryptoml 0.1 laid out a data root; the run's id."
    run = Run.open(best_run_id(home=home, market=BTC), home)
    shutil.copytree(home/"raw", old/"raw")
    (old/"feature_store").mkdir()
    shutil.copyfile(home/run.card["data"]["feature_table"], old/"feature_store"/"BTCUSDT_1m.parquet")
    folder = Path(shutil.copytree(run.folder, old/"models"/run.id))
    card = json.loads((folder/"model_card.json").read_text())
    card["schema_version"], card["data"]["feature_table"] = 1, "feature_store/BTCUSDT_1m.parquet"
    for key in ("funding_exchange", "feature_table_source"): del card["data"][key]
    (folder/"model_card.json").write_text(json.dumps(card))
    os.symlink(f"{run.id}/lgbm.pkl", old/"models"/"best_lgbm.pkl")
    decision = {"run_id": run.id, "action": "promote", "promoted": True, "reason": "promoted by cryptoml 0.1", "previous": None,
                "best": run.id, "forced": False, "scores": {}, "decided_at": "2026-01-01T00:00:00.000+00:00"}
    (old/"models"/"promotions.jsonl").write_text(json.dumps(decision) + "\n")
    return run.id

def test_a_data_root_in_the_old_layout_is_refused_by_name_until_migrated(piped, tmp_path, capsys):
    home, *_ = piped
    old = tmp_path/"old"
    run_id = legacy_root(home, old)
    for args in (["runs"], ["predict"], ["show", run_id], ["features", *MARKET], ["promote", run_id]):
        status, out, err = in_process(*args, home=old, capsys=capsys)
        assert status == 2 and "cryptoml 0.1's layout" in err and f"cryptoml migrate --home {old.resolve()}" in err, err
    status, out, _ = in_process("migrate", home=old, capsys=capsys)
    assert status == 0 and f"run {run_id} -> models/binanceus/BTCUSDT/1m/runs/{run_id}" in out and legacy_layout(old) == []
    status, out, _ = in_process("predict", "--at", "2023-03-15 12:00", home=old, capsys=capsys)
    assert status == 0 and json.loads(out)["run_id"] == run_id
    assert Run.open(run_id, old).verify() and read_promotions(home=old, market=BTC)[0]["reason"] == "promoted by cryptoml 0.1"
    status, out, _ = in_process("migrate", home=old, capsys=capsys)
    assert status == 0 and "nothing to migrate" in out

def test_bad_input_from_the_shell_exits_2_with_the_reason_and_no_traceback(tmp_path):
    done = cryptoml("features", "--symbol", "BTCUSDT", "--timeframe", "1m", home=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "cryptoml features: error: malformed symbol 'BTCUSDT': expected a ccxt unified symbol such as 'BTC/USDT'\n"
    dump = tmp_path/"dump.csv"
    dump.write_text("open_time,open,high,low,close,volume\n2023-03-01 00:00:00,1,2,0.5,nan-ish,3\n")
    done = cryptoml("import", dump, *MARKET, home=tmp_path/"home")
    assert done.returncode == 2 and "dump.csv" in done.stderr and "Traceback" not in done.stderr

@pytest.mark.parametrize("args, reason", [
    (["tune", "--symbol", "BTC/USDT", "--timeframe", "7q"], "7q"),
    (["predict"], "no promoted model"),
    (["monitor"], "no promoted model"),
    (["pipeline", "--trials", "2"], "--demo"),
    (["promote", "yesterday"], "yesterday"),
    (["show", "../2023-01-01T000000"], "malformed run id '../2023-01-01T000000'"),
    (["compare", "2023-01-01T000000", "2023-01-02T000000"], "no run '2023-01-01T000000'"),
    (["rollback"], "no promoted model"),
    (["runs", "--exchange", "../x"], "malformed exchange id '../x'"),
    (["features", "--exchange", "binanceus", "--symbol", "BTC/USDT", "--timeframe", "1m"], "no bars"),
])
def test_bad_input_exits_2_with_the_reason_on_stderr(tmp_path, capsys, args, reason):
    status, out, err = in_process(*args, home=tmp_path, capsys=capsys)
    assert (status, out) == (2, ""), err
    assert reason in err and err.startswith(f"cryptoml {args[0]}: error: ")

def test_usage_errors_exit_2_naming_the_option(tmp_path, capsys):
    (tmp_path/"x.csv").write_text("")
    for args, reason in [(["tune", "--symbol", "BTC/USDT"], "--timeframe"), (["import", "nope.csv", *MARKET], "no such file: nope.csv"),
                         (["pipeline", "--demo", "--import", str(tmp_path/"x.csv")], "not allowed with argument --demo"),
                         (["predict", "--at", "yesterday-ish"], "cannot read 'yesterday-ish' as a time")]:
        with pytest.raises(SystemExit) as exit: main(args)
        assert exit.value.code == 2 and reason in capsys.readouterr().err

@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help_with_home(command, capsys):
    with pytest.raises(SystemExit) as exit: main([command, "--help"])
    assert exit.value.code == 0
    assert "--home" in capsys.readouterr().out
