"""Configuration: typed schemas, range checks, overrides and Hydra resolvers."""

from audiolab.config.schema import ConfigError, register_configs, validate_config

__all__ = ["ConfigError", "register_configs", "validate_config"]
