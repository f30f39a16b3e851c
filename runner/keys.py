"""CurveZMQ key files and the folder that holds them (pyzmq's ``zmq.auth`` certificate format).

One folder, ``DIR``, serves every role; each process reads only what it needs:

```
DIR/broker.key, broker.key_secret       the broker's pair (the broker reads both;
                                         everyone else reads broker.key)
DIR/client.key, client.key_secret       a client's pair ("runner keys generate" makes one)
DIR/worker.key, worker.key_secret       a worker's pair
DIR/authorized/clients/*.key            public keys that may submit and see their own jobs
DIR/authorized/workers/*.key            public keys that may also register as workers
DIR/authorized/admins/*.key             public keys that may see and act on every job
DIR/NAME/                               a folder for one more peer (add-client/-worker/-admin):
                                         broker.key plus that peer's pair, to copy to its machine
```

Secret files are mode 0600 and the folders 0700. Nothing is overwritten without ``force``.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

BROKER = "broker"
CLIENT = "client"
WORKER = "worker"
AUTHORIZED = "authorized"
#: Subfolders of authorized/, one per role a key can be given.
ROLE_FOLDERS = {"client": "clients", "worker": "workers", "admin": "admins"}
#: What a peer of each kind calls its own pair inside a folder (an admin is a client with more rights).
PAIR_NAME = {"client": CLIENT, "worker": WORKER, "admin": CLIENT}

#: Length of a z85-encoded CURVE public key.
KEY_TEXT_LENGTH = 40
#: Bytes before the key in a routing id: b"c-" or b"w-".
_PREFIX = 2

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_RESERVED = {BROKER, CLIENT, WORKER, AUTHORIZED}


class KeyFileError(ValueError):
    """A key folder or file that cannot be used; the message says which and what to do."""


@dataclass(frozen=True)
class CurveKeys:
    """What a client or worker needs to connect: its own pair and the broker's public key."""

    public: bytes
    secret: bytes
    server: bytes
    source: str  # the secret file, to name in error messages

    @property
    def public_text(self) -> str:
        return self.public.decode("ascii")


def peer_identity(prefix: bytes, public_key: str | None, unique: str) -> bytes:
    """A routing id: ``prefix``, the peer's public key (with CURVE), a unique part; the broker checks
    that a frame's proven key is the one its routing id carries (runner/broker/access.py)."""
    return prefix + (public_key or "").encode("ascii") + unique.encode("ascii")


def key_of(peer_id: bytes) -> str:
    """The public key a routing id claims (meaningful only with CURVE on)."""
    return peer_id[_PREFIX:_PREFIX + KEY_TEXT_LENGTH].decode("ascii", "replace")


def generate(folder: str | os.PathLike, force: bool = False) -> list[Path]:
    """Make the broker, client and worker pairs in ``folder`` and authorize the client and worker."""
    root = Path(folder)
    targets = [root / f"{name}.key{suffix}" for name in (BROKER, CLIENT, WORKER) for suffix in ("", "_secret")]
    targets += [_authorized(root, "client") / f"{CLIENT}.key", _authorized(root, "worker") / f"{WORKER}.key"]
    _refuse_existing(targets, force)
    _make_folders(root)
    written = []
    for name in (BROKER, CLIENT, WORKER):
        written += _create_pair(root, name)
    written.append(_authorize(root / f"{CLIENT}.key", root, "client", CLIENT))
    written.append(_authorize(root / f"{WORKER}.key", root, "worker", WORKER))
    return written


def add(folder: str | os.PathLike, kind: str, name: str, force: bool = False) -> Path:
    """Make a pair for one more ``kind`` (client, worker, admin) named ``name``; return its folder.

    The pair goes to ``folder/name/`` with a copy of the broker's public key (the folder to hand
    over), and its public key to ``folder/authorized/<kind>s/name.key``.
    """
    root = Path(folder)
    if kind not in ROLE_FOLDERS:
        raise KeyFileError(f"unknown kind of key {kind!r}; expected one of {sorted(ROLE_FOLDERS)}")
    if not _NAME.match(name) or name in _RESERVED:
        raise KeyFileError(f"key name {name!r} is not usable: use letters, digits, '.', '_' or '-' "
                        f"(at most 64), and none of {sorted(_RESERVED)}")
    broker_public = root / f"{BROKER}.key"
    if not broker_public.is_file():
        raise KeyFileError(f"{broker_public} does not exist: run `runner keys generate {root}` first")
    bundle = root / name
    pair = PAIR_NAME[kind]
    _refuse_existing([bundle / f"{pair}.key", bundle / f"{pair}.key_secret",
                      _authorized(root, kind) / f"{name}.key"], force)
    _make_folders(root)
    _private_folder(bundle)
    _create_pair(bundle, pair)
    shutil.copyfile(broker_public, bundle / f"{BROKER}.key")
    _authorize(bundle / f"{pair}.key", root, kind, name)
    return bundle


def load_peer_keys(folder: str | os.PathLike, role: str) -> CurveKeys:
    """The pair a ``role`` (client or worker) connects with, and the broker's public key.

    A client without ``client.key_secret`` uses ``worker.key_secret`` when there is one, so a
    task on a worker can open a client with the worker's folder.
    """
    root = _existing_folder(folder)
    server, _ = _load(root / f"{BROKER}.key", "the broker's public key")
    names = [role] + ([WORKER] if role == CLIENT else [])
    for name in names:
        path = root / f"{name}.key_secret"
        if path.is_file():
            public, secret = _load(path, f"the {name} key pair")
            if secret is None:
                raise KeyFileError(f"{path} holds no secret key; it must be a .key_secret file")
            return CurveKeys(public, secret, server, str(path))
    raise KeyFileError(f"no {' or '.join(f'{n}.key_secret' for n in names)} in {root}: "
                    f"make one with `runner keys generate` or `runner keys add-{role}`")


def load_broker_keys(folder: str | os.PathLike) -> tuple[bytes, bytes]:
    """The broker's public and secret key."""
    path = _existing_folder(folder) / f"{BROKER}.key_secret"
    public, secret = _load(path, "the broker's key pair")
    if secret is None:
        raise KeyFileError(f"{path} holds no secret key")
    return public, secret


def read_authorized(folder: str | os.PathLike) -> dict[str, frozenset[str]]:
    """The public keys (z85 text) under ``authorized/``, by role: client, worker, admin."""
    root = _existing_folder(folder)
    found = {}
    for role, sub in ROLE_FOLDERS.items():
        location = root / AUTHORIZED / sub
        keys = _auth().load_certificates(str(location)) if location.is_dir() else {}
        found[role] = frozenset(key.decode("ascii") for key in keys)
    return found


def authorized_signature(folder: str | os.PathLike) -> tuple:
    """A cheap fingerprint of ``authorized/``: changes when a key file is added, removed or edited."""
    entries = []
    for sub in ROLE_FOLDERS.values():
        try:
            with os.scandir(Path(folder) / AUTHORIZED / sub) as listing:
                for entry in listing:
                    stat = entry.stat()
                    entries.append((sub, entry.name, stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            continue
    return tuple(sorted(entries))


# --- helpers ---------------------------------------------------------------------------------


def _authorized(root: Path, kind: str) -> Path:
    return root / AUTHORIZED / ROLE_FOLDERS[kind]


def _refuse_existing(paths: list[Path], force: bool) -> None:
    existing = [str(path) for path in paths if path.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); nothing was written. Pass --force to "
                              "replace them (peers using the old keys are shut out)")


def _make_folders(root: Path) -> None:
    for folder in [root, root / AUTHORIZED, *(_authorized(root, kind) for kind in ROLE_FOLDERS)]:
        _private_folder(folder)


def _private_folder(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)


def _create_pair(folder: Path, name: str) -> list[Path]:
    public, secret = _auth().create_certificates(str(folder), name)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return [Path(public), Path(secret)]


def _authorize(public_file: Path, root: Path, kind: str, name: str) -> Path:
    target = _authorized(root, kind) / f"{name}.key"
    shutil.copyfile(public_file, target)
    return target


def _existing_folder(folder: str | os.PathLike) -> Path:
    root = Path(folder)
    if not root.is_dir():
        raise KeyFileError(f"the CURVE key folder {str(root)!r} does not exist: make it with `runner keys generate DIR`")
    return root


def _load(path: Path, what: str) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise KeyFileError(f"{what} is missing: no file {path}")
    try:
        return _auth().load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise KeyFileError(f"cannot read {what} from {path}: {exc}") from None


def _auth():
    """pyzmq's zmq.auth, imported only when keys are used (it pulls in asyncio)."""
    import zmq.auth

    return zmq.auth
