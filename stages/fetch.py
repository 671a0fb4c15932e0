"""fetch: bring one dataset of params.yaml's catalog into data/raw/<dataset>/, checksummed and normalized.

Each file comes from $DATA_MIRROR/<dataset>/<file> when that exists (the layout of ../shared/data),
else from its canonical URL (kept in data/downloads/ so a re-run does not download again).

Normalized layout, whatever the source:
  corpus    train.txt valid.txt test.txt        one line of text per line
  glue      <split>.tsv                          header `sentence1[<TAB>sentence2]<TAB>label`
  parallel  <split>.<lang>                       line-aligned across languages
plus meta.json (kind, labels, row counts, file checksums).

Usage: python -m stages.fetch DATASET
"""
import gzip
import http.client
import itertools
import os
import re
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from lib.errors import DataError, StageError, log
from lib.files import atomic_dir, file_digest, partial_file, write_json, writing_scratch
from lib.glue import glue_rows, normalized_fields
from lib.params import dataset_arg, load_params
from lib.stage import run_stage

RAW_DIR = Path("data/raw")
DOWNLOAD_DIR = Path("data/downloads")


def main(argv):
    name, spec = dataset_arg(argv, load_params(), "python -m stages.fetch DATASET")
    paths = {fname: obtain(name, fname, fspec) for fname, fspec in spec.files.items()}
    with atomic_dir(RAW_DIR / name) as out:
        counts = {"corpus": write_corpus, "glue": write_glue, "parallel": write_parallel}[spec.kind](spec, paths, out)
        write_json(out / "meta.json", {
            "dataset": name, "kind": spec.kind, "rows": counts,
            "labels": spec.labels, "label_range": spec.label_range,
            "pair": bool(spec.columns and "sentence2" in spec.columns),
            "languages": spec.languages,
            "files": {f: {"url": s.url, "sha256": s.sha256, "md5": s.md5} for f, s in spec.files.items()},
        })
    log(f"{name}: wrote {RAW_DIR / name} {counts}")


# ---------------------------------------------------------------- obtaining files

def obtain(dataset, fname, fspec) -> Path:
    """Return a local, checksum-verified path for one catalog file."""
    mirror = os.environ.get("DATA_MIRROR")
    if mirror:
        path = Path(mirror) / dataset / fname
        if path.is_file():
            verify(path, fspec, f"the mirror copy {path} (DATA_MIRROR)")
            log(f"{dataset}/{fname}: from mirror {path}")
            return path
        log(f"{dataset}/{fname}: not in DATA_MIRROR={mirror}; downloading")
    cached = DOWNLOAD_DIR / dataset / fname
    if cached.is_file():
        try:
            verify(cached, fspec, str(cached))
            log(f"{dataset}/{fname}: already downloaded")
            return cached
        except DataError:
            log(f"{cached}: checksum mismatch, downloading again")
            cached.unlink()
    download(dataset, fname, fspec.url, cached)
    try:
        verify(cached, fspec, f"{cached}, downloaded from {fspec.url}")
    except DataError:
        cached.unlink()  # never keep bytes that failed the check
        raise
    return cached


def verify(path: Path, fspec, what: str) -> None:
    algorithm, expected = ("sha256", fspec.sha256) if fspec.sha256 else ("md5", fspec.md5)
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DataError(path, f"{algorithm} mismatch for {what}: expected {expected}, got {actual}. "
                              "The file is corrupt or not the one params.yaml records.")


def download(dataset, fname, url, dest: Path) -> None:
    """Stream `url` to `dest`; a failed download leaves no file behind, a killed one its .part, which the
    next stage run removes (lib.sweep_scratch)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_file(dest)
    done = total = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f, writing_scratch(part):
            total = int(response.headers.get("Content-Length") or 0)
            next_report = 0.0
            while chunk := response.read(1 << 20):
                f.write(chunk)
                done += len(chunk)
                if total and done / total >= next_report:
                    log(f"{dataset}/{fname}: {done / 1e6:.1f} / {total / 1e6:.1f} MB")
                    next_report += 0.1
            if total and done != total:  # a connection cut short reads as a normal end of stream
                raise http.client.IncompleteRead(b"", total - done)
        os.replace(part, dest)
    except (OSError, http.client.HTTPException) as e:
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        if isinstance(e, http.client.IncompleteRead):
            reason = f"download interrupted after {done} of {total} bytes"
        raise StageError(
            f"cannot fetch dataset '{dataset}' file '{fname}' from {url}: {reason}.\n"
            f"  Without network access, point DATA_MIRROR at a directory that holds {dataset}/{fname} "
            f"(the layout of ../shared/data), e.g. `DATA_MIRROR=../shared/data dvc repro`.")
    finally:
        part.unlink(missing_ok=True)


# ---------------------------------------------------------------- reading sources

def read_source(source, paths, lang=None):
    """Yield (where, line_number, text) for each line of one split source."""
    fname = source.file.format(lang=lang) if lang else source.file
    path = paths[fname]
    member = member_name(source, lang)
    where = f"{path}:{member}" if member else str(path)
    stream = open_member(path, member) if member else open(path, "rb")
    name = member or fname
    if name.endswith(".gz"):
        stream = gzip.open(stream)
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


def open_member(path: Path, member: str):
    if zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(path)
        names = archive.namelist()
        if member in names:
            return archive.open(member)
    else:
        archive = tarfile.open(path)
        names = archive.getnames()
        if member in names:
            return archive.extractfile(member)
    raise DataError(path, f"archive has no member '{member}'; it has {names[:10]}{' ...' if len(names) > 10 else ''}")


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


# ---------------------------------------------------------------- writers, one per kind

def write_corpus(spec, paths, out):
    counts = {}
    for split in ("train", "valid", "test"):
        n = 0
        with open(out / f"{split}.txt", "w") as f:
            for where, _, line in itertools.chain.from_iterable(read_source(s, paths) for s in spec.splits[split]):
                f.write(line + "\n")
                n += bool(line.strip())
        if n == 0:
            raise DataError(where_of(spec.splits[split], paths), f"split '{split}' is empty (no non-blank line)")
        counts[split] = n
    return counts


def write_glue(spec, paths, out):
    fields = normalized_fields("sentence2" in spec.columns)
    counts = {}
    for split, sources in spec.splits.items():
        n = 0
        with open(out / f"{split}.tsv", "w") as f:
            f.write("\t".join(fields) + "\n")
            for source in sources:
                lines = read_source(source, paths)
                for row in glue_rows(lines, spec.columns, spec.header, spec.labels, spec.label_range):
                    f.write("\t".join(row[k] for k in fields) + "\n")
                    n += 1
        if n == 0:
            raise DataError(where_of(sources, paths), f"split '{split}' has no data rows")
        counts[split] = n
    return counts


def write_parallel(spec, paths, out):
    counts = {}
    langs = spec.languages
    for split, sources in spec.splits.items():
        n = 0
        files = {lang: open(out / f"{split}.{lang}", "w") for lang in langs}
        try:
            for source in sources:
                streams = [read_source(source, paths, lang) for lang in langs]
                for rows in itertools.zip_longest(*streams):
                    if None in rows:
                        short = langs[rows.index(None)]
                        long_where, number, _ = next(r for r in rows if r is not None)
                        raise DataError(long_where, f"has more lines than its {short} side "
                                        f"({where_of([source], paths, short)}, {number - 1} lines); "
                                        "parallel files must be line-aligned", number)
                    for lang, (_, _, line) in zip(langs, rows):
                        files[lang].write(line + "\n")
                    n += 1
        finally:
            for f in files.values():
                f.close()
        if n == 0:
            raise DataError(where_of(sources, paths, langs[0]), f"split '{split}' is empty")
        counts[split] = n
    return counts


def where_of(sources, paths, lang=None):
    source = sources[0]
    fname = source.file.format(lang=lang) if lang else source.file
    member = member_name(source, lang)
    return f"{paths[fname]}:{member}" if member else str(paths[fname])


if __name__ == "__main__":
    run_stage(main)
