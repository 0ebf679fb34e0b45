"""Identity: one Ed25519 key pair that signs envelopes and authenticates to NATS.

The seed file holds the nkey encoding of the 32-byte seed (``SU...``), so the
same file is both a PyNaCl signing key and a NATS nkey user credential. A key
id is the nkey public key (``U...``): the user name NATS sees and the id the
keyring files the public key under.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import stat
from pathlib import Path

import nkeys
from nacl.signing import SigningKey, VerifyKey

from trustbus.bus._errors import ConfigError

_PUBLIC_KEY_LENGTH = 56  # base32 of 1 prefix byte + 32 key bytes + 2 crc bytes


class Identity:
    """An Ed25519 signing identity. The seed never appears in ``repr`` or logs."""

    __slots__ = ("_signing_key", "key_id")

    def __init__(self, signing_key: SigningKey) -> None:
        """Wrap a PyNaCl signing key."""
        self._signing_key = signing_key
        self.key_id = encode_key_id(bytes(signing_key.verify_key))

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity."""
        return cls(SigningKey.generate())

    @classmethod
    def from_nkey_seed(cls, seed: str) -> Identity:
        """An identity from an nkey user seed (``SU...``)."""
        try:
            prefix, raw = nkeys.decode_seed(seed.strip().encode())
        except (nkeys.NkeysError, ValueError) as exc:
            raise ConfigError("not an nkey seed") from exc
        if prefix != nkeys.PREFIX_BYTE_USER or len(raw) != 32:
            raise ConfigError("not an nkey user seed")
        return cls(SigningKey(bytes(raw)))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a seed file; refuses one that group or others can read."""
        file = Path(path)
        try:
            mode = file.stat().st_mode
            text = file.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read seed file {file}: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"seed file {file} is readable by others: run chmod 600 {file}")
        return cls.from_nkey_seed(text)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the seed to a new file with mode 0600; never overwrites."""
        file = Path(path)
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise ConfigError(f"seed file {file} already exists") from exc
        with os.fdopen(fd, "w") as out:
            out.write(self.nkey_seed + "\n")
        return file

    @property
    def nkey_seed(self) -> str:
        """The nkey user seed (``SU...``): a secret, for the seed file and NATS auth only."""
        seed: bytes = nkeys.encode_seed(bytes(self._signing_key), nkeys.PREFIX_BYTE_USER)
        return seed.decode()

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._signing_key.sign(data).signature

    def __repr__(self) -> str:
        return f"Identity(key_id={self.key_id!r})"


def encode_key_id(public_key: bytes) -> str:
    """The nkey public key string (``U...``) of a raw Ed25519 public key."""
    raw = bytes([nkeys.PREFIX_BYTE_USER]) + public_key
    return base64.b32encode(raw + nkeys.crc16_checksum(raw)).decode()


@functools.lru_cache(maxsize=4096)
def verify_key(key_id: str) -> VerifyKey:
    """The PyNaCl verify key for a key id; raises ConfigError if it is not a valid nkey user key.

    Cached: decoding a key id (base32, CRC-16) costs about as much as a fifth
    of the signature check it serves.
    """
    if len(key_id) != _PUBLIC_KEY_LENGTH:
        raise ConfigError("key id has the wrong length")
    try:
        raw = base64.b32decode(key_id)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError("key id is not base32") from exc
    body, crc = raw[:-2], raw[-2:]
    if body[0] != nkeys.PREFIX_BYTE_USER or nkeys.crc16_checksum(body) != crc:
        raise ConfigError("key id is not an nkey user public key")
    return VerifyKey(body[1:])
