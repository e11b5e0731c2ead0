"""The jobs every study has: its models' data, training, import, calibration, low-rank
decomposition and dense evaluation; and how a job is named, hashed and placed.

Each job's *spec* (`JobSpec`) holds only what that job needs: its stage's config slice,
the seed, and the identities (output folders) of its inputs. The spec is hashed; the hash
names the output folder `<root>/<stage>/<variant>-<hash8>/` and goes into the rule's
`params:`, so a changed value reruns exactly the jobs whose slice it is in, and everything
downstream. The sweeps add their jobs in `sparsity.py`, `predictors.py` and `scaling.py`;
`StudyPlan` (the package's `__init__`) puts them together.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from typing import Any

from actsparse import sweeps
from actsparse.methods.registry import MethodEntry
from actsparse.schema.corpus import TokenizerCfg
from actsparse.schema.job import JobSpec
from actsparse.schema.study import StudyConfig, to_dict


def config_hash(obj: Any, n: int = 8) -> str:
    """Hex digest of the canonical JSON of `obj` (sorted keys), first `n` characters."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


class PlanBase:
    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.root = f"{cfg.study.output_root.rstrip('/')}/{cfg.study.name}"
        # data and calibrate jobs are inputs of most others: built once each (a 7B sweep
        # asked for its data jobs ~400 times, each a config-to-dict conversion)
        self._data_jobs: dict[str, JobSpec] = {}
        self._calibrate_jobs: dict[str, JobSpec] = {}

    # ----------------------------------------------------------------- naming
    @property
    def models(self) -> list[str]:
        return list(self.cfg.models)

    @property
    def trained_models(self) -> list[str]:
        return [m for m, c in self.cfg.models.items() if c.source == "train"]

    @property
    def base_models(self) -> list[str]:
        """Models that are not themselves a decomposition of another (what decompose reads)."""
        return [m for m, c in self.cfg.models.items() if c.source != "decompose"]

    def root_model(self, model: str) -> str:
        """The trained or pretrained model a (possibly decomposed) model comes from."""
        m = self.cfg.models[model]
        return self.root_model(m.base) if m.source == "decompose" else model

    @property
    def imported_models(self) -> list[str]:
        return [m for m, c in self.cfg.models.items() if c.source == "gguf"]

    def own_tokenizer(self, model: str) -> bool:
        """A checkpoint (hub, local or GGUF) reads its corpus with its own tokenizer; models
        trained here read it with the study's BPE (unless the study has no BPE)."""
        source = self.cfg.models[self.root_model(model)].source
        return source != "train" or self.cfg.data.tokenizer.kind == "model"

    def data_variant(self, model: str, corpus: str | None = None) -> str:
        """One data job per corpus, or per (corpus, model) when tokenizing with the model's
        own tokenizer. `corpus`: an `eval_data` corpus instead of the study's."""
        name = corpus or self.cfg.data.name
        if self.own_tokenizer(model):
            return f"{name}.{self.root_model(model)}"
        return name

    @property
    def data_variants(self) -> list[str]:
        grid = {self.cfg.data.name} if self.cfg.scaling.sizes else set()  # trains on it
        return sorted({self.data_variant(m) for m in self.models} | grid)

    @property
    def eval_data_variants(self) -> list[tuple[str, str]]:
        """(corpus, variant) of every extra evaluation corpus's data job."""
        return sorted(
            {(c, self.data_variant(m, c)) for c in self.cfg.eval_data for m in self.models}
        )

    def _job(
        self,
        stage: str,
        variant: str,
        config: dict[str, Any],
        inputs: dict[str, str],
        model: str = "",
        folder: str | None = None,
        method: str = "dense",
    ) -> JobSpec:
        # upstream outputs enter the hash by their place in the study (stage/variant-hash),
        # so hashes do not depend on the study's name or output root
        ids = {
            k: v[len(self.root) + 1 :] if v.startswith(self.root + "/") else v
            for k, v in inputs.items()
        }
        h = config_hash({"stage": stage, "config": config, "inputs": ids})
        out = f"{self.root}/{folder or stage}/{variant}-{h}"
        return JobSpec(
            study=self.cfg.study.name,
            stage=stage,
            variant=variant,
            model=model,
            method=method,
            hash=h,
            output=out,
            output_root=self.cfg.study.output_root,  # the MLflow store sits there
            inputs=inputs,
            config=config,
        )

    # ----------------------------------------------------------------- jobs
    def data(self, variant: str) -> JobSpec:
        if variant not in self._data_jobs:
            self._data_jobs[variant] = self._data(variant)
        return self._data_jobs[variant]

    def _data(self, variant: str) -> JobSpec:
        name = variant.split(".", 1)[0]
        if name in self.cfg.eval_data:
            return self._eval_data(variant)
        data = to_dict(self.cfg.data)
        model = variant.partition(".")[2]
        tokenizer_from, inputs = self._tokenizer_source(model) if model else (None, {})
        if model:
            data["tokenizer"] = to_dict(TokenizerCfg(kind="model"))  # no BPE of its own
        # no seed: the corpus, its splits and the BPE tokenizer do not depend on one
        config = {"data": data, "tokenizer_from": tokenizer_from}
        return self._job("data", variant, config, inputs)

    def _tokenizer_source(self, model: str) -> tuple[dict[str, Any], dict[str, str]]:
        """Where a checkpoint's own tokenizer loads from, and the job that makes it (an
        imported GGUF's folder holds the tokenizer the file carries)."""
        m = self.cfg.models[model]
        if m.source == "gguf":  # a job's output: named as an input (hashes stay root-free)
            return {"input": "model"}, {"model": self.model_path(model)}
        source = {"path": m.path, "revision": m.revision, "trust_remote_code": m.trust_remote_code}
        return source, {}

    def _eval_data(self, variant: str) -> JobSpec:
        """An extra evaluation corpus, tokenized with the study's tokenizer: the study data
        job's trained BPE (an input), or the model's own."""
        name, _, model = variant.partition(".")
        data = to_dict(self.cfg.eval_data[name])
        data["tokenizer"] = to_dict(self.cfg.data.tokenizer)  # the study's, not its own
        if model:
            tokenizer_from, inputs = self._tokenizer_source(model)
            data["tokenizer"] = to_dict(TokenizerCfg(kind="model"))
            config = {"data": data, "tokenizer_from": tokenizer_from}
            return self._job("data", variant, config, inputs)
        config = {"data": data, "tokenizer_from": None}
        return self._job(
            "data", variant, config, {"tokenizer": self.data(self.cfg.data.name).out_dir}
        )

    def train(self, model: str) -> JobSpec:
        if self.cfg.models[model].source != "train":
            raise KeyError(f"model {model!r} is pretrained; it has no train job")
        config = {
            # what building the model needs: loading options (dtype, ...) are not its identity
            "model": {
                k: v
                for k, v in to_dict(self.cfg.models[model]).items()
                if k in ("source", "family", "arch")
            },
            "train": to_dict(self.cfg.train),
            "seed": self.cfg.study.seed,
        }
        inputs = {"data": self.data(self.data_variant(model)).out_dir}
        return self._job("train", model, config, inputs, model)

    def import_gguf(self, model: str) -> JobSpec:
        m = self.cfg.models[model]
        if m.source != "gguf":
            raise KeyError(f"model {model!r} is not a GGUF; it has no import_gguf job")
        # what the folder holds: the file (identified by its sha256 where given), float32
        config = {"gguf": to_dict(m.gguf)}
        return self._job("import_gguf", model, config, {}, model)

    def model_path(self, model: str) -> str:
        """Where the model's weights load from: a train, import or decompose job's output, a
        local folder or a hub id."""
        m = self.cfg.models[model]
        if m.source == "decompose":
            return f"{self.decompose(m.base, m.entry, m.ratio).out_dir}/model"
        if m.source == "gguf":
            return f"{self.import_gguf(model).out_dir}/model"
        return f"{self.train(model).out_dir}/model" if m.source == "train" else str(m.path)

    def _model_load(self, model: str) -> dict[str, Any]:
        m = self.cfg.models[self.root_model(model)]
        return {"dtype": m.dtype, "revision": m.revision, "trust_remote_code": m.trust_remote_code}

    def calibration_data(self, model: str) -> JobSpec:
        """The data job calibration reads for `model`: the study corpus's, or that of the
        `eval_data` corpus named by `calibrate.corpus` (tokenized with the study's tokenizer;
        every data job writes every split, so its train split is there)."""
        return self.data(self.data_variant(model, self.cfg.calibrate.corpus))

    def calibrate(self, model: str) -> JobSpec:
        if model not in self._calibrate_jobs:
            self._calibrate_jobs[model] = self._calibrate(model)
        return self._calibrate_jobs[model]

    def _calibrate(self, model: str) -> JobSpec:
        config = {
            "calibrate": to_dict(self.cfg.calibrate),
            "load": self._model_load(model),
            "seed": self.cfg.study.seed,
        }
        inputs = {
            "model": self.model_path(model),
            "data": self.calibration_data(model).out_dir,
        }
        return self._job("calibrate", model, config, inputs, model)

    def evaluate(self, model: str) -> JobSpec:
        """The dense baseline: the model evaluated against itself as the fidelity reference;
        a decomposed model against the model it was made from (so that composed variants,
        measured against it, add up to an error against the original)."""
        inputs = {}
        if self.cfg.models[model].source == "decompose":
            inputs["reference"] = self.model_path(self.root_model(model))
        return self._evaluate(model, f"{model}.dense", {"method": "dense"}, inputs)

    def _evaluate(
        self,
        model: str,
        variant: str,
        method: dict[str, Any],
        inputs: dict[str, str],
        weights: str | None = None,
    ) -> JobSpec:
        """An evaluate job of `model`'s weights, or of `weights` made from them (a
        decomposition); `model`'s own weights are the fidelity reference."""
        config = {
            "evaluate": to_dict(self.cfg.evaluate),
            "load": self._model_load(model),
            **method,
            "seed": self.cfg.study.seed,
        }
        path = self.model_path(model)
        inputs = {
            "model": weights or path,
            "reference": path,
            "data": self.data(self.data_variant(model)).out_dir,
            **{
                f"data.{c}": self.data(self.data_variant(model, c)).out_dir
                for c in self.cfg.eval_data
            },
            **inputs,
        }
        return self._job("evaluate", variant, config, inputs, model, method=method["method"])

    # ----------------------------------------------------------------- low-rank sweep
    @staticmethod
    def ratio_tag(ratio: float) -> str:
        """0.2 -> 'r20' (percent of parameters removed, in variant names)."""
        return f"r{round(ratio * 100, 4):g}"

    @cached_property
    def decompose_entries(self) -> dict[str, MethodEntry]:
        return sweeps.decompose_entries(self.cfg.decompose)

    @property
    def decomposed_variants(self) -> list[tuple[str, str, float]]:
        """(model, entry, ratio) of every decomposition in the sweep, in config order."""
        out = []
        for name, entry in self.decompose_entries.items():
            for model in self.base_models if entry.models is None else entry.models:
                out += [(model, name, r) for r in self.cfg.decompose.ratios_of(entry)]
        return out

    def decompose_variant(self, model: str, entry: str, ratio: float) -> str:
        return f"{model}.{entry}.{self.ratio_tag(ratio)}"

    def decompose(self, model: str, entry: str, ratio: float) -> JobSpec:
        config = {
            "entry": entry,
            "method": self.decompose_entries[entry].job_config(),
            "ratio": ratio,
            "load": self._model_load(model),
            "seed": self.cfg.study.seed,
        }
        inputs = {"model": self.model_path(model), "calibration": self.calibrate(model).out_dir}
        method = self.decompose_entries[entry]
        if method.method_instance().update_step(method.cfg) is not None:
            inputs["data"] = self.calibration_data(model).out_dir  # the update's tokens
        variant = self.decompose_variant(model, entry, ratio)
        return self._job("decompose", variant, config, inputs, model, method=entry)

    def evaluate_decomposed(self, model: str, entry: str, ratio: float) -> JobSpec:
        """A decomposition, with the model it was made from as the fidelity reference."""
        dec = self.decompose(model, entry, ratio)
        method = {"method": entry, "level": ratio}
        return self._evaluate(model, dec.variant, method, {}, weights=f"{dec.out_dir}/model")
