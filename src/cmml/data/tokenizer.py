"""Lower-cased WordPiece tokenisation from a BERT-style vocab file (offline, no torch at import)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cmml.errors import DataError

if TYPE_CHECKING:
    import torch
    from tokenizers import BertWordPieceTokenizer

PAD_ID = 0


@dataclass
class TextTokenizer:
    """Encodes texts to fixed-length ids and attention masks ([CLS] text [SEP], padded with [PAD])."""

    vocab_file: Path
    max_len: int
    _tok: BertWordPieceTokenizer = field(repr=False)
    _raw: BertWordPieceTokenizer = field(repr=False)

    def encode_np(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """int64 ids and attention mask, both [N, max_len] (truncated, keeping the final [SEP])."""
        encs = self._tok.encode_batch(list(texts))
        ids = np.array([e.ids for e in encs], dtype=np.int64).reshape(len(encs), self.max_len)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64).reshape(len(encs), self.max_len)
        return ids, mask

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`encode_np`, as torch LongTensors."""
        import torch

        ids, mask = self.encode_np(texts)
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def stats(self, texts: list[str]) -> dict[str, int]:
        """Untruncated length statistics: longest token count, texts over max_len, [UNK] tokens."""
        unk = self._raw.token_to_id("[UNK]")
        encs = self._raw.encode_batch(list(texts))
        lengths = [len(e.ids) for e in encs]
        return {"max_tokens": max(lengths, default=0), "truncated": sum(n > self.max_len for n in lengths),
                "unknown": sum(e.ids.count(unk) for e in encs)}


def load_tokenizer(vocab_file: Path, max_len: int) -> TextTokenizer:
    """A :class:`TextTokenizer` over ``vocab_file`` (or a model directory's ``vocab.txt``).

    DataError if the file is absent or lacks the special tokens.
    """
    from tokenizers import BertWordPieceTokenizer

    vocab_file = Path(vocab_file)
    if vocab_file.is_dir():
        vocab_file = vocab_file / "vocab.txt"
    if not vocab_file.is_file():
        raise DataError(f"{vocab_file}: vocabulary file not found (run the prepare stage)")
    if max_len < 2:
        raise DataError(f"{vocab_file}: max_len must be at least 2 ([CLS] and [SEP]), got {max_len}")
    words = vocab_file.read_text(encoding="utf-8").split("\n")
    if words[:1] != ["[PAD]"] or not {"[UNK]", "[CLS]", "[SEP]"} <= set(words):
        raise DataError(f"{vocab_file}: expected a BERT-style vocab starting with [PAD] and holding [UNK], [CLS], [SEP]")
    tok = BertWordPieceTokenizer(str(vocab_file), lowercase=True)
    tok.enable_truncation(max_len)
    tok.enable_padding(length=max_len, pad_id=PAD_ID, pad_token="[PAD]")
    raw = BertWordPieceTokenizer(str(vocab_file), lowercase=True)
    return TextTokenizer(vocab_file, max_len, tok, raw)
