"""README's op table is generated from the frontend's registry; it must not drift."""
from pathlib import Path

from ember.tools import optable

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_op_table_matches_registry():
    text = README.read_text()
    assert optable.BEGIN in text and optable.END in text
    block = text.split(optable.BEGIN, 1)[1].split(optable.END, 1)[0].strip()
    assert block == optable._render(), "run `python -m ember.tools.optable --write`"


def test_table_lists_the_foundation_ops():
    table = optable._render()
    for op in ("Conv", "LRN", "LayerNormalization", "Resize", "Gather", "Pad", "Clip"):
        assert f"| {op} |" in table
