"""Envelope encryption of secrets at rest (OAuth tokens, webhook secrets).

AES-256-GCM with a data key per record derived by HKDF-SHA256 from a master
key, the record's purpose and id, and the key version; the version is stored
beside the ciphertext so a rotation can re-encrypt online while reads accept
every version the key provider still holds.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.settings import Settings, SettingsError

# Demo mode only: a fixed, public master key so `make run` works out of the box.
_DEMO_MASTER_KEY = hashlib.sha256(b"flickrhub demo master key - never use in production").digest()


class KeyProvider(Protocol):
    """Where master keys come from (local file/env today; Vault or a cloud KMS by adapter)."""

    @property
    def current_version(self) -> int: ...

    @property
    def versions(self) -> list[int]: ...

    def master_key(self, version: int) -> bytes: ...


@dataclass(frozen=True)
class LocalKeyProvider:
    """Master keys held in memory, loaded from the environment or a key file.

    Adapters for HashiCorp Vault (transit or KV) or a cloud KMS implement the same two
    members: fetch (or unwrap) each version's 32-byte key once at start and keep the
    current version; see docs/vault.md.
    """

    keys: dict[int, bytes] = field(repr=False)
    current_version: int = 1

    def __post_init__(self) -> None:
        if self.current_version not in self.keys:
            raise SettingsError(f"VAULT_KEY_VERSION: no master key of version {self.current_version}")

    def master_key(self, version: int) -> bytes:
        """The master key of `version`; KeyError when it was retired."""
        return self.keys[version]

    @property
    def versions(self) -> list[int]:
        """Every version this provider can still decrypt."""
        return sorted(self.keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalKeyProvider:
        """VAULT_MASTER_KEY, else VAULT_KEY_FILE, else the demo key (demo mode only)."""
        raw = settings.vault_master_key
        if not raw and settings.vault_key_file:
            raw = Path(settings.vault_key_file).read_text()
        if not raw.strip():
            if settings.environment != "demo":
                raise SettingsError(
                    "VAULT_MASTER_KEY or VAULT_KEY_FILE: required when FLICKRHUB_ENV=production"
                )
            return cls({1: _DEMO_MASTER_KEY})
        keys = parse_keys(raw)
        return cls(keys, settings.vault_key_version or max(keys))


def parse_keys(raw: str) -> dict[int, bytes]:
    """`base64` (version 1) or `version:base64` entries separated by commas or newlines."""
    keys: dict[int, bytes] = {}
    for entry in (e.strip() for e in raw.replace("\n", ",").split(",")):
        if not entry:
            continue
        version_text, _, encoded = entry.rpartition(":") if ":" in entry else ("1", "", entry)
        try:
            version = int(version_text)
            key = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise SettingsError("VAULT_MASTER_KEY: entries are <base64> or <version>:<base64>") from None
        if len(key) != 32:
            raise SettingsError(f"VAULT_MASTER_KEY: version {version} must decode to 32 bytes")
        if version < 1 or version in keys:
            raise SettingsError(f"VAULT_MASTER_KEY: version {version} is invalid or given twice")
        keys[version] = key
    if not keys:
        raise SettingsError("VAULT_MASTER_KEY: no key found")
    return keys


class Vault:
    """Encrypts and decrypts small secrets bound to a purpose and a record id."""

    def __init__(self, keys: KeyProvider) -> None:
        self._keys = keys

    def _data_key(self, version: int, purpose: str, record_id: str) -> bytes:
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=f"flickrhub/{purpose}/{record_id}/v{version}".encode(),
        )
        return hkdf.derive(self._keys.master_key(version))

    def encrypt(self, plaintext: str, *, purpose: str, record_id: str) -> dict[str, Any]:
        """A document {v, n, c} safe to store; the purpose and id are bound as associated data."""
        version = self._keys.current_version
        nonce = os.urandom(12)
        aad = f"{purpose}:{record_id}".encode()
        ct = AESGCM(self._data_key(version, purpose, record_id)).encrypt(nonce, plaintext.encode(), aad)
        return {"v": version, "n": base64.b64encode(nonce).decode(), "c": base64.b64encode(ct).decode()}

    @property
    def current_version(self) -> int:
        """Version new secrets are encrypted with."""
        return self._keys.current_version

    def needs_rotation(self, blob: dict[str, Any]) -> bool:
        """True when `blob` is encrypted with an older key version than the current one."""
        return int(blob["v"]) != self._keys.current_version

    def reencrypt(self, blob: dict[str, Any], *, purpose: str, record_id: str) -> dict[str, Any]:
        """The same secret under the current key version."""
        return self.encrypt(
            self.decrypt(blob, purpose=purpose, record_id=record_id), purpose=purpose, record_id=record_id
        )

    def decrypt(self, blob: dict[str, Any], *, purpose: str, record_id: str) -> str:
        """The plaintext of `blob`; raises cryptography's InvalidTag if it was tampered with."""
        aad = f"{purpose}:{record_id}".encode()
        key = self._data_key(int(blob["v"]), purpose, record_id)
        plaintext = AESGCM(key).decrypt(base64.b64decode(blob["n"]), base64.b64decode(blob["c"]), aad)
        return plaintext.decode()
