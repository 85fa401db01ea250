"""Masking of secrets (API keys, tokens, URL passwords) before anything is written or logged.

A secret can arrive as a config key (`logger.api_key: ...`), as an override or argv string
(`+logger.api_key=...`, `+api_key=...`), or inside a URL (`postgresql://user:password@host/db`).
`redact` masks all three in any container of dicts, lists and strings; `redact_yaml_file` rewrites a
YAML file (Hydra's `.hydra/*.yaml`, `multirun.yaml`) through it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MASK = "***"
_SECRET = re.compile(r"(api_?key|token|password|passwd|secret)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@/\s]+@")
# an override or argv item: optional +, ++ or ~, a dotted key, '=', the value
_ASSIGNMENT = re.compile(r"^(\s*(?:\+\+|\+|~)?([\w.\-/@]+)=)(.+)$", re.DOTALL)


def is_secret_key(key: object) -> bool:
    """Whether a config key's name says it holds a secret (its last dotted part: api_key, token, ...)."""
    return bool(_SECRET.search(str(key).rsplit(".", 1)[-1]))


def redact(value: Any) -> Any:
    """Copy of a config container (or string) with secret keys, `key=secret` overrides and URL passwords masked."""
    if isinstance(value, dict):
        return {k: (MASK if is_secret_key(k) and v else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return _redact_string(value)
    return value


def _redact_string(text: str) -> str:
    assignment = _ASSIGNMENT.match(text)
    if assignment and is_secret_key(assignment.group(2)):
        return assignment.group(1) + MASK
    return _URL_PASSWORD.sub(rf"\1{MASK}@", text)


def redact_yaml_file(path: Path) -> bool:
    """Rewrite a YAML file with its secrets masked (atomically); True when something was masked."""
    import yaml

    from audiolab.common.files import atomic_write_text

    text = path.read_text()
    data = yaml.safe_load(text)
    masked = redact(data)
    if masked == data:
        return False
    atomic_write_text(path, yaml.safe_dump(masked, sort_keys=False, allow_unicode=True))
    return True
