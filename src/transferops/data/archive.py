"""Safe extraction of .zip and .tar archives.

Every member is checked before anything is written: absolute paths, ``..`` components, links and device
files are refused (zip-slip and its tar cousins), so an archive from another team cannot write outside the
extraction directory; the declared total size, the entry count and the compression ratio are capped, and the
bytes really written are counted against the same caps (a 2 MB zip of zeros can declare small and expand to
gigabytes). The ratio cap is what catches a bomb that stays under the size cap: refused before anything of
it is written, not after gigabytes of zeros reached the disk.
"""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from transferops.config import IngestConfig
from transferops.errors import DataError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
CHUNK = 1 << 20
RATIO_MIN_BYTES = 1 << 20
"""Entries (and archives) that expand to less than this are not ratio-checked: a small text file or blank
image legitimately compresses past any sane ratio, and at this size even deflate's ~1000:1 writes little."""


def is_archive(path: Path) -> bool:
    """True for the archive formats ingest accepts."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_member(archive: Path, name: str) -> PurePosixPath:
    member = PurePosixPath(name.replace("\\", "/"))
    if member.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"{archive}: entry {name!r} has an absolute path (refused: it would escape the extraction dir)")
    if ".." in member.parts:
        raise DataError(f"{archive}: entry {name!r} contains '..' (refused: it would escape the extraction dir)")
    return member


@dataclass(frozen=True)
class Limits:
    """Caps on what an archive may expand to (``ingest.archive_max_gib``, ``ingest.archive_max_entries``,
    ``ingest.archive_max_ratio``)."""

    max_bytes: int
    max_entries: int
    max_ratio: float = IngestConfig.archive_max_ratio

    @classmethod
    def from_config(cls, ing: IngestConfig) -> Limits:
        return cls(int(ing.archive_max_gib * 2**30), ing.archive_max_entries, ing.archive_max_ratio)

    def ratio_cap(self, compressed: int) -> float:
        """The most bytes ``compressed`` bytes may expand to."""
        return max(self.max_ratio * compressed, RATIO_MIN_BYTES)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _check_declared(archive: Path, sizes: list[int], limits: Limits) -> None:
    """Refuse before writing anything when the archive's own header says it is too big."""
    if len(sizes) > limits.max_entries:
        raise DataError(
            f"{archive}: {len(sizes):,} entries exceed ingest.archive_max_entries={limits.max_entries:,} "
            "(refused before extracting)"
        )
    total = sum(sizes)
    if total > limits.max_bytes:
        raise DataError(
            f"{archive}: declares {_gib(total)} uncompressed, over ingest.archive_max_gib={_gib(limits.max_bytes)} "
            "(refused before extracting)"
        )


def _check_ratio(archive: Path, name: str, size: int, compressed: int, limits: Limits) -> None:
    """Refuse, before writing anything, an entry (or a whole compressed tar) that expands too much."""
    if size > limits.ratio_cap(compressed):
        ratio = size / max(compressed, 1)
        raise DataError(
            f"{archive}: {name} expands {ratio:,.0f}:1 ({_gib(size)} from {compressed:,} bytes), over "
            f"ingest.archive_max_ratio={limits.max_ratio:g} (a decompression bomb? refused before extracting)"
        )


class _Budget:
    """Counts the bytes really written (declared sizes can lie) and stops at the cap."""

    def __init__(self, archive: Path, limits: Limits) -> None:
        self.archive, self.limits, self.left = archive, limits, limits.max_bytes

    def copy(self, src: BinaryIO, dst: BinaryIO, name: str, ratio_left: float = float("inf")) -> float:
        """Copy ``src`` to ``dst``; stop at the size cap or after ``ratio_left`` bytes (the ratio cap). Returns
        what is left of ``ratio_left``."""
        while chunk := src.read(CHUNK):
            if len(chunk) > self.left:
                raise DataError(
                    f"{self.archive}: expands past ingest.archive_max_gib={_gib(self.limits.max_bytes)} while "
                    f"extracting {name!r} (its header declared less; extraction stopped)"
                )
            if len(chunk) > ratio_left:
                raise DataError(
                    f"{self.archive}: {name!r} expands past ingest.archive_max_ratio={self.limits.max_ratio:g} "
                    "while extracting (its header declared less; extraction stopped)"
                )
            dst.write(chunk)
            self.left -= len(chunk)
            ratio_left -= len(chunk)
        return ratio_left


def safe_extract(archive: Path, dest: Path, limits: Limits) -> Path:
    """See :func:`_extract`; a truncated or corrupt archive fails with one line naming it."""
    try:
        return _extract(archive, dest, limits)
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # the system's (disk full...), not the data's
            raise
        raise DataError(f"{archive}: corrupt or truncated archive ({exc})") from None


def _extract(archive: Path, dest: Path, limits: Limits) -> Path:
    """Extract ``archive`` into ``dest`` and return the dataset root inside it.

    Members are checked before anything is written (paths, links, declared total size and entry count);
    while extracting, real bytes are counted and extraction stops at the cap, so a decompression bomb
    writes at most ``limits.max_bytes``. When the archive holds a single top-level folder that itself holds
    the class folders, that folder is the root; otherwise ``dest`` is.
    """
    budget = _Budget(archive, limits)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_member(archive, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise DataError(f"{archive}: entry {info.filename!r} is a symlink (refused)")
            _check_declared(archive, [i.file_size for i in infos], limits)
            for info in infos:
                _check_ratio(archive, f"entry {info.filename!r}", info.file_size, info.compress_size, limits)
            total, packed = sum(i.file_size for i in infos), sum(i.compress_size for i in infos)
            _check_ratio(archive, "the archive", total, packed, limits)
            for info in infos:
                target = dest / _check_member(archive, info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    budget.copy(src, out, info.filename, limits.ratio_cap(info.compress_size))
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members, declared = [], 0
            for m in tf:  # one pass over the headers; stops at the first one past a cap (nothing written yet)
                _check_member(archive, m.name)
                if m.issym() or m.islnk():
                    raise DataError(f"{archive}: entry {m.name!r} is a link (refused)")
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"{archive}: entry {m.name!r} is not a regular file or folder (refused)")
                members.append(m)
                declared += m.size
                if len(members) > limits.max_entries or declared > limits.max_bytes:
                    break
            _check_declared(archive, [m.size for m in members], limits)
            # a compressed tar has no per-entry compressed size: the whole stream is held to the ratio
            packed = archive.stat().st_size
            _check_ratio(archive, "the archive", sum(m.size for m in members), packed, limits)
            ratio_left = limits.ratio_cap(packed)
            for m in members:
                target = dest / _check_member(archive, m.name)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                if src is None:
                    continue
                with src, open(target, "wb") as out:
                    ratio_left = budget.copy(src, out, m.name, ratio_left)
    else:
        raise DataError(f"{archive}: not a readable .zip or .tar archive")
    entries = [p for p in dest.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and any(p.is_dir() for p in entries[0].iterdir()):
        return entries[0]
    return dest
