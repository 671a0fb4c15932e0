"""Tests of the fetch stage: the normalized layout on a tiny mirror, every kind of bad input located by
file and line, the HTTP download path on 127.0.0.1, and the real catalog against the real mirror."""
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SHARED_MIRROR, UNREACHABLE, gz, kill_once_exists, set_params, sha256
from stages import fetch
from lib.errors import DataError, StageError

RAW = Path("data/raw")
DOWNLOADS = Path("data/downloads")


# ---------------------------------------------------------------- helpers

def mirror() -> Path:
    return Path(os.environ["DATA_MIRROR"])


def reseal(project: Path, dataset: str, fname: str) -> None:
    """Record the current sha256 of the mirror's copy in params.yaml, so only the intended fault triggers."""
    digest = sha256(mirror() / dataset / fname)

    def edit(p):
        p["datasets"][dataset]["files"][fname]["sha256"] = digest
    set_params(project, edit)


def write_and_reseal(project: Path, dataset: str, fname: str, text: str) -> Path:
    path = mirror() / dataset / fname
    path.write_text(text)
    reseal(project, dataset, fname)
    return path


def tsv_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def gunzip_lines(path: Path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode().splitlines()


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".part"))


# ---------------------------------------------------------------- 1. happy path on the tiny mirror

def test_corpus_layout_and_fastai_cleanup(tiny_project):
    fetch.main(["wikitext2"])
    out = RAW / "wikitext2"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "test.txt", "train.txt", "valid.txt"]

    train = (out / "train.txt").read_text().split("\n")
    assert train[-1] == ""  # ends with a newline
    train = train[:-1]
    # 40 articles of title, blank, 6 paragraphs; the `"` wrappers of the CSV are gone
    assert len(train) == 40 * 8
    assert not [line for line in train if line in ('"', '" ')]
    assert not [line for line in train if line.startswith('"')]
    assert train[:2] == [" = Article 0 = ", " "]
    assert train[8] == " = Article 1 = "
    # doubled quotes are unescaped: 6 articles (0, 7, ..., 35) x 6 paragraphs say `"quoted"`
    assert '""' not in "\n".join(train)
    assert sum(' with "quoted" words ' in line for line in train) == 36

    for split in ("valid", "test"):  # plain text: copied as is
        assert (out / f"{split}.txt").read_text() == (mirror() / "wikitext2" / f"{split}.txt").read_text()

    meta = json.loads((out / "meta.json").read_text())
    assert meta["dataset"] == "wikitext2" and meta["kind"] == "corpus"
    assert meta["rows"] == {"train": 40 * 7, "valid": 20, "test": 20}  # non-blank lines
    assert meta["files"]["valid.txt"]["sha256"] == sha256(mirror() / "wikitext2" / "valid.txt")
    assert leftovers(RAW) == []


def test_glue_single_sentence_layout(tiny_project):
    fetch.main(["sst2"])
    out = RAW / "sst2"
    assert sorted(p.name for p in out.iterdir()) == ["dev.tsv", "meta.json", "train.tsv"]
    for split, n in (("train", 120), ("dev", 30)):
        lines = tsv_lines(out / f"{split}.tsv")
        assert lines[0] == "sentence1\tlabel"
        assert len(lines) == 1 + n
        source = tsv_lines(mirror() / "sst2" / f"{split}.tsv")[1:]
        assert source[0].split("\t")[0].endswith(" ")  # the fixture's sentences end with a space ...
        for got, src in zip(lines[1:], source):
            sentence, label = got.split("\t")
            assert sentence == sentence.strip() != ""  # ... which fetch strips
            assert (sentence, label) == (src.split("\t")[0].strip(), src.split("\t")[1])
            assert label in ("0", "1")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["rows"] == {"train": 120, "dev": 30}
    assert meta["labels"] == ["0", "1"] and meta["pair"] is False and meta["kind"] == "glue"


def test_glue_pair_layout(tiny_project):
    fetch.main(["rte"])
    out = RAW / "rte"
    for split, n in (("train", 80), ("dev", 20)):
        lines = tsv_lines(out / f"{split}.tsv")
        assert lines[0] == "sentence1\tsentence2\tlabel"
        source = tsv_lines(mirror() / "rte" / f"{split}.tsv")[1:]
        assert len(lines) == 1 + n == 1 + len(source)
        # the index column is dropped, the rest kept in order
        assert lines[1:] == ["\t".join(row.split("\t")[1:]) for row in source]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["rows"] == {"train": 80, "dev": 20}
    assert meta["pair"] is True and meta["labels"] == ["entailment", "not_entailment"]


def test_parallel_layout(tiny_project):
    fetch.main(["multi30k"])
    out = RAW / "multi30k"
    names = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
    expected = sorted([f"{s}.{lang}" for s in names for lang in ("en", "de", "fr")] + ["meta.json"])
    assert sorted(p.name for p in out.iterdir()) == expected
    for split, n in (("train", 300), ("valid", 30), ("test", 30)):
        sides = {lang: (out / f"{split}.{lang}").read_text().splitlines() for lang in ("en", "de", "fr")}
        for lang, lines in sides.items():
            assert len(lines) == n
            assert lines == gunzip_lines(mirror() / "multi30k" / f"{names[split]}.{lang}.gz")
        assert sides["de"] == [s.upper() for s in sides["en"]]  # still line-aligned
    meta = json.loads((out / "meta.json").read_text())
    assert meta["rows"] == {"train": 300, "valid": 30, "test": 30}
    assert meta["languages"] == ["en", "de", "fr"] and meta["kind"] == "parallel"


def test_unknown_dataset_and_usage(tiny_project):
    with pytest.raises(StageError) as e:
        fetch.main(["nosuch"])
    assert "datasets.nosuch: no such dataset" in str(e.value) and "'sst2'" in str(e.value)
    with pytest.raises(StageError) as e:
        fetch.main([])
    assert "usage: python -m stages.fetch DATASET" in str(e.value)


# ---------------------------------------------------------------- 2. bad inputs, located by file and line

@pytest.mark.parametrize("dataset, fname, index, bad_line, message", [
    ("rte", "train.tsv", 11, "10\tonly one sentence\tentailment",  # 3 fields where the header has 4
     "malformed row: expected 4 tab-separated fields, found 3"),
    ("sst2", "dev.tsv", 6, "great movie\t2", "label '2' is not one of the task's labels ['0', '1']"),
    ("sst2", "train.tsv", 0, "text\tlabel", "header has no column ['sentence']"),
    ("sst2", "dev.tsv", 4, "\t", "row of empty fields"),  # not a blank line to skip
    ("rte", "train.tsv", 7, "\t \t\t", "row of empty fields"),
])
def test_bad_row_names_file_and_line(tiny_project, dataset, fname, index, bad_line, message):
    path = mirror() / dataset / fname
    lines = tsv_lines(path)
    lines[index] = bad_line
    write_and_reseal(tiny_project, dataset, fname, "\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        fetch.main([dataset])
    assert str(e.value).startswith(f"{path}:{index + 1}: ")
    assert message in str(e.value)


@pytest.mark.parametrize("label, message", [
    ("abc", "label 'abc' is not a number (regression task)"),
    ("nan", "label 'nan' is not a finite number"),
    ("inf", "label 'inf' is not a finite number"),
    ("-inf", "label '-inf' is not a finite number"),
    ("1e400", "label '1e400' is not a finite number"),  # beyond a float: read as inf
    ("7.5", "label '7.5' is outside the task's label_range [0, 5]"),
    ("-0.5", "label '-0.5' is outside the task's label_range [0, 5]"),
])
def test_regression_label_must_be_a_finite_number_in_range(tiny_project, label, message):
    path = mirror() / "sst2" / "train.tsv"
    lines = tsv_lines(path)
    lines[3] = f"fine\t{label}"
    write_and_reseal(tiny_project, "sst2", "train.tsv", "\n".join(lines) + "\n")
    # the tiny sst2 as a regression task scored 0..5, as STS-B is (its labels 0 and 1 are in range)
    set_params(tiny_project, lambda p: p["datasets"]["sst2"].update(labels="regression", label_range=[0, 5],
                                                                    metrics=["pearson"]))
    with pytest.raises(DataError) as e:
        fetch.main(["sst2"])
    assert str(e.value).startswith(f"{path}:4: ")
    assert message in str(e.value)


@pytest.mark.parametrize("longer", ["en", "fr"])
def test_parallel_line_counts_differ(tiny_project, longer):
    en = gunzip_lines(mirror() / "multi30k" / "val.en.gz")
    fr = gunzip_lines(mirror() / "multi30k" / "val.fr.gz")
    if longer == "en":
        gz(mirror() / "multi30k" / "val.fr.gz", fr[:25])  # fr 25 lines, en and de 30
    else:
        gz(mirror() / "multi30k" / "val.fr.gz", fr + ["extra line"])  # fr 31 lines
    reseal(tiny_project, "multi30k", "val.fr.gz")
    with pytest.raises(DataError) as e:
        fetch.main(["multi30k"])
    msg = str(e.value)
    if longer == "en":
        assert msg.startswith(f"{mirror() / 'multi30k' / 'val.en.gz'}:26: has more lines than its fr side")
        assert f"({mirror() / 'multi30k' / 'val.fr.gz'}, 25 lines)" in msg
    else:
        assert msg.startswith(f"{mirror() / 'multi30k' / 'val.fr.gz'}:31: has more lines than its en side")
        assert f"({mirror() / 'multi30k' / 'val.en.gz'}, {len(en)} lines)" in msg
    assert "line-aligned" in msg


@pytest.mark.parametrize("content", ["sentence\tlabel\n", "", "sentence\tlabel\n\n  \n"])
def test_glue_split_without_rows(tiny_project, content):
    path = write_and_reseal(tiny_project, "sst2", "dev.tsv", content)
    with pytest.raises(DataError) as e:
        fetch.main(["sst2"])
    # an empty file has no offending line: the message names the file and the split
    assert str(e.value) == f"{path}: split 'dev' has no data rows"


@pytest.mark.parametrize("content", ["", "\n \n\n"])
def test_empty_corpus_split(tiny_project, content):
    path = write_and_reseal(tiny_project, "wikitext2", "valid.txt", content)
    with pytest.raises(DataError) as e:
        fetch.main(["wikitext2"])
    assert str(e.value) == f"{path}: split 'valid' is empty (no non-blank line)"


def test_checksum_mismatch_in_mirror(tiny_project):
    path = mirror() / "sst2" / "train.tsv"
    wrong = "0" * 64
    set_params(tiny_project, lambda p: p["datasets"]["sst2"]["files"]["train.tsv"].update(sha256=wrong))
    with pytest.raises(DataError) as e:
        fetch.main(["sst2"])
    msg = str(e.value)
    assert msg.startswith(f"{path}: sha256 mismatch for the mirror copy {path} (DATA_MIRROR)")
    assert f"expected {wrong}, got {sha256(path)}" in msg
    assert not (RAW / "sst2").exists()


@pytest.mark.parametrize("line", [2, 5001])  # 5001: far past the first chunk a stream decoder reads
def test_not_utf8_names_line_and_column(tiny_project, line):
    path = mirror() / "sst2" / "train.tsv"
    good = "café film\t1\n".encode() * (line - 2)
    path.write_bytes(b"sentence\tlabel\n" + good + "très ".encode() + b"\xff\xfe film\t1\n")
    reseal(tiny_project, "sst2", "train.tsv")
    with pytest.raises(DataError) as e:
        fetch.main(["sst2"])
    # the column counts characters: "très " is 5 of them in 6 bytes
    assert str(e.value).startswith(f"{path}:{line}: not UTF-8 text: byte 0xff at column 6")


def _break_sst2_row(project):
    lines = tsv_lines(mirror() / "sst2" / "train.tsv")
    lines[5] = "no label here"
    write_and_reseal(project, "sst2", "train.tsv", "\n".join(lines) + "\n")
    return f"{mirror() / 'sst2' / 'train.tsv'}:6: malformed row"


def _break_sst2_label(project):
    lines = tsv_lines(mirror() / "sst2" / "dev.tsv")
    lines[-1] = "bad\tpositive"
    write_and_reseal(project, "sst2", "dev.tsv", "\n".join(lines) + "\n")
    return f"{mirror() / 'sst2' / 'dev.tsv'}:31: label 'positive'"


def _break_sst2_checksum(project):
    (mirror() / "sst2" / "dev.tsv").write_text("sentence\tlabel\nother\t1\n")  # params not updated
    return f"{mirror() / 'sst2' / 'dev.tsv'}: sha256 mismatch"


def _empty_sst2_dev(project):
    write_and_reseal(project, "sst2", "dev.tsv", "sentence\tlabel\n")
    return f"{mirror() / 'sst2' / 'dev.tsv'}: split 'dev' has no data rows"


@pytest.mark.parametrize("breaker", [_break_sst2_row, _break_sst2_label, _break_sst2_checksum, _empty_sst2_dev])
def test_failed_fetch_keeps_previous_output(tiny_project, breaker):
    fetch.main(["sst2"])
    before = snapshot(RAW / "sst2")
    assert set(before) == {"train.tsv", "dev.tsv", "meta.json"}
    expected = breaker(tiny_project)
    with pytest.raises(DataError) as e:
        fetch.main(["sst2"])
    assert str(e.value).startswith(expected)
    assert snapshot(RAW / "sst2") == before
    assert sorted(p.name for p in RAW.iterdir()) == ["sst2"]  # no .sst2.tmp left behind


def test_failed_parallel_fetch_keeps_previous_output(tiny_project):
    fetch.main(["multi30k"])
    before = snapshot(RAW / "multi30k")
    fr = gunzip_lines(mirror() / "multi30k" / "test_2016_flickr.fr.gz")
    gz(mirror() / "multi30k" / "test_2016_flickr.fr.gz", fr[:-1])
    reseal(tiny_project, "multi30k", "test_2016_flickr.fr.gz")
    with pytest.raises(DataError) as e:
        fetch.main(["multi30k"])
    assert f"test_2016_flickr.en.gz:{len(fr)}: has more lines than its fr side" in str(e.value)
    assert snapshot(RAW / "multi30k") == before
    assert sorted(p.name for p in RAW.iterdir()) == ["multi30k"]


# ---------------------------------------------------------------- 3. downloads over HTTP on 127.0.0.1

MNLI_TRAIN = ("index\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
              "0\tfiction\tThe cat sat.\tA cat is sitting.\tentailment\tentailment\n"
              "1\tfiction\tThe dog ran.\tThe dog slept.\tcontradiction\tcontradiction\n"
              "2\tslate\tA bird flew.\tThe bird is red.\tneutral\tneutral\n")
MNLI_DEV = ("index\tgenre\tsentence1\tsentence2\tlabel1\tlabel2\tgold_label\n"
            "0\t{g}\tThe tree is big.\tThe tree is small.\tcontradiction\tcontradiction\tcontradiction\n"
            "1\t{g}\tA river runs.\tWater flows.\tentailment\tentailment\tentailment\n")


def mnli_zip(path: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("MNLI/train.tsv", MNLI_TRAIN)
        z.writestr("MNLI/dev_matched.tsv", MNLI_DEV.format(g="fiction"))
        z.writestr("MNLI/dev_mismatched.tsv", MNLI_DEV.format(g="letters"))
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def add_mnli(project: Path, url: str, digest: str) -> None:
    real = yaml.safe_load((REPO / "datasets.yaml").read_text())["datasets"]["mnli"]
    entry = json.loads(json.dumps(real))
    entry["files"]["MNLI.zip"] = {"url": url, "sha256": digest}
    set_params(project, lambda p: p["datasets"].update(mnli=entry))


class Server:
    """An HTTP server on 127.0.0.1 in a thread; `hits` lists the paths requested."""

    def __init__(self, handler_class, **handler_kwargs):
        self.hits = []
        hits = self.hits

        class Handler(handler_class):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **handler_kwargs, **kwargs)

            def do_GET(self):
                hits.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.handler = Handler
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def offline(tiny_project, monkeypatch):
    """The tiny project with no DATA_MIRROR and no proxy between us and 127.0.0.1."""
    monkeypatch.delenv("DATA_MIRROR")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return tiny_project


@pytest.fixture
def www(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    return root


@pytest.fixture
def file_server(www):
    server = Server(http.server.SimpleHTTPRequestHandler, directory=str(www))
    yield server
    server.close()


def test_download_then_cached(offline, www, file_server):
    data = mnli_zip(www / "MNLI.zip")
    add_mnli(offline, f"{file_server.base}/MNLI.zip", hashlib.sha256(data).hexdigest())
    fetch.main(["mnli"])
    assert file_server.hits == ["/MNLI.zip"]
    assert (DOWNLOADS / "mnli" / "MNLI.zip").read_bytes() == data
    assert sorted(p.name for p in (DOWNLOADS / "mnli").iterdir()) == ["MNLI.zip"]
    out = RAW / "mnli"
    assert sorted(p.name for p in out.iterdir()) == ["dev_matched.tsv", "dev_mismatched.tsv", "meta.json",
                                                    "train.tsv"]
    assert tsv_lines(out / "train.tsv") == [
        "sentence1\tsentence2\tlabel",
        "The cat sat.\tA cat is sitting.\tentailment",
        "The dog ran.\tThe dog slept.\tcontradiction",
        "A bird flew.\tThe bird is red.\tneutral"]
    for split in ("dev_matched", "dev_mismatched"):
        assert tsv_lines(out / f"{split}.tsv") == [
            "sentence1\tsentence2\tlabel",
            "The tree is big.\tThe tree is small.\tcontradiction",
            "A river runs.\tWater flows.\tentailment"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["rows"] == {"train": 3, "dev_matched": 2, "dev_mismatched": 2}
    assert meta["files"]["MNLI.zip"]["url"] == f"{file_server.base}/MNLI.zip"

    fetch.main(["mnli"])  # second run: from data/downloads, no request
    assert file_server.hits == ["/MNLI.zip"]
    assert tsv_lines(out / "dev_matched.tsv")[0] == "sentence1\tsentence2\tlabel"

    (DOWNLOADS / "mnli" / "MNLI.zip").write_bytes(b"corrupted cache")  # a bad cached copy is fetched again
    fetch.main(["mnli"])
    assert file_server.hits == ["/MNLI.zip", "/MNLI.zip"]
    assert (DOWNLOADS / "mnli" / "MNLI.zip").read_bytes() == data


def test_download_wrong_checksum(offline, www, file_server):
    data = mnli_zip(www / "MNLI.zip")
    wrong = "ab" * 32
    url = f"{file_server.base}/MNLI.zip"
    add_mnli(offline, url, wrong)
    with pytest.raises(DataError) as e:
        fetch.main(["mnli"])
    msg = str(e.value)
    assert msg.startswith(f"{DOWNLOADS / 'mnli' / 'MNLI.zip'}: sha256 mismatch")
    assert url in msg
    assert f"expected {wrong}, got {hashlib.sha256(data).hexdigest()}" in msg
    assert file_server.hits == ["/MNLI.zip"]
    assert list((DOWNLOADS / "mnli").iterdir()) == []  # neither MNLI.zip nor MNLI.zip.part
    assert not (RAW / "mnli").exists()


def test_download_http_error(offline, www, file_server):
    data = mnli_zip(www / "MNLI.zip")
    url = f"{file_server.base}/missing/MNLI.zip"
    add_mnli(offline, url, hashlib.sha256(data).hexdigest())
    with pytest.raises(StageError) as e:
        fetch.main(["mnli"])
    msg = str(e.value)
    assert f"cannot fetch dataset 'mnli' file 'MNLI.zip' from {url}" in msg
    assert "File not found" in msg and "DATA_MIRROR" in msg  # the server's reason for its 404
    assert list((DOWNLOADS / "mnli").iterdir()) == []


class Truncating(http.server.BaseHTTPRequestHandler):
    """Announces the whole zip but sends only half of it, then closes the connection."""
    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[: len(self.body) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def truncating_server(www):
    Truncating.body = mnli_zip(www / "MNLI.zip")
    server = Server(Truncating)
    yield server
    server.close()


def test_interrupted_download_leaves_nothing(offline, truncating_server):
    url = f"{truncating_server.base}/MNLI.zip"
    add_mnli(offline, url, hashlib.sha256(Truncating.body).hexdigest())
    with pytest.raises(StageError) as e:
        fetch.main(["mnli"])
    assert "MNLI.zip" in str(e.value) and url in str(e.value)
    assert truncating_server.hits == ["/MNLI.zip"]
    assert list((DOWNLOADS / "mnli").iterdir()) == []  # neither MNLI.zip nor MNLI.zip.part
    assert not (RAW / "mnli").exists()


def test_interrupted_download_is_reported_as_such(offline, truncating_server):
    """A body shorter than its Content-Length is a failed download (network), not a corrupt file."""
    url = f"{truncating_server.base}/MNLI.zip"
    add_mnli(offline, url, hashlib.sha256(Truncating.body).hexdigest())
    with pytest.raises(StageError) as e:
        fetch.main(["mnli"])
    msg = str(e.value)
    assert f"cannot fetch dataset 'mnli' file 'MNLI.zip' from {url}" in msg
    assert "DATA_MIRROR" in msg
    assert "mismatch" not in msg
    assert list((DOWNLOADS / "mnli").iterdir()) == []


class Stalling(http.server.BaseHTTPRequestHandler):
    """Announces the whole zip, sends half of it, then stalls until released (a connection that hangs)."""
    body = b""
    release = threading.Event()

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[: len(self.body) // 2])
        self.wfile.flush()
        self.release.wait(60)


def fetch_process(dataset, **env):
    env = {k: v for k, v in dict(os.environ, PYTHONPATH=str(Path.cwd()), **env).items() if v is not None}
    return subprocess.Popen([sys.executable, "-m", "stages.fetch", dataset], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_a_killed_download_leaves_a_part_file_that_the_next_stage_run_removes(offline, www):
    Stalling.body = mnli_zip(www / "MNLI.zip")
    Stalling.release.clear()
    server = Server(Stalling)
    part = DOWNLOADS / "mnli" / "MNLI.zip.part"
    try:
        add_mnli(offline, f"{server.base}/MNLI.zip", hashlib.sha256(Stalling.body).hexdigest())
        kill_once_exists(fetch_process("mnli"), part, timeout=60)
        assert part.exists()  # what a kill -9 leaves: no cleanup runs
    finally:
        Stalling.release.set()
        server.close()
    other = fetch_process("sst2", DATA_MIRROR=str(offline.parent / "mirror"))  # any stage, from the mirror
    _, log = other.communicate(timeout=120)
    assert other.returncode == 0, log
    assert not part.exists()
    assert f"removing {part}, left by an interrupted run" in log


# ---------------------------------------------------------------- 4. neither source reachable

def test_no_mirror_and_no_network(offline):
    with pytest.raises(StageError) as e:
        fetch.main(["sst2"])
    msg = str(e.value)
    assert not isinstance(e.value, DataError)
    assert f"cannot fetch dataset 'sst2' file 'train.tsv' from {UNREACHABLE}/sst2/train.tsv" in msg
    assert "DATA_MIRROR" in msg
    assert not (RAW / "sst2").exists()
    assert list((DOWNLOADS / "sst2").iterdir()) == []


def test_file_missing_from_mirror_falls_back_to_url(tiny_project):
    (mirror() / "rte" / "dev.tsv").unlink()
    with pytest.raises(StageError) as e:
        fetch.main(["rte"])
    msg = str(e.value)
    assert f"cannot fetch dataset 'rte' file 'dev.tsv' from {UNREACHABLE}/rte/dev.tsv" in msg
    assert "DATA_MIRROR" in msg
    assert not (RAW / "rte").exists()


# ---------------------------------------------------------------- 5. the real catalog on the real mirror

REAL_ROWS = {
    "sst2": {"train": 67349, "dev": 872},
    "rte": {"train": 2490, "dev": 277},
    "mrpc": {"train": 3668, "dev": 408},
    "cola": {"train": 8551, "dev": 1043},
    "stsb": {"train": 5749, "dev": 1500},
    "wnli": {"train": 635, "dev": 71},
    "multi30k": {"train": 29000, "valid": 1014, "test": 1000},
}


@pytest.fixture
def real_project(tmp_path, monkeypatch):
    if not SHARED_MIRROR.is_dir():
        pytest.skip(f"no real mirror at {SHARED_MIRROR}")
    for name in ("params.yaml", "datasets.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_MIRROR", str(SHARED_MIRROR))
    return tmp_path


@pytest.mark.parametrize("dataset", sorted(REAL_ROWS))
def test_real_catalog_row_counts(real_project, dataset):
    fetch.main([dataset])
    out = RAW / dataset
    meta = json.loads((out / "meta.json").read_text())
    assert meta["rows"] == REAL_ROWS[dataset]
    for split, n in REAL_ROWS[dataset].items():
        if meta["kind"] == "glue":
            lines = tsv_lines(out / f"{split}.tsv")
            assert lines[0] == ("sentence1\tsentence2\tlabel" if meta["pair"] else "sentence1\tlabel")
            assert len(lines) - 1 == n
            width = 3 if meta["pair"] else 2
            assert all(len(line.split("\t")) == width for line in lines[1:])
        else:
            for lang in meta["languages"]:
                assert len((out / f"{split}.{lang}").read_text().splitlines()) == n
    assert not (Path("data/downloads") / dataset).exists()  # all from the mirror


def test_real_wikitext2(real_project):
    fetch.main(["wikitext2"])
    text = (RAW / "wikitext2" / "train.txt").read_text()
    assert len(text.split()) == 2_051_910
    lines = text.split("\n")
    assert not [line for line in lines if line in ('"', '" ')]
    assert '""' not in text
    for split in ("valid", "test"):
        assert (RAW / "wikitext2" / f"{split}.txt").stat().st_size > 0


def test_several_urls_tried_in_order_one_checksum(offline, www, file_server):
    """A file's URLs are mirrors of the same bytes: a missing one and one serving other bytes are passed
    over, in the catalog's order, and each download is checked against the one sha256."""
    data = mnli_zip(www / "MNLI.zip")
    (www / "other.zip").write_bytes(b"not the recorded file")
    urls = [f"{file_server.base}/gone/MNLI.zip", f"{file_server.base}/other.zip", f"{file_server.base}/MNLI.zip"]
    add_mnli(offline, urls, hashlib.sha256(data).hexdigest())
    fetch.main(["mnli"])
    assert file_server.hits == ["/gone/MNLI.zip", "/other.zip", "/MNLI.zip"]
    assert (DOWNLOADS / "mnli" / "MNLI.zip").read_bytes() == data
    assert json.loads((RAW / "mnli" / "meta.json").read_text())["rows"]["train"] == 3

    add_mnli(offline, urls[:2], hashlib.sha256(data).hexdigest())  # every URL fails: each named, with its reason
    shutil.rmtree(DOWNLOADS / "mnli")
    with pytest.raises(StageError) as e:
        fetch.main(["mnli"])
    msg = str(e.value)
    assert "cannot fetch dataset 'mnli' file 'MNLI.zip' from any of its 2 URLs" in msg
    assert f"{urls[0]}: HTTP 404" in msg and f"{urls[1]}: " in msg and "sha256 mismatch" in msg
    assert list((DOWNLOADS / "mnli").iterdir()) == []


def test_catalog_refuses_an_empty_url_list(offline):
    add_mnli(offline, [], "ab" * 32)
    with pytest.raises(StageError, match="datasets.mnli.files.MNLI.zip.url"):
        fetch.main(["mnli"])


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "directory"])
def test_archive_member_that_is_not_a_regular_file(tiny_project, kind):
    """A tar whose named member is a link (here to /etc/passwd) or a directory: refused by name, nothing read."""
    archive = tiny_project.parent / "mirror" / "mnli" / "MNLI.tgz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("MNLI/train.tsv")
        info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "directory": tarfile.DIRTYPE}[kind]
        info.linkname = "/etc/passwd" if kind != "directory" else ""
        tar.addfile(info)
    real = yaml.safe_load((REPO / "datasets.yaml").read_text())["datasets"]["mnli"]
    entry = json.loads(json.dumps(real))
    entry["files"] = {"MNLI.tgz": {"url": f"{UNREACHABLE}/MNLI.tgz", "sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}}
    entry["splits"] = {s: [{"file": "MNLI.tgz", "member": "MNLI/train.tsv"}] for s in ("train", "dev_matched")}
    set_params(tiny_project, lambda p: p["datasets"].update(mnli=entry))
    with pytest.raises(DataError) as e:
        fetch.main(["mnli"])
    msg = str(e.value)
    expected = {"symlink": "a symbolic link to '/etc/passwd'", "hardlink": "a hard link to '/etc/passwd'",
                "directory": "a directory"}[kind]
    assert msg == (f"{archive}: archive member 'MNLI/train.tsv' is {expected}, not a regular file; "
                   "the catalog's member must name the file itself")
    assert not (RAW / "mnli").exists()
