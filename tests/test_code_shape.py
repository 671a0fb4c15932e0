"""The code's shape: stages import library modules only, never each other; every stage declares in dvc.yaml
exactly the project code it imports (directly or through the library), so that a change reruns exactly the
stages it can affect; no module in stages/ or lib/ grows past what a reader takes in at once."""
import ast
import re
from pathlib import Path

import yaml

from conftest import REPO

MAX_LINES = 300


def imported_modules(path: Path) -> set[str]:
    """Project modules (stages.*, lib.*) that the file imports anywhere, top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from lib import hardware` imports the module lib.hardware
            found |= {f"{node.module}.{a.name}" for a in node.names if (REPO / node.module / f"{a.name}.py").exists()}
            found.add(node.module)
    return {m for m in found if m.split(".")[0] in ("stages", "lib") and module_file(m).exists()}


def module_file(module: str) -> Path:
    path = REPO / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def code_closure(module: str) -> set[str]:
    """The files of `module` and of every project module it imports, transitively (repo-relative)."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += imported_modules(module_file(current))
    files = {str(module_file(m).relative_to(REPO)) for m in seen}
    return {f for f in files if not f.endswith("__init__.py")}


def declared_code(stage: dict) -> set[str]:
    return {d for d in stage.get("deps", []) if isinstance(d, str) and d.endswith(".py")}


PIPELINES = ["dvc.yaml", "plan/dvc.yaml"]  # the pipeline, and the size planner's (run in the root: wdir ..)


def pipeline_stages() -> dict:
    """The stages of every pipeline file, each {module, deps} (foreach/matrix bodies taken as they are
    written), named as DVC names them."""
    result = {}
    for pipeline in PIPELINES:
        for name, stage in yaml.safe_load((REPO / pipeline).read_text())["stages"].items():
            body = stage.get("do", stage)
            module = re.match(r"python -m (stages\.\w+)", body["cmd"]).group(1)
            result[name if pipeline == "dvc.yaml" else f"{pipeline}:{name}"] = {"module": module,
                                                                                "deps": body.get("deps", [])}
    return result


def test_no_stage_imports_another_stage():
    offenders = {}
    for path in sorted((REPO / "stages").glob("*.py")):
        stages = {m for m in imported_modules(path) if m.startswith("stages.") and m != "stages"}
        if stages:
            offenders[path.name] = sorted(stages)
    assert not offenders, f"stages import other stages (move what they share into lib/): {offenders}"


def test_library_never_imports_a_stage():
    offenders = {p.name: sorted(m for m in imported_modules(p) if m.startswith("stages"))
                 for p in sorted((REPO / "lib").glob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}


def test_every_stage_declares_exactly_the_code_it_imports():
    mismatched = {}
    for name, stage in pipeline_stages().items():
        needed, declared = code_closure(stage["module"]), declared_code(stage)
        if needed != declared:
            mismatched[name] = {"undeclared": sorted(needed - declared), "not imported": sorted(declared - needed)}
    assert not mismatched, f"dvc.yaml deps differ from the code each stage imports: {mismatched}"


def test_every_stage_module_is_a_pipeline_stage_or_a_tool():
    in_pipeline = {s["module"] for s in pipeline_stages().values()}
    tools = {"stages.check"}  # the regression gate: run by hand and in CI, after the pipeline
    modules = {f"stages.{p.stem}" for p in (REPO / "stages").glob("*.py") if p.stem != "__init__"}
    assert modules - in_pipeline == tools


def test_modules_stay_short():
    long = {str(p.relative_to(REPO)): n for p in [*(REPO / "stages").glob("*.py"), *(REPO / "lib").glob("*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: split them by concern: {long}"
