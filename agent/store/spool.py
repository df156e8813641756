"""The spool: flush batches the final flush could not write, kept on disk for the next start.

When the agent stops (SIGTERM, Ctrl-C) and the store refuses its final
flush (the database went away, the disk is full), the batches still held
would die with the process. The daemon writes them here instead and exits
non-zero; the next start writes the spooled batches before its first tick
and deletes the file. Every row has a natural key, so a batch that was
partly written before (or twice) never counts twice.

The file is JSON, never pickle: it is read back by the agent, which must
not run whatever a file in its data directory says. It is written
atomically (a temporary file in the same folder, fsync, rename), mode 0600
in a folder created 0700, as it holds command lines and labels. One file
per (host, store URL), so a spool is only ever written to the store it was
meant for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from infermeter.errors import StoreError
from infermeter.records import (
    Bucket,
    CallEnergy,
    Device,
    DeviceKind,
    DeviceRate,
    DeviceWindowRecord,
    Framework,
    Method,
    Price,
    PriceCard,
    Profile,
    Share,
    Span,
    SpanPart,
    Target,
    TargetKey,
    TimeOfUse,
)
from infermeter.store.engine import redact
from infermeter.store.writer import FlushBatch

FORMAT = "infermeter-spool"
VERSION = 1
DIR_MODE = 0o700

T = TypeVar("T")


def spool_path(directory: Path, host: str, store_url: str) -> Path:
    """The spool file of this host's batches for this store, in ``directory``.

    The name hashes the host and the store URL (its password hidden), so an
    agent pointed at another store never writes this one's batches there.
    """
    digest = hashlib.sha256(f"{host}\0{redact(store_url)}".encode()).hexdigest()[:16]
    return directory / f"spool-{digest}.json"


def write_spool(
    path: Path, batches: Sequence[FlushBatch], host: str, store_url: str, now: float | None = None
) -> None:
    """Write ``batches`` to ``path`` atomically (0600, its folder 0700 if created).

    Raises StoreError with one line when the spool cannot be written either.
    """
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "host": host,
        "store": redact(store_url),
        "written_at": time.time() if now is None else now,
        "batches": [_plain(b) for b in batches],
    }
    directory = path.parent
    tmp: str | None = None
    try:
        if not directory.exists():
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(directory, DIR_MODE)  # mkdir's mode is cut by the umask
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp makes it 0600
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
    except (OSError, TypeError, ValueError) as e:
        raise StoreError(f"cannot write the spool {path}: {_reason(e)}") from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def read_spool(path: Path) -> list[FlushBatch]:
    """The batches spooled at ``path``; StoreError with one line if it cannot be read."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read the spool {path}: {_reason(e)}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StoreError(f"{path} is not an infermeter spool")
    if doc.get("version") != VERSION:
        raise StoreError(
            f"spool {path} is of version {doc.get('version')!r}; this infermeter reads {VERSION}"
        )
    try:
        return [_batch(b) for b in doc["batches"]]
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise StoreError(f"spool {path} is damaged: {_reason(e)}") from e


def remove_spool(path: Path) -> None:
    """Delete the spool once its batches are stored; no error if it is gone."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def set_aside(path: Path, now: float | None = None) -> Path:
    """Rename a spool that cannot be read, so that no later spool replaces it."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    aside = path.with_name(f"{path.name}.unreadable-{stamp}")
    os.replace(path, aside)
    return aside


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}"


# ----- to JSON: every record as an object of its fields -------------------------


def _plain(x: Any) -> Any:
    """A record as JSON types: objects of fields, arrays, and the scalars as they are."""
    if x is None or isinstance(x, bool | int | float):
        return x
    if isinstance(x, str):
        return str(x)  # an enum member as its value
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, frozenset | set):
        return sorted(_plain(v) for v in x)
    if isinstance(x, tuple | list):
        return [_plain(v) for v in x]
    raise TypeError(f"{type(x).__name__} cannot be spooled")


# ----- from JSON: each record rebuilt with its fields' types ---------------------


def _build(cls: type[T], d: Any, conv: Mapping[str, Callable[[Any], Any]] | None = None) -> T:
    """``cls`` from an object of its fields; a field left out takes its default."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__} must be an object")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = d.keys() - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {sorted(unknown)[0]!r}")
    conv = conv or {}
    return cls(**{k: conv[k](v) if k in conv else v for k, v in d.items()})


def _opt(f: Callable[[Any], T]) -> Callable[[Any], T | None]:
    return lambda v: None if v is None else f(v)


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, not {type(v).__name__}")
    return v


def _key(v: Any) -> TargetKey:
    host, pid, start = v
    return (str(host), int(pid), _number(start))


def _str_map(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise TypeError("expected an object")
    return {str(k): str(x) for k, x in v.items()}


def _share(d: Any) -> Share:
    return _build(Share, d, {"bucket": Bucket, "method": Method, "target": _opt(_key)})


def _device(d: Any) -> Device:
    return _build(
        Device,
        d,
        {
            "kind": DeviceKind,
            "compute_capability": _opt(lambda v: (int(v[0]), int(v[1]))),
        },
    )


def _target(d: Any) -> Target:
    return _build(
        Target,
        d,
        {"framework": Framework, "cmdline": lambda v: tuple(str(w) for w in v), "labels": _str_map},
    )


def _span(d: Any) -> Span:
    return _build(
        Span, d, {"tags": _str_map, "parts": lambda v: tuple(_build(SpanPart, p) for p in v)}
    )


def _call(d: Any) -> CallEnergy:
    return _build(CallEnergy, d, {"span": _span, "target": _key, "method": Method})


def _window(d: Any) -> DeviceWindowRecord:
    return _build(DeviceWindowRecord, d, {"method": Method, "profile": _opt(_profile)})


def _profile(v: Any) -> Profile:
    return tuple((_number(t), _number(j)) for t, j in v)


def _card(d: Any) -> PriceCard:
    return _build(
        PriceCard,
        d,
        {
            "time_of_use": lambda v: tuple(
                _build(TimeOfUse, p, {"days": lambda days: frozenset(int(x) for x in days)})
                for p in v
            ),
            "device_rates": lambda v: tuple(_build(DeviceRate, r) for r in v),
            "body": dict,
        },
    )


def _price(d: Any) -> Price:
    return _build(Price, d)


def _baseline(v: Any) -> tuple[float | None, float | None]:
    idle, keepwarm = v
    return (idle, keepwarm)


def _batch(d: Any) -> FlushBatch:
    return _build(
        FlushBatch,
        d,
        {
            "shares": lambda v: [_share(x) for x in v],
            "devices": lambda v: [_device(x) for x in v],
            "targets": lambda v: [_target(x) for x in v],
            "now": _number,
            "baselines": lambda v: {str(k): _baseline(x) for k, x in v.items()},
            "calls": lambda v: [_call(x) for x in v],
            "windows": lambda v: [_window(x) for x in v],
            "card": _opt(_card),
            "share_prices": lambda v: [_price(x) for x in v],
            "call_prices": lambda v: [_price(x) for x in v],
        },
    )
