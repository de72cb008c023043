"""Bad input to the core helpers is refused with the project's error types, naming the bad value.

The notebook checks most of this; here is what a notebook cannot show when it runs as root: a data root
that exists but that the user may not write to. Root may write anywhere, so the check runs in a process
that drops to the `nobody` user once cryptoml is imported.
"""
import os, shutil, subprocess, sys, tempfile
import pytest

from cryptoml.core import ConfigError, data_home

NOBODY = 65534

def test_a_data_root_under_a_file_is_refused_by_name(tmp_path):
    (tmp_path/"file").write_text("x")
    with pytest.raises(ConfigError, match="file/sub"): data_home(tmp_path/"file"/"sub")

@pytest.fixture
def locked():
    "A folder that everyone may enter and read but only its owner may write to."
    folder = tempfile.mkdtemp(prefix="cryptoml-locked-")
    os.chmod(folder, 0o755)
    yield folder
    os.chmod(folder, 0o755)
    shutil.rmtree(folder)

def test_an_unwritable_data_root_is_refused_by_name(locked):
    if os.geteuid() != 0: os.chmod(locked, 0o555)
    drop = f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})" if os.geteuid() == 0 else "pass"
    code = f"import os\nfrom cryptoml.core import data_home\n{drop}\ndata_home({locked!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0
    assert f"cryptoml.core.ConfigError: data root {locked} is not writable" in done.stderr, done.stderr
