"""Text corpora for word-level language modelling, in the layout of Mikolov's Penn Treebank.

A corpus folder holds ``train.txt``, ``valid.txt`` and ``test.txt``: one sentence a line, words separated by
spaces, rare words already replaced by ``<unk>``. Each line is read as its words followed by ``<eos>``, and
the vocabulary is every word in the order first met in train, then valid, then test (as the AWD-LSTM and
DARTS code read it), so Penn Treebank has 10,000 words and its training split 929,589 tokens. WikiText-2
comes in the same layout (``wiki.train.tokens`` renamed to ``train.txt``, ...). Nothing is downloaded.

A split is a 1-D int64 tensor of token ids; ``batchify`` cuts it into ``batch`` parallel streams (a T x B
tensor) and ``get_batch`` reads a BPTT window of it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..registry import Registry
from .datasets import DataError

SPLITS = ("train", "valid", "test")
EOS = "<eos>"


@dataclass(frozen=True)
class CorpusKind:
    """A registered corpus name: what it is, its known vocabulary size (None: whatever the files hold) and
    how to get it."""

    description: str
    vocab_size: int | None
    how: str


CORPORA = Registry("text data set")
CORPORA.register("ptb", CorpusKind(
    "Penn Treebank, Mikolov's language-modelling version", 10000,
    "get simple-examples.tgz from http://www.fit.vutbr.cz/~imikolov/rnnlm/ and pass its data/ folder renamed "
    "ptb.train.txt -> train.txt, ptb.valid.txt -> valid.txt, ptb.test.txt -> test.txt as --data DIR"))
CORPORA.register("wikitext2", CorpusKind(
    "WikiText-2 (Merity et al., 2016), word level", 33278,
    "get wikitext-2-v1.zip (Salesforce) and rename wiki.train.tokens / wiki.valid.tokens / wiki.test.tokens "
    "to train.txt / valid.txt / test.txt in DIR, then pass --data DIR"))
CORPORA.register("text", CorpusKind(
    "any corpus in the Penn Treebank layout", None,
    "put train.txt, valid.txt and test.txt (one sentence a line, words separated by spaces) in DIR "
    "and pass --data DIR"))


@dataclass
class TextCorpus:
    """A corpus read into token ids: ``vocab[i]`` is the word of id i."""

    name: str
    vocab: list[str]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def is_corpus(name: str) -> bool:
    return name in CORPORA


def load_corpus(name: str, root: str | os.PathLike | None) -> TextCorpus:
    """Read the corpus registered as ``name`` (``ptb``, ``wikitext2``, ``text``) from the folder ``root``."""
    kind = CORPORA.get(name)
    if root is None:
        raise DataError(f"{name}: no data folder given; {kind.how}")
    root = Path(root).expanduser()
    files = {s: root / f"{s}.txt" for s in SPLITS}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(f"{name}: {', '.join(missing)} missing in {root} (a corpus folder holds "
                        f"{', '.join(p.name for p in files.values())}); {kind.how}")
    index: dict[str, int] = {}
    splits = {}
    for split, path in files.items():
        ids, words = [], 0
        with open(path, encoding="utf-8") as f:
            for line in f:
                tokens = line.split()
                words += len(tokens)
                ids.extend(index.setdefault(w, len(index)) for w in tokens)
                ids.append(index.setdefault(EOS, len(index)))
        if words == 0:
            raise DataError(f"{name}: {path} holds no words; each split needs at least one sentence")
        splits[split] = torch.tensor(ids, dtype=torch.int64)
    return TextCorpus(name, list(index), **splits)


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a token sequence into ``batch_size`` contiguous streams, one a column: a (T, B) tensor, the tail
    that does not fill a row dropped (AWD-LSTM's batchify)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    rows = len(ids) // batch_size
    if rows < 2:
        raise DataError(f"{len(ids)} tokens are too few for {batch_size} streams of at least 2 tokens; "
                        f"use a smaller batch size or more text")
    return ids[: rows * batch_size].view(batch_size, rows).t().contiguous()


def get_batch(source: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``source[i : i + n]`` and their next-word targets ``source[i + 1 : i + 1 + n]``,
    n = min(seq_len, rows left)."""
    n = min(seq_len, len(source) - 1 - i)
    return source[i : i + n], source[i + 1 : i + 1 + n]
