"""The whole study config (`conf/study.yaml` composed): its groups, the checks that span
groups, and `to_dict`, the plain form a job's config hash is computed from."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, OmegaConf

from actsparse.schema.corpus import DataCfg
from actsparse.schema.models import ModelCfg
from actsparse.schema.stages import (
    CalibrateCfg,
    DecomposeCfg,
    EvaluateCfg,
    PredictorsCfg,
    ResourcesCfg,
    SparsifyCfg,
)
from actsparse.schema.training import ScalingCfg, TrainCfg


@dataclass
class StudyCfg:
    name: str = MISSING
    seed: int = MISSING
    output_root: str = MISSING  # outputs go to <output_root>/<name>/, relative to the workdir

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            out.append(("name", f"must be a plain folder name ([A-Za-z0-9_.-]), got {self.name!r}"))
        if self.seed < 0:
            out.append(("seed", f"must be >= 0, got {self.seed}"))
        return out


@dataclass
class StudyConfig:
    study: StudyCfg = field(default_factory=StudyCfg)
    data: DataCfg = field(default_factory=DataCfg)
    models: dict[str, ModelCfg] = field(default_factory=dict)
    train: TrainCfg = field(default_factory=TrainCfg)
    calibrate: CalibrateCfg = field(default_factory=CalibrateCfg)
    decompose: DecomposeCfg = field(default_factory=DecomposeCfg)
    sparsify: SparsifyCfg = field(default_factory=SparsifyCfg)
    predictors: PredictorsCfg = field(default_factory=PredictorsCfg)
    evaluate: EvaluateCfg = field(default_factory=EvaluateCfg)
    scaling: ScalingCfg = field(default_factory=ScalingCfg)
    # more corpora every evaluate job also measures (held-out split), tokenized with the
    # study's tokenizer (their own `tokenizer` key is ignored): calibrate on `data`,
    # evaluate on both
    eval_data: dict[str, DataCfg] = field(default_factory=dict)
    resources: ResourcesCfg = field(default_factory=ResourcesCfg)

    def problems(self) -> list[tuple[str, str]]:
        """What the schema alone can check. `actsparse.validation.study_problems` adds
        the method entries, site names and GGUF files (registries, adapters, headers)."""
        out: list[tuple[str, str]] = []
        groups = (
            "study", "data", "train", "calibrate", "decompose", "sparsify", "predictors",
            "evaluate", "scaling",
        )  # fmt: skip
        for group in (*groups, "resources"):
            out += [(f"{group}.{k}", m) for k, m in getattr(self, group).problems()]
        for name, corpus in self.eval_data.items():
            out += [(f"eval_data.{name}.{k}", m) for k, m in corpus.problems()]
            if name == self.data.name or corpus.name == self.data.name:
                out.append((f"eval_data.{name}.name", f"{corpus.name!r} is the study's corpus"))
            elif corpus.name != name:  # the key names the data job, the name the table rows
                out.append(
                    (f"eval_data.{name}.name", f"must equal its key {name!r}, got {corpus.name!r}")
                )
        corpus = self.calibrate.corpus
        if corpus is not None and corpus not in self.eval_data:
            known = ", ".join(sorted(self.eval_data)) or "none"
            out.append(
                (
                    "calibrate.corpus",
                    f"unknown corpus {corpus!r}: must be null (the study's corpus, "
                    f"{self.data.name!r}) or an eval_data entry (eval_data corpora: {known}; "
                    "add one with `- /data@eval_data.<name>: <corpus>`)",
                )
            )
        # entries name the variants and the `method` column of the study table: unique
        sweeps = ("sparsify", "decompose", "predictors")
        for i, a in enumerate(sweeps):
            for b in sweeps[i + 1 :]:
                both = set(getattr(self, a).methods) & set(getattr(self, b).methods)
                if both:
                    out.append(
                        (f"{b}.methods", f"entry names also used by {a}.methods: {sorted(both)}")
                    )
        if self.scaling.sizes and self.data.tokenizer.kind == "model":
            out.append(("data.tokenizer.kind", "'model' needs pretrained models; the scaling "
                        "grid trains models here (use bpe)"))  # fmt: skip
        if not self.scaling.sizes and not any(
            m.source != "decompose" for m in self.models.values()
        ):
            out.append(
                (
                    "models",
                    "the study needs at least one model (trained or pretrained) or a scaling grid",
                )
            )
        for name, model in self.models.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                out.append((f"models.{name}", "model names may use only letters, digits and _"))
            out += [(f"models.{name}.{k}", m) for k, m in model.problems()]
            if model.source == "decompose":
                out += self._decomposed_model_problems(name, model)
            if model.source == "train":
                if self.data.tokenizer.kind == "model":
                    out.append(
                        (
                            "data.tokenizer.kind",
                            f"'model' needs pretrained models; models.{name} is trained here",
                        )
                    )
                limit = model.arch.max_position_embeddings
                if self.evaluate.seq_len is None:  # the window is the model's context
                    out += [(f"evaluate.{k}", m) for k, m in self.evaluate.protocol_problems(limit)]
                for key, seq_len in (
                    ("train.seq_len", self.train.seq_len),
                    ("calibrate.seq_len", self.calibrate.seq_len),
                    ("evaluate.seq_len", self.evaluate.seq_len or limit),
                ):
                    if seq_len > limit:
                        out.append(
                            (
                                key,
                                f"{seq_len} exceeds models.{name}.arch.max_position_embeddings={limit}",
                            )
                        )
                    elif key == "evaluate.seq_len":
                        for k in ("max_tokens", "eval_data_max_tokens"):
                            v = getattr(self.evaluate, k)
                            if (v or seq_len) < seq_len:
                                out.append(
                                    (
                                        f"evaluate.{k}",
                                        f"{v} does not fill one window of {seq_len} tokens ({name})",
                                    )
                                )
            elif model.source in ("pretrained", "gguf") and self.evaluate.seq_len is None:
                out.append(
                    (
                        "evaluate.seq_len",
                        f"must be set for pretrained models (models.{name}): "
                        "their context can be 32k tokens or more; e.g. 2048",
                    )
                )
        return out

    def _decomposed_model_problems(self, name: str, model: ModelCfg) -> list[tuple[str, str]]:
        key = f"models.{name}"
        base = self.models.get(model.base or "")
        if base is None or base.source == "decompose":
            models = [m for m, c in self.models.items() if c.source != "decompose"]
            return [(f"{key}.base", f"must name a trained or pretrained model of the study "
                     f"({', '.join(models)}); got {model.base!r}")]  # fmt: skip
        if model.entry not in self.decompose.methods:
            return [(f"{key}.entry", f"unknown decompose entry {model.entry!r}; entries: "
                     f"{', '.join(self.decompose.methods) or 'none'}")]  # fmt: skip
        return []

    def family_of(self, model: str) -> str | None:
        """A trained (or decomposed-from-trained) model's family; None for pretrained."""
        m = self.models[model]
        if m.source == "decompose":
            return self.family_of(m.base) if m.base in self.models else None
        return m.family if m.source == "train" else None


def to_dict(obj: Any) -> Any:
    """A plain, JSON-able dict of a config dataclass."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)
