"""The `cryptoml` command end to end, as a user runs it: real processes, a private --home, real market data.

The story: import the shared minute bars and run the whole pipeline, ask the promoted model for a
probability, monitor it for drift; run the offline demo, and the live form against a local Binance (the
real ccxt client over HTTP on 127.0.0.1); then feed the command bad input and check it says what is wrong,
on stderr, with exit status 2 and no traceback. Some checks call `cryptoml.cli.main` in-process, exactly as
the console script does, where a new process would only add start-up time.
"""
import json, os, subprocess
from pathlib import Path

import pandas as pd
import pytest

from cryptoml.core import best_link, feature_path
from cryptoml.features import read_feature_table
import cryptoml.ingest as ingest_module
from cryptoml.ingest import make_exchange, synthetic_market
from cryptoml.registry import load_booster, read_card, run_dir
from cryptoml.cli import COMMANDS, main
from exchange_emulator import BinanceEmulator, binance_client

MARKET = ["--exchange", "binanceus", "--symbol", "BTC/USDT", "--timeframe", "1m"]

def cryptoml(*args, home, timeout=600) -> subprocess.CompletedProcess:
    "Run the installed `cryptoml` console script with `--home home`."
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("CRYPTOML_HOME", None)
    return subprocess.run(["cryptoml", *map(str, args), "--home", str(home), "--quiet"], capture_output=True, text=True,
                          timeout=timeout, env=env)

@pytest.fixture(scope="module")
def piped(bars_csv, tmp_path_factory):
    "A data root after `cryptoml pipeline --import` of the shared minute bars, and that command's result."
    home = tmp_path_factory.mktemp("piped")
    done = cryptoml("pipeline", "--import", bars_csv, *MARKET, "--trials", 4, "--val-days", 7, home=home)
    return home, done

def test_pipeline_imports_tunes_promotes_and_prints_the_card(piped):
    home, done = piped
    assert done.returncode == 0, done.stderr
    run_id = os.readlink(best_link(home)).split("/")[0]
    card = read_card(run_id, home=home)
    assert card["data"]["exchange"] == "binanceus" and card["data"]["rows"] > 30_000 - 100
    assert card["data"]["validation"][1].startswith("2023-03-21T23:5")
    assert card["tuning"]["trials"] == 4 and card["promotion"]["decision"] == "promoted"
    out = done.stdout
    assert f"run {run_id}: binanceus BTC/USDT 1m" in out
    for name in ["lgbm", "majority", "momentum", "reversal", "logreg", "log_loss", "roc_auc", "verdict:", "promotion: promoted"]:
        assert name in out, name
    assert f"{card['metrics']['validation']['log_loss']:.4f}" in out
    assert "[5/5] model card" in done.stderr

def test_predict_gives_the_same_probability_as_the_offline_features(piped):
    home, _ = piped
    newest = cryptoml("predict", home=home)
    assert newest.returncode == 0, newest.stderr
    answer = json.loads(newest.stdout)
    assert answer["bar"] == "2023-03-21 23:59:00+00:00" and 0 < answer["p_up"] < 1
    at = "2023-03-15 12:00"
    past = json.loads(cryptoml("predict", "--at", at, home=home).stdout)
    assert past["bar"] == "2023-03-15 12:00:00+00:00"
    card = read_card(past["run_id"], home=home)
    table, _ = read_feature_table(feature_path(home, "BTC/USDT", "1m"))
    row = table.loc[table.ts == pd.Timestamp(at, tz="UTC"), card["features"]].to_numpy(dtype=float)
    offline = load_booster(run_dir(past["run_id"], home)).predict(row)[0]
    assert past["p_up"] == pytest.approx(offline, abs=1e-9)

def test_monitor_writes_a_report_and_its_exit_status_follows_the_alerts(piped):
    home, _ = piped
    done = cryptoml("monitor", "--window-days", 3, home=home)
    assert done.returncode in (0, 1), done.stderr
    path = Path(done.stdout.strip().splitlines()[-1].removeprefix("report: "))
    report = json.loads(path.read_text())
    assert path.parent.parent == run_dir(report["run_id"], home)
    assert done.returncode == (1 if report["status"] == "alert" else 0)
    assert f"status: {report['status']}" in done.stdout
    for feature in read_card(report["run_id"], home=home)["features"]:
        assert f"feature {feature}" in done.stdout
    assert report["current"]["rows"] == 3 * 1440 and report["current"]["end"] == "2023-03-21 23:59:00+00:00"

def in_process(*args, home, capsys) -> tuple[int, str, str]:
    "Exit status, stdout and stderr of `cryptoml.cli.main` called as the console script calls it."
    status = main([*map(str, args), "--home", str(home), "--quiet"])
    out, err = capsys.readouterr()
    return status, out, err

def test_runs_lists_the_promoted_run_and_promoting_it_again_is_refused(piped, capsys):
    home, _ = piped
    run_id = os.readlink(best_link(home)).split("/")[0]
    status, out, _ = in_process("runs", home=home, capsys=capsys)
    assert status == 0 and run_id in out
    status, out, _ = in_process("promote", run_id, home=home, capsys=capsys)
    assert status == 1 and "already the best" in out

def test_the_demo_pipeline_runs_offline_and_a_rerun_says_whether_it_promoted(tmp_path, capsys):
    first = cryptoml("pipeline", "--demo", "--days", 4, "--trials", 2, "--val-days", 1, home=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "synthetic SYNTH/USDT 1m" in first.stdout and "promotion: promoted" in first.stdout
    status, out, _ = in_process("pipeline", "--demo", "--days", 4, "--trials", 2, "--val-days", 1, "--seed", 1, home=tmp_path, capsys=capsys)
    assert status in (0, 1)
    assert ("promotion: promoted" in out) == (status == 0) and ("promotion: refused" in out) == (status == 1)

def test_the_live_pipeline_fetches_from_the_exchange_and_trains(tmp_path, capsys, monkeypatch):
    bars = synthetic_market(days=4, seed=3)
    with BinanceEmulator(bars={"BTC/USDT": bars}) as exchange:
        # the exchange id 'binance' reaches the local Binance: the real ccxt client, only its URLs moved to 127.0.0.1
        monkeypatch.setattr(ingest_module, "make_exchange", lambda _: make_exchange(binance_client(exchange.url, market_types=("spot",))))
        status, out, err = in_process("pipeline", "--exchange", "binance", "--symbol", "BTC/USDT", "--timeframe", "1m",
                                      "--since", "2023-03-01", "--until", "2023-03-05", "--trials", 2, "--val-days", 1,
                                      home=tmp_path, capsys=capsys)
        assert status == 0, err
        assert exchange.count("klines") >= len(bars) // 1000
        status, again, _ = in_process("ingest", "--symbol", "BTC/USDT", "--timeframe", "1m", "--until", "2023-03-05", home=tmp_path, capsys=capsys)
        assert status == 0 and again.startswith("binance BTC/USDT 1m: 0 new bars")
    card = read_card(os.readlink(best_link(tmp_path)).split("/")[0], home=tmp_path)
    assert (card["data"]["exchange"], card["data"]["symbol"]) == ("binance", "BTC/USDT")
    assert card["data"]["rows"] == len(bars)
    assert "run " in out and "binance BTC/USDT 1m" in out

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
