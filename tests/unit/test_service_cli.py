"""`python -m service.cli prepare`: a name it cannot resolve is one clear line and a non-zero
exit, before anything is built (no traceback)."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_prepare_an_unknown_backbone_is_one_line_and_exit_2(tmp_path):
    home = tmp_path / "home"
    env = {"PATH": "/usr/bin:/bin", "GRAFT_HOME": str(home), "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "service.cli", "prepare", "minilm-l6", "no-such-backbone"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [
        "python -m service.cli prepare: unknown backbone 'no-such-backbone': use one of "
        "['efficientnet-lite0', 'minilm-l6'] or the path of a local Hugging Face encoder directory "
        "(or add it to a catalogue file: GRAFT_CATALOG)"
    ], r.stderr
    assert r.stdout == ""
    assert not (home / "backbones").exists()  # checked before minilm-l6 was built
