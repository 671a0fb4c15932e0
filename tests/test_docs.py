"""The README and the pages of docs/ name only what exists.

Pages: README.md and docs/*.md. Fenced code blocks are read line by line (a line ending in a backslash joins the
next; shell comments, `#` after a space or at the start, are dropped); prose is read only inside inline code
spans (`...`) and links, so ordinary words are never taken for references. In what is read:

- Links and images, `[text](target)`, that are not URLs resolve relative to their page, and a `#fragment`
  names a heading of the target page (GitHub's anchors).
- `python -m X.Y` (after any path to python) where X is a directory of this repository (stages, bench,
  launch, ...) names a module file or package there. `stages.compress.load_variant` and
  `lib/checkpoints.py: weights_only_load` name a top-level definition of that module.
- `make T` names a target of the Makefile.
- `dvc repro|commit|checkout S`, `dvc exp run ... S` and `python -m launch local|slurm S` name stages: the base
  name (before `@`) is a stage of dvc.yaml, foreach and matrix stages included; the item after `@` is a
  size (models.mlm / models.mt of params.yaml or of a profile), a task (a key of datasets.yaml) or
  `<size>-<task>`. `<placeholders>` are not checked.
- Parameter keys: a code span that is a dotted key (`pretrain.recipe.budget`, optionally followed by
  `: value` or `=value`) whose first part is a top-level key of params.yaml, and every key of `-S key=value`,
  resolve in params.yaml or in one of profiles/*.yaml; `datasets.<name>` resolves in datasets.yaml.
  `<stage>` and `*` match any key (`<stage>.recipe.budget`, `prepare_*.max_*`). A dotted word whose last
  part is a file extension (`report.md`) is a file name, not a key.
- Paths: a word with a `/` whose first part is a top-level entry of the repository (`stages/`, `reports/`,
  `.ci/`, ...) or a directory the pipeline writes (GENERATED: data/, models/, reports/, .launch/, .venv/,
  wheels/). Under a tracked directory it must exist (relative to the repository root, or to the page). A path
  under a GENERATED directory, which a fresh clone does not have, must exist, or be an output of dvc.yaml or
  lie inside or above one (its `outs`, `metrics` and `plots`; `${...}` there and `<...>` or `*` in the page
  match any part of a name; a scratch `.<name>.tmp` beside an output counts as that output), or else be a
  location the code writes outside DVC: each of its literal parts
  (those without a placeholder) appears in the code (stages/, lib/, bench/, launch/, Makefile, launch.yaml),
  as `models/.work/` (interrupted training state) or `reports/gpu-check.json` (bench/gpu_check.py) do.
  Words with `://`, or starting with `/`, `~`, `$` or `..` (outside the repository) are not checked, nor
  bare file names without a directory (`meta.json`, `train.tsv`), which name files inside outputs or a
  user's own data.
"""
import ast
import fnmatch
import functools
import glob
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
GENERATED = {"data", "models", "reports", ".launch", ".venv", "wheels"}
DVC_MADE = (".dvc/cache", ".dvc/tmp")  # DVC's cache and scratch, made by its first command
CODE_DIRS = ("stages", "lib", "bench", "launch", "profiles", ".ci")
FILE_EXTENSIONS = {"md", "json", "yaml", "yml", "csv", "png", "svg", "py", "txt", "log", "pt", "onnx", "sh",
                   "tsv", "conf", "lock", "model", "part", "tgz", "zip", "gz"}
PLACEHOLDER = re.compile(r"<[^<>/]*>")


def rel(page: Path) -> str:
    return str(page.relative_to(REPO))


# ---------------------------------------------------------------- what the repository holds

@functools.cache
def load(name: str):
    return yaml.safe_load((REPO / name).read_text())


@functools.cache
def stages() -> dict:
    return load("dvc.yaml")["stages"]


@functools.cache
def out_patterns() -> list[str]:
    """Every path dvc.yaml declares as an output, metric or plot, `${...}` as `*`."""
    found = []

    def entries(value):
        for entry in value or []:
            yield from (entry if isinstance(entry, dict) else [entry])

    for stage in stages().values():
        body = stage.get("do", stage)
        for field in ("outs", "metrics", "plots"):
            for path in entries(body.get(field)):
                found.append(re.sub(r"\$\{[^}]*\}", "*", str(path)).rstrip("/"))
    return found


@functools.cache
def params_sources() -> list[dict]:
    return [load("params.yaml"), *(yaml.safe_load(p.read_text()) or {} for p in sorted((REPO / "profiles").glob("*.yaml")))]


@functools.cache
def items() -> set[str]:
    """What may follow `@` in a stage name: sizes, tasks, and size-task pairs."""
    sizes = {name for source in params_sources() for kind in ("mlm", "mt")
             for name in ((source.get("models") or {}).get(kind) or {})}
    tasks = set(load("datasets.yaml")["datasets"])
    return sizes | tasks | {f"{s}-{t}" for s in sizes for t in tasks}


@functools.cache
def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([\w.-]+)\s*:(?!=)", text, re.M)}


@functools.cache
def code_text() -> str:
    files = [p for d in CODE_DIRS for p in (REPO / d).rglob("*") if p.is_file() and p.suffix in {".py", ".sh", ""}]
    files += [REPO / "Makefile", REPO / "launch.yaml"]
    return "\n".join(p.read_text(errors="replace") for p in files)


@functools.cache
def top_level() -> set[str]:
    return {p.name for p in REPO.iterdir() if p.name != ".git"} | GENERATED


# ---------------------------------------------------------------- reading a page

FENCE = re.compile(r"^[ \t]*```([\w-]*)\n(.*?)^[ \t]*```", re.S | re.M)   # indented in a list too


def code_lines(text: str) -> list[str]:
    """The logical lines of every fenced block, shell comments dropped; a ```text block is a program's output
    (what a user reads, not what they type), and is not checked."""
    lines = []
    for match in FENCE.finditer(text):
        if match.group(1) == "text":
            continue
        for line in match.group(2).replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#(?!\{).*", "", line)
            if line.strip():
                lines.append(line)
    return lines


def prose(text: str) -> str:
    return FENCE.sub("", text)


def spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose(text))


def sources(page: Path) -> list[str]:
    """Every piece of a page read for references: its code spans and the lines of its code blocks."""
    text = page.read_text()
    return spans(text) + code_lines(text)


def words(source: str) -> list[str]:
    try:
        return shlex.split(source, comments=False)
    except ValueError:
        return source.split()


# ---------------------------------------------------------------- checks

def glob_parts_meet(a: str, b: str) -> bool:
    """Whether some name matches both patterns, `*` matching any run of characters in either."""
    @functools.cache
    def meet(i: int, j: int) -> bool:
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "*":
            return meet(i + 1, j) or (j < len(b) and (meet(i, j + 1) if b[j] != "*" else meet(i + 1, j + 1) or meet(i, j + 1)))
        if j < len(b) and b[j] == "*":
            return meet(i, j + 1) or (i < len(a) and meet(i + 1, j))
        return i < len(a) and j < len(b) and a[i] == b[j] and meet(i + 1, j + 1)
    return meet(0, 0)


def under_outputs(path: str) -> bool:
    """`path` (placeholders as `*`) is an output of dvc.yaml, or inside or above one."""
    parts = path.split("/")
    for pattern in out_patterns():
        out = pattern.split("/")
        n = min(len(parts), len(out))
        if all(glob_parts_meet(p, o) for p, o in zip(parts[:n], out[:n])):
            return True
    return False


def path_problem(word: str, page: Path) -> str | None:
    path = word.split("|")[0].rstrip("/.,;:)")
    pattern = PLACEHOLDER.sub("*", path)
    pattern = re.sub(r"\{([^{}]*)\}", lambda m: "*", pattern)    # {valid,test}.raw.en
    for base in (REPO, page.parent):
        if glob.glob(str(base / pattern)) or (base / path).exists():
            return None
    first = path.split("/")[0]
    if path.startswith(DVC_MADE):   # a fresh clone has .dvc/ but not what DVC makes on first use
        return None
    if first not in GENERATED:
        return f"{word}: no such file or directory"
    if under_outputs(pattern):
        return None
    parts = path.split("/")
    for i, part in enumerate(parts):    # scratch beside an output: .<output>.tmp
        m = re.fullmatch(r"\.([\w-]+)(?:\.[\w]+)*\.tmp", part)
        if m and under_outputs("/".join(parts[:i] + [m.group(1)])):
            return None
    literal = [part for part in parts if part and not re.search(r"[<*{$]", part)][1:] or [first]
    missing = [part for part in literal if part not in code_text()]
    if not missing:
        return None
    return f"{word}: not in the repository, not an output of dvc.yaml, and the code names no {missing or path}"


def key_problem(key: str, page: Path) -> str | None:
    key = key.lstrip("~+")
    parts = key.split(".")
    trees = [load("datasets.yaml")] if parts[0] == "datasets" else params_sources()

    def resolve(node, rest) -> bool:
        if not rest:
            return True
        if not isinstance(node, dict):
            return False
        part = rest[0]
        if PLACEHOLDER.fullmatch(part) or "*" in part:
            names = [k for k in node if part.startswith("<") or fnmatch.fnmatch(str(k), part)]
        else:
            names = [part] if part in node else []
        return any(resolve(node[name], rest[1:]) for name in names)

    if any(resolve(tree, parts) for tree in trees):
        return None
    return f"{key}: no such key in {'datasets.yaml' if parts[0] == 'datasets' else 'params.yaml or profiles/*.yaml'}"


def is_param_root(part: str) -> bool:
    return part in load("params.yaml") or part == "datasets" or PLACEHOLDER.fullmatch(part) is not None \
        or ("*" in part and any(fnmatch.fnmatch(k, part) for k in load("params.yaml")))


def stage_problem(name: str) -> str | None:
    if PLACEHOLDER.search(name.split("@")[0]) or name in {"...", "."}:
        return None
    base, _, item = name.partition("@")
    if base not in stages():
        return f"{name}: no stage {base} in dvc.yaml"
    spec = stages()[base]
    if item and "foreach" not in spec and "matrix" not in spec:
        return f"{name}: {base} is not a foreach or matrix stage"
    if item and not PLACEHOLDER.search(item) and item not in items():
        return f"{name}: {item} is no size, task or size-task of params.yaml, profiles/ or datasets.yaml"
    return None


def module_problem(module: str, attribute: bool = False) -> str | None:
    """`module` is a module file or package of the repository; with `attribute`, its last parts may name a
    top-level definition of the module before them."""
    parts = module.split(".")
    if parts[0] not in top_level() or not (REPO / parts[0]).is_dir() or PLACEHOLDER.search(module):
        return None
    for n in range(len(parts), 0 if attribute else len(parts) - 1, -1):
        base = REPO.joinpath(*parts[:n])
        file = next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)
        if file is None:
            continue
        rest = parts[n:]
        if rest and not defines(file, rest[0]):
            return f"{module}: {rel(file)} defines no {rest[0]}"
        return None
    return f"{module}: no such module"


def defines(file: Path, name: str) -> bool:
    tree = ast.parse(file.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def command_problems(source: str, page: Path) -> list[str]:
    problems = []
    for match in re.finditer(r"(?:^|[\s/])python3?\s+(?:-u\s+)?-m\s+([\w.<>]+)", source):
        problems.append(module_problem(match.group(1)))
    for match in re.finditer(r"(?:^|[\s;&|(:])make\s+((?:[A-Z_]+=\S*\s+)*)([a-z][\w-]*)", source):
        if match.group(2) not in make_targets():
            problems.append(f"make {match.group(2)}: no such target in the Makefile")
    # stage arguments of dvc and the launcher, and -S keys anywhere
    for command in re.split(r"&&|;|\|\||\$\(|\)", source):
        argv = words(command)
        for i, word in enumerate(argv):
            if word in {"-S", "--set-param"} and i + 1 < len(argv):
                key = argv[i + 1].split("=")[0]
                if re.search(r"\w", key) and is_param_root(key.lstrip("~+").split(".")[0]):
                    problems.append(key_problem(key, page))
        targets = []
        for start in range(len(argv)):
            head = argv[start:start + 3]
            if head[:2] in (["dvc", "repro"], ["dvc", "commit"], ["dvc", "checkout"]):
                targets = argv[start + 2:]
            elif head == ["dvc", "exp", "run"]:
                targets = argv[start + 3:]
            elif len(argv) > start + 3 and argv[start:start + 2] == ["-m", "launch"] and argv[start + 2] in {"local", "slurm"}:
                targets = argv[start + 3:]
        skip = False
        for word in targets:
            if skip:
                skip = False
                continue
            if word in {"-S", "--set-param", "-n", "--name", "-j", "--jobs", "--gpus"}:
                skip = True
                continue
            if word.startswith("-") or "/" in word or "=" in word or word.endswith(".yaml"):
                continue
            problems.append(stage_problem(word))
    return [p for p in problems if p]


def span_problems(span: str, page: Path) -> list[str]:
    problems = []
    # a parameter key, alone or with its value
    m = re.fullmatch(r"([\w<>*~+-]+(?:\.[\w<>*-]+)+)\s*(?:[:=].*)?", span.strip())
    if m and m.group(1).rsplit(".", 1)[1] not in FILE_EXTENSIONS and is_param_root(m.group(1).lstrip("~+").split(".")[0]):
        problems.append(key_problem(m.group(1), page))
    # a Python name: stages.compress.load_variant(dir), lib/checkpoints.py: weights_only_load
    m = re.fullmatch(r"([a-z_]+(?:\.[a-z_]+)+)(?:\(.*\))?", span.strip())
    if m and m.group(1).split(".")[0] in CODE_DIRS and m.group(1).rsplit(".", 1)[1] not in FILE_EXTENSIONS:
        problems.append(module_problem(m.group(1), attribute=True))
    m = re.fullmatch(r"([\w/]+\.py):\s*(\w+)", span.strip())
    if m and (REPO / m.group(1)).is_file() and not defines(REPO / m.group(1), m.group(2)):
        problems.append(f"{span}: {m.group(1)} defines no {m.group(2)}")
    return [p for p in problems if p]


def path_words(source: str) -> list[str]:
    found = []
    for word in re.findall(r"[^\s\"'`=(),\[\]]+", source):
        word = word.rstrip(".,;:")
        if "/" not in word or "://" in word or word[0] in "/~$" or word.startswith(".."):
            continue
        if word.split("/")[0] in top_level():
            found.append(word)
    return found


def link_problems(page: Path, text: str | None = None) -> list[str]:
    problems = []
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", prose(page.read_text() if text is None else text)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"link {target}: no such file")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            problems.append(f"link {target}: {rel(file)} has no heading with anchor #{fragment}")
    return problems


def anchors(page: Path) -> set[str]:
    seen, found = {}, set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", prose(page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", "")).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def problems_of(page: Path) -> list[str]:
    problems = link_problems(page)
    for source in sources(page):
        problems += command_problems(source, page)
        for word in path_words(source):
            problem = path_problem(word, page)
            if problem:
                problems.append(problem)
    for span in spans(page.read_text()):
        problems += span_problems(span, page)
    return sorted(set(problems))


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_page_names_only_what_exists(page):
    problems = problems_of(page)
    assert not problems, f"{rel(page)}:\n  " + "\n  ".join(problems)


def test_every_docs_page_is_linked_from_the_index_and_the_index_from_the_readme():
    index = (REPO / "docs" / "README.md").read_text()
    linked = set(re.findall(r"\]\(([\w-]+\.md)\)", index))
    assert {p.name for p in PAGES if p.parent.name == "docs" and p.name != "README.md"} <= linked
    assert "(docs/README.md)" in (REPO / "README.md").read_text()


def test_readme_is_a_landing_page():
    """The README stays short: what it answers, two commands, the result, the map, links."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "make repro" in text and "make test" in text
    assert re.search(r"!\[[^\]]*\]\(reports/figures/[\w-]+\.png\)", text)
    first_cells = re.findall(r"^\| ([^|]+) \|", text, re.M)
    stage_names = {name.split("@")[0] for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    assert set(stages()) <= stage_names, f"stages missing from the README's map: {set(stages()) - stage_names}"


def test_own_dataset_walkthrough_is_a_valid_catalog_entry():
    """The walk-through's entry (docs/your-own-data.md), which tests/test_glue_tasks.py runs, parses."""
    section = (REPO / "docs" / "your-own-data.md").read_text().split("### Adding a dataset of your own", 1)[1]
    entry = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1).replace("<sha256 of", "x <"))
    assert entry["reviews"]["kind"] == "glue" and entry["reviews"]["labels"] == ["bad", "good"]


def test_the_checks_catch_what_they_should():
    """The extraction flags a wrong reference of each kind and lets prose and placeholders pass."""
    page = REPO / "docs" / "README.md"
    bad = {"`python -m stages.nonesuch`": "no such module", "`make nonesuch`": "no such target",
           "`dvc repro pretrainn@L2-H256`": "no stage", "`dvc repro pretrain@L9-H9`": "no size",
           "`pretrain.recipe.budgett`": "no such key", "`-S 'compress.bitz=[4]'`": "no such key",
           "`stages/nonesuch.py`": "no such file", "`models/nonesuch/<size>/`": "not in the repository",
           "`stages.compress.nonesuch(dir)`": "defines no"}
    for text, expected in bad.items():
        source = text.strip("`")
        found = command_problems(source, page) + span_problems(source, page) + \
            [p for w in path_words(source) if (p := path_problem(w, page))]
        assert any(expected in p for p in found), (text, found)
    good = ["dvc repro pretrain@<size>", "dvc checkout <stage>", "<stage>.recipe.budget", "prepare_*.max_*",
            "models/.work/<stage>/<name>/", "reports/eval/<model>.csv", "data/raw/.<dataset>.tmp/",
            "reports/gpu-check.json", "python -m pytest -q tests", "key.path=value", "report.md",
            "dvc exp run -S 'pretrain.sizes=[L2-H256,L4-H256]' -S 'train_mt.sizes=[L2-H256]'",
            "make repro PROFILE=paper EXP_RUN_FLAGS=", "python -m launch local pretrain@L2-H256"]
    links = link_problems(page, "[a](install.md#nonesuch) [b](nonesuch.md) [c](install.md#gpu-builds-of-torch) "
                                "[d](../reports/figures/frontier.png) [e](https://example.org/x)")
    assert len(links) == 2 and "#nonesuch" in links[0] and "no such file" in links[1], links
    for source in good:
        found = command_problems(source, page) + span_problems(source, page) + \
            [p for w in path_words(source) if (p := path_problem(w, page))]
        assert not found, (source, found)
