"""Write one benchmark's section of docs/performance.md (between its own markers)."""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

PERF = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
HEADER = """# Performance

Figures measured by the scripts in `bench/` on the machine named in each section.
Each figure is a ratio against a reference measured in the same run, so it can be
compared across machines; absolute rates are given for context. Re-run with
`.venv/bin/python bench/<stage>.py` (each rewrites only its own section).
"""


def machine() -> str:
    import os
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section of bench ``name`` in docs/performance.md."""
    PERF.parent.mkdir(exist_ok=True)
    text = PERF.read_text() if PERF.exists() else HEADER
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    stamp = time.strftime("%Y-%m-%d")
    block = f"{start}\n{markdown.strip()}\n\n_Measured {stamp} on {machine()}._\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    PERF.write_text(text)
    print(f"wrote section '{name}' of {PERF}")


def publish(name: str, lines: list[str], *, write: bool) -> None:
    """Print a benchmark's markdown and, if ``write``, make it its section of the docs."""
    text = "\n".join(lines)
    print(text)
    if write:
        write_section(name, text)
