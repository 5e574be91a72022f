"""The download path of ``diffret data prepare``: fetch, verify, extract.

Used only when the user gives no ``--source`` directory and nothing is under
``<root>/<name>/source`` yet. Design points:

- resumable: bytes go to ``<file>.part``; a re-run asks for the rest with an HTTP
  ``Range`` request (a server that ignores it sends everything again, which we detect);
- verified: SHA-256 (and size) when the plugin's :class:`DownloadSource` knows them; a
  mismatch deletes the bad file and says so; the final name only appears (atomic
  rename) once the bytes are complete and verified;
- honest when offline: connection refused, DNS failure or timeout raise
  :class:`OfflineError` straight away (no retry loop), listing where the files come
  from and how to pass them with ``--source DIR``;
- safe extraction: zip/tar members that would land outside the target are refused.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import shutil
import socket
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from diffret_cli.data.paths import downloads_dir, source_dir
from diffret_cli.errors import DiffretError, OfflineError
from diffret_cli.fileio import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from diffret_cli.data.plugin import DatasetPlugin

CHUNK = 1 << 20
DEFAULT_TIMEOUT = 20.0


class DownloadError(DiffretError):
    """A download failed for a reason other than being offline (HTTP error, bad checksum)."""


class DownloadInterrupted(DownloadError):
    """The connection dropped mid-file; the ``.part`` file is kept for the next run."""


class SourceMissingError(DiffretError):
    """The dataset's files are not here and cannot be downloaded (LSMDC)."""


# ---------------------------------------------------------------------- classification
_NETWORK_ERRNOS = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ETIMEDOUT,
                   errno.ENETDOWN, errno.EHOSTDOWN}


def _is_offline(exc: BaseException) -> bool:
    """True for errors that mean "cannot reach the host at all" (not an HTTP answer)."""
    if isinstance(exc, urllib.error.HTTPError):
        return False
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, (socket.gaierror, ConnectionRefusedError, TimeoutError, socket.timeout)):
        return True
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed ({exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------- download
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                    disable=not enabled, transient=True)


def _request(url: str, offset: int, timeout: float):
    from diffret_cli import __version__

    req = urllib.request.Request(url, headers={"User-Agent": f"diffret/{__version__}"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) urls from plugins


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def download_file(urls: Sequence[str], dest: str | os.PathLike, *, sha256: str | None = None,
                  size: int | None = None, timeout: float = DEFAULT_TIMEOUT, retries: int = 2,
                  progress: bool = True) -> Path:
    """Download the first reachable of ``urls`` to ``dest``, resuming a ``.part`` file.

    ``retries``: how many times a dropped connection is resumed within this call
    (a later call resumes too). Raises :class:`OfflineError` when no url's host can be
    reached, :class:`DownloadError` on HTTP errors or a checksum mismatch, and
    :class:`DownloadInterrupted` when the connection keeps dropping.
    """
    dest = Path(dest)
    if dest.is_file() and _already_verified(dest, sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    offline = True
    for url in urls:
        attempts = retries + 1
        while attempts > 0:
            attempts -= 1
            try:
                _fetch_into(url, part, timeout=timeout, size=size, progress=progress, label=dest.name)
            except DownloadInterrupted as exc:
                offline = False
                if attempts > 0:
                    continue
                raise DownloadInterrupted(
                    f"{exc.message} (tried {retries + 1} times)",
                    hint=f"re-run the same command to resume from byte {part.stat().st_size if part.exists() else 0}",
                ) from exc
            except urllib.error.HTTPError as exc:
                offline = False
                failures.append(f"{url}: HTTP {exc.code} {exc.reason}")
                break
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                if not _is_offline(exc):
                    offline = False
                failures.append(f"{url}: {_describe(exc)}")
                break
            else:
                _finish(part, dest, sha256=sha256, size=size, url=url)
                return dest
    if offline:
        raise OfflineError(f"cannot reach any source for {dest.name}: " + "; ".join(failures),
                           hint="connect to the network, or download the file yourself and pass its "
                           "folder with --source DIR")
    raise DownloadError(f"could not download {dest.name}: " + "; ".join(failures),
                        hint="check the URL in a browser; download it by hand and use --source DIR")


def _fetch_into(url: str, part: Path, *, timeout: float, size: int | None, progress: bool, label: str) -> None:
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:  # not our file: start over
        part.unlink()
        offset = 0
    try:
        resp = _request(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range not satisfiable: the .part is already complete (or the server changed).
            m = re.search(r"/(\d+)", exc.headers.get("Content-Range", "") or "")
            if (m and int(m.group(1)) == offset) or (size is not None and offset == size):
                return
            part.unlink()
            return _fetch_into(url, part, timeout=timeout, size=size, progress=progress, label=label)
        raise
    with resp:
        mode = "ab"
        if offset and resp.status == 206:
            m = _CONTENT_RANGE.search(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:  # a range we did not ask for: start over
                resp.close()
                part.unlink()
                return _fetch_into(url, part, timeout=timeout, size=size, progress=progress, label=label)
        elif offset:  # 200: the server ignored Range and sends the whole file
            mode, offset = "wb", 0
        length = resp.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else size
        received = offset
        with _progress(progress) as bar, open(part, mode) as fh:
            task = bar.add_task(label, total=expected, completed=offset)
            try:
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    fh.write(block)
                    received += len(block)
                    bar.update(task, completed=received)
            except (http.client.IncompleteRead, ConnectionError, TimeoutError, socket.timeout, OSError) as exc:
                fh.flush()
                os.fsync(fh.fileno())
                raise DownloadInterrupted(f"{label}: connection dropped after {received} bytes ({_describe(exc)})",
                                          hint="re-run to resume") from exc
            fh.flush()
            os.fsync(fh.fileno())
        if expected is not None and received < expected:
            raise DownloadInterrupted(f"{label}: got {received} of {expected} bytes", hint="re-run to resume")


def _finish(part: Path, dest: Path, *, sha256: str | None, size: int | None, url: str) -> None:
    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink()
        raise DownloadError(f"{dest.name} from {url}: {got_size} bytes, expected {size}; the partial file was deleted",
                            hint="re-run; if it persists the source changed, download by hand and use --source DIR")
    if sha256:
        actual = sha256_file(part)
        if actual.lower() != sha256.lower():
            part.unlink()
            raise DownloadError(f"{dest.name} from {url}: sha256 {actual}, expected {sha256}; the file was deleted",
                                hint="re-run; if it persists the source changed, download by hand and use --source DIR")
    os.replace(part, dest)
    if sha256:
        atomic_write_text(_marker(dest), sha256.lower() + "\n")


def _marker(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _already_verified(dest: Path, sha256: str | None) -> bool:
    if not sha256:
        return True
    marker = _marker(dest)
    if marker.is_file() and marker.read_text().strip() == sha256.lower():
        return True
    if sha256_file(dest) == sha256.lower():
        atomic_write_text(marker, sha256.lower() + "\n")
        return True
    return False


# ---------------------------------------------------------------------------- extract
def _safe_target(root: Path, member: str) -> Path:
    target = (root / member).resolve()
    if not (target == root or root in target.parents):
        raise DownloadError(f"archive member {member!r} would be written outside {root}",
                            hint="the archive is malformed or malicious; do not extract it")
    return target


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a zip or tar(.gz/.bz2/.xz) into ``dest`` once (a marker records completion)."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    marker = dest / f".extracted-{archive.name}"
    if marker.is_file():
        return dest
    root = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _safe_target(root, name)
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                _safe_target(root, m.name)
                if m.issym() or m.islnk():
                    _safe_target(root, os.path.join(os.path.dirname(m.name), m.linkname))
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, filter="data")
            else:  # pragma: no cover - Python < 3.11.4; members were checked above
                tf.extractall(dest)
    else:
        raise DownloadError(f"{archive}: not a zip or tar archive", hint="delete it and re-run to download it again")
    atomic_write_text(marker, archive.name + "\n")
    return dest


# ----------------------------------------------------------------------- per dataset
def where_to_get(plugin: "DatasetPlugin") -> str:
    """Human-readable list of where a dataset's files come from."""
    if plugin.downloads is None:
        return plugin.download_note or "no public download"
    lines = []
    for src in plugin.downloads:
        lines.append(f"{src.name} ({src.filename}): " + ", ".join(src.urls) + (f" - {src.note}" if src.note else ""))
    if plugin.download_note:
        lines.append(plugin.download_note)
    return "; ".join(lines)


def fetch_sources(plugin: "DatasetPlugin", prepared: Path, *, progress: bool = True,
                  timeout: float = DEFAULT_TIMEOUT, retries: int = 2) -> Path:
    """Download and extract every :class:`DownloadSource` of ``plugin``; return the source dir."""
    name = plugin.name
    if plugin.downloads is None:
        raise SourceMissingError(
            f"dataset {name!r} has no public download and no files were given: {plugin.download_note}".rstrip(": "),
            hint=f"obtain the files, then run `diffret data prepare {name} --source DIR` "
            "with DIR holding the annotation files and videos in their official layout")
    target = source_dir(prepared)
    for src in plugin.downloads:
        archive = downloads_dir(prepared) / src.filename
        try:
            download_file(src.urls, archive, sha256=src.sha256, size=src.size, timeout=timeout,
                          retries=retries, progress=progress)
        except OfflineError as exc:
            raise OfflineError(
                f"cannot download {name!r} ({exc.message}). Get the files from: {where_to_get(plugin)}",
                hint=f"download them elsewhere, unpack them into one folder, and run "
                f"`diffret data prepare {name} --source DIR` (or place them under {target})") from exc
        if src.extract:
            extract_archive(archive, target)
        else:
            target.mkdir(parents=True, exist_ok=True)
            linked = target / src.filename
            if not linked.exists():
                shutil.copy2(archive, linked)
    return target
