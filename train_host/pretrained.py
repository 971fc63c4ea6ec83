"""Pretrained backbones the way users get them: the Hugging Face hub cache, a pinned revision, a sha256.

``--weights imagenet`` (rx, adtr: their timm CNN) and ``--weights dinov2`` (dinov2-*: the ViT) are
resolved through ``huggingface_hub.hf_hub_download``, the cache timm itself uses (``HF_HOME`` /
``HF_HUB_CACHE``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are honoured, read when called):

- online, the file downloads once, with huggingface_hub's progress bar, at the revision pinned
  here (a commit, not a branch that moves); its sha256 is checked against the hub's own (the
  ETag of an LFS file is its sha256) and against the one pinned here where there is one; a file
  that does not match is deleted from the cache and refused;
- offline, it loads from the cache or fails naming the exact file and where to put it.

``lineside weights pull NAME --out DIR`` (connected machine) writes the file and a manifest with
its revision and sha256; ``lineside weights import DIR`` (air-gapped host) checks the hashes and
puts the files where ``hf_hub_download`` looks for them. The run records name, repository,
revision and sha256 of what it loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_infer.bundle import sha256_file
from edge_infer.errors import LinesideError

MANIFEST = "weights.json"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Pretrained:
    name: str
    kind: str  # "imagenet" | "dinov2": what --weights says
    backbone: str  # the family option it serves: timm name or DINOv2 variant
    repo: str
    filename: str
    revision: str | None  # a commit; None: the repository's main, and the run records the commit it got
    sha256: str | None = None  # of the file, where known; always checked against the hub's too

    @property
    def ref(self) -> str:
        return self.revision or "main"

    @property
    def pinned(self) -> str:
        """What this lineside pins of the file, for the run record and `weights list`."""
        return " and ".join(k for k, v in (("revision", self.revision), ("sha256", self.sha256)) if v) or "nothing"


# Pins: a revision (a commit of the hub repository, not a branch that moves) and the sha256 of the file (the
# hub's LFS object id). They were not read from the hub here (no network where this was written): each is the
# value that several independent public projects record for the same repository and file, and all of them
# agree; sizes are given for the same reason. Where no such record was found the field stays None: the hub's
# own sha256 (ETag) is still checked on download, and the run records the commit it got. Fill a missing pin
# from a connected machine with `lineside weights pull NAME --out DIR` (weights.json has both values).
REGISTRY = {p.name: p for p in (
    Pretrained("resnet18", "imagenet", "resnet18", "timm/resnet18.a1_in1k", "model.safetensors",
               "491b427b45c94c7fb0e78b5474cc919aff584bbf",
               "80c49dee3da4822c009c5a7fe591e9223c5a2cfcf95a4067ca4dfb5a7b89c612"),  # 46,807,446 bytes
    Pretrained("wide_resnet50_2", "imagenet", "wide_resnet50_2", "timm/wide_resnet50_2.racm_in1k",
               "model.safetensors", "30f73aceaaa1911830a9795b83ab1908dba18719",
               "03b71d65fb2c73bb0de079a1781009f27a782ec481d2f64ab3bde9b1cdec3000"),  # 275,835,296 bytes
    Pretrained("efficientnet_b4", "imagenet", "efficientnet_b4", "timm/efficientnet_b4.ra2_in1k",
               "model.safetensors", None),  # no public record of its commit or sha256 found: unpinned
    Pretrained("dinov2-vits14", "dinov2", "vits14", "facebook/dinov2-small", "model.safetensors",
               "ed25f3a31f01632728cabb09d1542f84ab7b0056",
               "ae1e99fcefd534ed978cdeb8326f08030c96e28b7a81ffcbc98a857c84d14be1"),  # 88,249,960 bytes
    Pretrained("dinov2-vitb14", "dinov2", "vitb14", "facebook/dinov2-base", "model.safetensors",
               "f9e44c814b77203eaa57a6bdbbd535f21ede1415"),  # its sha256: no public record found
    Pretrained("dinov2-vitl14", "dinov2", "vitl14", "facebook/dinov2-large", "model.safetensors",
               "47b73eefe95e8d44ec3623f8890bd894b6ea2d6c",
               "399fba97a95f22c36834418bc69373364a99af3a1153da1c0fb31db567c92e23"),  # 1,217,522,888 bytes
)}
KINDS = {"imagenet": "the CNN families (rx, rx-mix, adtr)", "dinov2": "the ViT families (dinov2-lora, dinov2-knn)"}

# What a random backbone costs, measured on ELPV (README, docs/rddpm.md, docs/adtr.md).
RANDOM_COST = {
    "rx": "rx on ELPV scores image AUROC 0.79 with a random ResNet-18; PaDiM's published numbers need ImageNet "
          "features",
    "adtr": "ADTR's paper reaches 96.4 image AUROC on MVTec AD with ImageNet features; our random-backbone ELPV "
            "smoke runs scored 0.68-0.75 (docs/adtr.md)",
    "dinov2-lora": "a lora head on a random ViT does not separate good from defective images (AUROC near chance, "
                   "docs/dinov2.md)",
    "dinov2-knn": "kNN over random ViT features is near chance; DINOv2's features are the method",
}


def random_backbone_note(family: str, model) -> str | None:
    """The loud line a run without --weights prints, for families whose backbone is meant to be pretrained."""
    if family not in RANDOM_COST:
        return None
    kind = "dinov2" if family.startswith("dinov2") else "imagenet"
    return (f"WARNING: the {family} backbone is RANDOMLY initialised (no --weights): {RANDOM_COST[family]}. "
            f"Pass --weights {kind} (see `lineside weights list`) for the pretrained one.")


def entry_for(kind: str, family: str, model) -> Pretrained:
    """The registry entry ``--weights imagenet|dinov2`` means for this family's configured backbone."""
    config = getattr(model, "config", None)
    backbone = getattr(config, "backbone", None)
    if kind == "dinov2" and not family.startswith("dinov2") or kind == "imagenet" and family not in ("rx", "rx-mix", "adtr"):
        raise LinesideError(f"--weights {kind} is for {KINDS[kind]}, not {family}: "
                            + ("use --weights dinov2" if family.startswith("dinov2") else
                               "use --weights imagenet" if family in ("rx", "rx-mix", "adtr") else
                               f"the {family} family trains from scratch: drop --weights"))
    for entry in REGISTRY.values():
        if entry.kind == kind and entry.backbone == backbone:
            return entry
    known = ", ".join(e.backbone for e in REGISTRY.values() if e.kind == kind)
    raise LinesideError(f"--weights {kind}: no pinned checkpoint for backbone {backbone!r} (known: {known}); "
                        "choose one of those with --backbone, or give a local checkpoint file to --weights")


def resolve_named(weights: str, family: str, model, log=print) -> tuple[str, dict]:
    """``--weights`` → (local file, provenance for the run). A path passes through."""
    if weights in KINDS:
        entry = entry_for(weights, family, model)
        return fetch(entry, log)
    if weights in REGISTRY:
        return fetch(REGISTRY[weights], log)
    return weights, {"source": "local file", "sha256": sha256_file(weights) if Path(weights).is_file() else None}


# ---------------------------------------------------------------- the hub cache


def cache_dir() -> Path:
    """huggingface_hub's cache, from the environment at call time (tests and users set it per process)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def repo_folder(entry: Pretrained) -> Path:
    return cache_dir() / ("models--" + entry.repo.replace("/", "--"))


def snapshot_path(entry: Pretrained, commit: str | None = None) -> Path:
    return repo_folder(entry) / "snapshots" / (commit or entry.ref) / entry.filename


def fetch(entry: Pretrained, log=print) -> tuple[str, dict]:
    """The cached file of ``entry`` (downloaded once when online), its hash checked; and its provenance."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = hf_hub_download(entry.repo, entry.filename, revision=entry.ref, cache_dir=str(cache_dir()),
                               endpoint=os.environ.get("HF_ENDPOINT") or None, local_files_only=offline())
    except LocalEntryNotFoundError:
        raise LinesideError(offline_message(entry)) from None
    except Exception as exc:  # HTTP and connection errors of any kind: say what was fetched from where
        raise LinesideError(f"cannot fetch {entry.name} ({entry.repo}@{entry.ref}/{entry.filename}) from "
                            f"{os.environ.get('HF_ENDPOINT') or 'the Hugging Face hub'}: {exc}. "
                            + offline_hint(entry)) from None
    path = Path(path)
    commit = path.parent.name
    digest = verified(entry, path)
    log(f"weights: {entry.name} = {entry.repo}@{commit} {entry.filename}, sha256 {digest[:16]}... ({path})")
    return str(path), {"source": "hub", "name": entry.name, "repo": entry.repo, "revision": commit,
                       "pinned": entry.revision is not None, "pins": entry.pinned, "file": entry.filename,
                       "sha256": digest}


def verified(entry: Pretrained, path: Path) -> str:
    """sha256 of the cached file, which must equal the hub's (its blob name) and the pinned one; else it is
    removed from the cache and refused."""
    blob = path.resolve()
    digest = sha256_file(blob)
    expected = [h for h in (entry.sha256, blob.name if SHA256.match(blob.name) else None) if h]
    if not expected:
        raise LinesideError(f"{entry.name}: the hub gave no sha256 for {entry.filename} and none is pinned; "
                            "refusing an unverifiable file")
    bad = [h for h in expected if h != digest]
    if bad:
        blob.unlink(missing_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        what = ("not the file this lineside pins (the hub's own hash matched it: the repository served another "
                "file under the pinned revision)" if bad == [entry.sha256] else "corrupt")
        raise LinesideError(f"{entry.name}: {entry.filename} has sha256 {digest}, expected {bad[0]}: the download "
                            f"is {what}; it was removed from the cache. Try again, or carry a verified copy with "
                            "`lineside weights pull` / `lineside weights import`")
    if entry.revision is not None and path.parent.name != entry.revision:
        raise LinesideError(f"{entry.name}: the cache gave revision {path.parent.name}, not the pinned {entry.revision}")
    return digest


def offline_hint(entry: Pretrained) -> str:
    return (f"On a connected machine: `lineside weights pull {entry.name} --out DIR`; copy DIR here and run "
            f"`lineside weights import DIR`.")


def offline_message(entry: Pretrained) -> str:
    where = snapshot_path(entry)
    return (f"--weights: {entry.name} is not in the hub cache and this host is offline (HF_HUB_OFFLINE or no "
            f"network): expected {entry.repo} revision {entry.ref}, file {entry.filename}, at {where}. "
            + offline_hint(entry))


# ---------------------------------------------------------------- pull / import / list


def pull(names: list[str], out: Path, log=print) -> dict:
    """Download (or take from the cache) each name, copy it to ``out`` with a manifest of hashes."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise LinesideError(f"unknown weights {unknown}: choose from {', '.join(REGISTRY)}")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": 1, "weights": []}
    for name in names:
        entry = REGISTRY[name]
        path, info = fetch(entry, log)
        target = out / name / entry.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        if sha256_file(target) != info["sha256"]:
            raise LinesideError(f"{target}: the copy does not match the cached file's sha256; check the disk")
        manifest["weights"].append({**asdict(entry), "revision": info["revision"], "sha256": info["sha256"],
                                    "path": f"{name}/{entry.filename}"})
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def import_dir(folder: Path, log=print) -> list[Path]:
    """Check every file in a pulled folder against its manifest, then place it in the hub cache."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise LinesideError(f"{folder} has no {MANIFEST}: give a folder written by `lineside weights pull`")
    placed = []
    for item in json.loads(manifest_path.read_text()).get("weights", []):
        name = item.get("name")
        entry = REGISTRY.get(name)
        if entry is None:
            raise LinesideError(f"{manifest_path}: unknown weights {name!r} (this lineside knows {', '.join(REGISTRY)})")
        commit, digest = str(item.get("revision", "")), str(item.get("sha256", ""))
        if not COMMIT.match(commit) or not SHA256.match(digest):
            raise LinesideError(f"{manifest_path}: {name} needs a 40-hex revision and a 64-hex sha256")
        if entry.revision is not None and commit != entry.revision:
            raise LinesideError(f"{manifest_path}: {name} is revision {commit}, but this lineside pins "
                                f"{entry.revision}: pull it with this version of lineside")
        if entry.sha256 is not None and digest != entry.sha256:
            raise LinesideError(f"{manifest_path}: {name} has sha256 {digest}, but this lineside pins {entry.sha256}")
        source = folder / item["path"]
        if not source.is_file():
            raise LinesideError(f"{source} is missing: copy the whole folder written by `lineside weights pull`")
        actual = sha256_file(source)
        if actual != digest:
            raise LinesideError(f"{source} has sha256 {actual}, but {MANIFEST} says {digest}: the copy is corrupt; "
                                "copy it again")
        placed.append(place_in_cache(entry, source, commit, digest))
        log(f"imported {name}: {entry.repo}@{commit} {entry.filename} (sha256 {digest[:16]}...) → {placed[-1]}")
    return placed


def place_in_cache(entry: Pretrained, source: Path, commit: str, digest: str) -> Path:
    """The hub cache's layout: blobs/<sha256>, snapshots/<commit>/<file> → blob, refs/<branch> = commit."""
    folder = repo_folder(entry)
    blob = folder / "blobs" / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.is_file() or sha256_file(blob) != digest:
        tmp = blob.with_suffix(".incomplete")
        shutil.copyfile(source, tmp)
        os.replace(tmp, blob)
    link = snapshot_path(entry, commit)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        link.symlink_to(os.path.relpath(blob, link.parent))
    except OSError:  # filesystems without symlinks: huggingface_hub falls back to copies too
        shutil.copyfile(blob, link)
    if entry.revision is None:  # unpinned: offline lookups of "main" resolve through refs/main
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text(commit)
    return link


def pull_main(args) -> int:
    manifest = pull(args.name, Path(args.out))
    print(f"wrote {len(manifest['weights'])} checkpoint(s) and {MANIFEST} to {args.out}; on the offline host: "
          f"`lineside weights import {args.out}`")
    return 0


def import_main(args) -> int:
    placed = import_dir(Path(args.dir))
    print(f"imported {len(placed)} checkpoint(s) into {cache_dir()}; `lineside train ... --weights imagenet|dinov2` "
          "finds them offline")
    return 0


def list_main(args) -> int:
    for entry in REGISTRY.values():
        cached = any((repo_folder(entry) / "snapshots").glob(f"*/{entry.filename}"))
        print(f"{entry.name:16s} --weights {entry.kind:8s} backbone {entry.backbone:16s} {entry.repo}@"
              f"{(entry.revision or 'main')[:12]}  pins {entry.pinned:20s} {'cached' if cached else 'not cached'}")
    print(f"cache: {cache_dir()}")
    return 0
