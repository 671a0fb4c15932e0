"""Reading the catalog's split sources (lib/catalog.py Source): a file, or a member of a zip or tar archive
read as a stream, gzip undone, each line checked as UTF-8 and numbered, with the catalog's cleanups
(fastai's CSV re-export of WikiText, the <seg> text of WMT's SGML test sets). fetch writes what it reads."""
import gzip
import re
import stat
import tarfile
import zipfile
from pathlib import Path

from lib.errors import DataError


def read_source(source, paths, lang=None):
    """Yield (where, line_number, text) for each line of one split source."""
    fname = source.file.format(lang=lang) if lang else source.file
    path = paths[fname]
    member = member_name(source, lang)
    where = f"{path}:{member}" if member else str(path)
    name = member or fname
    stream, archive = open_bytes(path, member)
    try:
        lines = utf8_lines(stream, where)
        if source.cleanup == "fastai_csv":
            lines = undo_fastai_csv(lines)
        numbered = enumerate(lines, start=1)
        if name.endswith(".sgm"):
            numbered = sgm_segments(numbered)
        for number, line in numbered:
            yield where, number, line
    except (OSError, EOFError) as e:  # truncated gzip and the like
        raise DataError(where, f"cannot read: {e}")
    finally:
        stream.close()
        if archive is not None:
            archive.close()


def open_bytes(path: Path, member: str | None):
    """(the decompressed bytes of a file or archive member, as a stream; the archive to close after it)."""
    stream, archive = open_member(path, member) if member else (open(path, "rb"), None)
    if str(member or path).endswith(".gz"):
        stream = gzip.open(stream)
    return stream, archive


def utf8_lines(stream, where):
    """The lines of a binary stream as text, without line ends. Each line is decoded on its own so that a
    byte that is not UTF-8 is reported by line and column (a decoder over the whole stream knows only its
    offset in a chunk)."""
    for number, raw in enumerate(stream, start=1):
        try:  # -sig: MRPC starts with a byte-order mark
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            column = len(raw[:e.start].decode("utf-8", errors="replace")) + 1
            raise DataError(where, f"not UTF-8 text: byte {raw[e.start]:#04x} at column {column} ({e.reason})",
                            number)


def member_name(source, lang):
    if isinstance(source.member, dict):
        return source.member[lang]
    return source.member.format(lang=lang) if (lang and source.member) else source.member


TAR_BUFFER = 1 << 20  # bytes read from a tar stream at a time (tarfile's default, 10 KiB, is slow for GBs)


def open_member(path: Path, member: str):
    """(a binary stream of the archive member, the archive to close after it). A tar is read as a stream,
    from its start to the member, never indexed whole first (a .tgz index is a full decompression). Only
    a regular file is read: a link or a directory is refused by name."""
    if zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(path)
        names = archive.namelist()
        if member in names:
            kind = zip_kind(archive.getinfo(member))
            if kind:
                archive.close()
                raise DataError(path, f"archive member '{member}' is {kind}, not a regular file; the "
                                      "catalog's member must name the file itself")
            return archive.open(member), archive
    else:
        archive = tarfile.open(path, mode="r|*", bufsize=TAR_BUFFER)
        names = []
        for info in archive:
            if info.name == member:
                if not info.isfile():
                    archive.close()
                    raise DataError(path, f"archive member '{member}' is {tar_kind(info)}, not a regular "
                                          "file; the catalog's member must name the file itself")
                return archive.extractfile(info), archive
            names.append(info.name)
    archive.close()
    raise DataError(path, f"archive has no member '{member}'; it has {names[:10]}{' ...' if len(names) > 10 else ''}")


def tar_kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return f"a symbolic link to '{info.linkname}'"
    if info.islnk():
        return f"a hard link to '{info.linkname}'"
    return "a directory" if info.isdir() else "a special file (device or FIFO)"


def zip_kind(info: zipfile.ZipInfo) -> str | None:
    """What a zip member is when it is not a regular file (None when it is one)."""
    mode = stat.S_IFMT(info.external_attr >> 16)
    if info.is_dir() or mode == stat.S_IFDIR:
        return "a directory"
    if mode == stat.S_IFLNK:
        return "a symbolic link"
    return None if mode in (0, stat.S_IFREG) else "a special file"


def undo_fastai_csv(lines):
    """WikiText-2 as re-exported by fastai: drop article wrappers `"`, strip one leading quote,
    unescape doubled quotes. Restores the official text (see ../shared/data/SOURCES.md)."""
    for line in lines:
        if line in ('"', '" '):
            continue
        if line.startswith('"'):
            line = line[1:]
        yield line.replace('""', '"')


SEG = re.compile(r"<seg[^>]*>(.*)</seg>")


def sgm_segments(numbered):
    """WMT test sets in SGML: keep the text of <seg> lines, as sacrebleu does."""
    for number, line in numbered:
        match = SEG.search(line)
        if match:
            yield number, match.group(1).strip()
