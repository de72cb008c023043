"""Path safety (issue 19 item 5): every path the registry and LGBMProd read is resolved and checked before it is read.

Each test plants one escape in a real data root (three real runs, see `test_registry.world`) and checks that it is
refused by name, that nothing beyond it is read (the planted pickles would leave a marker file if they were ever
unpickled), and that the champion that was serving keeps serving.
"""
import json, hashlib, os, pickle, shutil, subprocess, sys
from dataclasses import replace
from pathlib import Path

import pytest

from cryptoml.core import ArtifactError, ConfigError, atomic_symlink, best_link, market_dir
from cryptoml.infer import LGBMProd, read_shadow_log, shadow_log_path
from cryptoml.registry import Run, alias_link, list_runs, promote, rollback, run_dir, runs_index, save_run
from test_registry import GATE, MARKET, META, STRONG, table, tuned, world, write_table  # noqa: F401 (fixtures)

class Exploit:
    "A pickle that would leave a file behind if it were ever unpickled."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (Path.touch, (Path(self.marker),))

def plant_run(run_folder: Path, where: Path, marker: Path) -> Path:
    "A copy of a run at `where`, its pickles replaced by exploits and its card's checksums made to match them."
    evil = Path(shutil.copytree(run_folder, where/"runs"/run_folder.name))
    card = json.loads((evil/"model_card.json").read_text())
    for name in ("lgbm.pkl", "logreg.pkl"):
        (evil/name).write_bytes(pickle.dumps(Exploit(marker)))
        card["artifacts"][name] = hashlib.sha256((evil/name).read_bytes()).hexdigest()
    (evil/"model_card.json").write_text(json.dumps(card))
    return evil

@pytest.fixture
def outside(tmp_path_factory) -> Path:
    "A folder outside the data root."
    return tmp_path_factory.mktemp("outside")

@pytest.fixture
def served(world, outside):
    "The strong run as champion, served; (home, runs, model, a row, its answer, a marker file that must never appear)."
    home, runs = world
    promote(runs["strong"], home=home, **GATE)
    model = LGBMProd(MARKET, home=home)
    row = dict(zip(STRONG, [1.5, -0.3]))
    return home, runs, model, row, model.predict_proba(row), outside/"pwned"

def still_serving(served):
    "The champion that was serving answers as before; the marker never appeared."
    home, runs, model, row, answer, marker = served
    assert model.predict_proba(row) == answer and model.run_id == runs["strong"]
    assert not marker.exists()

@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_a_champion_link_to_a_folder_outside_the_root_is_refused_before_it_is_read(served, outside, form):
    "Issue 19's case: best_lgbm.pkl planted to point at a run outside the data root whose card matches its own malicious pickle."
    home, runs, model, row, answer, marker = served
    evil = plant_run(run_dir(runs["weak"], home), outside, marker)
    link = best_link(home, MARKET)
    atomic_symlink(evil/"lgbm.pkl" if form == "absolute" else Path(os.path.relpath(evil/"lgbm.pkl", link.parent)), link)
    still_serving(served)
    assert "leads outside" in model.last_refusal
    with pytest.raises(ArtifactError, match="leads outside"): model.refresh()
    fresh = subprocess.run([sys.executable, "-c", "import sys; from cryptoml.core import Market; from cryptoml.infer import LGBMProd\n"
                            f"LGBMProd(Market{tuple(MARKET)!r}, home=sys.argv[1]).predict_proba({row!r})", str(home)],
                           capture_output=True, text=True, timeout=120)
    assert fresh.returncode != 0 and "leads outside" in fresh.stderr, "a new server refuses it on its first load"
    with pytest.raises(ArtifactError, match="not into its own market's runs"): promote(runs["strong2"], home=home)
    with pytest.raises(ArtifactError, match="not into its own market's runs"): rollback(home=home, market=MARKET)
    assert list_runs(home=home).aliases.tolist() == ["", "", ""], "a link that leads elsewhere names no run"
    assert promote(runs["strong"], home=home, force=True, **GATE).promoted, "forcing a run in replaces the planted link"
    assert os.readlink(link) == f"runs/{runs['strong']}/lgbm.pkl"
    still_serving(served)

def test_a_champion_link_into_another_markets_runs_is_refused(served, table, tuned):
    home, runs, model, row, answer, marker = served
    other_meta = {**META, "exchange": "otherex"}
    write_table(home, table, other_meta)
    other = Run.open(save_run(replace(tuned["weak"], table_meta={**tuned["weak"].table_meta, **other_meta}), home=home), home)
    atomic_symlink(Path(os.path.relpath(other.folder/"lgbm.pkl", best_link(home, MARKET).parent)), best_link(home, MARKET))
    still_serving(served)
    assert f"which is not a run of {MARKET}" in model.last_refusal

def test_a_run_index_link_that_leads_out_is_refused(served, outside):
    home, runs, *_ = served
    evil = plant_run(run_dir(runs["weak"], home), outside, outside/"pwned")
    entry = runs_index(home)/"2020-01-01T000000"
    os.symlink(evil, entry)
    with pytest.raises(ArtifactError, match="leads outside"): Run.open("2020-01-01T000000", home)
    os.symlink(Path("..", MARKET.path_parts), runs_index(home)/"2020-01-02T000000")  # inside models/, but no run folder
    with pytest.raises(ArtifactError, match="is not a run folder"): Run.open("2020-01-02T000000", home)
    still_serving(served)

@pytest.mark.parametrize("run_id", ["..", "../2023-01-01T000000", "2023-01-01T000000/..", "2023-01-01T000000/lgbm.pkl", "/etc/passwd", ""])
def test_run_ids_with_dots_or_separators_are_refused_before_any_path_is_built(world, run_id):
    home, _ = world
    with pytest.raises(ConfigError, match="malformed run id"): Run.open(run_id, home)

def test_a_card_that_is_a_link_out_of_its_run_folder_is_refused(served, outside):
    home, runs, model, *_ = served
    folder = run_dir(runs["strong2"], home)
    copy = outside/"card.json"
    shutil.copyfile(folder/"model_card.json", copy)  # the very card: only where it lives is wrong
    (folder/"model_card.json").unlink(); os.symlink(copy, folder/"model_card.json")
    with pytest.raises(ArtifactError, match="leads outside"): Run.open(runs["strong2"], home)
    atomic_symlink(f"runs/{runs['strong2']}/lgbm.pkl", best_link(home, MARKET))
    still_serving(served)
    assert "leads outside" in model.last_refusal

@pytest.mark.parametrize("artifact", ["lgbm.txt", "lgbm.pkl"])
def test_an_artifact_that_is_a_link_out_of_its_run_folder_is_refused(served, outside, artifact):
    home, runs, model, *_ = served
    folder = run_dir(runs["strong2"], home)
    copy = outside/artifact
    shutil.copyfile(folder/artifact, copy)  # the same bytes: the checksum alone would pass them
    (folder/artifact).unlink(); os.symlink(copy, folder/artifact)
    with pytest.raises(ArtifactError, match="leads outside"): Run.open(runs["strong2"], home).artifact(artifact)
    atomic_symlink(f"runs/{runs['strong2']}/lgbm.pkl", best_link(home, MARKET))
    still_serving(served)
    assert "leads outside" in model.last_refusal

def test_a_card_naming_a_feature_table_outside_the_root_is_refused(world, outside):
    home, runs = world
    folder = run_dir(runs["strong"], home)
    card = json.loads((folder/"model_card.json").read_text())
    copy = outside/"table.parquet"
    shutil.copyfile(home/card["data"]["feature_table"], copy)  # same bytes, same sha256
    card["data"]["feature_table"] = os.path.relpath(copy, home)
    (folder/"model_card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="leads outside"): Run.open(runs["strong"], home).table()
    with pytest.raises(ArtifactError, match="leads outside"): promote(runs["strong"], home=home)

def test_a_shadow_link_that_leads_out_is_refused_and_logged_while_the_champion_answers(served, outside):
    home, runs, model, row, answer, marker = served
    evil = plant_run(run_dir(runs["weak"], home), outside, marker)
    atomic_symlink(evil/"lgbm.pkl", alias_link(home, MARKET, "shadow"))
    with pytest.raises(ArtifactError, match="leads outside"): LGBMProd(MARKET, home=home, alias="shadow").predict_proba(row)
    model.log_shadow()
    try:
        assert model.predict_proba(row) == answer
        model.shadow_log.flush()
    finally: model.log_shadow(False)
    logged = read_shadow_log(shadow_log_path(home, MARKET))
    assert len(logged) == 1 and "leads outside" in logged.problem.iloc[0]
    still_serving(served)
