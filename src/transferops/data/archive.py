"""Safe extraction of .zip and .tar archives.

Every member is checked before anything is written: absolute paths, ``..`` components, links and device
files are refused (zip-slip and its tar cousins), so an archive from another team cannot write outside the
extraction directory.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from transferops.errors import DataError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


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


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` into ``dest`` and return the dataset root inside it.

    When the archive holds a single top-level folder that itself holds the class folders, that folder is
    the root; otherwise ``dest`` is.
    """
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_member(archive, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise DataError(f"{archive}: entry {info.filename!r} is a symlink (refused)")
            for info in infos:
                target = dest / _check_member(archive, info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                _check_member(archive, m.name)
                if m.issym() or m.islnk():
                    raise DataError(f"{archive}: entry {m.name!r} is a link (refused)")
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"{archive}: entry {m.name!r} is not a regular file or folder (refused)")
            tf.extractall(dest, members=members, filter="data")
    else:
        raise DataError(f"{archive}: not a readable .zip or .tar archive")
    entries = [p for p in dest.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and any(p.is_dir() for p in entries[0].iterdir()):
        return entries[0]
    return dest
