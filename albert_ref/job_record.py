"""The record that ties a resumable output (an `embed --output` job's FILE.partial/, a
distributed job's folder) to the command that made it, so that a rerun of that command
resumes and any other command is refused rather than mixing two jobs' rows."""
from __future__ import annotations

import json
from pathlib import Path

from albert_ref.atomic import atomic_output
from albert_ref.errors import InputError


def stored_job(path: Path, job: dict, where: Path, finished_too: bool = False) -> dict | None:
    """The record at `path` (a JSON object whose "job" is the job's description) when it
    describes `job`; None when there is none. A record of another job, or one that cannot
    be read, is an InputError saying what differs and how to go on; `where` names the
    output that holds it. finished_too: the record stays after its job is done (a
    distributed job's folder), so the job it records may be finished."""
    if not path.exists():
        return None
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: unreadable ({exc}); add --restart to discard the job it records") from None
    stored = found.get("job") if isinstance(found, dict) else None
    if stored == job:
        return found
    stored = stored if isinstance(stored, dict) else {}
    changed = sorted(k for k in job if stored.get(k) != job[k])
    held, rerun = ("a job", "rerun that command to finish it if it is not") if finished_too else \
        ("an unfinished job", "rerun that command to finish it")
    raise InputError(f"{where} holds {held} for a different command (it differs in: "
                     f"{', '.join(changed)}{_edited_inputs(stored, job)}); {rerun}, "
                     f"use another output, or add --restart to discard it")


def _edited_inputs(stored: dict, job: dict) -> str:
    """Which input files changed, when the job lists them ({"path": ...} records)."""
    if not isinstance(job.get("inputs"), list) or stored.get("inputs") == job["inputs"]:
        return ""
    before = {f.get("path"): f for f in stored.get("inputs") or [] if isinstance(f, dict)}
    edited = [f["path"] for f in job["inputs"] if before.get(f["path"]) != f]
    return f"; changed or new input: {', '.join(edited[:3])}" if edited else ""


def write_job(path: Path, fmt: str, version: int, job: dict) -> None:
    """Record `job` at `path`, atomically."""
    with atomic_output(path, "w") as fh:
        json.dump({"format": fmt, "version": version, "job": job}, fh, indent=1)
