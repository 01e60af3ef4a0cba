"""The pipeline configuration (`PipelineConfig`): one YAML file = one Prefect flow parameter = one CLI."""

from tasks.config.loading import (
    ConfigError,
    apply_overrides,
    config_from_mapping,
    config_to_yaml,
    load_config,
    load_yaml,
    parse_override,
)
from tasks.config.pipeline import (
    ChampionRule,
    EvaluationSettings,
    PipelineConfig,
    ScaleOutSettings,
    TrackingSettings,
)
from tasks.config.sources import (
    DataSettings,
    DataSource,
    FileSource,
    HHRLHFSource,
    HubSource,
    ModelSource,
    SyntheticSource,
)
from tasks.config.stages import StageSettings, StagesSettings, build_trainer_config, check_trainer_args

__all__ = [
    "ChampionRule",
    "ConfigError",
    "DataSettings",
    "DataSource",
    "EvaluationSettings",
    "FileSource",
    "HHRLHFSource",
    "HubSource",
    "ModelSource",
    "PipelineConfig",
    "ScaleOutSettings",
    "StageSettings",
    "StagesSettings",
    "SyntheticSource",
    "TrackingSettings",
    "apply_overrides",
    "build_trainer_config",
    "check_trainer_args",
    "config_from_mapping",
    "config_to_yaml",
    "load_config",
    "load_yaml",
    "parse_override",
]
