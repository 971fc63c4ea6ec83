"""Ed25519 signatures on bundles, checked by the device before it runs anything.

The signature covers the exact bytes of ``manifest.json``; the manifest lists the sha256
of every other file, so one signature vouches for the whole bundle. The signature lives
in ``signature.ed25519`` (JSON: algorithm, key id, base64 signature), which the manifest
does not list — it could not, since it signs the manifest.

A device trusts the public keys in one folder (``ROOT/trusted-keys/*.pub``) and refuses a
bundle that is unsigned, signed by a key it does not trust, altered after signing,
carries files the manifest does not list, or was made for another station.

The signature covers exactly the files the manifest lists. An installed bundle may also
hold the two folders the device writes itself, ``engines/`` (derived data) and ``local/``
(on-device calibration; edge_infer.bundle says what each holds); anything else unlisted
is refused. A bundle arriving on a device (``incoming=True``: a tar being installed) may
hold neither, since whatever it carried there would not be covered by the signature.

This module is part of the runtime: it never imports deploy_jetson.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .bundle import MANIFEST, SIGNATURE, UNSIGNED_DIRS, Bundle
from .errors import LinesideError

PRIVATE_SUFFIX = ".sign.key"
PUBLIC_SUFFIX = ".sign.pub"


def _crypto():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def key_id(public_key) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its sha256."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write NAME.sign.key (PEM, owner-only) and NAME.sign.pub (PEM) into out_dir; refuse to overwrite."""
    serialization, ed25519 = _crypto()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{name}{PRIVATE_SUFFIX}", out / f"{name}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise LinesideError(f"{path} already exists: pick another name or move the old key away first "
                                "(overwriting a signing key would orphan every bundle it signed)")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # Create the private key owner-only from the start, never world-readable for a moment.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: str | Path):
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise LinesideError(f"cannot read signing key {path}: {exc}. Make one with "
                            "`lineside keys NAME --type signing`") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise LinesideError(f"{path} is not an Ed25519 private key: make one with `lineside keys NAME --type signing`")
    return key


def load_public_key(path: str | Path):
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise LinesideError(f"cannot read public key {path}: {exc}. Use the NAME{PUBLIC_SUFFIX} file that "
                            "`lineside keys NAME --type signing` wrote") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise LinesideError(f"{path} is not an Ed25519 public key: use a NAME{PUBLIC_SUFFIX} file")
    return key


def load_trusted_keys(paths) -> dict:
    """Public keys by key id, from .pub files and folders of them."""
    keys = {}
    for p in map(Path, paths):
        files = sorted(p.glob("*.pub")) if p.is_dir() else [p]
        for f in files:
            k = load_public_key(f)
            keys[key_id(k)] = k
    return keys


def sign_bundle(root: str | Path, private_key_path: str | Path) -> str:
    """Sign the bundle's manifest bytes as they are on disk; return the key id."""
    root = Path(root)
    key = load_private_key(private_key_path)
    signature = key.sign((root / MANIFEST).read_bytes())
    kid = key_id(key.public_key())
    serialization, _ = _crypto()
    raw_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    # The public key rides along so anyone can check integrity; a device trusts only its own key list.
    doc = {"algorithm": "ed25519", "key_id": kid, "signs": MANIFEST,
           "signature": base64.b64encode(signature).decode("ascii"),
           "public_key": base64.b64encode(raw_public).decode("ascii")}
    (root / SIGNATURE).write_text(json.dumps(doc, indent=2) + "\n")
    return kid


def bundle_id(root: str | Path) -> str:
    """The bundle's identity on a device: the first 12 hex digits of its manifest's sha256."""
    return hashlib.sha256((Path(root) / MANIFEST).read_bytes()).hexdigest()[:12]


@dataclass
class VerifiedBundle:
    bundle: Bundle
    key_id: str
    id: str

    @property
    def version(self) -> str:
        return self.bundle.manifest.model.version

    def describe(self) -> dict:
        m = self.bundle.manifest
        return {"id": self.id, "version": m.model.version, "model": f"{m.model.family}/{m.model.name}",
                "station": m.station, "key_id": self.key_id, "created": m.created,
                "files": {name: {"role": e.role, "precision": e.precision, "sha256": e.sha256,
                                 "bytes": (self.bundle.root / name).stat().st_size}
                          for name, e in m.files.items()}}


def verify_bundle(root: str | Path, trusted_keys: dict | None, station: str | None,
                  incoming: bool = False) -> VerifiedBundle:
    """Refuse the bundle unless it is signed by a trusted key, untouched, complete, and for this station.

    A device always passes its own trusted keys and station. ``trusted_keys=None`` (a host inspecting a
    bundle) checks the signature against the public key it carries, proving integrity but not origin;
    ``station=None`` skips the station check. ``incoming=True`` (a bundle being installed) also
    refuses the device's own folders (engines/, local/), which a bundle must not bring along.
    """
    root = Path(root)
    kid = _check_signature(root, trusted_keys)
    bundle = Bundle.load(root, verify=True)
    _refuse_unlisted_files(root, bundle, allow_device_dirs=not incoming)
    if station is not None and bundle.manifest.station != station:
        made_for = bundle.manifest.station or "no station"
        raise LinesideError(
            f"bundle {root} was made for {made_for}, but this device is station {station!r}: flash the bundle "
            f"packed with {station}'s station config (`lineside bundle DIR --station CONFIG`)")
    return VerifiedBundle(bundle, kid, bundle_id(root))


def _check_signature(root: Path, trusted_keys: dict) -> str:
    from cryptography.exceptions import InvalidSignature

    sig_path = root / SIGNATURE
    if not sig_path.is_file():
        raise LinesideError(f"bundle {root} is unsigned (no {SIGNATURE}): devices accept only signed bundles; "
                            "make it with `lineside bundle DIR --station CONFIG --key KEY --out BUNDLE.tar`")
    try:
        doc = json.loads(sig_path.read_text())
        kid, signature = doc["key_id"], base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError):
        raise LinesideError(f"{sig_path} is not a valid signature file: re-sign the bundle with "
                            "`lineside bundle`") from None
    if trusted_keys is None:
        trusted_keys = {kid: _embedded_key(doc, sig_path)}
    if not trusted_keys:
        raise LinesideError("no trusted signing keys are installed, so no bundle can be accepted: install the "
                            "public key with `lineside provision TARGET --trust NAME.sign.pub`")
    if kid not in trusted_keys:
        raise LinesideError(f"bundle {root} is signed by key {kid}, which is not trusted here (trusted: "
                            f"{', '.join(sorted(trusted_keys))}): sign it with a trusted key or install its "
                            "public key with `lineside provision TARGET --trust KEY.pub`")
    try:
        trusted_keys[kid].verify(signature, (root / MANIFEST).read_bytes())
    except InvalidSignature:
        raise LinesideError(f"bundle {root}: {MANIFEST} does not match its signature — it was altered after "
                            "signing. Rebuild the bundle with `lineside bundle` and flash that") from None
    return kid


def _embedded_key(doc: dict, sig_path: Path):
    _, ed25519 = _crypto()
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(doc["public_key"], validate=True))
    except (KeyError, ValueError, TypeError):
        raise LinesideError(f"{sig_path} carries no usable public key: pass --trust NAME.sign.pub") from None
    if key_id(key) != doc["key_id"]:
        raise LinesideError(f"{sig_path}: its public key does not match its key id — the signature file was "
                            "altered; rebuild the bundle with `lineside bundle`")
    return key


def _refuse_unlisted_files(root: Path, bundle: Bundle, allow_device_dirs: bool) -> None:
    # A file the manifest does not list is not covered by the signature: never ship it to the line.
    # The device's own folders are the exception once installed: it writes them, nothing brings them.
    allowed = set(bundle.manifest.files) | {MANIFEST, SIGNATURE}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_symlink():
            raise LinesideError(f"bundle {root} contains the link {rel}: bundles hold plain files only; "
                                "rebuild it with `lineside bundle`")
        if rel.parts[0] in UNSIGNED_DIRS and rel.as_posix() not in allowed:
            if allow_device_dirs and (path.is_dir() or len(rel.parts) > 1):
                continue
            raise LinesideError(f"bundle {root} brings {rel}, but {rel.parts[0]}/ is written by the device itself "
                                "(engines are built in engines/, on-device calibration kept in local/) and no "
                                "signature covers it: rebuild the bundle with `lineside bundle`, which never packs it")
        if path.is_file() and rel.as_posix() not in allowed:
            raise LinesideError(f"bundle {root} contains {rel}, which its signed manifest does "
                                "not list: the bundle was altered; rebuild it with `lineside bundle`")


def load_trusted_bundle(path: str | Path, trusted_keys_dir: str | Path | None, station: str) -> Bundle:
    """The bundle a station runs: signed by a trusted key when ``trusted_keys_dir`` is set, else hash-checked.

    What `serve` does at start-up (via the recipe switch) and `ctl reload` does before swapping.
    """
    if trusted_keys_dir is None:
        return Bundle.load(path, verify=True)
    return verify_bundle(path, load_trusted_keys([trusted_keys_dir]), station).bundle


def extract_bundle_tar(tar_path: str | Path, dest: str | Path) -> Path:
    """Unpack a bundle tar into an empty folder, refusing links, devices and paths that escape it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar.getmembers():
                name = Path(member.name)
                if not (member.isfile() or member.isdir()) or name.is_absolute() or ".." in name.parts:
                    raise LinesideError(f"{tar_path} holds {member.name!r}, which is not a plain file inside the "
                                        "bundle: refusing it; rebuild the bundle with `lineside bundle`")
            tar.extractall(dest, filter="data")
    except tarfile.TarError as exc:
        raise LinesideError(f"{tar_path} is not a readable bundle tar ({exc}): copy it again") from None
    return dest
