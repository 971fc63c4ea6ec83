"""deploy_jetson's commands: bundle, verify, provision, flash, rollback, status, build-engine (argparse only
here: handlers import tensorrt and the rest when they run)."""

from __future__ import annotations

from edge_infer.cli import handler

_CMD = "deploy_jetson.commands"
_SET_HELP = ("override a device setting for every target, e.g. --set restart='systemctl restart lineside@{station}' "
             "(settings: root station python restart control health_timeout build trt_check build_timeout "
             "identity bwlimit keep)")


def register(sub) -> None:
    p = sub.add_parser("bundle", help="pack a bundle and its station config into one signed tar",
                       description="Pack a bundle (model variants, manifest, thresholds) with the station config "
                       "into one tar whose manifest is signed with an Ed25519 key.")
    p.add_argument("source", metavar="RUN|DIR", help="bundle directory, or a run directory holding one")
    p.add_argument("--station", required=True, metavar="CONFIG", help="the station's config file (.yaml/.toml)")
    p.add_argument("--key", required=True, help="signing key (NAME.sign.key from `lineside keys NAME --type signing`)")
    p.add_argument("--out", required=True, metavar="BUNDLE.tar", help="the tar to write")
    p.add_argument("--mender", action="store_true",
                   help="also write BUNDLE.mender, a Mender Artifact (update module lineside-bundle) holding the tar")
    p.add_argument("--device-type", action="append", metavar="TYPE",
                   help="--mender: the Mender device type(s) it installs on, e.g. jetson-orin-nano (repeatable)")
    p.set_defaults(handler=handler(f"{_CMD}:bundle_main"))

    p = sub.add_parser("verify", help="check a bundle's hashes and signature and show what it holds")
    p.add_argument("bundle", metavar="BUNDLE", help="bundle tar or directory")
    p.add_argument("--trust", action="append", metavar="KEY.pub",
                   help="trusted public key file or folder (repeatable); without it the signature is checked "
                   "against the key the bundle carries, which proves integrity but not who signed it")
    p.add_argument("--station", help="refuse the bundle unless it was made for this station")
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(handler=handler(f"{_CMD}:verify_main"))

    p = sub.add_parser("provision", help="prepare a device root: its station and the signing keys it trusts")
    p.add_argument("targets", nargs="+", metavar="TARGET", help="ssh://user@host[:port], local:/path or inventory")
    p.add_argument("--station", help="the station this device serves (default: the inventory's `station`)")
    p.add_argument("--trust", action="append", metavar="KEY.pub", help="public signing key to trust (repeatable)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=_SET_HELP)
    _engine_choice(p)
    p.set_defaults(handler=handler(f"{_CMD}:provision_main"))

    p = sub.add_parser("flash", help="put a signed bundle live on devices, rolling back on any failure",
                       description="Copy (resumable), verify on the device, build the engine there, switch "
                       "atomically, restart, wait for health; roll back if any step fails.")
    p.add_argument("targets", nargs="+", metavar="TARGET", help="ssh://user@host[:port][/root], local:/path, "
                   "or an inventory .toml/.yaml")
    p.add_argument("bundle", metavar="BUNDLE.tar", help="the signed tar from `lineside bundle`")
    p.add_argument("--parallel", type=int, default=4, help="devices flashed at once (default: 4)")
    p.add_argument("--force", action="store_true", help="flash even where this bundle is already current")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=_SET_HELP)
    _engine_options(p)
    p.set_defaults(handler=handler(f"{_CMD}:flash_main"))

    p = sub.add_parser("rollback", help="return devices to their previous bundle")
    p.add_argument("targets", nargs="+", metavar="TARGET")
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=_SET_HELP)
    _engine_options(p)
    p.set_defaults(handler=handler(f"{_CMD}:rollback_main"))

    p = sub.add_parser("status", help="what version devices run, their health and last verdict time")
    p.add_argument("targets", nargs="+", metavar="TARGET")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each health answer")
    p.add_argument("--json", action="store_true", help="one JSON object per device")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help=_SET_HELP)
    _engine_choice(p)
    p.set_defaults(handler=handler(f"{_CMD}:status_main"))
    register_engine(sub)
    register_sync(sub)


def register_sync(sub) -> None:
    p = sub.add_parser("sync", help="ship this device's journal (verdicts, reviews, audit log) to the plant's "
                       "PostgreSQL verdict store",
                       description="Send the journal's rows past the last sync to PostgreSQL in batches (COPY, "
                       "ON CONFLICT DO NOTHING); the journal's cursor moves only after each batch is committed, so "
                       "an interrupted sync resumes without loss or duplicates. Creates or migrates the store's "
                       "schema. The password comes from PGPASSWORD or ~/.pgpass, never the URL in a file that "
                       "travels.")
    p.add_argument("--to", required=True, metavar="postgresql://USER@HOST[:PORT]/DB", help="the verdict store")
    p.add_argument("--journal", required=True, metavar="PATH|station.yaml",
                   help="the journal file, or the station config that names it")
    p.add_argument("--device", help="this device's name in the store (default: the host name)")
    p.add_argument("--batch", type=int, default=5000, help="rows per transaction (default: 5000)")
    p.add_argument("--every", type=float, metavar="SECONDS",
                   help="keep syncing every SECONDS, riding out store outages (default: once)")
    p.set_defaults(handler=handler("deploy_jetson.sync:main"))


def _engine_choice(p) -> None:
    p.add_argument("--engine", choices=["ssh", "ansible"], default="ssh",
                   help="ssh (default): lineside's own parallel SSH loop; ansible: the lineside role through "
                   "ansible-runner (docs/fleet.md); TARGET may then be an Ansible inventory")


def _engine_options(p) -> None:
    """--engine and the canary roll-out's options (flash, rollback)."""
    _engine_choice(p)
    p.add_argument("--serial", default="1,10%,100%",
                   help="--engine ansible: the roll-out's batches, counts or percentages (default: 1,10%%,100%%)")
    p.add_argument("--max-fail-percentage", type=float, default=0,
                   help="--engine ansible: stop when more than this share of a batch fails (default: 0)")
    p.add_argument("--check", action="store_true", help="--engine ansible: check mode, change nothing")


def batch_range(text: str) -> tuple[int, int, int]:
    parts = [int(v) for v in text.split(",")]
    if len(parts) != 3:
        raise ValueError("give MIN,OPT,MAX")
    return tuple(parts)


def register_engine(sub) -> None:
    """`lineside build-engine` (kept apart so it merges beside the bundle/flash commands)."""
    p = sub.add_parser("build-engine", help="build a TensorRT engine for this device from a bundle's ONNX",
                       description="Build BUNDLE/engines/model.PRECISION.engine with the TensorRT Python API, "
                       "strongly typed (precision comes from the ONNX variant), record the TensorRT version and GPU "
                       "beside it, and compare its outputs with onnxruntime's. Run it on the device itself.")
    p.add_argument("bundle", help="bundle directory (from `lineside export`)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"],
                   help="which ONNX variant of the bundle to build (default: fp16 if the bundle has it, else fp32)")
    p.add_argument("--batch", type=batch_range, help="optimization profile MIN,OPT,MAX batch (default: 1,1,max_batch)")
    p.add_argument("--workspace", type=int, default=1024, help="builder workspace limit in MiB (default: 1024)")
    p.add_argument("--timing-cache", default="~/.cache/lineside/tensorrt.timing-cache",
                   help="timing cache file reused across builds (default: ~/.cache/lineside/tensorrt.timing-cache)")
    p.add_argument("--dla-core", type=int, help="build for this DLA core (Jetson), GPU fallback for the rest")
    p.add_argument("--weakly-typed", action="store_true",
                   help="let TensorRT pick layer precisions with the 10.x FP16/INT8 flags (not in TensorRT 11)")
    p.add_argument("--images", help="folder of station images for the check against onnxruntime "
                   "(default: synthetic images, labelled as such)")
    p.add_argument("--check-images", type=int, default=16, help="images in that check (default: 16)")
    p.add_argument("--tolerance", type=float,
                   help="largest relative error vs onnxruntime (default: fp32 1e-2, fp16 5e-2, int8 0.15)")
    p.set_defaults(handler=handler("deploy_jetson.engine:main"))
