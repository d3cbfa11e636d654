"""The allocator setting the CLI and the widget opt into."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str, **env) -> str:
    import os

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_tune_malloc_applies_once_on_glibc_and_can_be_disabled():
    code = "from medsam_core.runtime import tune_malloc; print(tune_malloc(), tune_malloc())"
    if sys.platform.startswith("linux"):
        assert _run(code) == "True True"
    assert _run(code, MEDSAM_TUNE_MALLOC="0") == "False False"


def test_importing_the_library_does_not_tune():
    assert _run("import medsam_core, medsam_core.runtime as r; print(r._tuned)") == "None"
