"""A pooled model, end to end: it finds the generator's planted lead-lag; it is built, tuned, saved, promoted and served
through the command like a single-market model (its market is the panel's key); one loaded `LGBMProd` answers for any
of its markets, and a market's online row, its reference's bars taken from the same feed, gets the table's answer.
The command imports many dumps at once, each file's market from its name, and one bad file fails only its market.
"""
import json

import numpy as np
import pandas as pd
import pytest

from cryptoml.cli import main
from cryptoml.core import Market, shared_data
from cryptoml.features import read_feature_table
from cryptoml.infer import LGBMProd
from cryptoml.ingest import read_bars, read_funding, read_open_interest
from cryptoml.metrics import assess
from cryptoml.panel import PanelFeed, build_panel, panel_market, write_demo_panel
from cryptoml.registry import Run
from cryptoml.tune import tune


def cryptoml(capsys, *args, home) -> tuple[int, str, str]:
    status = main([*map(str, args), "--home", str(home), "--quiet"])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def year(tmp_path_factory):
    "A year of the six-pair synthetic panel in a data root, and its `lead` panel table."
    home = tmp_path_factory.mktemp("year")
    universe = write_demo_panel(home, days=365, seed=0)
    markets = [Market(universe.exchange, s, universe.timeframe) for s in universe.symbols]
    path = build_panel(markets, home=home, reference="SYNA/USDT", name="lead", panel_set="lead", progress=False)
    return home, markets, *read_feature_table(path)


def test_the_pooled_model_finds_the_planted_lead(year):
    home, markets, table, meta = year
    result = tune(table, home=home, n_trials=10, val_days=60, n_boot=200, progress=False)
    val = result.split.val.assign(p=result.booster.predict(result.split.val[result.features]))
    importance = pd.Series(result.booster.feature_importance("gain"), index=result.features)
    assert importance.idxmax() == "ref_ret1"                                    # the leader's last return, above all
    followers, leader = val[val.market > 0], val[val.market == 0]
    majority = result.split.train.y.mean()
    for rows, found in ((followers, True), (leader, False)):
        _, gains = assess(rows.y, {"pooled": rows.p, "majority": np.full(len(rows), majority)}, 300, model="pooled")
        accuracy = gains.set_index("metric").loc["accuracy"]
        assert (accuracy.lo > 0) == found, accuracy                             # an edge on the followers only
    assert followers.p.corr(followers.ref_ret1) > 0.3                          # up after the leader went up


def test_a_pooled_model_is_tuned_promoted_and_served_for_any_of_its_markets(year, tmp_path, capsys):
    home, markets, table, meta = year
    (tmp_path/"lead.txt").write_text("exchange = synthetic\ntimeframe = 1h\n" + "\n".join(m.symbol for m in markets) + "\n")
    status, out, err = cryptoml(capsys, "panel", "--universe", tmp_path/"lead.txt", "--reference", "SYNA/USDT", "--panel-set", "lead", home=home)
    assert status == 0, err
    key = panel_market("lead", markets)
    assert out.splitlines()[1] == f"tune it: cryptoml tune --exchange synthetic --symbol LEAD/PANEL --timeframe 1h --feature-set lead --horizon 1"
    market_options = ["--exchange", key.exchange, "--symbol", key.symbol, "--timeframe", key.timeframe]
    status, out, err = cryptoml(capsys, "tune", *market_options, "--feature-set", "lead", "--trials", 4, "--val-days", 30, home=home)
    assert status == 0, err
    run_id = out.strip()
    run = Run.open(run_id, home)
    assert run.market == key and run.card["features"][0] == "market" and run.card["manifest"]["panel"]["reference"] == "SYNA/USDT"
    status, out, err = cryptoml(capsys, "promote", run_id, "--force", home=home)
    assert status == 0, err

    served, booster = LGBMProd(key, home=home), run.booster()
    rows = table[table.ts == table.ts.max() - pd.Timedelta("5h")]               # one hour, every market
    answers = [served.predict_proba(dict(zip(run.features, row))) for row in rows[run.features].to_numpy()]
    np.testing.assert_allclose(answers, booster.predict(rows[run.features].to_numpy(), num_threads=1), rtol=1e-12)
    assert len(set(np.round(answers, 12))) == len(markets)                      # six markets, six answers, one loaded model

    feed = PanelFeed.of(run.card)
    hour = rows.ts.iloc[0]
    for m in markets:                                                           # the reference first, as its bars arrive
        feed.funding[m.symbol], feed.open_interest[m.symbol] = (read_funding(home, *m[:2]), read_open_interest(home, *m[:2]))
        feed.push(m.symbol, read_bars(home, *m, end=hour + pd.Timedelta("1ms")))
    online = [served.predict_proba(feed.row(m.symbol)) for m in markets]
    np.testing.assert_allclose(online, answers, rtol=1e-12)

    status, out, err = cryptoml(capsys, "predict", *market_options, "--member", "SYNC/USDT", "--at", hour, home=home)
    assert status == 0, err
    said = json.loads(out)
    assert (said["member"], said["bar"], said["symbol"]) == ("SYNC/USDT", str(hour), "LEAD/PANEL")
    assert said["p_up"] == pytest.approx(answers[2], rel=1e-12)
    status, _, err = cryptoml(capsys, "predict", *market_options, home=home)
    assert status == 2 and "is a pooled model: name one of its markets (--member SYMBOL)" in err


SIX = [f"binance_perp_{coin}USDT_1h_2021-2022.csv" for coin in ("BTC", "ETH", "SOL", "BNB", "DOGE", "LINK")]


def test_many_dumps_import_at_once_and_a_bad_one_fails_only_its_market(tmp_path, capsys):
    paths = [shared_data(name) for name in SIX]
    if None in paths: pytest.skip("the shared six-market data is not on this machine (../shared/data); CI has it")
    bad, text = tmp_path/"binance_perp_XRPUSDT_1h_2021-2022.csv", paths[0].read_text().splitlines()
    broken = [line if i != 5 else line.replace(line.split(",")[2], "-1") for i, line in enumerate(text[1:300])]   # a negative high
    bad.write_text("\n".join([text[0], *broken]) + "\n")
    status, out, err = cryptoml(capsys, "import", *paths, bad, home=tmp_path/"home")
    assert status == 2
    assert [line.split(":")[0] for line in out.splitlines()] == [f"binance {c}/USDT 1h" for c in ("BTC", "ETH", "SOL", "BNB", "DOGE", "LINK")]
    assert all("17520 new bars" in line for line in out.splitlines())
    assert "error: binance XRP/USDT 1h:" in err and bad.name in err and "1 of 7 markets failed" in err
    assert read_bars(tmp_path/"home", "binance", "XRP/USDT", "1h").empty
    (tmp_path/"prices.csv").write_text("ts,open,high,low,close,volume\n")
    status, _, err = cryptoml(capsys, "import", paths[0], tmp_path/"prices.csv", home=tmp_path/"other")
    assert status == 2 and "prices.csv: its name names no pair" in err and not (tmp_path/"other"/"raw").exists()
