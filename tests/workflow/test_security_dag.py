"""Config values reach the shell quoted: a corpus path that is a shell command if unquoted."""

from __future__ import annotations

import pytest
from smk import copy_workflow, snakemake

pytestmark = pytest.mark.workflow


def test_config_values_never_reach_a_shell_unquoted(tmp_path, repo, shared_data):
    wd = copy_workflow(repo, tmp_path / "wd")
    evil = tmp_path / "corpus; touch pwned $(touch pwned2) `touch pwned3`.txt"
    evil.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:200_000])
    overrides = (
        f"overrides=[data=wikitext2_local,'data.files.train=\"{evil}\"',"
        f"'data.files.test=\"{evil}\"']"
    )
    r = snakemake(wd, "--until", "data", "--config", "experiment=smoke", overrides)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert list((wd / "data" / "smoke" / "data").glob("wikitext2_local-*/manifest.parquet"))
    for name in ("pwned", "pwned2", "pwned3"):
        assert not (wd / name).exists() and not (tmp_path / name).exists()
