"""Server credentials encrypted at rest with Fernet; the key lives in instance/credentials.key."""

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from portal.config import instance_secret


def load_key(instance_path: str | Path) -> bytes:
    """The instance's credential key, generated once (mode 0600) on first use."""
    return instance_secret(instance_path, "credentials.key", Fernet.generate_key)


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
