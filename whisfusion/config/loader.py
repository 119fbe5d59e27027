"""Loading, validating and saving run configurations with OmegaConf."""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError


class ConfigError(ValueError):
    """A configuration file or override that does not fit the typed schema."""


def _schema():
    from whisfusion.config import RunConfig  # late import: RunConfig is defined in __init__

    return RunConfig


def _node_fields(full_key: str) -> tuple[dict[str, Any], str]:
    """The dataclass fields of the section holding `full_key`, and the key's last part."""
    parts = full_key.split(".")
    cls: Any = _schema()
    for part in parts[:-1]:
        hints = typing.get_type_hints(cls)
        if part not in hints or not dataclasses.is_dataclass(hints[part]):
            return {}, parts[-1]
        cls = hints[part]
    return typing.get_type_hints(cls), parts[-1]


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is not None:  # list[float], Optional[int], ...
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _explain(err: OmegaConfBaseException, origin: str) -> ConfigError:
    full_key = str(getattr(err, "full_key", "") or getattr(err, "key", "") or "")
    if isinstance(err, ConfigKeyError) or "not in" in str(err):
        fields, last = _node_fields(full_key)
        close = difflib.get_close_matches(last, list(fields), n=3, cutoff=0.5)
        prefix = full_key.rsplit(".", 1)[0] + "." if "." in full_key else ""
        hint = (
            "; did you mean " + " or ".join(f"'{prefix}{c}'" for c in close) + "?"
            if close
            else "; valid keys here: " + ", ".join(sorted(fields))
        )
        return ConfigError(f"{origin}: unknown config key '{full_key}'{hint}")
    if isinstance(err, ValidationError):
        fields, last = _node_fields(re.sub(r"\[\d+\]$", "", full_key))
        expected = _type_name(fields[last]) if last in fields else "a different type"
        value = getattr(err, "value", None) if getattr(err, "value", None) is not None else "?"
        return ConfigError(
            f"{origin}: key '{full_key}' got {value!r}, which is not a valid {expected}"
        )
    return ConfigError(f"{origin}: {err}")


def _merge(base: DictConfig, other: Any, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        raise _explain(err, origin) from None


# Keys of older configs: `model.size` named a preset and did nothing, so it is dropped; the
# alignment head's parameters moved under the decoder's `prior` (its optimizer prefix with them).
_RENAMED_LR_SCALE = {"align": "prior.head"}


def _migrate(data: Any) -> Any:
    """A config dict or YAML node of an older version in today's keys (see above)."""
    data = OmegaConf.to_container(data) if isinstance(data, DictConfig) else data
    if not isinstance(data, dict):
        return data  # not a mapping: merging reports it
    model = data.get("model")
    if isinstance(model, dict):
        model.pop("size", None)
    scale = (data.get("optim") or {}).get("lr_scale")
    if isinstance(scale, dict):
        data["optim"]["lr_scale"] = {_RENAMED_LR_SCALE.get(k, k): v for k, v in scale.items()}
    return data


# A config file may start from another one: `base: other.yaml` (relative to the file) is loaded
# first, and the file's own keys are merged over it.
BASE_KEY = "base"


def _merge_file(cfg: DictConfig, path: Path, seen: tuple[Path, ...]) -> DictConfig:
    """`cfg` with the YAML file at `path` merged over it, its `base` chain first."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: '{BASE_KEY}' chain loops back to itself")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml errors come in several types
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    data = _migrate(loaded)
    if isinstance(data, dict) and BASE_KEY in data:
        base = data.pop(BASE_KEY)
        if not isinstance(base, str):
            raise ConfigError(f"{path}: '{BASE_KEY}' must name a YAML file, got {base!r}")
        cfg = _merge_file(cfg, path.parent / base, (*seen, path.resolve()))
    return _merge(cfg, data, str(path))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()):
    """Build a `RunConfig` from the defaults, an optional YAML file and `key=value` overrides.

    Raises:
        ConfigError: missing file, unknown key (with the closest valid keys), wrong value type.
    """
    cfg = OmegaConf.structured(_schema())
    if path is not None:
        cfg = _merge_file(cfg, Path(path), ())
    return with_overrides(cfg, overrides)


def with_overrides(cfg, overrides: Sequence[str]):
    """A `RunConfig` (or its OmegaConf form) with `key=value` overrides applied, as a new
    `RunConfig`.

    Raises:
        ConfigError: an override not of the form key=value, an unknown key, a wrong type.
    """
    cfg = OmegaConf.structured(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"override '{item}'")
    return OmegaConf.to_object(cfg)


def config_from_dict(data: dict, origin: str = "checkpoint"):
    """Rebuild a `RunConfig` from a plain dict (as saved in checkpoints)."""
    return OmegaConf.to_object(_merge(OmegaConf.structured(_schema()), _migrate(data), origin))


def config_to_dict(cfg) -> dict:
    """Plain nested dict of a `RunConfig` (safe for `torch.load(weights_only=True)`)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def config_to_yaml(cfg) -> str:
    """The resolved config as YAML, as saved beside every run."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
