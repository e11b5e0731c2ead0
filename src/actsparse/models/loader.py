"""The one model loader: a local `save_pretrained` folder or a Hugging Face hub id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from actsparse.models.adapters import FamilyAdapter, adapter_for
from actsparse.models.lowrank import is_lowrank, load_lowrank
from actsparse.schema.models import local_model_path_problem

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadCfg:
    """How a stage loads its model (part of each model-reading job's config slice)."""

    dtype: str = "float32"
    revision: str | None = None
    trust_remote_code: bool = False


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so wall-clock timings measure it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def load_model_as(path: str | Path, cfg: LoadCfg, device: str | torch.device = "cpu"):
    return load_model(path, cfg.dtype, cfg.revision, cfg.trust_remote_code, device)


def load_model(
    path: str | Path,
    dtype: str = "float32",
    revision: str | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, FamilyAdapter]:
    """Load a causal LM in eval mode with its family adapter.

    A local path must be a folder with `config.json`; anything else is taken as a hub id.
    `trust_remote_code` stays off unless the model config turns it on.
    """
    path = str(path)
    problem = local_model_path_problem(path)
    if problem:
        raise FileNotFoundError(problem)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    local = Path(path).expanduser().is_dir()
    config = AutoConfig.from_pretrained(
        path, revision=revision, trust_remote_code=trust_remote_code, local_files_only=local
    )
    adapter = adapter_for(config.model_type)
    try:
        if local and is_lowrank(path):  # a decompose job's output: factors swapped in
            model = load_lowrank(path, DTYPES[dtype])
        else:
            model = AutoModelForCausalLM.from_pretrained(
                path,
                revision=revision,
                trust_remote_code=trust_remote_code,
                local_files_only=local,
                dtype=DTYPES[dtype],
                use_safetensors=True if local else None,
            )
    except Exception as e:  # noqa: BLE001 - say which checkpoint, whatever the library raised
        if not local:
            raise
        raise ValueError(
            f"could not load the model weights in {path} (corrupted or truncated?): {e}"
        ) from e
    model.to(device).eval()
    check_finite_weights(model, path)
    return model, adapter


@torch.no_grad()
def check_finite_weights(model: torch.nn.Module, where: str) -> None:
    """Fail loudly, naming the parameter (and so the layer), on NaN or inf weights."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise FloatingPointError(f"non-finite weights (NaN or inf) in {name} of {where}")
