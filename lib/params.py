"""params.yaml (and datasets.yaml): loaded, validated against lib/schema.py, errors naming file and key;
and the positional arguments of stages that select one dataset or one model size."""
import types
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from lib.errors import StageError
from lib.schema import Params


PARAMS_FILE = Path("params.yaml")
CATALOG_FILE = "datasets.yaml"  # the dataset catalog, next to the params file


def read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: not found (run from the repository root)")
    except yaml.YAMLError as e:
        raise StageError(f"{path}: not valid YAML: {e}")
    if not isinstance(raw, dict):
        raise StageError(f"{path}: expected a mapping of sections, found {type(raw).__name__}")
    return raw


def load_params(path: Path = PARAMS_FILE) -> Params:
    """params.yaml at `path` with the dataset catalog datasets.yaml beside it, validated; an error names the
    file and each wrong key."""
    path = Path(path)
    catalog = path.with_name(CATALOG_FILE)
    raw, datasets = read_yaml(path), read_yaml(catalog)
    if "datasets" in raw:
        raise StageError(f"{path}: datasets: the dataset catalog belongs in {catalog}")
    if set(datasets) != {"datasets"}:
        raise StageError(f"{catalog}: expected one top-level key, datasets; found {sorted(datasets)}")
    try:
        return Params.model_validate({**raw, **datasets})
    except ValidationError as e:
        lines = {path: [], catalog: []}
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                allowed = _allowed_keys(err["loc"][:-1])
                msg = f"unknown key; accepted keys here: {allowed}" if allowed else "unknown key"
            elif err["type"] == "missing":
                msg = "missing key"
            lines[catalog if err["loc"][:1] == ("datasets",) else path].append(f"  {key}: {msg}")
        raise StageError("\n".join(f"{f}: invalid parameters\n" + "\n".join(found)
                                   for f, found in lines.items() if found))


def _allowed_keys(loc) -> list[str] | None:
    """Field names of the model found by following `loc` through the schema (for error messages)."""
    cls = Params
    for part in loc:
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            field = cls.model_fields.get(str(part))
            if field is None:
                return None
            cls = field.annotation
        else:  # a dict/list container: step into its value type
            args = typing.get_args(cls)
            cls = args[-1] if args else None
        while typing.get_origin(cls) in (typing.Union, types.UnionType):  # Optional[X] -> X
            cls = next(a for a in typing.get_args(cls) if a is not type(None))
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return sorted(cls.model_fields)
    return None


def dataset_arg(argv, params, usage: str, kind: str | None = None):
    """The single DATASET argument of a stage, checked against params.yaml's catalog (and kind)."""
    if len(argv) != 1:
        raise StageError(f"usage: {usage}")
    known = sorted(k for k, d in params.datasets.items() if kind in (None, d.kind))
    if argv[0] not in known:
        raise StageError(f"{CATALOG_FILE}: datasets.{argv[0]}: no such {kind + ' ' if kind else ''}dataset; known: {known}")
    return argv[0], params.datasets[argv[0]]


def size_arg(argv, sizes: list, key: str, usage: str) -> str:
    """The single SIZE argument of a training stage, one of the sizes params.yaml's `key` selects."""
    if len(argv) != 1 or argv[0] not in sizes:
        raise StageError(f"usage: {usage}, SIZE one of {key} {sizes}")
    return argv[0]

