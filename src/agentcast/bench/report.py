"""How every benchmark command hands over its result."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def emit_result(result: dict[str, Any], *, output: str | None, summary: str | None) -> None:
    """Print ``result`` as one JSON line on stdout, append the same line to ``output`` if
    given, and print ``summary`` (the human view; ``None`` with ``--json``) on stderr."""
    line = json.dumps(result, ensure_ascii=False)
    if summary is not None:
        print(summary, file=sys.stderr)
    print(line, flush=True)
    if output is not None:
        with Path(output).open("a", encoding="utf-8") as file:
            file.write(line + "\n")
