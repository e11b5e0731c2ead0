"""Loading never executes what the study did not write; servers bind to localhost."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from actsparse.models import load_model


def test_no_pickle_loading_in_the_package(repo):
    """safetensors everywhere; `torch.load` only with weights_only=True; no pickled numpy."""
    offences = []
    for path in (repo / "src").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(
                r"import pickle|pickle\.loads?\(|allow_pickle=True|torch\.load\((?!.*weights_only=True)",
                line,
            ):
                offences.append(f"{path.relative_to(repo)}:{n}: {line.strip()}")
    assert offences == []


def test_remote_code_is_not_run_unless_the_config_allows_it(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "auto_map": {
                    "AutoConfig": "configuration_evil.EvilConfig",
                    "AutoModelForCausalLM": "modeling_evil.Evil",
                },
            }
        )
    )
    (tmp_path / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(tmp_path)
    assert not marker.exists()


def test_the_mlflow_ui_binds_to_localhost_by_default():
    out = subprocess.run(
        [sys.executable, "-m", "actsparse.cli", "ui", "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--host 127.0.0.1" in out and "0.0.0.0" not in out
