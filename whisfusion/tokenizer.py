"""SentencePiece tokenizer with the special tokens of the diffusion canvas.

Ids, fixed by construction:
    0            <unk> (never produced: byte fallback covers every character)
    1            <|eos|>  end of text, and the padding of the canvas
    2..2+n-1     <|xx|>   one language token per language, in config order
    ...          ordinary pieces and the 256 byte-fallback pieces
    vocab_size   [MASK]   outside the SentencePiece vocabulary: the decoder embeds it (extra
                          row) but its output head has only `vocab_size` classes, so [MASK] can
                          never be predicted.
The serialized model travels inside every checkpoint (`to_bytes` / `from_bytes`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from whisfusion.config import TokenizerConfig

EOS_PIECE = "<|eos|>"
# SentencePiece model types a tokenizer may be trained as (config key model.tokenizer.model_type).
MODEL_TYPES = ("unigram", "bpe", "char")


def lang_piece(lang: str) -> str:
    """`en` -> `<|en|>`."""
    return f"<|{lang}|>"


class CanvasTokens:
    """What every tokenizer of a canvas shares: [MASK] one past its vocabulary (the decoder
    embeds it, its output head never predicts it), and a token per language."""

    languages: list[str]
    _lang_to_id: dict[str, int]

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def lang_id(self, lang: str) -> int:
        if lang not in self._lang_to_id:
            raise KeyError(f"language '{lang}' has no token; known: {', '.join(self.languages)}")
        return self._lang_to_id[lang]


class Tokenizer(CanvasTokens):
    """Text <-> ids for one trained SentencePiece model plus the canvas specials."""

    def __init__(self, model_proto: bytes):
        self._proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.eos_id = self.sp.piece_to_id(EOS_PIECE)
        if self.eos_id != 1:
            raise ValueError("not a whisfusion tokenizer: <|eos|> must have id 1")
        self.languages: list[str] = []
        for i in range(2, self.sp.get_piece_size()):
            piece = self.sp.id_to_piece(i)
            if not (piece.startswith("<|") and piece.endswith("|>")):
                break
            self.languages.append(piece[2:-2])
        self._lang_to_id = {lang: 2 + i for i, lang in enumerate(self.languages)}
        self._special_ids = {0, self.eos_id, *self._lang_to_id.values()}

    @property
    def vocab_size(self) -> int:
        """Classes of the decoder's output head ([MASK] excluded)."""
        return self.sp.get_piece_size()

    def id_to_lang(self, token_id: int) -> str | None:
        """The language of a language-token id, or None for any other id."""
        idx = token_id - 2
        return self.languages[idx] if 0 <= idx < len(self.languages) else None

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids or token_id >= self.vocab_size

    def encode(self, text: str) -> list[int]:
        """Text ids only (no language token, no EOS)."""
        return self.sp.encode(text, out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` with every special token (EOS, language, [MASK]) dropped."""
        return self.sp.decode([int(i) for i in ids if not self.is_special(int(i))])

    def piece(self, token_id: int) -> str:
        """The vocabulary entry of one id, as stored (for showing canvases)."""
        return self.sp.id_to_piece(token_id)

    def decode_batch(self, rows: Sequence[Sequence[int]]) -> list[str]:
        """Text of each row of ids, specials already dropped, in one SentencePiece call."""
        return self.sp.decode([list(r) for r in rows]) if rows else []

    def to_bytes(self) -> bytes:
        return self._proto

    @classmethod
    def from_bytes(cls, proto: bytes) -> Tokenizer:
        return cls(proto)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        try:
            return cls(path.read_bytes())
        except RuntimeError as err:
            raise ValueError(f"{path}: not a SentencePiece model ({err})") from None


def tokenizer_from_bytes(data: bytes):
    """The tokenizer a checkpoint carries: a SentencePiece `Tokenizer`, or a
    `whisfusion.whisper_tokenizer.WhisperTokenizer` (recognised by its marker)."""
    from whisfusion.whisper_tokenizer import MAGIC, WhisperTokenizer

    if data.startswith(MAGIC):
        return WhisperTokenizer.from_bytes(data)
    return Tokenizer.from_bytes(data)


def check_model_type(model_type: str) -> None:
    """Raise ValueError unless `model_type` is one of `MODEL_TYPES`."""
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"model.tokenizer.model_type must be one of {', '.join(MODEL_TYPES)}; "
            f"got '{model_type}'"
        )


def train_tokenizer(
    texts: Iterable[str],
    languages: Sequence[str],
    vocab_size: int,
    out_path: str | Path | None = None,
    character_coverage: float = 0.9995,
    model_type: str = TokenizerConfig().model_type,
) -> Tokenizer:
    """Train a SentencePiece model of `model_type` on `texts` (ideally language-balanced).

    Byte fallback is on, so a character never seen in training still encodes (as bytes).
    A "char" model ignores `vocab_size`: it holds every character within `character_coverage`.
    Writes `out_path` (a `.model` file) when given.

    Raises:
        ValueError: `model_type` is not one of `MODEL_TYPES`.
    """
    check_model_type(model_type)
    char = model_type == "char"
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buf,
        model_type=model_type,
        vocab_size=vocab_size,
        # the char trainer otherwise truncates the characters at vocab_size
        use_all_vocab=char,
        # a leading "▁" is a token of its own in a char model: one more canvas position per
        # transcript that tells nothing; subword models need it so a first word splits as
        # it does mid-sentence
        add_dummy_prefix=not char,
        character_coverage=character_coverage,
        byte_fallback=True,
        unk_id=0,
        eos_id=-1,
        bos_id=-1,
        pad_id=-1,
        # user-defined symbols take the ids right after <unk>, in this order
        user_defined_symbols=[EOS_PIECE, *[lang_piece(lang) for lang in languages]],
        # transcripts keep case and punctuation; do not let NFKC rewrite them
        normalization_rule_name="identity",
        split_digits=True,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    tok = Tokenizer(buf.getvalue())
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_bytes(buf.getvalue())
    return tok
