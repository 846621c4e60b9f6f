"""Tokenizers: a byte-level BPE trained offline for the tiny preset, and the special tokens any LM needs.

Byte-level BPE encodes every string (unicode from annotators included) without unknown tokens; training it on the
synthetic corpus' templates and concept words makes those cheap single tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from transformers import PreTrainedTokenizerFast

from regionscribe.model.prompts import BBOX, IM_END, IM_PATCH, IM_START

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
REGION_TOKENS = [IM_START, IM_END, IM_PATCH, BBOX]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=1, special_tokens=[PAD, BOS, EOS, UNK, *REGION_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD)
    fast.add_special_tokens({"additional_special_tokens": REGION_TOKENS})
    return fast


def add_region_tokens(tokenizer) -> int:
    """Give any HF tokenizer the image/region special tokens and a pad token. Returns how many tokens were added."""
    added = tokenizer.add_special_tokens({"additional_special_tokens": REGION_TOKENS})
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD})
    if tokenizer.eos_token is None:
        added += tokenizer.add_special_tokens({"eos_token": EOS})
    return added


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    bos: int | None
    eos: int
    im_start: int
    im_end: int
    im_patch: int
    bbox: int

    @classmethod
    def of(cls, tokenizer) -> "SpecialIds":
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in REGION_TOKENS}
        if any(v is None or v == tokenizer.unk_token_id for v in ids.values()):
            raise ValueError("tokenizer lacks the region special tokens: call add_region_tokens first")
        return cls(pad=tokenizer.pad_token_id, bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id,
                   im_start=ids[IM_START], im_end=ids[IM_END], im_patch=ids[IM_PATCH], bbox=ids[BBOX])
