"""Conventions the test suite itself keeps (README, "Two commands")."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_tests_find_the_corpora_only_through_conftest():
    """The corpora live in ../shared/data or $MOOD_MONITOR_DATA: conftest.DATA_ROOT / corpus_dir() decide which.

    A test module that builds the path itself ignores $MOOD_MONITOR_DATA (and then skips where the data is).
    """
    hard_coded = re.compile(r"""["']shared["']\s*/\s*["']data["']|["']\.\./shared/data|shared/data["']""")
    offenders = [f"{path.name}:{n}" for path in sorted(TESTS.glob("test_*.py")) if path.name != Path(__file__).name
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if hard_coded.search(line) and not line.lstrip().startswith("#")]
    assert offenders == [], f"use tests.conftest.DATA_ROOT or corpus_dir(): {offenders}"
