"""Refuse `+key=value` overrides that nothing would read, so that a typo never trains silently.

Hydra rejects `key=value` for a key the config lacks, and asks for `+key=value` to add one. Adding a
key is how a user passes an argument a preset leaves at its default (`+loss.terms.mrstft.w_phs=0.1`)
or a key an option of the group knows (`+optim.adamw_lr=...`), so an added key is accepted when:
- its parent node builds an object (`_target_`) whose constructor takes it, or takes `**kwargs`;
- some config file under conf/ sets the same dotted key (with any name in place of its parent, so
  that `+loss.terms.new.weight` is known from `loss.terms.mrstft.weight`); or
- it is one of Hydra's own instantiation keys (`_target_`, `_partial_`, ...).
Anything else is a `ConfigError` naming the key and the closest known one. Config groups
(`+experiment=...`) and `hydra.*` keys are Hydra's to check.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from audiolab.config.resolvers import CONF_DIR
from audiolab.config.schema import ConfigError

HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def check_added_keys(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """ConfigError for the first `+key=`/`++key=` override whose key nothing reads."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for text in overrides:
        override = parser.parse_override(text)
        if not (override.is_add() or override.is_force_add()) or override.package is not None:
            continue
        key = override.key_or_group
        if key.startswith("hydra.") or key == "hydra" or _is_group(key):
            continue
        problem = _unread(cfg, key)
        if problem:
            raise ConfigError(f"{text}: {problem}")


def _is_group(key: str) -> bool:
    return (CONF_DIR / key.replace(".", "/")).is_dir()


def _unread(cfg: DictConfig, key: str) -> str | None:
    """Why nothing would read `key` (None when something does)."""
    parent_key, _, name = key.rpartition(".")
    if name in HYDRA_KEYS or key in known_config_keys() or _wildcard(key) in known_config_keys():
        return None
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    target = parent.get("_target_") if isinstance(parent, DictConfig) else None
    if target is not None:
        params = _parameters(str(target))
        if params is None or name in params:
            return None
        return (f"{parent_key}._target_ {target} takes no argument {name!r}"
                + _closest(name, params, parent_key) + f" (it takes: {', '.join(sorted(params)) or 'nothing'})")
    here = sorted(str(k) for k in parent if k != name) if isinstance(parent, DictConfig) else []
    where = parent_key or "the config root"
    return (f"{where} has no key {name!r} and nothing would read it" + _closest(name, here, parent_key)
            + (f" (keys here: {', '.join(here)})" if here else ""))


def _closest(name: str, candidates: Iterable[str], parent_key: str) -> str:
    candidates = list(candidates)
    # a typo (max_stpes), or a key with something stuck to it (lr_typo)
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6) or sorted(
        (c for c in candidates if name.startswith(c) or c.startswith(name)), key=len, reverse=True)[:1]
    if not match:
        return ""
    return f"; did you mean {parent_key + '.' if parent_key else ''}{match[0]}?"


def _wildcard(key: str) -> str:
    """`a.b.c.d` with its parent's name as `*`: the form under which keys of named entries are known."""
    parts = key.split(".")
    return ".".join([*parts[:-2], "*", parts[-1]]) if len(parts) >= 3 else key


@functools.cache
def _parameters(target: str) -> frozenset[str] | None:
    """The keyword arguments `target` takes (None: any, through **kwargs, or it cannot be inspected)."""
    from hydra.utils import get_object

    try:
        found = get_object(target)
        signature = inspect.signature(found)
    except (ImportError, ValueError, TypeError, AttributeError):
        return None  # an unimportable target is reported by the schema check, with its own message
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return frozenset(n for n, p in signature.parameters.items()
                     if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


@functools.cache
def known_config_keys(conf_dir: Path = CONF_DIR) -> frozenset[str]:
    """Every dotted key some file under conf/ sets, also in its `_wildcard` form."""
    keys: set[str] = set()
    for path in sorted(conf_dir.rglob("*.yaml")):
        relative = path.relative_to(conf_dir)
        if relative.parts[0] == "hydra":
            continue
        text = path.read_text()
        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            continue
        is_global = "@package _global_" in text.split("\n", 3)[0] or relative.parent == Path(".")
        prefix = "" if is_global else _package(relative)
        for key in _flatten(data, prefix):
            keys.update((key, _wildcard(key)))
    return frozenset(keys)


def _package(relative: Path) -> str:
    """Where a group option's keys land: its group (`optim`), or the target of a nested group (`debug/model@model`)."""
    parts = relative.parent.parts
    return "model" if parts[:2] == ("debug", "model") else ".".join(parts)


def _flatten(data: dict[str, Any], prefix: str) -> Iterator[str]:
    for key, value in data.items():
        if key == "defaults":
            continue
        dotted = f"{prefix}.{key}" if prefix else str(key)
        yield dotted
        if isinstance(value, dict):
            yield from _flatten(value, dotted)
