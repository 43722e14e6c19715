"""Text data for T5-style training: corpora, tokenizers, and the T5 span-corruption objective.

Corpora (``data.name``):
  * ``text``: the standard library's ``pydoc_data.topics`` (the help texts Python ships with,
    ~0.5 MB), so `sparsity-exp run model=t5` works offline on any machine;
  * ``c4``: C4 as distributed, ``c4-{train,validation}.*.json.gz`` shards (one JSON object with a
    ``text`` field per line) under ``data.root``, or, with ``data.source=hf`` on a machine that is
    online, Hugging Face ``datasets`` streaming of ``allenai/c4`` ``en`` (optional extra ``[hf]``).

Documents are tokenized, each followed by EOS, concatenated and cut into chunks of the raw length
that span corruption turns into exactly ``data.inputs_length`` input tokens (the T5 recipe, docs/paper.md
§4.4); only the last chunk of a split is short and gets padded. Span corruption is drawn afresh for
every training example (seeded by the run) and fixed per example for the test split.
"""
from __future__ import annotations

import glob
import gzip
import json
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DatasetNotFound
from . import DataBundle, DataInfo

IGNORE_INDEX = -100  # label value the loss (and token accuracy) skips


# --------------------------------------------------------------------------------------- tokenizers
class ByteTokenizer:
    """UTF-8 bytes as tokens, needs no files (ByT5's layout): 0 pad, 1 EOS, 2 unknown, 3..258 the
    bytes, then ``extra_ids`` sentinels counted down from the top of the vocabulary, as in T5."""

    pad_id, eos_id, unk_id, offset = 0, 1, 2, 3

    def __init__(self, extra_ids: int = 100):
        self.vocab_size = self.offset + 256 + extra_ids
        self.sentinels = [self.vocab_size - 1 - k for k in range(extra_ids)]

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        return bytes(i - self.offset for i in ids if self.offset <= i < self.offset + 256).decode("utf-8", "replace")


class PretrainedTokenizer:
    """A Hugging Face tokenizer (a local folder, or a hub name when online) or a sentencepiece
    ``.model`` file. Sentinels are its ``<extra_id_k>`` tokens (T5's vocabulary has 100); a
    vocabulary without them gets ``extra_ids`` new ids above its last one."""

    def __init__(self, name_or_path: str, extra_ids: int = 100):
        if str(name_or_path).endswith(".model"):
            self._init_sentencepiece(name_or_path)
        else:
            self._init_hf(name_or_path)
        found = [self._token_id(f"<extra_id_{k}>") for k in range(extra_ids)]
        if all(i is not None for i in found):
            self.sentinels = found
        else:
            base = self.vocab_size
            self.sentinels = [base + extra_ids - 1 - k for k in range(extra_ids)]
            self.vocab_size = base + extra_ids

    def _init_sentencepiece(self, path: str) -> None:
        try:
            import sentencepiece as spm
        except ImportError as exc:
            raise ConfigError("data.tokenizer points at a sentencepiece .model file but the sentencepiece package is "
                              "missing: pip install 'sparsity-exp[text]'") from exc
        if not Path(path).is_file():
            raise DatasetNotFound(f"tokenizer file {path} not found; set data.tokenizer to an existing .model file")
        sp = spm.SentencePieceProcessor(model_file=str(path))
        self.encode = lambda text: sp.encode(text)
        self.decode = sp.decode
        self.vocab_size = sp.get_piece_size()
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else 0
        self.eos_id = sp.eos_id() if sp.eos_id() >= 0 else 1
        self._token_id = lambda tok: (sp.piece_to_id(tok) if sp.piece_to_id(tok) != sp.unk_id() else None)

    def _init_hf(self, name: str) -> None:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise DatasetNotFound(f"could not load the tokenizer {name!r} ({exc}); set data.tokenizer to a local "
                                  f"tokenizer folder, a .model file, or 'bytes'") from exc
        if tok.eos_token_id is None:
            raise ConfigError(f"tokenizer {name!r} has no EOS token; T5 span corruption needs one")
        self.encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]
        self.decode = tok.decode
        self.vocab_size = len(tok)
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        vocab = tok.get_vocab()
        self._token_id = vocab.get


def build_tokenizer(cfg):
    if cfg.tokenizer in (None, "bytes"):
        return ByteTokenizer(cfg.extra_ids)
    return PretrainedTokenizer(str(Path(cfg.tokenizer).expanduser()) if Path(cfg.tokenizer).expanduser().exists()
                               else cfg.tokenizer, cfg.extra_ids)


# ------------------------------------------------------------------------------ span corruption
def corrupted_lengths(raw_length: int, density: float, mean_span: float) -> tuple[int, int]:
    """Input and target lengths (each with its final EOS) after span corruption of ``raw_length``
    tokens: the inputs keep the unmasked tokens plus one sentinel per masked span; the targets hold
    one sentinel per span plus the masked tokens."""
    noise = int(round(raw_length * density))
    spans = int(round(noise / mean_span))
    return raw_length - noise + spans + 1, noise + spans + 1


def t5_lengths(inputs_length: int, density: float = 0.15, mean_span: float = 3.0) -> tuple[int, int]:
    """The T5 recipe's sizing: the longest raw chunk whose corrupted inputs still fit in
    ``inputs_length``, and the target length that chunk produces. (512 -> raw 568, targets 114.)"""
    raw = inputs_length - 1
    while corrupted_lengths(raw + 1, density, mean_span)[0] <= inputs_length:
        raw += 1
    return raw, corrupted_lengths(raw, density, mean_span)[1]


def _random_partition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` split into ``parts`` positive integers, uniformly over such splits."""
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False)) if parts > 1 else np.array([], int)
    return np.diff(np.concatenate([[0], cuts, [total]]))


def noise_spans(length: int, density: float, mean_span: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(start, end) of the masked spans of a ``length``-token chunk: round(length x density) masked
    tokens in round(masked / mean_span) spans; kept and masked stretches alternate, starting with a
    kept one, and both are split at random."""
    noise = min(max(int(round(length * density)), 1), length - 1)
    spans = min(max(int(round(noise / mean_span)), 1), length - noise)
    noise_lens = _random_partition(noise, spans, rng)
    keep_lens = _random_partition(length - noise, spans, rng)
    out, pos = [], 0
    for keep, masked in zip(keep_lens, noise_lens):
        pos += int(keep)
        out.append((pos, pos + int(masked)))
        pos += int(masked)
    return out


def span_corrupt(tokens: np.ndarray, spans: list[tuple[int, int]], sentinels, eos: int) -> tuple[list, list]:
    """Inputs: the kept tokens with masked span k replaced by sentinel k; targets: sentinel k then
    the tokens of span k, for every span. Both end with EOS."""
    if len(spans) > len(sentinels):
        raise ConfigError(f"{len(spans)} masked spans but only {len(sentinels)} sentinel ids; raise data.extra_ids "
                          f"or lower data.inputs_length")
    inputs, targets, pos = [], [], 0
    for k, (start, end) in enumerate(spans):
        inputs += tokens[pos:start].tolist() + [sentinels[k]]
        targets += [sentinels[k]] + tokens[start:end].tolist()
        pos = end
    inputs += tokens[pos:].tolist() + [eos]
    return inputs, targets + [eos]


class SpanCorruption(Dataset):
    """Chunks of token ids -> (input_ids, attention_mask, labels), padded to fixed lengths.

    ``fixed_seed`` set: each example's spans are drawn from (fixed_seed, index), the same at every
    pass (test split). None: drawn from torch's global generator, which the run's seed (and
    DataLoader worker seeding) makes reproducible (training split)."""

    def __init__(self, chunks: torch.Tensor, lengths: torch.Tensor, tokenizer, inputs_length: int, targets_length: int,
                 density: float, mean_span: float, fixed_seed: int | None = None):
        self.chunks, self.lengths = chunks, lengths
        self.sentinels, self.eos, self.pad = tokenizer.sentinels, tokenizer.eos_id, tokenizer.pad_id
        self.inputs_length, self.targets_length = inputs_length, targets_length
        self.density, self.mean_span, self.fixed_seed = density, mean_span, fixed_seed

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int):
        n = int(self.lengths[i])
        tokens = self.chunks[i, :n].numpy()
        seed = [self.fixed_seed, i] if self.fixed_seed is not None else int(torch.randint(0, 2**62, ()).item())
        rng = np.random.default_rng(seed)
        inputs, targets = span_corrupt(tokens, noise_spans(n, self.density, self.mean_span, rng), self.sentinels, self.eos)
        input_ids = torch.full((self.inputs_length,), self.pad, dtype=torch.long)
        input_ids[:len(inputs)] = torch.tensor(inputs[:self.inputs_length])
        attention_mask = torch.zeros(self.inputs_length, dtype=torch.long)
        attention_mask[:len(inputs)] = 1
        labels = torch.full((self.targets_length,), IGNORE_INDEX, dtype=torch.long)
        labels[:len(targets)] = torch.tensor(targets[:self.targets_length])
        return input_ids, attention_mask, labels


def pack(documents: Iterable[str], tokenizer, chunk_length: int, min_length: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize, append EOS to each document, concatenate, cut into ``chunk_length`` chunks. The
    tail chunk is kept (padded) when it holds at least ``min_length`` tokens."""
    stream: list[int] = []
    for doc in documents:
        stream += tokenizer.encode(doc) + [tokenizer.eos_id]
    ids = torch.tensor(stream, dtype=torch.int32)
    full = len(ids) // chunk_length
    chunks = ids[:full * chunk_length].view(full, chunk_length)
    lengths = torch.full((full,), chunk_length, dtype=torch.int32)
    tail = ids[full * chunk_length:]
    if len(tail) >= min_length:
        chunks = torch.cat([chunks, torch.nn.functional.pad(tail, (0, chunk_length - len(tail)))[None]])
        lengths = torch.cat([lengths, torch.tensor([len(tail)], dtype=torch.int32)])
    if len(chunks) == 0:
        raise DatasetNotFound("the corpus gave no text to train on; check data.root / data.max_documents")
    return chunks, lengths


# ------------------------------------------------------------------------------------- corpora
def pydoc_documents() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _c4_files(root: Path, pattern: str) -> list[str]:
    files = sorted(glob.glob(str(root / pattern))) or sorted(glob.glob(str(root / "en" / pattern)))
    if not files:
        raise DatasetNotFound(f"no C4 shards matching {pattern!r} in {root} (or {root / 'en'}); copy the "
                              f"c4-*.json.gz files there, point data.root at them, or use data.source=hf when online")
    return files


def read_json_gz(files: Iterable[str]) -> Iterator[str]:
    """The ``text`` field of each line of C4-format ``.json.gz`` shards, in order."""
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)["text"]


def hf_c4_documents(split: str) -> Iterator[str]:
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise ConfigError("data.source=hf needs the datasets package: pip install 'sparsity-exp[hf]' (and internet)") from exc
    for row in load_dataset("allenai/c4", "en", split=split, streaming=True):
        yield row["text"]


def _bundle(cfg, train_docs: Iterable[str], test_docs: Iterable[str]) -> DataBundle:
    tok = build_tokenizer(cfg)
    raw, targets = t5_lengths(cfg.inputs_length, cfg.noise_density, cfg.mean_noise_span_length)
    if cfg.targets_length is not None:
        targets = int(cfg.targets_length)
    common = dict(tokenizer=tok, inputs_length=cfg.inputs_length, targets_length=targets,
                  density=cfg.noise_density, mean_span=cfg.mean_noise_span_length)
    train = SpanCorruption(*pack(train_docs, tok, raw), **common)
    test_chunks, test_lengths = pack(test_docs, tok, raw)
    if cfg.max_test_examples:
        test_chunks, test_lengths = test_chunks[:cfg.max_test_examples], test_lengths[:cfg.max_test_examples]
    test = SpanCorruption(test_chunks, test_lengths, fixed_seed=cfg.split_seed, **common)
    info = DataInfo(input_shape=(cfg.inputs_length,), num_classes=tok.vocab_size, task="seq2seq",
                    vocab_size=tok.vocab_size, pad_id=tok.pad_id, eos_id=tok.eos_id)
    return DataBundle(train=train, test=test, info=info)


def text(cfg) -> DataBundle:
    """The embedded corpus: documents split into train/test by ``data.split_seed``."""
    docs = pydoc_documents()
    order = np.random.default_rng(cfg.split_seed).permutation(len(docs))
    n_test = max(1, int(round(len(docs) * cfg.test_fraction)))
    if n_test >= len(docs):
        raise ConfigError(f"data.test_fraction={cfg.test_fraction} leaves no training document of the embedded "
                          f"corpus's {len(docs)}: pick a smaller fraction (default 0.1)")
    return _bundle(cfg, [docs[i] for i in order[n_test:]], [docs[i] for i in order[:n_test]])


def c4(cfg) -> DataBundle:
    """C4 (first ``data.max_documents`` train documents, first ``data.max_test_documents`` of
    validation, unshuffled as in the paper's run), from local shards or HF streaming."""
    if cfg.source == "hf":
        train, test = hf_c4_documents("train"), hf_c4_documents("validation")
    elif cfg.source == "local":
        root = Path(cfg.root).expanduser()
        train, test = read_json_gz(_c4_files(root, cfg.train_files)), read_json_gz(_c4_files(root, cfg.validation_files))
    else:
        raise ConfigError(f"data.source={cfg.source!r}; choose local or hf")
    return _bundle(cfg, islice(train, cfg.max_documents), islice(test, cfg.max_test_documents))
