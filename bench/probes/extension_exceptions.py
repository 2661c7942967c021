"""Does an error raised inside a C++ extension reach Python as an exception here, or crash the
process? Each case runs in a child process, so a crash is reported, not suffered.

Twenty-third session, on the GPU machine's host (Intel Xeon, torch 2.11.0+cu130, GCC 13.3, Python
3.12): every ``TORCH_CHECK_VALUE`` of Ember's oneDNN extension whose message holds a number
(``c10::str`` formatting an int64) killed the process with a segmentation fault, while those with
only text raised ValueError. On this repository's machine (torch 2.13.0+cpu, GCC 12) and with
torch 2.14.1+cu130 in a scratch venv, both raise. The cause was not found before the session's
device time ran out. The cases separate the candidates: a minimal extension with PyTorch's default
flags, the same with the flags Ember compiles its extension with, and Ember's extension itself.

    python bench/probes/extension_exceptions.py            # prints one line per case
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

_TINY = r'''
#include <torch/extension.h>
void with_number(int64_t n) { TORCH_CHECK_VALUE(n < 0, "n=", n, " is not negative"); }
void text_only(int64_t n) { TORCH_CHECK_VALUE(n < 0, "a message without numbers"); }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("with_number", &with_number); m.def("text_only", &text_only); }
'''

_CHILD_TINY = '''
import sys, torch
from torch.utils import cpp_extension
flags, name, folder, fn = sys.argv[1].split(), sys.argv[2], sys.argv[3], sys.argv[4]
mod = cpp_extension.load_inline(name=name, cpp_sources=[{src!r}], extra_cflags=flags,
                                extra_ldflags=["-fopenmp"] if "-fopenmp" in flags else [], build_directory=folder)
try:
    getattr(mod, fn)(3)
except ValueError as e:
    print("ValueError:", str(e).splitlines()[0])
'''

_CHILD_EMBER = '''
import sys, torch
from ember.backends.cpu import native
ext = native.extension()
if ext is None:
    print("no extension:", native.unavailable_reason()); sys.exit(0)
w = torch.randn(8, 8, 3, 3)
try:
    if sys.argv[1] == "with_number":
        ext.Layer(w, None, [1, 1], [1, 1], 3)  # "output channels 8 not divisible by groups 3"
    else:
        ext.Layer(w, None, [1, 1], [1, 1], 1, src_dtype="u8")  # a message without numbers
except ValueError as e:
    print("ValueError:", str(e).splitlines()[0])
'''


def _run(args: list[str]) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    if done.returncode < 0 or done.returncode >= 128:
        return f"crashed (signal {-done.returncode if done.returncode < 0 else done.returncode - 128})"
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"


def main() -> int:
    import torch

    from ember.backends.cpu import native

    print(f"torch {torch.__version__}, C++11 ABI {torch._C._GLIBCXX_USE_CXX11_ABI}, Python {sys.version.split()[0]}")
    root = Path(tempfile.mkdtemp(prefix="ember-exc-"))
    child = root / "tiny.py"
    child.write_text(_CHILD_TINY.format(src=_TINY))
    for label, flags in (("default flags", ""), ("Ember's flags", " ".join(native.CFLAGS))):
        folder = root / label.replace(" ", "-").replace("'", "")
        folder.mkdir()
        name = "exc_" + folder.name.replace("-", "_")
        for fn in ("text_only", "with_number"):
            print(f"minimal extension, {label}, {fn}: {_run([str(child), flags, name, str(folder), fn])}")
    ember = root / "ember_child.py"
    ember.write_text(_CHILD_EMBER)
    for fn in ("text_only", "with_number"):
        print(f"Ember's extension, {fn}: {_run([str(ember), fn])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
