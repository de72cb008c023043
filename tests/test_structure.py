"""The package's shape: every stage imports only the stages before it, and only the stages that tune import `tune`."""
import ast
from pathlib import Path

import cryptoml

PACKAGE = Path(cryptoml.__file__).parent
ORDER = ["core", "ingest", "features", "panel", "split", "metrics", "tune", "backtest", "calibrate", "registry", "infer",
         "ensemble", "monitor", "distributed", "docs", "cli"]  # the pipeline's order (see nbs/architecture.ipynb)
TUNERS = {"tune", "backtest", "distributed", "cli"}

def imported_stages(module: str) -> set[str]:
    "The cryptoml stages `module` imports, at the top or inside a function."
    tree, found = ast.parse((PACKAGE/f"{module}.py").read_text()), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            name = node.module.removeprefix("cryptoml.") if node.module.startswith("cryptoml.") else node.module if node.level else None
            if name in ORDER: found.add(name)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("cryptoml.") for a in node.names if a.name.removeprefix("cryptoml.") in ORDER}
    return found

def test_every_stage_imports_only_the_stages_before_it():
    modules = [m for m in ORDER if (PACKAGE/f"{m}.py").exists()]
    assert {"core", "registry", "infer", "cli"} <= set(modules)
    for module in modules:
        later = {s for s in imported_stages(module) if ORDER.index(s) >= ORDER.index(module)}
        assert not later, f"cryptoml.{module} imports the later stages {sorted(later)}"

def test_only_the_stages_that_tune_import_tune():
    importers = {m for m in ORDER if (PACKAGE/f"{m}.py").exists() and "tune" in imported_stages(m)}
    assert importers <= TUNERS, f"{sorted(importers - TUNERS)} import cryptoml.tune without tuning"
