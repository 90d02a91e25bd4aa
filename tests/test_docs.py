"""Every fact the code cites lives in the repo: a comment's "spec 0N" is docs/spec/0N-*.md, written in the project's
own words from the shared spec it was given."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"spec[ -]?(0[1-9])((?:\s*,\s*0[1-9])*)")


def citations() -> dict[str, list[str]]:
    """{"01": ["longlive/model/dit.py:3", ...]} for every "spec 0N" (and "spec 01, 02") in code and tests."""
    found: dict[str, list[str]] = {}
    for path in sorted([*(ROOT / "longlive").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in CITATION.finditer(line):
                for num in [m.group(1), *re.findall(r"0[1-9]", m.group(2))]:
                    found.setdefault(num, []).append(f"{path.relative_to(ROOT)}:{n}")
    return found


def test_every_spec_citation_resolves_to_a_page_in_docs():
    found = citations()
    assert {"01", "02", "03", "04", "05"} <= set(found)  # the scan really finds the code's citations
    for num, where in found.items():
        pages = list((ROOT / "docs" / "spec").glob(f"{num}-*.md"))
        assert len(pages) == 1, f"spec {num} is cited at {where[:3]} but docs/spec has {pages}"
        assert pages[0].read_text(encoding="utf-8").startswith(f"# Spec {num} ·"), pages[0]


def test_no_citation_of_files_outside_the_repo():
    outside = ("DESIGN" + ".md", "shared" + "/spec", '"shared" ' + '/ "spec"')  # spelled apart: this file is scanned
    for path in [*(ROOT / "longlive").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        assert not [o for o in outside if o in text], path
