"""A profile (profiles/<name>.yaml: a subset of params.yaml's keys) as `dvc exp run --set-param` overrides.

params.yaml is never written: the profile runs as a DVC experiment named after it, whose params are
params.yaml with the profile's values. Mappings are merged key by key (one `-S key.path=value` per leaf);
lists and values replace; `models` is replaced whole (`-S ~models -S +models={...}`: a profile's model
grid is the grid, not an addition to the default one).

Before anything runs, DVC's own override code (the one `dvc exp run -S` uses) applies the overrides to a
scratch copy of params.yaml, and the project's params schema must accept the result (that it equals the
merge above is tests/test_profiles.py's); a bad profile fails with its file and key, and no experiment is started.

Usage (from the repository root):
  python profiles/overrides.py NAME                  print the overrides, shell-quoted:
                                                       eval "dvc exp run --queue -n NAME $(python profiles/overrides.py NAME)"
  python profiles/overrides.py NAME --run [FLAGS]    run `dvc exp run FLAGS -n NAME -S ...` (what `make repro PROFILE=NAME`
                                                       does, with --temp); an experiment NAME of this commit is replaced
NAME may also be a path to a profile file (a name is profiles/NAME.yaml).
"""
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # run as a script from profiles/: the project's params loader
from lib.errors import StageError  # noqa: E402
from lib.params import load_params  # noqa: E402

PROFILES = Path(__file__).resolve().parent
PARAMS = Path("params.yaml")   # the project's, in the current directory (as for DVC)
REPLACED_WHOLE = {"models"}    # mappings a profile replaces instead of merging into


class ProfileError(Exception):
    pass


def merge(target: dict, overrides: dict) -> dict:
    """`overrides` merged into `target` (in place): mappings key by key, anything else replaces, and the
    keys in REPLACED_WHOLE replace whole. The params a profile's experiment runs with."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict) and key not in REPLACED_WHOLE:
            merge(target[key], value)
        else:
            target[key] = value
    return target


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-./]*")   # a string Hydra reads unquoted as that string
_KEYWORDS = {"true", "false", "null", "nan", "inf"}


def hydra_value(value, where: str) -> str:
    """`value` in Hydra's override grammar (what `dvc exp run -S key=VALUE` parses)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                          ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _KEYWORDS:
            return value
        if "${" in value or "\\" in value or ("'" in value and '"' in value):
            raise ProfileError(f"{where}: {value!r}: a string with a backslash, '${{' or both kinds of quote "
                               "cannot be passed to `dvc exp run -S`")
        quote = '"' if '"' not in value else "'"
        return f"{quote}{value}{quote}"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v, f"{where}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str) or not _KEY.fullmatch(k):
                raise ProfileError(f"{where}: key {k!r}: only letters, digits, '_' and '-' (not first) are "
                                   "accepted by `dvc exp run -S`")
        return "{" + ",".join(f"{k}:{hydra_value(v, f'{where}.{k}')}" for k, v in value.items()) + "}"
    raise ProfileError(f"{where}: {value!r}: not a YAML scalar, list or mapping")


def overrides(base: dict, profile: dict, path: str = "") -> list[str]:
    """The `dvc exp run -S` overrides that turn `base` (params.yaml) into merge(base, profile)."""
    out = []
    for key, value in profile.items():
        where = f"{path}{key}"
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ProfileError(f"{where}: not a key `dvc exp run -S` accepts")
        if key not in base:
            out.append(f"+{where}={hydra_value(value, where)}")
        elif isinstance(value, dict) and isinstance(base[key], dict) and key not in REPLACED_WHOLE:
            out += overrides(base[key], value, f"{where}.")
        elif isinstance(value, dict) or isinstance(base[key], dict):
            # a mapping replaced whole (or a value where a mapping was): Hydra merges a mapping into a
            # mapping, so delete first, then add
            out += [f"~{where}", f"+{where}={hydra_value(value, where)}"]
        else:
            out.append(f"{where}={hydra_value(value, where)}")
    return out


def profile_path(name: str) -> Path:
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return Path(name)
    return PROFILES / f"{name}.yaml"


def shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_profile(name: str) -> tuple[Path, dict]:
    path = profile_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES.glob("*.yaml"))
        raise ProfileError(f"{shown(path)}: no such profile; known: {known}")
    try:
        profile = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ProfileError(f"{shown(path)}: not valid YAML: {e}")
    if not isinstance(profile, dict) or not profile:
        raise ProfileError(f"{shown(path)}: a profile is a mapping of params.yaml's keys")
    return path, profile


def dvc_applied(params_text: str, ovs: list[str], scratch: Path) -> dict:
    """params.yaml as `dvc exp run -S OVERRIDES` writes it, written to `scratch` by DVC's own code."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides
    scratch.write_text(params_text)
    try:
        apply_overrides(scratch, ovs)
    except InvalidArgumentError as e:
        raise ProfileError(f"`dvc exp run` refuses these overrides: {e.__cause__ or e}")
    from dvc.utils.serialize import loads_yaml
    return loads_yaml(scratch.read_text())


def compute(name: str) -> list[str]:
    """The validated overrides of profile `name` over ./params.yaml."""
    path, profile = load_profile(name)
    if not PARAMS.is_file():
        raise ProfileError(f"{PARAMS}: not found (run from the repository root)")
    from dvc.utils.serialize import loads_yaml
    params_text = PARAMS.read_text()
    base = loads_yaml(params_text)   # as DVC reads it (YAML 1.2: `2e-05` is a number, not a string)
    try:
        ovs = overrides(base, profile)
    except ProfileError as e:
        raise ProfileError(f"{shown(path)}: {e}")
    # next to params.yaml, where the project's loader expects the files params.yaml refers to
    fd, name_ = tempfile.mkstemp(prefix=".params.profile-", suffix=".yaml", dir=PARAMS.resolve().parent)
    os.close(fd)
    scratch = Path(name_)
    try:
        try:
            dvc_applied(params_text, ovs, scratch)
        except ProfileError as e:
            raise ProfileError(f"{shown(path)}: {e}")
        try:
            load_params(scratch)
        except StageError as e:
            detail = str(e).split("\n", 1)[1] if "\n" in str(e) else str(e).replace(str(scratch), "")
            raise ProfileError(f"{shown(path)}: params.yaml with this profile is invalid\n{detail}")
    finally:
        scratch.unlink(missing_ok=True)
    return ovs


def exp_ref(name: str) -> str | None:
    """The git ref of experiment `name` of the current commit, if there is one."""
    head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return None
    head = head.stdout.strip()
    ref = f"refs/exps/{head[:2]}/{head[2:]}/{name}"
    found = subprocess.run(["git", "show-ref", "--verify", "--quiet", ref])
    return ref if found.returncode == 0 else None


def run(name: str, flags: list[str]) -> None:
    """`dvc exp run FLAGS -n NAME -S ...`, replacing an experiment NAME of this commit; does not return."""
    ovs = compute(name)
    exp = Path(name).stem
    cmd = ["dvc", "exp", "run", *flags, "-n", exp, *[a for o in ovs for a in ("-S", o)]]
    ref = exp_ref(exp)
    if ref:
        print(f"profile '{exp}': replacing the experiment '{exp}' of this commit (dvc exp remove {ref})", flush=True)
        subprocess.run(["dvc", "exp", "remove", ref], check=True)
    print(shlex.join(cmd), flush=True)
    os.execvp(cmd[0], cmd)


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-") or (len(argv) > 1 and argv[1] != "--run"):
        sys.exit("usage" + __doc__.split("Usage", 1)[1].rstrip())
    try:
        if len(argv) > 1:
            run(argv[0], argv[2:])
        else:
            print(" ".join(shlex.quote(a) for o in compute(argv[0]) for a in ("-S", o)))
    except ProfileError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
