"""fetch: bring one dataset of params.yaml's catalog into data/raw/<dataset>/, checksummed and normalized.

Each file comes from $DATA_MIRROR/<dataset>/<file> when that exists (the layout of ../shared/data),
else from its canonical URL (kept in data/downloads/ so a re-run does not download again); a file:// URL,
the user's own file, is read where it is.

Normalized layout, whatever the source:
  corpus    train.txt valid.txt test.txt        one line of text per line
  glue      <split>.tsv                          header `sentence1[<TAB>sentence2]<TAB>label`
  parallel  <split>.<lang>                       line-aligned across languages
plus meta.json (kind, labels, row counts, file checksums).

Usage: python -m stages.fetch DATASET
"""
import http.client
import itertools
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from lib.errors import DataError, StageError, disk_full, log
from lib.files import atomic_dir, file_digest, partial_file, write_json, writing_scratch
from lib.glue import glue_rows, normalized_fields
from lib.sources import member_name, read_source
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
    for url in fspec.urls:  # the user's own file (file://): checked and read where it is, so errors name it
        parsed = urllib.parse.urlparse(url)
        path = Path(urllib.request.url2pathname(parsed.path))
        if parsed.scheme == "file" and path.is_file():
            verify(path, fspec, f"{path} ({url})")
            log(f"{dataset}/{fname}: from {path}")
            return path
    cached = DOWNLOAD_DIR / dataset / fname
    if cached.is_file():
        try:
            verify(cached, fspec, str(cached))
            log(f"{dataset}/{fname}: already downloaded")
            return cached
        except DataError:
            log(f"{cached}: checksum mismatch, downloading again")
            cached.unlink()
    failures = []
    for i, url in enumerate(fspec.urls):  # mirrors of the same bytes, in the catalog's order
        try:
            download(dataset, fname, url, cached)
            verify(cached, fspec, f"{cached}, downloaded from {url}")
            return cached
        except DownloadError as e:
            failures.append((url, str(e)))
        except DataError as e:
            cached.unlink()  # never keep bytes that failed the check
            if len(fspec.urls) == 1:
                raise
            failures.append((url, str(e)))
        if i + 1 < len(fspec.urls):
            log(f"{dataset}/{fname}: {url} failed ({failures[-1][1]}); trying {fspec.urls[i + 1]}")
    hint = (f"  Without network access, point DATA_MIRROR at a directory that holds {dataset}/{fname} "
            f"(the layout of ../shared/data), e.g. `DATA_MIRROR=../shared/data dvc repro`.")
    if len(failures) == 1:
        (url, reason), = failures
        raise StageError(f"cannot fetch dataset '{dataset}' file '{fname}' from {url}: {reason}.\n{hint}")
    raise StageError(f"cannot fetch dataset '{dataset}' file '{fname}' from any of its {len(failures)} URLs:\n"
                     + "".join(f"  {url}: {reason}\n" for url, reason in failures) + hint)


class DownloadError(Exception):
    """A URL that gave no file: the reason, for obtain's message."""


def verify(path: Path, fspec, what: str) -> None:
    algorithm, expected = ("sha256", fspec.sha256) if fspec.sha256 else ("md5", fspec.md5)
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DataError(path, f"{algorithm} mismatch for {what}: expected {expected}, got {actual}. "
                              "The file is corrupt or not the one datasets.yaml records.")


def download(dataset, fname, url, dest: Path) -> None:
    """Stream `url` to `dest`; a failed download leaves no file behind (DownloadError), a killed one its
    .part, which the next stage run removes (lib.sweep_scratch)."""
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
        if disk_full(e):  # not the URL's fault: the stage stops saying so (lib.stage.run_stage)
            raise
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        if isinstance(e, http.client.IncompleteRead):
            reason = f"download interrupted after {done} of {total} bytes"
        raise DownloadError(reason)
    finally:
        part.unlink(missing_ok=True)


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
