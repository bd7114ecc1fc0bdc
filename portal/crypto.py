"""Server credentials encrypted at rest with Fernet; the key lives in instance/credentials.key."""

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


def load_key(instance_path: str | Path) -> bytes:
    """The instance's credential key, generated once (mode 0600) on first use."""
    path = Path(instance_path) / "credentials.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first: use theirs
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
    return path.read_bytes().strip()


def encrypt(key: bytes, secret: str) -> str:
    """Encrypt a secret for storage."""
    return Fernet(key).encrypt(secret.encode()).decode()


def decrypt(key: bytes, token: str) -> str:
    """Decrypt a stored secret; ValueError if the key does not fit."""
    try:
        return Fernet(key).decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError("stored credentials cannot be decrypted with this instance's key") \
            from None
