"""The cluster environment file pins exactly what pyproject.toml pins."""

import re
import tomllib

import yaml


def _pins(reqs):
    return {
        m.group(1).lower(): m.group(2)
        for r in reqs
        if (m := re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", r.strip()))
    }


def test_envs_and_pyproject_pins_agree(repo):
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    py_pins = _pins(project["dependencies"]) | _pins(project["optional-dependencies"]["gpu"])
    env = yaml.safe_load((repo / "envs" / "cluster.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_pins = _pins(pip)
    assert py_pins["torch"] == "2.13.0" and py_pins["triton"] == "3.7.1"
    assert env_pins == py_pins
