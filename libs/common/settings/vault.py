"""The token vault: the master keys that encrypt secrets at rest (common.vault reads them)."""

from __future__ import annotations

from dataclasses import dataclass

from common.settings.base import setting


@dataclass(frozen=True)
class VaultSettings:
    """Master keys; a bad one fails when a service that holds secrets starts (common.vault)."""

    vault_master_key: str = setting(
        "VAULT_MASTER_KEY",
        "",
        "Master keys that encrypt secrets at rest: `<base64 of 32 bytes>` (version 1) or "
        "`<version>:<base64>,<version>:<base64>` during a rotation (demo mode has a built-in one).",
        secret=True,
    )
    vault_key_file: str = setting(
        "VAULT_KEY_FILE", "", "File with the master keys in VAULT_MASTER_KEY's format (one per line allowed)."
    )
    vault_key_version: int = setting(
        "VAULT_KEY_VERSION", 0, "Master key version new secrets are encrypted with (0 = the highest present)."
    )
