"""Result files of the experiments: one JSON file per experiment, updated one record at a time.

A grid run stores each finished cell at once (read, merge, atomic replace, under a file lock),
so a run that is killed, or several runs sharing one file (shards on one GPU), never lose a
finished cell, and a rerun skips the cells already present (issue 7: "resumable pieces").
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


class ResultStore:
    """``{"meta": {...}, "records": {key: record}}`` in one JSON file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"meta": {}, "records": {}}
        with open(self.path) as f:
            data = json.load(f)
        data.setdefault("meta", {})
        data.setdefault("records", {})
        return data

    def records(self) -> dict[str, Any]:
        return self.load()["records"]

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records().get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        with self._locked():
            data = self.load()
            data["records"][key] = record
            data.get("errors", {}).pop(key, None)
            self._write(data)

    def put_error(self, key: str, error: BaseException) -> None:
        """Note a run that raised; it stays pending (a rerun retries it) and the report lists it."""
        with self._locked():
            data = self.load()
            data.setdefault("errors", {})[key] = f"{type(error).__name__}: {error}"[:2000]
            self._write(data)

    def start(self, protocol: dict[str, Any], axes: tuple[str, ...] = (), **meta: Any) -> None:
        """Record the protocol of a run into this file; refuse a file whose stored runs were
        made under another protocol (mixing them would compare unlike runs). ``axes`` name the
        keys that only choose which runs exist (seeds, grid axes): changing them adds runs and
        keeps every stored one valid."""
        protocol = json.loads(json.dumps(protocol))  # tuples -> lists, as stored
        data = self.load()
        old = data["meta"].get("protocol")
        changed = sorted(k for k in set(old or {}) | set(protocol)
                         if k not in axes and (old or {}).get(k) != protocol.get(k))
        if data["records"] and old is not None and changed:
            raise ValueError(
                f"out: {self.path} holds runs made with another protocol (differs in {', '.join(changed)}); "
                "choose another output folder or delete that file"
            )
        command = meta.pop("command", "")
        commands = [c for c in data["meta"].get("commands", []) if c != command] + ([command] if command else [])
        self.update_meta(protocol=protocol, commands=commands, **meta)

    def update_meta(self, **meta: Any) -> None:
        with self._locked():
            data = self.load()
            data["meta"].update(meta)
            self._write(data)

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The lock lives in the temp folder, keyed by the file's absolute path, so result
        # folders (docs/experiments) hold only results.
        key = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:16]
        with open(Path(tempfile.gettempdir()) / f"wmzoo-results-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, data: dict[str, Any]) -> None:
        # Write a temporary file and rename it over the old one: a kill mid-write leaves the
        # previous complete file, never a truncated one.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; result files are for everyone to read
        os.replace(tmp, self.path)


def hardware() -> dict[str, str]:
    """Where a result was measured: device, torch/triton/Python versions."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {
        "device": device,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": sys.version.split()[0],
    }


def pick_device(name: str | None = None) -> torch.device:
    """``name`` if given, else CUDA when present, else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
