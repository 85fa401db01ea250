"""Apply `key=value` overrides to a saved, resolved config (for resume and reproduce)."""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from audiolab.config.resolvers import CONF_DIR
from audiolab.config.schema import ConfigError


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Return a copy of cfg with Hydra-syntax overrides applied; unknown keys raise ConfigError."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    parser = OverridesParser.create()
    for override in parser.parse_overrides(overrides):
        key = override.key_or_group
        if override.is_sweep_override():
            raise ConfigError(f"{override.input_line}: sweeps are not allowed here, give one value")
        if override.is_delete():
            raise ConfigError(f"{override.input_line}: deleting keys is not supported here")
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__" and not override.is_add():
            raise ConfigError(f"{key}: no such key in the saved config (prefix with + to add one)")
        if OmegaConf.is_dict(OmegaConf.select(cfg, key)) and not isinstance(override.value(), dict):
            option = _group_option(key, str(override.value()))
            if option is None:
                raise ConfigError(f"{key} is a whole config section in the saved config; override its keys "
                                  f"(e.g. {key}.<name>=...), or name an option of conf/{key}/ that stands alone"
                                  f"{_options_text(key)}")
            cfg[key] = option  # a whole section swapped for a group option: `logger=none` switches W&B off
            continue
        OmegaConf.update(cfg, key, override.value(), merge=False, force_add=True)
    return cfg



def _group_option(group: str, option: str) -> DictConfig | None:
    """conf/<group>/<option>.yaml when it is a plain section (no defaults list, no @package), else None."""
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.is_file() or "@package" in path.read_text():
        return None
    node = OmegaConf.load(path)
    return None if "defaults" in node else node


def _options_text(group: str) -> str:
    options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if _group_option(group, p.stem) is not None)
    return f" ({group}={', '.join(options)})" if options else ""
