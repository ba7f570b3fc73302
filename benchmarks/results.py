"""Where a benchmark leaves its results: one JSON file for machines and one markdown table for docs/.

One definition of the files' format (JSON indented by two, a final newline), so every benchmark's results
read and diff alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(report: dict[str, Any], json_path: Path, table_path: Path, table: str) -> None:
    """Write the report as JSON and its markdown table, making the JSON's folder if needed."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    table_path.write_text(table)
