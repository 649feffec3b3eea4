"""Long-form results files and their markdown tables."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what decides the LM's speed


def machine_description() -> str:
    """CPU model, its speed-relevant flags (AVX2, AVX-512, native bf16), core count and
    memory, for results files."""
    cpu, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                present = set(line.split(":", 1)[1].split())
                flags = " ".join(f for f in SPEED_FLAGS if f in present) or "none of " + \
                    "/".join(SPEED_FLAGS)
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB"
    except (OSError, ValueError):
        memory = ""
    cpu = cpu or platform.processor() or platform.machine()
    flags = f" (flags: {flags})" if flags else ""
    return f"{cpu}{flags}, {os.cpu_count()} cores{memory}, {platform.system()}"


def git_commit() -> str:
    """The current commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def write_results(path: str | os.PathLike[str], rows: Sequence[dict],
                  command: str | None = None) -> Path:
    """Write ``{"command", "git_commit", "machine", "date", "rows"}`` as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": command or " ".join(sys.argv),
        "git_commit": git_commit(),
        "machine": machine_description(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rows": list(rows),
    }
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return path


def _fmt(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"


def pivot_table(rows: Sequence[dict], metrics: Sequence[str], systems: Sequence[str] | None = None,
                datasets: Sequence[str] | None = None) -> str:
    """Markdown table: one line per (system, dataset), one column per metric."""
    systems = list(systems or dict.fromkeys(r["system"] for r in rows))
    datasets = list(datasets or dict.fromkeys(r["dataset"] for r in rows))
    lookup = {(r["system"], r["dataset"], r["metric"]): r for r in rows}
    lines = ["| system | dataset | n | " + " | ".join(metrics) + " |",
             "|---|---|---:|" + "---:|" * len(metrics)]
    for system in systems:
        for dataset in datasets:
            found = [lookup.get((system, dataset, m)) for m in metrics]
            if not any(found):
                continue
            n = next(r["n"] for r in found if r)
            cells = [_fmt(r["value"]) if r else "" for r in found]
            lines.append(f"| {system} | {dataset} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
