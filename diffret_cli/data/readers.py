"""Readers for the annotation files benchmarks ship (public: dataset plugins use them).

Every benchmark ships its annotations in its own format, but the failure modes are the
same: a file in a sub-folder, a truncated download, a column too many, a caption that is
empty or not UTF-8. The readers here turn those into

- an :class:`AnnotationError` *before any work* for a malformed file, naming the file,
  the line or key, and what was expected;
- an :class:`ItemProblem` for a bad item (a listed id with no annotation, an empty or
  undecodable caption), which is recorded and never stops a run.

Files are read as bytes and decoded with ``surrogateescape``: a bad byte stays attached
to the one caption it sits in (and is reported there) instead of failing the file.
Finding the files under a source folder is :class:`~diffret_cli.data.plugin.AnnotatedDataset`'s
job; a third-party plugin imports both through :mod:`diffret_cli.sdk`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from diffret_cli.data.types import ItemProblem, VideoEntry
from diffret_cli.errors import AnnotationError

#: a caption with where it came from ("line 12", "sentences[40]"), for problem reports
Caption = tuple[str, str]


# ------------------------------------------------------------------------ text and bytes
def decode_text(data: bytes) -> str:
    """UTF-8 (BOM tolerated) with bad bytes kept as lone surrogates, so that they can
    be reported per item by :func:`is_valid_utf8` rather than failing the file."""
    return data.decode("utf-8-sig", errors="surrogateescape")


def is_valid_utf8(text: str) -> bool:
    """False when ``text`` holds undecodable bytes (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def show_bad_text(text: str, limit: int = 60) -> str:
    """The raw bytes of a caption that is not valid UTF-8, for a problem report."""
    raw = text.encode("utf-8", errors="surrogateescape")
    return repr(raw[:limit]) + ("..." if len(raw) > limit else "")


def clean_caption(text: str) -> str:
    """Strip and collapse runs of whitespace (newlines and tabs included) to one space.

    CLIP's tokenizer collapses whitespace the same way, so this changes no token; it
    keeps captions single-line for the files ``prepare`` writes.
    """
    return " ".join(text.split())


def read_bytes(path: Path) -> bytes:
    """The file's bytes; an empty file is an error (a failed download or copy)."""
    data = path.read_bytes()
    if not data.strip():
        raise AnnotationError(f"{path}: file is empty", hint="download or copy the file again")
    return data


_UTF_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
             (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def read_text(path: Path) -> str:
    """The file's text. UTF-8 (BOM or not) as :func:`decode_text` reads it; UTF-16 and
    UTF-32 with a byte-order mark (Windows "Unicode" saves) are read too. UTF-16 without
    a BOM (NUL bytes between the characters) is an error that names the encoding."""
    data = read_bytes(path)
    for bom, encoding in _UTF_BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise AnnotationError(f"{path}: starts with a {encoding.upper()} byte-order mark but byte "
                                      f"{exc.start} is not valid {encoding.upper()}",
                                      hint="save the file again as UTF-8") from None
    head = data[:4096]
    if head.count(0) * 4 >= len(head):  # a quarter NULs: not text in any 8-bit encoding
        half = "UTF-16-LE" if head[1::2].count(0) > head[0::2].count(0) else "UTF-16-BE"
        raise AnnotationError(f"{path}: looks like {half} without a byte-order mark "
                              f"({head.count(0)} NUL bytes in its first {len(head)}), not UTF-8 text",
                              hint="save the file again as UTF-8 (or as UTF-16 with a byte-order mark)")
    return decode_text(data)


# ------------------------------------------------------------------------------- JSON
def load_json(path: Path, *, expect: type, what: str) -> Any:
    """Parse a JSON file whose top level must be ``expect`` (dict or list).

    ``what`` describes the expected content for the error message, e.g.
    ``'an object {"v_<id>": {duration, timestamps, sentences}}'``.
    """
    text = read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        # the parser hit the end of the text (inside a string, or between tokens)
        truncated = exc.msg.startswith("Unterminated string") or exc.pos >= len(text.rstrip())
        raise AnnotationError(
            f"{path}, line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})"
            + ("; the file ends early" if truncated else "") + f"; expected {what}",
            hint="download the file again (a partial download truncates it)",
        ) from None
    if not isinstance(value, expect):
        raise AnnotationError(
            f"{path}: top level is a JSON {type(value).__name__}, expected {what}",
            hint="check that this is the right file for this dataset",
        )
    return value


def require_keys(obj: Any, keys: Iterable[str], *, path: Path, where: str, what: str) -> None:
    """``obj`` must be a dict holding ``keys``; otherwise name the first missing one."""
    if not isinstance(obj, dict):
        raise AnnotationError(f"{path}: {where} is a JSON {type(obj).__name__}, expected {what}",
                              hint="check that this is the right file for this dataset")
    for key in keys:
        if key not in obj:
            raise AnnotationError(f"{path}: {where} has no key {key!r}; expected {what}",
                                  hint="check that this is the right file for this dataset, "
                                  "and download it again if it was edited")


def require_list(value: Any, *, path: Path, where: str, what: str) -> list:
    if not isinstance(value, list):
        raise AnnotationError(f"{path}: {where} is a JSON {type(value).__name__}, expected {what}",
                              hint="check that this is the right file for this dataset")
    return value


def require_str(value: Any, *, path: Path, where: str) -> str:
    if not isinstance(value, str):
        raise AnnotationError(f"{path}: {where} is a JSON {type(value).__name__}, expected a string",
                              hint="check that this is the right file for this dataset")
    return value


def load_json_id_list(path: Path) -> list[str]:
    """A JSON list of string ids (compact or indented), e.g. ActivityNet's ``val_ids.json``."""
    ids = load_json(path, expect=list, what='a list of video ids ["v_<id>", ...]')
    for i, item in enumerate(ids):
        require_str(item, path=path, where=f"item [{i}]")
    return ids


# ------------------------------------------------------------------------ line formats
def read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, line) for every non-blank line; ``\\r\\n`` tolerated.

    Splits on ``\\n`` only: ``str.splitlines`` would also split on characters such as
    U+2028 that can occur inside a caption.
    """
    text = read_text(path)
    return [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1)
            if line.strip()]


def read_id_list(path: Path) -> tuple[list[str], list[ItemProblem]]:
    """One id per line (final newline optional), e.g. MSVD's and DiDeMo's ``*_list.txt``.

    Duplicates and undecodable lines are item problems; the first occurrence is kept.
    """
    ids: list[str] = []
    seen: dict[str, int] = {}
    problems: list[ItemProblem] = []
    for lineno, line in read_lines(path):
        item = line.strip()
        if not is_valid_utf8(item):
            problems.append(ItemProblem(show_bad_text(item), "invalid-utf8",
                                        f"line {lineno}: id is not valid UTF-8", str(path)))
        elif item in seen:
            problems.append(ItemProblem(item, "duplicate-id",
                                        f"line {lineno} repeats line {seen[item]}", str(path)))
        else:
            seen[item] = lineno
            ids.append(item)
    return ids, problems


def read_csv(path: Path, *, columns: Sequence[str]) -> list[tuple[int, list[str]]]:
    """Rows of a comma-separated file whose header must be exactly ``columns``.

    Returns (line number, fields) for every data row; every row must have
    ``len(columns)`` fields. Checks the whole file before returning.
    """
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    expected = ",".join(columns)
    if header is None or [h.strip() for h in header] != list(columns):
        found = ",".join(header or [])
        hint = "the file must be comma-separated with that header"
        if "\t" in found:
            hint = "the file is tab-separated; it must be comma-separated"
        raise AnnotationError(f"{path}, line 1: header is {found[:80]!r}, expected {expected!r}",
                              hint=hint)
    rows = []
    for fields in reader:
        if not fields or not "".join(fields).strip():
            continue
        if len(fields) != len(columns):
            raise AnnotationError(
                f"{path}, line {reader.line_num}: {len(fields)} comma-separated field(s), "
                f"expected {len(columns)} ({expected})",
                hint="a field containing commas must be double-quoted; download the file again",
            )
        rows.append((reader.line_num, fields))
    return rows


def read_tsv(path: Path, *, columns: Sequence[str]) -> list[tuple[int, list[str]]]:
    """Rows of a tab-separated file with no header and exactly ``len(columns)`` fields.

    Split on tabs only, with no quoting: sentences keep their quote characters as is.
    """
    rows = []
    for lineno, line in read_lines(path):
        fields = line.split("\t")
        if len(fields) != len(columns):
            hint = "the file must be tab-separated, one clip per line"
            if len(fields) == 1 and "," in line:
                hint = "the file looks comma-separated; it must be tab-separated"
            raise AnnotationError(
                f"{path}, line {lineno}: {len(fields)} tab-separated field(s), expected "
                f"{len(columns)} ({', '.join(columns)})", hint=hint)
        rows.append((lineno, fields))
    return rows


# ------------------------------------------------------------------- captions to videos
def group_rows(rows: Iterable[tuple[int, str, str]], *, path: Path, single: bool
               ) -> tuple[list[str], dict[str, list[Caption]], list[ItemProblem]]:
    """(line, video id, caption) rows -> ordered ids and captions per id.

    With ``single`` (one caption per video, a square evaluation matrix), a repeated id
    is an item problem and its later rows are dropped; otherwise captions accumulate.
    """
    ids: list[str] = []
    captions: dict[str, list[Caption]] = {}
    first_line: dict[str, int] = {}
    problems: list[ItemProblem] = []
    for lineno, vid, caption in rows:
        if vid not in captions:
            ids.append(vid)
            captions[vid] = []
            first_line[vid] = lineno
        elif single:
            problems.append(ItemProblem(vid, "duplicate-id",
                                        f"line {lineno} repeats line {first_line[vid]}; dropped",
                                        str(path)))
            continue
        captions[vid].append((f"line {lineno}", caption))
    return ids, captions, problems


def clean_captions(video_id: str, captions: Sequence[Caption], *, file: str
                   ) -> tuple[list[str], list[ItemProblem]]:
    """Cleaned captions of one video; undecodable or empty ones become problems."""
    kept: list[str] = []
    problems: list[ItemProblem] = []
    for where, text in captions:
        if not is_valid_utf8(text):
            problems.append(ItemProblem(video_id, "invalid-utf8",
                                        f"{where}: caption is not valid UTF-8: {show_bad_text(text)}",
                                        file))
            continue
        cleaned = clean_caption(text)
        if not cleaned:
            problems.append(ItemProblem(video_id, "empty-caption",
                                        f"{where}: caption is empty after stripping", file))
            continue
        kept.append(cleaned)
    return kept, problems


def build_entries(ids: Iterable[str], captions: Mapping[str, Sequence[Caption]], *,
                  captions_file: Path, paragraph: bool = False,
                  video_id: Callable[[str], str] | None = None,
                  filename: Callable[[str], str] | None = None,
                  ) -> tuple[list[VideoEntry], list[ItemProblem]]:
    """One :class:`VideoEntry` per id that has usable captions, in ``ids`` order.

    ``paragraph`` joins a video's sentences into its single query (ActivityNet, DiDeMo).
    ``video_id(id)`` and ``filename(id)`` map an annotation id to the entry's video id
    and file name (default: the id itself, and no file name).
    """
    file = str(captions_file)
    videos: list[VideoEntry] = []
    problems: list[ItemProblem] = []
    for vid in ids:
        if vid not in captions:
            problems.append(ItemProblem(vid, "missing-annotation",
                                        f"listed in the split but has no entry in {captions_file.name}",
                                        file))
            continue
        kept, bad = clean_captions(vid, captions[vid], file=file)
        problems.extend(bad)
        if not kept:
            problems.append(ItemProblem(vid, "no-captions",
                                        "every caption was dropped; video left out", file))
            continue
        texts = (" ".join(kept),) if paragraph else tuple(kept)
        videos.append(VideoEntry(video_id=video_id(vid) if video_id else vid, captions=texts,
                                 filename=filename(vid) if filename else None))
    return videos, problems
