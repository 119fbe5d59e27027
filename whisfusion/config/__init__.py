"""Typed run configuration: dataclass defaults, YAML files on top, `key=value` overrides last.

    cfg = load_config("configs/tiny.yaml", ["trainer.max_steps=100", "model.decoder.layers=4"])
    cfg.model.decoder.layers  # 4

Unknown keys and wrong types raise `ConfigError` naming the key, the closest valid keys, the
value and the expected type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from whisfusion.config.data import DataConfig
from whisfusion.config.decode import DecodeConfig, ValidationConfig
from whisfusion.config.loader import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
    with_overrides,
)
from whisfusion.config.model import (
    CanvasConfig,
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
    ScheduleConfig,
    TokenizerConfig,
)
from whisfusion.config.train import OptimConfig, TrainerConfig


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


__all__ = [
    "CanvasConfig",
    "ConfigError",
    "DataConfig",
    "DecodeConfig",
    "DecoderConfig",
    "EncoderConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TokenizerConfig",
    "TrainerConfig",
    "ValidationConfig",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "load_config",
    "with_overrides",
]
