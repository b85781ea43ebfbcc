"""API keys for the scoring routes: parsed once from the settings, checked in constant time.

A key is given as ``key`` or ``name:key`` (``API_KEYS``, comma-separated, or ``API_KEYS_FILE``,
one a line, ``#`` comment lines and blank lines ignored). Only a SHA-256 digest of each key is
kept. A request's key is identified by its ``key_id``: the name given, or the first 8 hex digits
of the key's SHA-256. Metrics and logs carry the ``key_id``, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MIN_KEY_CHARS = 16
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ApiKeyError(Exception):
    """A malformed key list; the message names the entry by position, never its key.

    Not a ``ValueError``, so pydantic passes it through instead of wrapping it in a
    ``ValidationError`` whose text would repeat the input, keys included.
    """


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    digest: bytes


class ApiKeys:
    """The keys a scoring request may present."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = tuple(keys)

    @classmethod
    def parse(cls, entries: Iterable[tuple[str, str]]) -> ApiKeys:
        """Keys from ``(where, entry)`` pairs, ``where`` naming the entry in errors.

        Raises:
            ApiKeyError: a key shorter than ``MIN_KEY_CHARS``, a key or name given twice.
        """
        keys: list[ApiKey] = []
        for where, raw in entries:
            entry = raw.strip()
            name, sep, rest = entry.partition(":")
            if sep and _NAME.match(name):
                key = rest.strip()
            else:
                name, key = "", entry
            if len(key) < MIN_KEY_CHARS:
                raise ApiKeyError(f"{where}: an API key needs at least {MIN_KEY_CHARS} characters")
            digest = hashlib.sha256(key.encode()).digest()
            key_id = name or digest.hex()[:8]
            for other in keys:
                if other.digest == digest:
                    raise ApiKeyError(f"{where}: the same API key is given twice")
                if other.key_id == key_id:
                    raise ApiKeyError(f"{where}: the key id {key_id!r} is given twice")
            keys.append(ApiKey(key_id, digest))
        return cls(keys)

    @classmethod
    def from_settings(cls, api_keys: str | None, api_keys_file: str | None) -> ApiKeys | None:
        """The keys of ``API_KEYS`` and ``API_KEYS_FILE``; ``None`` when neither gives any.

        Raises:
            ApiKeyError: as ``parse``, or an unreadable file, or a file without keys.
        """
        entries: list[tuple[str, str]] = []
        if api_keys:
            entries += [
                (f"API_KEYS entry {i}", part)
                for i, part in enumerate(api_keys.split(","), 1)
                if part.strip()
            ]
        if api_keys_file:
            try:
                lines = Path(api_keys_file).read_text().splitlines()
            except OSError as exc:
                raise ApiKeyError(f"API_KEYS_FILE {api_keys_file}: {exc.strerror}") from None
            found = [
                (f"{api_keys_file} line {n}", line)
                for n, line in enumerate(lines, 1)
                if line.strip() and not line.lstrip().startswith("#")
            ]
            if not found:
                raise ApiKeyError(f"API_KEYS_FILE {api_keys_file} holds no key")
            entries += found
        return cls.parse(entries) if entries else None

    def identify(self, credential: str) -> str | None:
        """The id of the key ``credential`` is, or ``None``.

        Compares against every key, in constant time per key (equal-length digests, no early
        exit), so neither timing nor the order of the keys tells how close a guess was.
        """
        given = hashlib.sha256(credential.encode()).digest()
        matches = [hmac.compare_digest(given, key.digest) for key in self.keys]
        found = None
        for key, match in zip(self.keys, matches, strict=True):
            if match:
                found = key.key_id
        return found
