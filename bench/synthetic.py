"""Synthetic stand-ins for the paper profile's datasets, at their real sizes and in their real on-disk layouts.

What the data rehearsal (bench/rehearsal.py) runs the paper profile's fetch and prepare stages on, since
WikiText-103, MNLI and WMT'14 are not in the offline mirror. At scale 1 each file has the real dataset's line
count and mean line length; the text is Zipf-distributed words over a vocabulary of a few hundred thousand
types (letters with accents on the French side), so sentencepiece, the encoder and the binarizer have real work.
The text means nothing: these corpora measure time, memory and bytes, never a model's quality.

Layouts, as the catalog (datasets.yaml) reads them:
  wikitext103/wikitext-103-v1.zip   wikitext-103/wiki.{train,valid,test}.tokens (articles, ` = Title = `, blank ` `)
  mnli/MNLI.zip                     MNLI/{train,dev_matched,dev_mismatched,test_matched,test_mismatched}.tsv with
                                    GLUE's columns (parses, genre, label1..5, gold_label), MNLI/README.txt
  wmt14_en_fr/                      the five training archives with their member paths (other language pairs
                                    beside fr-en in each tgz, giga-fren's .tar of .gz), dev.tgz (newstest2013
                                    and others), test-full.tgz (newstest2014 as SGML, other pairs too)
Other language pairs are written at `other_pairs` x their real line counts (they cost the reader time only
where they precede fr-en in an archive; their size is recorded with the figures).
"""
import gzip
import io
import os
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

# real line counts (fr-en pairs for WMT; Bojar et al. 2014 and the archives' own counts)
WMT_TRAIN = {  # archive -> (member pattern with {pair} and {lang}, fr-en lines, other pairs: real lines)
    "training-parallel-europarl-v7.tgz": ("training/europarl-v7.{pair}.{lang}", 2_007_723,
                                          {"cs-en": 646_605, "de-en": 1_920_209, "es-en": 1_965_734}),
    "training-parallel-commoncrawl.tgz": ("commoncrawl.{pair}.{lang}", 3_244_152,
                                          {"cs-en": 161_838, "de-en": 2_399_123, "es-en": 1_845_286,
                                           "ru-en": 878_386}),
    "training-parallel-un.tgz": ("un/undoc.2000.{pair}.{lang}", 12_886_831, {"es-en": 11_196_913}),
    "training-parallel-nc-v9.tgz": ("training/news-commentary-v9.{pair}.{lang}", 183_251,
                                    {"cs-en": 146_549, "de-en": 201_288, "ru-en": 165_602}),
}
GIGA_FREN = 22_520_376
WMT_TEST, WMT_DEV = 3_003, 3_000
WMT_CHARS = 180                      # mean characters a line, each side (the WMT'14 average)
WT103 = {"train": (1_801_350, 103_227_021), "valid": (3_760, 217_646), "test": (4_358, 245_569)}  # lines, tokens
MNLI = {"train": 392_702, "dev_matched": 9_815, "dev_mismatched": 9_832, "test_matched": 9_796,
        "test_mismatched": 9_847}
MNLI_LABELS = ["contradiction", "entailment", "neutral"]
MNLI_GENRES = ["fiction", "government", "slate", "telephone", "travel"]
CHUNK_WORDS = 1 << 20
TABLE = 1 << 24


class Language:
    """Zipf-distributed words over `types` invented word types, each a stem and an ending (as real words share
    stems and inflections, so that a subword vocabulary of tens of thousands covers them in one or two pieces
    a word, as it does real text); text made a chunk at a time with numpy."""

    def __init__(self, seed: int, types: int, letters: str, specials=(), endings=("",)):
        rng = np.random.default_rng(seed)
        syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in letters]
        stems = set()
        while len(stems) * len(endings) < types:
            n = rng.integers(1, 4, size=types // len(endings))
            picks = rng.integers(0, len(syllables), size=(len(n), 3))
            stems.update("".join(syllables[j] for j in row[:k]) for row, k in zip(picks, n))
        words = set(specials) | {stem + ending for stem in sorted(stems) for ending in endings}
        rest = sorted(words - set(specials))
        rng.shuffle(rest)
        rest = rest[:types - len(specials)]
        # Zipf's law of abbreviation: frequent words are short (ranked by length, with noise)
        rest.sort(key=lambda w: len(w) + 3 * rng.random())
        self.words = [w.encode() for w in list(specials) + rest]
        p = 1.0 / np.arange(1, types + 1) ** 1.05
        # inverse CDF at 2^24 points: a word is one table lookup of a random integer
        self.table = np.minimum(np.searchsorted(np.cumsum(p / p.sum()), (np.arange(TABLE) + 0.5) / TABLE,
                                                side="right"), types - 1).astype(np.int32)
        self.mean_bytes = float(np.dot(p / p.sum(), [len(w) + 1 for w in self.words]))
        # every word followed by a space, in one buffer: text is gathered from it byte by byte
        self.buffer = np.frombuffer(b"".join(w + b" " for w in self.words), dtype=np.uint8)
        self.length = np.array([len(w) + 1 for w in self.words], dtype=np.int64)
        self.start = np.concatenate([[0], np.cumsum(self.length)[:-1]])

    def lines(self, rng, n: int, mean_words: float):
        """Yield bytes chunks holding `n` lines in all (each ending in a newline), of about `mean_words` words."""
        done = 0
        per_chunk = max(1, int(CHUNK_WORDS / mean_words))
        while done < n:
            k = min(per_chunk, n - done)
            lengths = np.maximum(1, rng.poisson(mean_words, size=k))
            ids = self.table[rng.integers(0, TABLE, int(lengths.sum()))]
            sizes = self.length[ids]
            ends = np.cumsum(sizes)
            # byte j of the output is byte (j - its word's output start) of that word in the buffer
            gather = np.arange(ends[-1]) + np.repeat(self.start[ids] - (ends - sizes), sizes)
            text = self.buffer[gather]
            text[ends[np.cumsum(lengths) - 1] - 1] = ord("\n")  # a line's last space ends it
            yield text.tobytes()
            done += k

    def words_per_line(self, chars: float) -> float:
        return chars / self.mean_bytes


ENGLISH_ENDINGS = ("", "s", "ed", "ing", "er", "ers", "ly", "ness", "ion", "ions", "al", "ive", "est", "ment",
                   "able", "ity", "ful", "less", "ism", "ist")
FRENCH_ENDINGS = ("", "s", "e", "es", "er", "é", "ée", "és", "ent", "ons", "ez", "ait", "aient", "ion", "ions",
                  "ment", "eur", "euse", "ité", "able")


def english(seed=1):
    return Language(seed, 300_000, "aeiouy", specials=(".", ",", "the", "of", "and"), endings=ENGLISH_ENDINGS)


def french(seed=2):
    return Language(seed, 300_000, "aeiouéèàê", specials=(".", ",", "de", "la", "le"), endings=FRENCH_ENDINGS)


def scaled(n: int, scale: float) -> int:
    return max(1, round(n * scale))


# ---------------------------------------------------------------- archives

def add_member(tar: tarfile.TarFile, name: str, chunks, scratch: Path) -> int:
    """Add a member made of byte chunks (spooled to `scratch`: a tar header needs the size first)."""
    with tempfile.TemporaryFile(dir=scratch) as f:
        for chunk in chunks:
            f.write(chunk)
        size = f.tell()
        f.seek(0)
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o644
        tar.addfile(info, f)
    return size


def write_zip_member(z: zipfile.ZipFile, name: str, chunks) -> int:
    size = 0
    with z.open(zipfile.ZipInfo(name, date_time=(2019, 1, 1, 0, 0, 0)), "w", force_zip64=True) as f:
        for chunk in chunks:
            f.write(chunk)
            size += len(chunk)
    return size


def deflated_zip(path: Path):
    info = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1)
    return info


def gz_tar(path: Path):
    return tarfile.open(fileobj=gzip.GzipFile(path, "wb", compresslevel=1, mtime=0), mode="w")


# ---------------------------------------------------------------- datasets

def wikitext103(root: Path, scale: float, seed=3) -> dict:
    """wikitext-103-v1.zip: articles of ` = Title = `, ` = = Section = = ` and paragraphs, blank lines ` `."""
    lang = Language(seed, 267_735, "aeiou", specials=(".", ",", "the", "<unk>", "@-@", "of"), endings=ENGLISH_ENDINGS)
    rng = np.random.default_rng(seed)
    out = root / "wikitext103"
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    with deflated_zip(out / "wikitext-103-v1.zip") as z:
        for split, (lines, tokens) in WT103.items():
            n = scaled(lines, scale) if split == "train" else lines
            # every other line is blank; of the rest one in eight is a heading of 3 words
            content = n // 2
            words = (tokens / lines * n - content // 8 * 3) / max(content - content // 8, 1)
            sizes[split] = write_zip_member(z, f"wikitext-103/wiki.{split}.tokens",
                                            wikitext_lines(lang, rng, n, words))
    return {"wikitext-103-v1.zip": {"uncompressed_bytes": sizes}}


def wikitext_lines(lang, rng, n, words):
    yield b" \n"
    done = 1
    for chunk in lang.lines(rng, (n - 1) // 2 + 1, words):
        out = []
        for i, line in enumerate(chunk.split(b"\n")[:-1]):
            if done >= n:
                break
            if i % 8 == 0:
                eq = b" = = " if i % 16 else b" = "
                line = eq + b" ".join(line.split(b" ")[:3]) + eq
            else:
                line = b" " + line + b" "
            out.append(line + b"\n")
            done += 1
            if done < n:
                out.append(b" \n")
                done += 1
        yield b"".join(out)


def mnli(root: Path, scale: float, seed=4) -> dict:
    lang = english(seed)
    rng = np.random.default_rng(seed)
    out = root / "mnli"
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    with deflated_zip(out / "MNLI.zip") as z:
        write_zip_member(z, "MNLI/README.txt", [b"Synthetic MNLI of the real size and columns (bench/synthetic.py)\n"])
        for split, n in MNLI.items():
            rows = scaled(n, scale) if split == "train" else n
            sizes[split] = write_zip_member(z, f"MNLI/{split}.tsv", mnli_rows(lang, rng, split, rows))
    return {"MNLI.zip": {"uncompressed_bytes": sizes}}


def mnli_rows(lang, rng, split, n):
    labelled = not split.startswith("test")
    votes = ["label1"] if split == "train" else ["label1", "label2", "label3", "label4", "label5"]
    header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    header += (votes + ["gold_label"]) if labelled else []
    yield ("\t".join(header) + "\n").encode()
    premises, hypotheses = lang.lines(rng, n, 22), lang.lines(rng, n, 11)
    index = 0
    for p_chunk, h_chunk in zip(premises, hypotheses):
        rows = []
        for p, h in zip(p_chunk.decode().split("\n")[:-1], h_chunk.decode().split("\n")[:-1]):
            label = MNLI_LABELS[(index * 7 + len(p)) % 3]
            cells = [str(index), str(index // 3), f"{index}e", MNLI_GENRES[index % 5],
                     binary_parse(p), binary_parse(h), parse(p), parse(h), p, h]
            cells += ([label] * len(votes) + [label]) if labelled else []
            rows.append("\t".join(cells) + "\n")
            index += 1
        yield "".join(rows).encode()


def binary_parse(s):
    words = s.split(" ")
    return "( " + " ".join(f"( {a} {b} )" if b else a for a, b in zip(words[::2], words[1::2] + [""])) + " )"


def parse(s):
    return "(ROOT (S " + " ".join(f"(NN {w})" for w in s.split(" ")) + "))"


def wmt14_en_fr(root: Path, scale: float, other_pairs: float = 0.25, seed=5) -> dict:
    """The five training archives, dev.tgz and test-full.tgz of fairseq's prepare-wmt14en2fr.sh."""
    en, fr = english(seed), french(seed + 1)
    words = {"en": en.words_per_line(WMT_CHARS), "fr": fr.words_per_line(WMT_CHARS)}
    rng = np.random.default_rng(seed)
    out = root / "wmt14_en_fr"
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / ".members.tmp"
    scratch.mkdir(exist_ok=True)
    made = {}
    try:
        for archive, (pattern, lines, others) in WMT_TRAIN.items():
            members = {}
            with gz_tar(out / archive) as tar:
                for pair, n in sorted({**{p: scaled(k, scale * other_pairs) for p, k in others.items()},
                                       "fr-en": scaled(lines, scale)}.items()):
                    for lang_code in pair.split("-"):
                        side = en if lang_code == "en" else fr  # other languages: French-like text
                        name = pattern.format(pair=pair, lang=lang_code)
                        members[name] = add_member(tar, name, side.lines(rng, n, words.get(lang_code, words["fr"])),
                                                   scratch)
            made[archive] = members
        with tarfile.open(out / "training-giga-fren.tar", "w") as tar:
            n = scaled(GIGA_FREN, scale)
            members = {}
            for lang_code, side in (("en", en), ("fr", fr)):
                name = f"giga-fren.release2.fixed.{lang_code}.gz"
                members[name] = add_member(tar, name, gzipped(side.lines(rng, n, words[lang_code])), scratch)
            made["training-giga-fren.tar"] = members
        with gz_tar(out / "dev.tgz") as tar:
            made["dev.tgz"] = {f"dev/newstest2013.{c}": add_member(
                tar, f"dev/newstest2013.{c}", s.lines(rng, WMT_DEV, words.get(c, words["fr"])), scratch)
                for c, s in (("de", fr), ("en", en), ("fr", fr))}
        with gz_tar(out / "test-full.tgz") as tar:
            members = {}
            for name, side, c, kind in (("newstest2014-deen-src.en.sgm", en, "en", "src"),
                                        ("newstest2014-fren-ref.fr.sgm", fr, "fr", "ref"),
                                        ("newstest2014-fren-src.en.sgm", en, "en", "src")):
                members[f"test-full/{name}"] = add_member(
                    tar, f"test-full/{name}", sgml(side.lines(rng, WMT_TEST, words[c]), c, kind), scratch)
            made["test-full.tgz"] = members
    finally:
        for f in scratch.iterdir():
            f.unlink()
        scratch.rmdir()
    return made


def gzipped(chunks):
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1, mtime=0) as g:
        for chunk in chunks:
            g.write(chunk)
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def sgml(chunks, lang, kind):
    yield f'<{kind}set setid="newstest2014" srclang="any" trglang="{lang}">\n'.encode()
    yield b'<doc sysid="ref" docid="1012-synthetic" genre="news" origlang="en">\n<p>\n'
    i = 0
    for chunk in chunks:
        out = []
        for line in chunk.split(b"\n")[:-1]:
            i += 1
            out.append(b'<seg id="%d">%s</seg>\n' % (i, line))
        yield b"".join(out)
    yield f"</p>\n</doc>\n</{kind}set>\n".encode()


DATASETS = {"wikitext103": wikitext103, "mnli": mnli, "wmt14_en_fr": wmt14_en_fr}


def files_of(root: Path, name: str) -> list[Path]:
    return sorted(p for p in (root / name).iterdir() if p.is_file())


if __name__ == "__main__":  # python -m bench.synthetic ROOT SCALE [DATASET ...]: just the files
    import sys
    import time
    target, s = Path(sys.argv[1]), float(sys.argv[2])
    for key in sys.argv[3:] or DATASETS:
        t = time.time()
        print(key, DATASETS[key](target, s), f"{time.time() - t:.1f} s", flush=True)
    os.sync()
