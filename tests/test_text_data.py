"""Text data: the T5 span-corruption objective, tokenizers, the embedded corpus and local C4 shards."""
import gzip
import json

import numpy as np
import pytest
import torch

from sparsity_exp.data import build_data
from sparsity_exp.data.text import (ByteTokenizer, corrupted_lengths, noise_spans, span_corrupt, t5_lengths)
from sparsity_exp.errors import DatasetNotFound


def test_t5_target_length_formula_matches_the_published_sizes():
    # T5 / HF run_t5_mlm: inputs 512 -> 568 raw tokens, targets 114
    assert t5_lengths(512) == (568, 114)
    raw, targets = t5_lengths(64)
    assert corrupted_lengths(raw, 0.15, 3.0)[0] <= 64 < corrupted_lengths(raw + 1, 0.15, 3.0)[0]
    assert targets == corrupted_lengths(raw, 0.15, 3.0)[1]


def test_noise_spans_density_and_mean_length():
    rng = np.random.default_rng(0)
    lengths, noise = [], 0
    for _ in range(200):
        spans = noise_spans(568, 0.15, 3.0, rng)
        assert all(0 < s < e <= 568 for s, e in spans)
        assert all(e1 < s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))  # separated by kept tokens
        assert spans[0][0] > 0  # starts with a kept stretch
        noise += sum(e - s for s, e in spans)
        lengths += [e - s for s, e in spans]
        assert len(spans) == round(round(568 * 0.15) / 3)
    assert noise / (200 * 568) == pytest.approx(0.15, abs=0.001)
    assert np.mean(lengths) == pytest.approx(3.0, abs=0.05)
    assert len(set(lengths)) > 3  # span lengths vary


def test_span_corrupt_inputs_and_targets_rebuild_the_text():
    tok = ByteTokenizer()
    ids = np.array(tok.encode("The quick brown fox jumps over the lazy dog"))
    spans = [(4, 9), (20, 22), (40, 43)]
    inputs, targets = span_corrupt(ids, spans, tok.sentinels, tok.eos_id)
    s = tok.sentinels
    assert inputs == ids[:4].tolist() + [s[0]] + ids[9:20].tolist() + [s[1]] + ids[22:40].tolist() + [s[2], tok.eos_id]
    assert targets == [s[0]] + ids[4:9].tolist() + [s[1]] + ids[20:22].tolist() + [s[2]] + ids[40:43].tolist() + [1]
    # fill the sentinels back in: the original
    fills = {}
    for t in targets[:-1]:
        if t in s:
            cur = fills.setdefault(t, [])
        else:
            cur.append(t)
    rebuilt = [x for t in inputs[:-1] for x in (fills[t] if t in s else [t])]
    assert tok.decode(rebuilt) == "The quick brown fox jumps over the lazy dog"


def test_byte_tokenizer_layout():
    tok = ByteTokenizer(extra_ids=100)
    assert tok.vocab_size == 359 and tok.sentinels[0] == 358 and tok.sentinels[-1] == 259
    assert tok.encode("é") == [0xC3 + 3, 0xA9 + 3] and tok.decode(tok.encode("naïve ✓")) == "naïve ✓"


def test_embedded_corpus_examples(compose):
    cfg = compose("data=text", "data.inputs_length=32")
    data = build_data(cfg.data)
    raw, targets = t5_lengths(32)
    assert data.info.task == "seq2seq" and data.info.vocab_size == 359 and data.info.input_shape == (32,)
    x, mask, labels = data.train[0]
    assert x.shape == (32,) and labels.shape == (targets,)
    assert mask.all() and (labels != -100).all()  # a full chunk fills both exactly
    assert x[-1] == 1 and labels[-1] == 1  # EOS
    assert len(data.test) == 512  # data.max_test_examples
    a, b = data.test[5], data.test[5]
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # test spans are fixed
    torch.manual_seed(0)
    first = data.train[5][0]
    torch.manual_seed(1)
    assert not torch.equal(first, data.train[5][0])  # training spans are redrawn
    again = build_data(compose("data=text", "data.inputs_length=32", "seed=9").data)
    assert torch.equal(again.test[7][0], data.test[7][0])  # the test split does not follow the run seed


def _write_c4_shard(path, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://x/{i}"}) + "\n")


def test_c4_local_shards(compose, tmp_path):
    docs = [f"Document number {i}: " + "lorem ipsum dolor sit amet " * (i % 5 + 1) for i in range(40)]
    _write_c4_shard(tmp_path / "en" / "c4-train.00000-of-01024.json.gz", docs[:25])
    _write_c4_shard(tmp_path / "en" / "c4-train.00001-of-01024.json.gz", docs[25:35])
    raw, _ = t5_lengths(32)
    val_docs = ["v" * (raw - 5), "w" * 13]  # raw + 10 tokens with the EOSs: one full chunk, a tail of 10
    _write_c4_shard(tmp_path / "en" / "c4-validation.00000-of-00008.json.gz", val_docs)
    cfg = compose("data=c4", f"data.root={tmp_path}", "data.inputs_length=32", "data.max_documents=30")
    data = build_data(cfg.data)
    tok = ByteTokenizer()
    stream = [t for d in docs[:30] for t in tok.encode(d) + [1]]  # the first 30 documents, in shard order
    assert len(data.train) == -(-len(stream) // raw) or len(data.train) == len(stream) // raw
    assert data.train.chunks[1, :raw].tolist() == stream[raw:2 * raw]
    val = [t for d in val_docs for t in tok.encode(d) + [1]]
    assert len(data.test) == 2 and data.test.lengths.tolist() == [raw, 10]
    assert data.test.chunks[0].tolist() == val[:raw] and data.test.chunks[1, :10].tolist() == val[raw:]
    x, mask, labels = data.test[1]  # the short tail chunk is padded
    assert (mask == 0).any() and (labels == -100).any() and (x[mask == 0] == 0).all()


def test_c4_missing_shards_say_what_to_do(compose, tmp_path):
    with pytest.raises(DatasetNotFound, match="c4-train"):
        build_data(compose("data=c4", f"data.root={tmp_path}").data)


def test_hf_tokenizer_from_a_local_folder(compose, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "</s>", "<unk>", "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]
    vocab = {w: i for i, w in enumerate(words + [f"<extra_id_{k}>" for k in range(4)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>") \
        .save_pretrained(tmp_path / "tok")
    from sparsity_exp.data.text import PretrainedTokenizer

    tok = PretrainedTokenizer(str(tmp_path / "tok"), extra_ids=4)
    assert tok.encode("the lazy dog") == [3, 9, 10] and tok.eos_id == 1 and tok.pad_id == 0
    assert tok.sentinels == [vocab[f"<extra_id_{k}>"] for k in range(4)] and tok.vocab_size == 15
    no_sentinels = PretrainedTokenizer(str(tmp_path / "tok"), extra_ids=6)  # more than it has: new ids on top
    assert no_sentinels.vocab_size == 21 and no_sentinels.sentinels[0] == 20


def test_cli_t5_runs_offline_on_the_embedded_corpus(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = cli("run", "model=t5", "model.d_model=16", "model.d_kv=8", "model.d_ff=32", "model.num_heads=2",
              "model.num_layers=1", "model.num_decoder_layers=1", "data.inputs_length=24", "data.max_test_examples=32",
              "trainer.steps=6", "trainer.log_every=3", "trainer.eval_every=6", "trainer.batch_size=8",
              "trainer.progress=false", "trainer.grad_accum=2", "trainer.precision=bf16")
    assert out.returncode == 0, out.stderr
    import pandas as pd

    (run,) = (tmp_path / "results").iterdir()
    m = pd.read_csv(run / "metrics.csv")
    sp = m[(m.probe == "sparsity") & (m.metric == "activation_sparsity")]
    assert set(sp.layer.astype(str)) == {"0", "1", "avg"}
    assert sorted(sp[sp.split == "train"].step.unique()) == [0, 3]
    sites = json.loads((run / "sites.json").read_text())
    assert [(s["stack"], s["name"]) for s in sites] == [("encoder", "encoder.block.0"), ("decoder", "decoder.block.0")]
    acc = m[(m.metric == "accuracy") & (m.split == "test")].value
    assert ((acc > 0) & (acc < 1)).all()


def test_sentencepiece_model_file(compose, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from sparsity_exp.data.text import PretrainedTokenizer, pydoc_documents

    (tmp_path / "corpus.txt").write_text("\n".join(pydoc_documents()[:10]))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "sp"),
                                   vocab_size=200, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   user_defined_symbols=[f"<extra_id_{k}>" for k in range(3)], minloglevel=2)
    tok = PretrainedTokenizer(str(tmp_path / "sp.model"), extra_ids=3)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    assert tok.vocab_size == 200 and tok.eos_id == 1 and tok.pad_id == 0
    assert tok.sentinels == [sp.piece_to_id(f"<extra_id_{k}>") for k in range(3)]
    assert tok.decode(tok.encode("the for statement")) == "the for statement"
    cfg = compose("data=text", f"data.tokenizer={tmp_path / 'sp.model'}", "data.extra_ids=3", "data.inputs_length=16",
                  "data.noise_density=0.1")
    from sparsity_exp.data import build_data

    data = build_data(cfg.data)
    x, _, labels = data.test[0]
    assert data.info.vocab_size == 200 and labels[0] == tok.sentinels[0] and x.max() < 200
