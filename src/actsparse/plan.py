"""The study plan: which jobs exist, the config slice each one gets, and where it writes.

Each job's *spec* holds only what that job needs: its stage's config group, the seed, and
the identities (output folders) of its inputs. The spec is hashed; the hash names the
output folder `<root>/<stage>/<variant>-<hash8>/` and goes into the rule's `params:`, so a
changed value reruns exactly the jobs whose slice it is in, and everything downstream.
The Snakefile and the tests both read jobs from here; no other code builds these paths.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from actsparse import sweeps
from actsparse.methods.predictors import PREDICTORS
from actsparse.methods.sparsity import SPARSITY
from actsparse.schema.corpus import TokenizerCfg
from actsparse.schema.study import StudyConfig, to_dict
from actsparse.schema.training import TRAIN_OPERATORS, SparseTrainCfg


def config_hash(obj: Any, n: int = 8) -> str:
    """Hex digest of the canonical JSON of `obj` (sorted keys), first `n` characters."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class Job:
    stage: str
    variant: str
    hash: str
    out_dir: str  # relative to the working directory
    spec: dict[str, Any]  # what the stage CLI receives and writes as config.yaml

    @property
    def spec_json(self) -> str:
        return json.dumps(self.spec, sort_keys=True, separators=(",", ":"))


class StudyPlan:
    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.root = f"{cfg.study.output_root.rstrip('/')}/{cfg.study.name}"
        # data and calibrate jobs are inputs of most others: built once each (a 7B sweep
        # asked for its data jobs ~400 times, each a config-to-dict conversion)
        self._data_jobs: dict[str, Job] = {}
        self._calibrate_jobs: dict[str, Job] = {}

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
    ) -> Job:
        # upstream outputs enter the hash by their place in the study (stage/variant-hash),
        # so hashes do not depend on the study's name or output root
        ids = {
            k: v[len(self.root) + 1 :] if v.startswith(self.root + "/") else v
            for k, v in inputs.items()
        }
        h = config_hash({"stage": stage, "config": config, "inputs": ids})
        out = f"{self.root}/{folder or stage}/{variant}-{h}"
        spec = {
            "study": self.cfg.study.name,
            "stage": stage,
            "variant": variant,
            "model": model,
            "hash": h,
            "output": out,
            "output_root": self.cfg.study.output_root,  # the MLflow store sits there
            "inputs": inputs,
            "config": config,
        }
        return Job(stage, variant, h, out, spec)

    # ----------------------------------------------------------------- jobs
    def data(self, variant: str) -> Job:
        if variant not in self._data_jobs:
            self._data_jobs[variant] = self._data(variant)
        return self._data_jobs[variant]

    def _data(self, variant: str) -> Job:
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

    def _eval_data(self, variant: str) -> Job:
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

    def train(self, model: str) -> Job:
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

    def import_gguf(self, model: str) -> Job:
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

    def calibration_data(self, model: str) -> Job:
        """The data job calibration reads for `model`: the study corpus's, or that of the
        `eval_data` corpus named by `calibrate.corpus` (tokenized with the study's tokenizer;
        every data job writes every split, so its train split is there)."""
        return self.data(self.data_variant(model, self.cfg.calibrate.corpus))

    def calibrate(self, model: str) -> Job:
        if model not in self._calibrate_jobs:
            self._calibrate_jobs[model] = self._calibrate(model)
        return self._calibrate_jobs[model]

    def _calibrate(self, model: str) -> Job:
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

    def evaluate(self, model: str) -> Job:
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
    ) -> Job:
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
        return self._job("evaluate", variant, config, inputs, model)

    # ----------------------------------------------------------------- low-rank sweep
    @staticmethod
    def ratio_tag(ratio: float) -> str:
        """0.2 -> 'r20' (percent of parameters removed, in variant names)."""
        return f"r{round(ratio * 100, 4):g}"

    @cached_property
    def decompose_entries(self) -> dict:
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

    def decompose(self, model: str, entry: str, ratio: float) -> Job:
        method_cfg = to_dict(self.decompose_entries[entry])
        method_cfg.pop("ratios"), method_cfg.pop("models")  # not this job's identity
        config = {
            "entry": entry,
            "method": method_cfg,
            "ratio": ratio,
            "load": self._model_load(model),
            "seed": self.cfg.study.seed,
        }
        inputs = {"model": self.model_path(model), "calibration": self.calibrate(model).out_dir}
        variant = self.decompose_variant(model, entry, ratio)
        return self._job("decompose", variant, config, inputs, model)

    def evaluate_decomposed(self, model: str, entry: str, ratio: float) -> Job:
        """A decomposition, with the model it was made from as the fidelity reference."""
        dec = self.decompose(model, entry, ratio)
        method = {"method": entry, "level": ratio}
        return self._evaluate(model, dec.variant, method, {}, weights=f"{dec.out_dir}/model")

    # ----------------------------------------------------------------- sparsity sweep
    @staticmethod
    def level_tag(level: float) -> str:
        """0.25 -> 's25', 0.875 -> 's87.5' (in variant names)."""
        return f"s{round(level * 100, 4):g}"

    @property
    def sparse_variants(self) -> list[tuple[str, str, float]]:
        """(model, entry, level) of every sparsified variant, in config order."""
        sp = self.cfg.sparsify
        out = []
        for name, entry in self.sparsity_entries.items():
            for model in self.models if entry.models is None else entry.models:
                out += [(model, name, level) for level in sp.levels_of(entry)]
        return out

    def sparse_variant(self, model: str, entry: str, level: float) -> str:
        return f"{model}.{entry}.{self.level_tag(level)}"

    @cached_property
    def sparsity_entries(self) -> dict:
        """entry -> the method's typed config (parsed once)."""
        return sweeps.sparsify_entries(self.cfg.sparsify)

    def _sparsity_method_cfg(self, entry: str) -> dict[str, Any]:
        method = self.cfg.sparsify.methods[entry]["method"]
        method_cfg = to_dict(self.sparsity_entries[entry])
        method_cfg.pop("levels"), method_cfg.pop("models")  # not a job's identity
        return {**method_cfg, "method": method}

    def _sparsity_inputs(self, model: str, entry: str) -> dict[str, str]:
        inputs = {"model": self.model_path(model)}
        if SPARSITY.get(self.cfg.sparsify.methods[entry]["method"]).needs_calibration:
            inputs["calibration"] = self.calibrate(model).out_dir
            # sequential calibration's tokens: the same corpus as the statistics
            inputs["data"] = self.calibration_data(model).out_dir
        return inputs  # top-K rules read no statistics or tokens

    def sparsify(self, model: str, entry: str, level: float) -> Job:
        config = {
            "entry": entry,
            "method": self._sparsity_method_cfg(entry),
            "level": level,
            "window": self.cfg.evaluate.seq_len,
            "load": self._model_load(model),
            "seed": self.cfg.study.seed,
        }
        inputs = self._sparsity_inputs(model, entry)
        if level > 0.0 and self._searches_allocation(entry):
            inputs["allocation"] = self.allocate(model, entry).out_dir
        return self._job(
            "sparsify", self.sparse_variant(model, entry, level), config, inputs, model
        )

    def _searches_allocation(self, entry: str) -> bool:
        cfg = self.sparsity_entries[entry]
        return bool(SPARSITY.get(cfg.method)().searches_allocation(cfg))

    @property
    def allocation_searches(self) -> list[tuple[str, str]]:
        """(model, entry) of every allocate job: one search per entry that searches its
        per-module levels for all of its levels at once (TEAL's greedy walk)."""
        return list(
            dict.fromkeys(
                (model, entry)
                for model, entry, level in self.sparse_variants
                if level > 0.0 and self._searches_allocation(entry)
            )
        )

    def allocate(self, model: str, entry: str) -> Job:
        """The allocation search of `entry` on `model`, for each of its nonzero levels."""
        levels = self.cfg.sparsify.levels_of(self.sparsity_entries[entry])
        config = {
            "entry": entry,
            "method": self._sparsity_method_cfg(entry),
            "levels": sorted(lv for lv in levels if lv > 0.0),
            "window": self.cfg.evaluate.seq_len,
            "load": self._model_load(model),
            "seed": self.cfg.study.seed,
        }
        inputs = self._sparsity_inputs(model, entry)
        return self._job("allocate", f"{model}.{entry}", config, inputs, model)

    def evaluate_sparse(self, model: str, entry: str, level: float) -> Job:
        """A sparsified variant, with the dense model (same weights) as fidelity reference."""
        sparsify = self.sparsify(model, entry, level)
        method = {"method": entry, "level": level}
        return self._evaluate(model, sparsify.variant, method, {"sparsity": sparsify.out_dir})

    # ----------------------------------------------------------------- predictors
    @cached_property
    def predictor_entries(self) -> dict:
        return sweeps.predictor_entries(self.cfg.predictors)

    @property
    def predictor_jobs(self) -> list[tuple[str, str]]:
        """(model, entry) of every predictors job, in config order."""
        return [
            (model, name)
            for name, entry in self.predictor_entries.items()
            for model in (self.models if entry.models is None else entry.models)
        ]

    def predictor_levels(self, entry: str) -> list[float]:
        return self.cfg.predictors.levels_of(
            self.predictor_entries[entry], self.cfg.sparsify.levels
        )

    @property
    def predicted_variants(self) -> list[tuple[str, str, float]]:
        """(model, entry, level) of every evaluation with predicted masks."""
        return [
            (model, entry, level)
            for model, entry in self.predictor_jobs
            if PREDICTORS.get(self.predictor_entries[entry].method).evaluated
            for level in self.predictor_levels(entry)
        ]

    def _labels_need_calibration(self, entry: str) -> bool:
        return bool(self.predictor_entries[entry].reads_statistics())

    def predictors(self, model: str, entry: str) -> Job:
        method_cfg = to_dict(self.predictor_entries[entry])
        method_cfg.pop("levels"), method_cfg.pop("models")  # not this job's identity
        config = {
            "entry": entry,
            "method": method_cfg,
            "levels": self.predictor_levels(entry),
            "window": self.cfg.evaluate.seq_len,
            "load": self._model_load(model),
            "seed": self.cfg.study.seed,
        }
        inputs = {
            "model": self.model_path(model),
            "data": self.data(self.data_variant(model)).out_dir,
        }
        if self._labels_need_calibration(entry):
            inputs["calibration"] = self.calibrate(model).out_dir
        return self._job("predictors", f"{model}.{entry}", config, inputs, model)

    def evaluate_predicted(self, model: str, entry: str, level: float) -> Job:
        """The model with predicted masks at `level` (and the oracle at the same level)."""
        pred = self.predictors(model, entry)
        method = {"method": entry, "level": level}
        variant = f"{model}.{entry}.{self.level_tag(level)}"
        return self._evaluate(model, variant, method, {"predictors": pred.out_dir})

    # ----------------------------------------------------------------- scaling grid
    @staticmethod
    def precision_tag(precision: str) -> str:
        """'b1.58' -> 'b158' (in variant names)."""
        return precision.replace(".", "")

    @property
    def grid_points(self) -> list[tuple[str, str, str, float]]:
        """(size, precision, variant, level) of every scaling-grid train job: the fitted
        grid (variant '') in config order, then each extra variant's points."""
        sc = self.cfg.scaling
        out = [(z, p, "", lv) for z in sc.sizes for p in sc.precisions for lv in sc.levels]
        for name, v in sc.variants.items():
            sizes = list(sc.sizes) if v.sizes is None else v.sizes
            out += [(z, p, name, lv) for z in sizes for p in v.precisions for lv in v.levels]
        return out

    def grid_variant(self, size: str, precision: str, variant: str, level: float) -> str:
        parts = [size, self.precision_tag(precision), *([variant] if variant else [])]
        return ".".join([*parts, self.level_tag(level)])

    def grid_train(self, size: str, precision: str, variant: str, level: float) -> Job:
        """One point of the scaling grid: a tiny model trained with the operator at `level`
        (dense at level 0) and `precision`; outputs under `<root>/scaling/train/`."""
        sc = self.cfg.scaling
        op = sc.variants[variant] if variant else sc
        operator = op.operator if level else "none"
        unused = SparseTrainCfg()  # a key the operator ignores keeps its default: no rerun
        sparse = {
            "operator": operator,
            "level": level,
            # the fitted grid acts at every projection input
            "sites": op.sites if variant and operator != "none" else unused.sites,
            "rescale": op.rescale if TRAIN_OPERATORS[operator].rescales else unused.rescale,
            "block": op.block if TRAIN_OPERATORS[operator].groups_sequences else unused.block,
            "precision": precision,
        }
        config = {
            "model": {
                "source": "train",
                "family": sc.family,
                "arch": {**to_dict(sc.sizes[size]), "hidden_act": sc.hidden_act},
            },
            "train": to_dict(sc.train),
            "sparse": sparse,
            "seed": self.cfg.study.seed,
        }
        inputs = {"data": self.data(self.cfg.data.name).out_dir}
        variant_name = self.grid_variant(size, precision, variant, level)
        return self._job("train", variant_name, config, inputs, folder="scaling/train")

    def scaling_fit(self) -> Job:
        """The scaling-law fit over every grid point (`<root>/scaling/fit-<hash>/`)."""
        points, inputs = {}, {}
        for size, precision, variant, level in self.grid_points:
            job = self.grid_train(size, precision, variant, level)
            points[job.variant] = {
                "size": size, "precision": precision, "variant": variant, "level": level,
            }  # fmt: skip
            inputs[f"point.{job.variant}"] = job.out_dir
        config = {
            "fit": to_dict(self.cfg.scaling.fit),
            "operator": self.cfg.scaling.operator,
            "points": points,
            "seed": self.cfg.study.seed,
        }
        return self._job("scaling", "fit", config, inputs, folder="scaling")

    @property
    def calibrated_models(self) -> list[str]:
        """Every trained or pretrained model (its statistics are a result of the study), and
        a decomposed model when a calibrated sparsity method (or threshold labels) runs on it."""
        needed = {
            m
            for m, entry, _ in self.sparse_variants
            if SPARSITY.get(self.cfg.sparsify.methods[entry]["method"]).needs_calibration
        }
        needed |= {m for m, e in self.predictor_jobs if self._labels_need_calibration(e)}
        return [m for m in self.models if m in self.base_models or m in needed]

    # ----------------------------------------------------------------- all jobs
    def job(self, stage: str, variant: str) -> Job:
        try:
            return self._index[(stage, variant)]
        except KeyError:
            raise KeyError(f"the study plans no {stage} job {variant!r}") from None

    @cached_property
    def _index(self) -> dict[tuple[str, str], Job]:
        return {(j.stage, j.variant): j for j in self.jobs()}

    def jobs(self) -> list[Job]:
        out = [self.import_gguf(m) for m in self.imported_models]
        out += [self.data(v) for v in self.data_variants]
        out += [self.train(m) for m in self.trained_models]
        out += [self.data(v) for _, v in self.eval_data_variants]
        out += [self.calibrate(m) for m in self.calibrated_models]
        decomposed = {self.decompose(*v).out_dir: v for v in self.decomposed_variants}
        for m in self.cfg.models.values():  # decomposed models outside the sweep
            job = self.decompose(m.base, m.entry, m.ratio) if m.source == "decompose" else None
            if job is not None and job.out_dir not in decomposed:
                decomposed[job.out_dir] = (m.base, m.entry, m.ratio)
        out += [self.decompose(*v) for v in decomposed.values()]
        out += [self.allocate(*v) for v in self.allocation_searches]
        out += [self.sparsify(*v) for v in self.sparse_variants]
        out += [self.predictors(*v) for v in self.predictor_jobs]
        out += [self.evaluate(m) for m in self.models]
        out += [self.evaluate_decomposed(*v) for v in self.decomposed_variants]
        out += [self.evaluate_sparse(*v) for v in self.sparse_variants]
        out += [self.evaluate_predicted(*v) for v in self.predicted_variants]
        if self.cfg.scaling.sizes:
            out += [self.grid_train(*p) for p in self.grid_points]
            out.append(self.scaling_fit())
        return out

    def upstream_dirs(self, job: Job) -> list[str]:
        """Output folders of the jobs `job` reads (local model folders and hub ids excluded)."""
        own = {j.out_dir for j in self._index.values()}
        dirs = []
        for path in job.spec["inputs"].values():
            d = path[: -len("/model")] if path.endswith("/model") else path
            if d in own and d not in dirs:
                dirs.append(d)
        return dirs

    def report_inputs(self) -> dict[str, list[str]]:
        """The job folders the report reads beside the study table, by what it draws from
        them: the study models' training curves, the calibrations' natural sparsity, the
        predictors' recall and hot/cold neurons, the scaling fit (a list of none or one).
        The report rule declares them and passes them on, so a folder that an earlier
        config left under another hash never reaches the report."""
        return {
            "train": [self.train(m).out_dir for m in self.trained_models],
            "calibrate": [self.calibrate(m).out_dir for m in self.calibrated_models],
            "predictors": [self.predictors(m, e).out_dir for m, e in self.predictor_jobs],
            "scaling_fit": [d for d in [self.scaling_fit_dir] if d is not None],
        }

    def claims_context(self) -> dict[str, Any]:
        """What the claims table needs beside the study table: each method entry's config
        (which registered method an entry name stands for), the models made by a
        decomposition, and the scaling fit's folder (or None)."""
        entries: dict[str, Any] = {}
        for group in (self.cfg.sparsify, self.cfg.decompose, self.cfg.predictors):
            entries |= to_dict(group.methods)
        return {
            "entries": entries,
            "decomposed_models": sorted(
                m for m, c in self.cfg.models.items() if c.source == "decompose"
            ),
            "scaling_fit": self.scaling_fit_dir,
        }

    @property
    def scaling_fit_dir(self) -> str | None:
        """The scaling-law fit's folder; None when the study has no scaling grid."""
        return self.scaling_fit().out_dir if self.cfg.scaling.sizes else None

    @property
    def summary_path(self) -> str:
        return f"{self.root}/summary.parquet"
