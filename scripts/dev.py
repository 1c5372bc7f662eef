#!/usr/bin/env python3
"""Set up and run xcam from a fresh clone with nothing but python3.

    python3 scripts/dev.py demo [--out DIR]   # venv + install + `xcam demo`
    python3 scripts/dev.py test [PYTEST ARGS] # venv + install + ruff + import-linter + pytest
    python3 scripts/dev.py setup              # venv + install only
    python3 scripts/dev.py train-demo         # retrain the bundled demo model

The virtual environment lives in .venv and is reinstalled when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("XCAM_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".xcam-installed"


def run(*cmd: str | Path) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    code = subprocess.call([str(c) for c in cmd], cwd=ROOT)
    if code:
        sys.exit(code)


def setup() -> None:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest and PY.exists():
        return
    if not PY.exists():
        run(sys.executable, "-m", "venv", VENV)
    run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PY, "-m", "pip", "install", "--quiet", "-e", ".[dev]")
    STAMP.write_text(digest)


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd not in ("setup", "demo", "test", "train-demo"):
        sys.exit(f"unknown command {cmd!r}; one of setup, demo, test, train-demo")
    setup()
    if cmd == "demo":
        run(BIN / "xcam", "demo", *(rest or ["--out", "demo-out"]))
    elif cmd == "test":
        run(BIN / "ruff", "check", ".")
        run(BIN / "ruff", "format", "--check", ".")
        run(BIN / "lint-imports")  # the layers of ARCHITECTURE.md (pyproject's importlinter)
        run(PY, "-m", "pytest", *(rest or ["--durations=25"]))  # the slowest, for the budget
    elif cmd == "train-demo":
        run(PY, "-m", "xcam.demo.train", *rest)


if __name__ == "__main__":
    main(sys.argv[1:])
