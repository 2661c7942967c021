import sys
from pathlib import Path

# ort_helpers is imported as ``tests.plugins.ort_helpers``; make the repository root importable
# even when pytest is not run as ``python -m pytest``.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
