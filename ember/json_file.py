"""Reading a JSON file a command was pointed at: a clear ValueError (a one-line CLI message)
for a missing or unreadable file and for text that is not JSON."""

from __future__ import annotations

import json


def read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
