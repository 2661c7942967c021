"""Running a Triton kernel check as a script: on the GPU, or on the CPU under Triton's interpreter
(in a subprocess, since the interpreter is chosen when a kernel is defined). The script gets the
device (``cpu`` / ``cuda``) as ``sys.argv[1]``, runs from the repository root with this folder on
its path, and prints ``ok`` last when every check held."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def run_triton_check(script: str, device: str, timeout: int = 600) -> None:
    """Runs ``script`` on ``device``; on the CPU under ``TRITON_INTERPRET=1`` (a skip without the
    triton package). Fails with the script's error output."""
    env = dict(os.environ)
    if device == "cpu":
        if importlib.util.find_spec("triton") is None:
            pytest.skip("triton is not installed")
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    done = subprocess.run([sys.executable, "-c", script, device], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
