"""The study plan: which jobs exist, the config slice each one gets, and where it writes.

`StudyPlan(cfg)` lists every job of a composed study (`jobs()`) as typed specs
(`JobSpec`): the Snakefile and the tests both read jobs from here, and no other code
builds their paths. The jobs of each concern are built in their own module: `base.py`
(the models' own jobs, naming and hashing), `sparsity.py`, `predictors.py`, `scaling.py`.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from actsparse.plan.base import config_hash
from actsparse.plan.predictors import PredictorJobs
from actsparse.plan.scaling import ScalingJobs
from actsparse.plan.sparsity import SparsityJobs
from actsparse.schema.job import JobSpec
from actsparse.schema.study import to_dict

__all__ = ["StudyPlan", "config_hash"]


class StudyPlan(SparsityJobs, PredictorJobs, ScalingJobs):
    @property
    def calibrated_models(self) -> list[str]:
        """Every trained or pretrained model (its statistics are a result of the study), and
        a decomposed model when a calibrated sparsity method (or threshold labels) runs on it."""
        needed = {
            m
            for m, entry, _ in self.sparse_variants
            if self.sparsity_entries[entry].impl.needs_calibration
        }
        needed |= {m for m, e in self.predictor_jobs if self._labels_need_calibration(e)}
        return [m for m in self.models if m in self.base_models or m in needed]

    def job(self, stage: str, variant: str) -> JobSpec:
        try:
            return self._index[(stage, variant)]
        except KeyError:
            raise KeyError(f"the study plans no {stage} job {variant!r}") from None

    @cached_property
    def _index(self) -> dict[tuple[str, str], JobSpec]:
        return {(j.stage, j.variant): j for j in self.jobs()}

    def jobs(self) -> list[JobSpec]:
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

    def upstream_dirs(self, job: JobSpec) -> list[str]:
        """Output folders of the jobs `job` reads (local model folders and hub ids excluded)."""
        own = {j.out_dir for j in self._index.values()}
        dirs = []
        for path in job.inputs.values():
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
    def summary_path(self) -> str:
        return f"{self.root}/summary.parquet"
