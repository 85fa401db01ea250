"""Masking of secrets (API keys, tokens, URL passwords) before anything is written or logged."""

from __future__ import annotations

import re
from typing import Any

_SECRET = re.compile(r"(api_?key|token|password|passwd|secret)", re.IGNORECASE)


def redact(value: Any) -> Any:
    """Copy of a config container with secret-looking keys and URL passwords masked."""
    if isinstance(value, dict):
        return {k: ("***" if _SECRET.search(str(k)) and v else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return re.sub(r"(://[^:/@\s]+:)[^@/\s]+@", r"\1***@", value)
    return value
