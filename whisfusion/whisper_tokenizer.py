"""Whisper's own byte-level BPE tokenizer with the canvas API of `whisfusion.tokenizer.Tokenizer`.

The decoder started from Whisper's decoder (`model.decoder.kind: whisper`) reads and writes
Whisper's ids: language tokens are Whisper's `<|xx|>`, EOS is `<|endoftext|>`, [MASK] is one past
the last id (`vocab_size`, the rows of Whisper's embedding). The tokenizer.json (Hugging Face
`tokenizers` format, shipped beside every Whisper model) travels inside the checkpoint with the
run's languages (`to_bytes`, marked by `MAGIC` so that `whisfusion.tokenizer.tokenizer_from_bytes`
knows which kind it holds).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from whisfusion.canvas import r_max_rule
from whisfusion.data.manifest import read_manifest
from whisfusion.tokenizer import CanvasTokens
from whisfusion.whisper_decoder import WhisperPrompt

MAGIC = b"whisfusion-whisper-bpe\n"
TOKENIZER_FILE = "tokenizer.json"
EOS_TOKEN = "<|endoftext|>"


class WhisperTokenizer(CanvasTokens):
    """Text <-> Whisper ids for the languages of a run, plus the canvas specials."""

    def __init__(self, tokenizer_json: str, languages: Sequence[str]):
        # an optional dependency (extra `whisper`): only this decoder kind needs it
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ModuleNotFoundError as err:
            raise ModuleNotFoundError(
                "model.decoder.kind whisper needs the `tokenizers` package: "
                "pip install 'whisfusion[whisper]'"
            ) from err
        self._json = tokenizer_json
        self.bpe = HFTokenizer.from_str(tokenizer_json)
        self.languages = list(languages)
        self.eos_id = self._special(EOS_TOKEN)
        self._lang_to_id = {lang: self._special(f"<|{lang}|>") for lang in self.languages}
        self._id_to_lang = {i: lang for lang, i in self._lang_to_id.items()}
        self.prompt = WhisperPrompt(
            sot=self._special("<|startoftranscript|>"),
            task=self._special("<|transcribe|>"),
            no_timestamps=self._special("<|notimestamps|>"),
        )

    def _special(self, token: str) -> int:
        token_id = self.bpe.token_to_id(token)
        if token_id is None:
            raise ValueError(f"the Whisper tokenizer has no token {token}")
        return token_id

    @property
    def vocab_size(self) -> int:
        """Classes of the decoder's output head ([MASK] excluded): every Whisper id."""
        return self.bpe.get_vocab_size(with_added_tokens=True)

    def id_to_lang(self, token_id: int) -> str | None:
        return self._id_to_lang.get(int(token_id))

    def is_special(self, token_id: int) -> bool:
        # every Whisper special (EOS, languages, tasks, timestamps) follows the text tokens
        return token_id >= self.eos_id

    def encode(self, text: str) -> list[int]:
        """Text ids only. A leading space, as Whisper's own transcripts begin (its decoder
        predicts " Hello", not "Hello", after <|notimestamps|>)."""
        return self.bpe.encode(" " + text.strip(), add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` with every special token dropped."""
        kept = [int(i) for i in ids if not self.is_special(int(i))]
        return self.bpe.decode(kept, skip_special_tokens=False).strip()

    def piece(self, token_id: int) -> str:
        """The vocabulary entry of one id, as stored (for showing canvases)."""
        return self.bpe.id_to_token(token_id)

    def decode_batch(self, rows: Sequence[Sequence[int]]) -> list[str]:
        """Text of each row of ids, specials already dropped, in one call."""
        return self.bpe.decode_batch([list(r) for r in rows], skip_special_tokens=False)

    def to_bytes(self) -> bytes:
        payload = {"languages": self.languages, "tokenizer": self._json}
        return MAGIC + json.dumps(payload, ensure_ascii=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> WhisperTokenizer:
        if not data.startswith(MAGIC):
            raise ValueError("not a serialized Whisper tokenizer (no marker)")
        payload = json.loads(data[len(MAGIC) :].decode())
        return cls(payload["tokenizer"], payload["languages"])

    @classmethod
    def from_weights(cls, directory: str | Path, languages: Sequence[str]) -> WhisperTokenizer:
        """The tokenizer.json beside a Whisper model (CTranslate2 or Hugging Face directory)."""
        directory = Path(directory)
        path = (directory if directory.is_dir() else directory.parent) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: the Whisper decoder needs the tokenizer of its weights "
                f"({TOKENIZER_FILE} beside them)"
            )
        try:
            return cls(path.read_text(encoding="utf-8"), languages)
        except Exception as err:  # tokenizers raises its own exception types
            raise ValueError(f"{path}: not a Whisper tokenizer ({err})") from None


def whisper_r_max(data_root: Path, tokenizer: WhisperTokenizer) -> float:
    """The canvas rate (`whisfusion.canvas.r_max_rule`) of a prepared data directory's training
    transcripts in Whisper's tokens (its stats.json counts its SentencePiece model's).

    Raises:
        ValueError: the directory has no training manifests.
    """
    manifests = sorted((Path(data_root) / "manifests" / "train").glob("*.jsonl"))
    if not manifests:
        raise ValueError(
            f"{data_root}/manifests/train has no manifests to measure Whisper's tokens per second "
            "from: set model.canvas.r_max"
        )
    rates = [
        len(tokenizer.encode(utt.text)) / utt.duration
        for manifest in manifests
        for utt in read_manifest(manifest)
    ]
    return r_max_rule(float(np.percentile(rates, 99)))
