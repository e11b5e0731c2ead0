import hashlib
import shutil

import numpy as np
import pytest
from transformers import AutoTokenizer

from actsparse.data import SPLITS, TokenData, load_corpus
from actsparse.schema.corpus import DataCfg, SplitFiles
from actsparse.stages import data
from actsparse.stages.job import run_job
from actsparse.tables import TableError


def _cfg(**kw) -> DataCfg:
    cfg = DataCfg(name="t", source=kw.pop("source", "stdlib"))
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_stdlib_corpus_is_deterministic_and_held_out_by_file():
    a = load_corpus(_cfg())
    b = load_corpus(_cfg())
    assert a.content_sha256 == b.content_sha256
    assert all(a.n_chars(s) > 0 for s in SPLITS)
    train = set(a.docs["train"])
    assert not train & set(a.docs["test"]) and not train & set(a.docs["valid"])


def test_pinned_hash_mismatch_is_an_error():
    with pytest.raises(
        ValueError, match="data.sha256: corpus content hash .* differs from the pinned 0{64}"
    ):
        load_corpus(_cfg(sha256="0" * 64))
    corpus = load_corpus(_cfg())
    assert load_corpus(_cfg(sha256=corpus.content_sha256)).content_sha256 == corpus.content_sha256


def test_local_files_carve_valid_from_train_tail(shared_data):
    train = shared_data / "wikitext-2" / "valid.txt"
    test = shared_data / "wikitext-2" / "test.txt"
    corpus = load_corpus(_cfg(source="local", files=SplitFiles(str(train), None, str(test))))
    text = train.read_text()
    assert corpus.docs["train"][0] + corpus.docs["valid"][0] == text
    assert 0.04 < corpus.n_chars("valid") / len(text) < 0.06
    assert corpus.docs["test"][0] == test.read_text()
    assert corpus.sha256("test") == hashlib.sha256(test.read_bytes() + b"\x00").hexdigest()


def test_missing_local_file_names_it(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="data.files.train: corpus file not found: .*nope.txt"
    ):
        load_corpus(
            _cfg(source="local", files=SplitFiles(str(tmp_path / "nope.txt"), None, str(tmp_path)))
        )


def test_hf_source_through_the_datasets_text_builder(shared_data, tmp_path):
    """The `datasets` code path that loads WikiText-2/C4 on a cluster, on local files."""
    src = shared_data / "tinyshakespeare" / "input.txt"
    lines = src.read_text().splitlines()
    (tmp_path / "train.txt").write_text("\n".join(lines[:2000]))
    (tmp_path / "test.txt").write_text("\n".join(lines[2000:2400]))
    cfg = _cfg(source="hf")
    cfg.hf.path = "text"
    cfg.hf.data_files = {"train": str(tmp_path / "train.txt"), "test": str(tmp_path / "test.txt")}
    cfg.hf.splits = {"train": "train", "valid": None, "test": "test"}
    corpus = load_corpus(cfg)
    assert corpus.source == "hf"
    assert corpus.docs["test"][0] == "\n\n".join(lines[2000:2400])
    assert corpus.n_chars("valid") > 0


def test_local_files_fall_back_to_the_hub_where_they_are_missing(shared_data, tmp_path):
    """`source: local` with an `hf` block (conf/data/wikitext2_v1.yaml): the files where
    they are, the same corpus through `datasets` where they are not; without the block a
    missing file stays an error naming it."""
    lines = (shared_data / "tinyshakespeare" / "input.txt").read_text().splitlines()
    (tmp_path / "train.txt").write_text("\n".join(lines[:2000]))
    (tmp_path / "test.txt").write_text("\n".join(lines[2000:2400]))
    gone = SplitFiles(str(tmp_path / "gone_train.txt"), None, str(tmp_path / "gone_test.txt"))
    cfg = _cfg(source="local", files=gone)
    assert [k for k, _ in cfg.problems()] == ["files.train", "files.test"]
    cfg.hf.path = "text"  # the hub's builder, here over local files
    cfg.hf.data_files = {"train": str(tmp_path / "train.txt"), "test": str(tmp_path / "test.txt")}
    cfg.hf.splits = {"train": "train", "valid": None, "test": "test"}
    assert cfg.problems() == []
    corpus = load_corpus(cfg)
    assert corpus.source == "hf" and corpus.docs["test"][0] == "\n\n".join(lines[2000:2400])
    cfg.files = SplitFiles(str(tmp_path / "train.txt"), None, str(tmp_path / "test.txt"))
    assert load_corpus(cfg).source == "local"  # the files win where they exist


def test_data_stage_shards_decode_back_to_the_corpus(tmp_path, shared_data):
    from helpers import smoke_plan

    plan = smoke_plan(tmp_path)
    job = plan.data("stdlib")
    out = run_job(job, data.DataJob, data.run)
    td = TokenData(out)
    tok = AutoTokenizer.from_pretrained(td.tokenizer_dir)
    assert len(tok) == 512
    corpus = load_corpus(plan.cfg.data)
    for split in SPLITS:
        ids = td.tokens(split)
        # byte-level BPE is lossless: the shards are exactly the corpus, documents joined by EOS
        assert tok.decode(ids.tolist()) == "<|endoftext|>".join(corpus.docs[split])
    assert td.manifest.corpus_sha256.nunique() == 3
    assert not (out.parent / (out.name + ".partial")).exists()


def test_a_long_document_is_tokenized_whole(shared_data):
    """Shards equal the tokenizer applied to the whole text, as perplexity protocols do."""
    from actsparse.stages.data import encode_split, train_bpe

    text = (shared_data / "wikitext-2" / "test.txt").read_text()
    tok = train_bpe([text[:200_000]], vocab_size=1000, min_frequency=2)
    whole = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
    np.testing.assert_array_equal(encode_split(tok, [text], separate_docs=False), whole)


def test_corrupted_shards_and_manifest_are_named(tmp_path):
    from helpers import smoke_plan

    plan = smoke_plan(tmp_path, "data.shard_tokens=20000")
    out = run_job(plan.data("stdlib"), data.DataJob, data.run)
    bad = tmp_path / "copy"
    shutil.copytree(out, bad)
    shard = bad / "tokens" / "train_0001.npy"
    arr = np.load(shard)
    arr[0] += 1
    np.save(shard, arr)
    with pytest.raises(ValueError, match="train_0001.npy does not match its sha256"):
        TokenData(bad).tokens("train")
    (bad / "manifest.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(TableError, match="manifest.parquet"):
        TokenData(bad)


def test_bos_starts_a_split_only_where_the_tokenizer_adds_it_itself():
    """Llama-2's tokenizer adds BOS to `tokenizer(text)`, so a split starts with it;
    SmolLM2's GGUF tokenizer names a BOS token but does not add it, so none is added."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from actsparse.stages.data import adds_bos, encode_split

    def tokenizer(adds: bool) -> PreTrainedTokenizerFast:
        vocab = {"<s>": 0, "</s>": 1, "a": 2, "b": 3}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="a"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        if adds:
            tok.post_processor = processors.TemplateProcessing(
                single="<s> $A", special_tokens=[("<s>", 0)]
            )
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")

    assert adds_bos(tokenizer(True)) and not adds_bos(tokenizer(False))
    assert encode_split(tokenizer(True), ["a b", "b"], separate_docs=True).tolist() == [
        0,
        2,
        3,
        1,
        3,
    ]
    assert encode_split(tokenizer(False), ["a b", "b"], separate_docs=True).tolist() == [2, 3, 1, 3]
