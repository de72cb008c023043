"""The model card page, rendered without Quarto (`cryptoml docs`), opened in a real headless Chromium: the
metrics table and the plots must be on the page as a reader sees it, with every plot drawn by plotly.js
(an `svg.main-svg` inside each plot's div), not merely present in the HTML source. The browser runs offline,
so the page must carry its own plotly.js. A notebook that fails to render is named, and the rest still render.
"""
import json, os, re, shutil, subprocess
from pathlib import Path

import nbformat
import pytest
from bs4 import BeautifulSoup

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)")

def docs(*args, cwd=REPO) -> subprocess.CompletedProcess:
    "Run `cryptoml docs *args` in `cwd` (the notebooks train their own models, so no data root is passed on)."
    env = {k: v for k, v in os.environ.items() if k != "CRYPTOML_HOME"}
    return subprocess.run(["cryptoml", "docs", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)

@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    "The model card rendered to HTML by `cryptoml docs` (the notebook trains its own quick model)."
    out = tmp_path_factory.mktemp("docs")
    done = docs("model_card.ipynb", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out/"model_card.html"

def browse(page: Path, profile: Path) -> BeautifulSoup:
    "The page's DOM after headless Chromium has loaded it and run its scripts, with the network out of reach."
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "<body" in done.stdout, done.stderr[-2000:]
    return BeautifulSoup(done.stdout, "html.parser")

@needs_chromium
def test_the_model_card_page_shows_the_metrics_table_and_drawn_plots(page, tmp_path):
    dom = browse(page, tmp_path/"profile")
    assert dom.title.string == "Model card"

    caption = dom.find("caption", string=lambda s: s and "Validation metrics" in s)
    assert caption is not None, "the metrics table is missing"
    table = caption.find_parent("table")
    header = [th.get_text(strip=True) for th in table.thead.find_all("th")]
    assert header[1:] == ["lgbm", "majority", "momentum", "reversal", "logreg"]
    rows = metrics_rows(dom)
    assert list(rows) == ["accuracy", "roc_auc", "log_loss", "brier", "ece", "base_rate"]
    assert 0.5 < float(rows["log_loss"][0].split()[0]) < 1.0  # the model's validation log loss: a real number near ln 2
    assert re.fullmatch(r"0\.\d{4} \[0\.\d{4}, 0\.\d{4}\]", rows["log_loss"][0])  # with its 95% interval
    assert "Verdict." in dom.get_text()

    plots = dom.select("div.plotly-graph-div")
    titles = [p.select_one(".gtitle").get_text() for p in plots if p.select_one(".gtitle")]
    assert len(plots) == len(titles) == 8 and all(p.select_one("svg.main-svg") for p in plots), titles
    assert titles[0] == "Feature importance (total gain)" and titles[1] == "Optimization History Plot"
    assert titles[2].startswith("Validation window, later half") and titles[3].startswith("Calibration")  # before/after
    assert titles[4].startswith("Drift against the training window") and titles[5].startswith("Realised against expected")
    assert titles[6].startswith("Equity net of") and titles[7].startswith("Out of sample per")  # the walk-forward section
    assert len(plots[0].select(".trace.bars .point")) == 5  # one bar per feature of the seed set

    drift = dom.find(string=lambda s: s and s.startswith("Report of "))
    assert drift is not None and any(word in drift.parent.get_text() for word in ("ok", "warn", "alert"))
    assert "Traceback" not in dom.get_text()

    nav = {a.get_text(): a["href"] for a in dom.select("nav.cryptoml-nav a")}
    assert nav["cryptoml"] == "index.html" and nav["Model card"] == "model_card.html", nav
    assert dom.select_one("nav.cryptoml-nav a.here").get_text() == "Model card"
    assets = [tag.get("src") or tag.get("href") for tag in dom.select("script[src], link[rel=stylesheet]")]
    assert all((page.parent/a).is_file() for a in assets if not a.startswith("http")), assets  # shared, beside the page
    assert page.stat().st_size < 1_000_000  # plotly.js and the stylesheet are shared, not inlined

def metrics_rows(dom: BeautifulSoup) -> dict[str, list[str]]:
    "The validation metrics table of a model card page: metric -> its cells (the model's first)."
    table = dom.find("caption", string=lambda s: s and "Validation metrics" in s).find_parent("table")
    return {tr.th.get_text(strip=True): [td.get_text(strip=True) for td in tr.find_all("td")] for tr in table.tbody.find_all("tr")}

@needs_chromium
def test_docs_home_documents_that_roots_champion_after_two_demo_runs(tmp_path):
    home = tmp_path/"root"
    for seed in (0, 1):
        demo = subprocess.run(["cryptoml", "pipeline", "--demo", "--days", "12", "--trials", "6", "--val-days", "4", "--seed",
                               str(seed), "--home", str(home), "--quiet"], capture_output=True, text=True, timeout=900)
        assert demo.returncode in (0, 1), demo.stderr[-2000:]  # promoted, or refused by the gate
    runs = sorted(p.name for p in home.glob("models/*/*/*/runs/*"))
    champion = next(home.glob("models/*/*/*/best_lgbm.pkl")).resolve().parent.name
    assert len(runs) == 2 and champion in runs
    done = docs("model_card.ipynb", "--out", tmp_path/"site", "--home", home)
    assert done.returncode == 0, done.stderr[-3000:]
    dom = browse(tmp_path/"site"/"model_card.html", tmp_path/"profile")
    assert f"Run {champion}, champion of" in dom.get_text()
    card = json.loads((home.glob(f"models/*/*/*/runs/{champion}/model_card.json").__next__()).read_text())
    assert metrics_rows(dom)["log_loss"][0].split()[0] == f"{card['metrics']['validation']['log_loss']:.4f}"
    assert "Traceback" not in dom.get_text()

def test_docs_home_without_a_champion_is_bad_input(tmp_path):
    done = docs("model_card.ipynb", "--out", tmp_path/"site", "--home", tmp_path/"empty")
    assert done.returncode == 2 and "has a champion to document" in done.stderr and "Traceback" not in done.stderr

def test_a_notebook_that_fails_is_named_and_the_others_still_render(tmp_path):
    good, bad = nbformat.v4.new_notebook(), nbformat.v4.new_notebook()
    good.cells = [nbformat.v4.new_markdown_cell("# Fine\n> Renders."), nbformat.v4.new_code_cell("1 + 1")]
    bad.cells = [nbformat.v4.new_markdown_cell("# Broken\n> Raises."), nbformat.v4.new_code_cell("1 / 0")]
    nbformat.write(bad, tmp_path/"broken.ipynb"); nbformat.write(good, tmp_path/"fine.ipynb")
    done = docs(tmp_path/"broken.ipynb", tmp_path/"fine.ipynb", "--out", tmp_path/"site")
    assert done.returncode == 1
    assert "broken.ipynb failed" in done.stderr and "ZeroDivisionError" in done.stderr
    assert sorted(p.name for p in (tmp_path/"site").glob("*.html")) == ["fine.html"]

def test_docs_outside_a_checkout_is_bad_input(tmp_path):
    done = docs("model_card.ipynb", cwd=tmp_path)
    assert done.returncode == 2 and "inside a cryptoml checkout" in done.stderr
