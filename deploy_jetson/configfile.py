"""Reading station configs and inventories (YAML or TOML), and the station config a bundle carries.

A station config packed into a bundle is rewritten for the device (always as
``station.yaml``): ``bundle`` becomes ``.`` (the bundle's own folder, since relative paths
are relative to the config file), and the other relative paths (journal, Curve keys, NG
image folder, the line's trusted keys) are made relative to the device root, two levels up from
``bundles/<id>/station.yaml``. Otherwise the journal would live inside one bundle version
and vanish when that version is pruned.
"""

from __future__ import annotations

from pathlib import Path

from edge_infer.errors import LinesideError

SUFFIXES = (".yaml", ".yml", ".toml")
PACKED_NAME = "station.yaml"
DEFAULT_CONTROL = "tcp://127.0.0.1:5557"  # edge_infer's station config default for sockets.control
# (section, key) of the station config's paths that must outlive a bundle version
DEVICE_PATHS = (("journal", "path"), ("curve", "server_secret_key"), ("curve", "authorized_clients"),
                ("disk", "dir"), ("security", "users"), ("security", "session_secret"),
                ("line", "trusted_keys"))
TOP_DEVICE_PATHS = ("secrets_file",)  # top-level keys that are device paths


def read_config(path: str | Path) -> dict:
    path = Path(path)
    if path.suffix not in SUFFIXES or not path.is_file():
        raise LinesideError(f"{path} must be an existing .yaml/.yml/.toml file")
    text = path.read_text()
    from edge_infer import secret_refs  # keeps `!secret NAME` references as they are

    try:
        if path.suffix == ".toml":
            from edge_infer.tomlread import loads

            data = secret_refs.from_toml(loads(text))
        else:
            data = secret_refs.load_yaml(text)
    except Exception as exc:  # the parsers' own error types differ; all mean "fix this file"
        raise LinesideError(f"cannot parse {path}: {exc}") from None
    if not isinstance(data, dict):
        raise LinesideError(f"{path} must be a mapping of settings at its top level")
    return data


def for_device(data: dict) -> str:
    """The station config as the device gets it (YAML text): see the module docstring."""
    from edge_infer import secret_refs

    out = dict(data)
    for key in TOP_DEVICE_PATHS:
        if isinstance(out.get(key), str) and not Path(out[key]).is_absolute():
            out[key] = str(Path("../..") / out[key])
    out["bundle"] = "."
    for section, key in DEVICE_PATHS:
        holder = out.get("alerts", {}) if section == "disk" else out
        table = holder.get(section) if isinstance(holder, dict) else None
        if isinstance(table, dict) and isinstance(table.get(key), str) and not Path(table[key]).is_absolute():
            table = dict(table)
            table[key] = str(Path("../..") / table[key])
            if section == "disk":
                out["alerts"] = {**out["alerts"], "disk": table}
            else:
                out[section] = table
    return secret_refs.dump_yaml(out)


def control_address(bundle_dir: Path) -> str:
    """Where the service in bundle_dir listens for control requests, as reached from the device itself."""
    return control_endpoint(bundle_dir)[0]


def control_endpoint(bundle_dir: Path) -> tuple[str, Path | None]:
    """The control address (as reached from the device) and, when the station uses CurveZMQ, the file
    holding the server's key (its public half is what a client needs)."""
    path = Path(bundle_dir) / PACKED_NAME
    data = read_config(path) if path.is_file() else {}
    address = (data.get("sockets") or {}).get("control") or DEFAULT_CONTROL
    # a server bound to all interfaces is reached on loopback
    address = address.replace("tcp://*:", "tcp://127.0.0.1:").replace("tcp://0.0.0.0:", "tcp://127.0.0.1:")
    curve = data.get("curve")
    if not curve:
        return address, None
    server_key = Path(curve["server_secret_key"])
    return address, server_key if server_key.is_absolute() else (path.parent.resolve() / server_key).resolve()


def journal_path(bundle_dir: Path) -> Path:
    """The verdict journal of the service running bundle_dir (relative paths are relative to its config)."""
    return config_journal(Path(bundle_dir) / PACKED_NAME)


def config_journal(path: Path) -> Path:
    """The journal a station config names (default journal.sqlite), relative to the config's folder."""
    data = read_config(path) if path.is_file() else {}
    journal = Path((data.get("journal") or {}).get("path") or "journal.sqlite")
    return journal if journal.is_absolute() else (path.parent.resolve() / journal).resolve()
