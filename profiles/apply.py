"""Apply a profile (profiles/<name>.yaml: a subset of params.yaml's keys) to params.yaml.

Mappings are merged key by key, anything else (lists, values) replaces; comments in params.yaml are
kept. The result is validated before it is written, so a bad profile changes nothing.

Usage: python profiles/apply.py NAME
"""
import io
import sys
from pathlib import Path

import yaml
from ruamel.yaml import YAML

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lib.errors import StageError
from lib.params import load_params  # noqa: E402


def merge(target, overrides, path=""):
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict) and key != "models":
            merge(target[key], value, f"{path}{key}.")
        else:  # a profile's model grid replaces the default grid whole
            target[key] = value


def main(name):
    profile = Path(__file__).parent / f"{name}.yaml"
    if not profile.exists():
        known = sorted(p.stem for p in profile.parent.glob("*.yaml"))
        raise StageError(f"{profile}: no such profile; known: {known}")
    rt = YAML()
    rt.default_flow_style = None  # leaf mappings stay on one line, as params.yaml writes them
    rt.width = 120
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    params = rt.load(Path("params.yaml"))
    merge(params, yaml.safe_load(profile.read_text()))
    text = io.StringIO()
    rt.dump(params, text)
    candidate = Path(".params.profile.yaml")
    candidate.write_text(text.getvalue())
    try:
        load_params(candidate)
    finally:
        candidate.unlink()
    Path("params.yaml").write_text(text.getvalue())
    print(f"params.yaml: applied profile '{name}' (git diff params.yaml shows the change)")


if __name__ == "__main__":
    try:
        main(sys.argv[1] if len(sys.argv) == 2 else "")
    except StageError as e:
        sys.exit(f"error: {e}")
