"""The host's Ed25519 plan-signing key, created on first use.

The key lives at ``$MVM_HOME/keys/host-signer.ed25519`` (PKCS#8 PEM, mode 0600,
directory 0700). A key that others can read is a key others could sign plans
with, so loading refuses any file with group/other permission bits, a file owned
by another user, or a symlink, and says how to fix it instead of repairing it
silently. Creation is race-free: the key is written to a private temp file and
hard-linked into place, so two processes starting at once agree on one key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import tempfile
from pathlib import Path

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from mvm.engine.base.errors import KeyPermissions
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import mvm_home

log = get_logger("mvm.admission.keys")

KEY_FILENAME = "host-signer.ed25519"


def host_key_path() -> Path:
    return mvm_home() / "keys" / KEY_FILENAME


def public_key_id(public_key: Ed25519PublicKey) -> str:
    """Short stable name of a public key: hex SHA-256 of its raw bytes, first 16 digits."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


@attrs.frozen
class HostKey:
    private_key: Ed25519PrivateKey
    path: Path

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return public_key_id(self.public_key)

    def public_b64(self) -> str:
        return base64.b64encode(_raw_public(self.public_key)).decode("ascii")

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    @classmethod
    def load_or_create(cls, path: Path | None = None) -> HostKey:
        path = path or host_key_path()
        if not os.path.lexists(path):
            _create(path)
        return cls(private_key=_load(path), path=path)

    @classmethod
    def load_existing(cls, path: Path) -> HostKey:
        """Load without creating (``audit verify`` must not mint a new key)."""
        return cls(private_key=_load(path), path=path)


def _refuse(path: Path, why: str, hint: str) -> KeyPermissions:
    return KeyPermissions(f"host signing key {path} {why}; refusing to use it", hint=hint)


def _load(path: Path) -> Ed25519PrivateKey:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _refuse(
            path,
            f"cannot be opened safely ({exc.strerror})",
            "it must be a regular file, not a symlink",
        ) from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "is not a regular file", "remove it; a new key is created")
        if st.st_uid != os.geteuid():
            raise _refuse(
                path,
                f"is owned by uid {st.st_uid}, not {os.geteuid()}",
                f"chown {os.geteuid()} {path}",
            )
        if st.st_mode & 0o077:
            raise _refuse(path, f"has mode {stat.S_IMODE(st.st_mode):04o}", f"chmod 600 {path}")
        data = fh.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise _refuse(
            path,
            f"is not a PEM private key ({exc})",
            "move it away; a new key is created on next use",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise _refuse(path, "is not an Ed25519 key", "move it away; a new key is created")
    return key


def _create(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd, tmp = tempfile.mkstemp(prefix=".host-signer-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if another process won the race: use its key
        except FileExistsError:
            return
    finally:
        os.unlink(tmp)
    pub = path.with_name(path.name + ".pub")
    raw = base64.b64encode(_raw_public(key.public_key())).decode("ascii")
    pub.write_text(f"ed25519 {raw} mvm-host-signer\n")
    log.info("host_key_created", path=str(path), key_id=public_key_id(key.public_key()))
