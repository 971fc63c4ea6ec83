"""The runtime's commands, and the lazy-handler helper every package's CLI uses.

Nothing heavy is imported here: each handler imports its module when it runs, so
`lineside --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib


def handler(target: str):
    """'module:function' → a handler that imports the module only when the command runs."""
    module, func = target.split(":")

    def run(args: argparse.Namespace):
        return getattr(importlib.import_module(module), func)(args)

    return run


def register(sub) -> None:
    p = sub.add_parser("score", help="score image files or folders with a bundle and print verdicts",
                       description="Score images with a bundle on this machine's backend; one verdict per image.")
    p.add_argument("bundle", help="bundle directory (from `lineside export`)")
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    p.add_argument("--backend", default="auto", help="inference backend: auto, tensorrt, ort-trt, ort-cuda or ort-cpu "
                   "(default: auto, the best one available here)")
    p.add_argument("--precision", default="fp32", choices=["auto", "fp32", "fp16", "int8"],
                   help="which model variant of the bundle to run; auto: the engine built for it here (default: fp32)")
    p.add_argument("--threshold", type=float, help="override the bundle's image threshold for this run")
    p.add_argument("--batch", type=int, default=1, help="images per backend call (default: 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of text")
    p.set_defaults(handler=handler("edge_infer.score_cmd:main"))
    register_runtime(sub)


def _client_keys(p) -> None:
    p.add_argument("--server-key", help="the server's public Curve key (NAME.key), when the station uses Curve")
    p.add_argument("--client-key", help="this client's Curve key pair (NAME.key_secret), when the station uses Curve")


def register_runtime(sub) -> None:
    p = sub.add_parser("doctor", help="what this machine gives the runtime: OpenCV, ONNX Runtime, TensorRT, GPU",
                       description="Report which OpenCV is in use (path, version, GStreamer, CUDA) or that images go "
                       "through Pillow without it, ONNX Runtime's providers, the TensorRT and cuda-python versions, "
                       "the CPU and GPU, and on a Jetson its power mode and clocks. Loads no model.")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(handler=handler("edge_infer.doctor:main"))

    p = sub.add_parser("serve", help="run a station: frames in (ZeroMQ), one verdict out per frame",
                       description="Bind the station's frames (PULL), verdicts (PUB) and control (REP) sockets and "
                       "score every frame. SIGTERM drains the queue and flushes the journal before exiting.")
    p.add_argument("station_config", nargs="+", help="the station's YAML/TOML config (docs/station-config.md); "
                   "several configs serve several stations from one process, each with its own sockets")
    p.set_defaults(handler=handler("edge_infer.server:main"))

    p = sub.add_parser("camera", help="capture frames from a camera, video, folder or stream and send them",
                       description="Capture from SOURCE and PUSH frames to a server: a folder of images, a video "
                       "file, a device index (0), an rtsp:// URL, a GStreamer pipeline ('... ! appsink'), or a "
                       "template gst:csi | gst:usb | gst:usb-mjpeg | gst:rtsp (needs OpenCV with GStreamer).")
    p.add_argument("source", help="folder, video file, device index, URL, pipeline or gst:TEMPLATE")
    p.add_argument("--connect", required=True, help="the server's frames address, e.g. tcp://127.0.0.1:5555")
    p.add_argument("--station", required=True, help="station name, as in the station config")
    p.add_argument("--name", default="cam0", help="this camera's name (default: cam0)")
    p.add_argument("--fps", type=float, help="frames per second to send (default: as fast as possible)")
    p.add_argument("--encoding", choices=["raw", "jpeg", "png"], help="payload (default: jpeg; raw with "
                   "--shm-slots)")
    p.add_argument("--shm-slots", type=int, default=0, metavar="N",
                   help="server on this host (station `shm: true`): raw frames go through a ring of N slots in "
                   "/dev/shm and only the header over the socket; N must exceed the frames the server may hold "
                   "unread (default: 0, off)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default: 90)")
    p.add_argument("--loop", action="store_true", help="replay a folder or video file forever")
    p.add_argument("--count", type=int, help="stop after this many frames")
    p.add_argument("--start-id", default="0", help="first frame id, or 'now' (unix ms: ids keep rising across "
                   "restarts) (default: 0)")
    p.add_argument("--hwm", type=int, default=16, help="frames buffered for the server at most (default: 16)")
    for opt, helptext in (("--sensor-id", "gst:csi sensor"), ("--width", "gst: capture width"),
                          ("--height", "gst: capture height"), ("--device", "gst:usb device path"),
                          ("--url", "gst:rtsp stream URL")):
        p.add_argument(opt, type=int if opt in ("--sensor-id", "--width", "--height") else str, help=helptext)
    _client_keys(p)
    p.set_defaults(handler=handler("edge_infer.camera:main"))

    p = sub.add_parser("ctl", help="ask a running server: health, stats, reload, threshold, shutdown",
                       description="Send one control command to a server's control socket and print the answer.")
    p.add_argument("address", help="the control address, e.g. tcp://127.0.0.1:5557")
    p.add_argument("cmd", choices=["health", "stats", "reload", "threshold", "shutdown", "recipe", "trigger", "line"],
                   help="recipe/trigger/line: stations with a `line` section (docs/line-integration.md)")
    p.add_argument("--id", dest="recipe", type=int, help="recipe: the recipe id to switch to")
    p.add_argument("--who", default="ctl", help="recipe/trigger/threshold/reload: who asks, for the journal "
                   "(default: ctl)")
    p.add_argument("--force", action="store_true", help="threshold/reload: accept a threshold outside the range "
                   "the bundle's calibration makes plausible")
    p.add_argument("--clear", metavar="KEYS", help="threshold: drop runtime values (image,pixel,min_area or all), "
                   "so the station pin or the bundle's value applies again")
    p.add_argument("--bundle", help="reload: the bundle directory to load instead of the station config's "
                   "(on the server's machine); without it, reload re-reads the config and its bundle's thresholds")
    p.add_argument("--image", type=float, help="reload/threshold: image threshold")
    p.add_argument("--pixel", type=float, help="reload/threshold: pixel threshold for regions")
    p.add_argument("--min-area", type=int, help="reload/threshold: smallest region, in map pixels")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer (default: 5)")
    p.add_argument("--json", action="store_true", help="the answer on one line")
    _client_keys(p)
    p.set_defaults(handler=handler("edge_infer.control:main"))

    p = sub.add_parser("watch", help="print a server's verdicts live, one line each",
                       description="Subscribe to a server's verdicts and print each with a running OK/NG count.")
    p.add_argument("address", help="the verdicts address, e.g. tcp://127.0.0.1:5556")
    p.add_argument("--station", help="only this station's verdicts")
    p.add_argument("--alerts", action="store_true", help="only alerts (NG verdicts)")
    p.add_argument("--json", action="store_true", help="one JSON object per verdict")
    p.add_argument("--count", type=int, help="stop after this many verdicts")
    p.add_argument("--timeout", type=float, help="stop after this many seconds without a verdict")
    _client_keys(p)
    p.set_defaults(handler=handler("edge_infer.watch:main"))

    p = sub.add_parser("review", help="list the line's verdicts and confirm or overturn them (operator review)",
                       description="Read the station's verdict journal and record an operator's judgement of "
                       "verdicts: confirm (it was right), overturn (it was wrong), clear (take it back). Each review "
                       "is journaled with who and when; `lineside calibrate --from-journal [--confirmed-only]` "
                       "learns from them.")
    p.add_argument("source", help="the station's config (station.yaml) or its journal file (journal.sqlite)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = actions.add_parser("list", help="verdicts, newest first")
    q.add_argument("--status", choices=["OK", "NG", "ERROR", "DROPPED"], help="only this status")
    q.add_argument("--unreviewed", action="store_true", help="only verdicts no one has reviewed")
    q.add_argument("--station", help="only this station (default: the config's; all in a bare journal)")
    q.add_argument("--since", help="only the last ..., e.g. 8h, 7d")
    q.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    q.add_argument("--json", action="store_true", help="one JSON object per verdict")
    judgements = {"confirm": "the verdicts were right",
                  "overturn": "the verdicts were wrong (a good part rejected, or a defect passed)",
                  "clear": "take the reviews back"}
    for action, text in judgements.items():
        q = actions.add_parser(action, help=text)
        q.add_argument("ids", type=int, nargs="+", metavar="ID", help="verdict ids (as `list` or the page shows)")
        q.add_argument("--note", help="why, for the journal")
        q.add_argument("--who", help="who reviews, for the journal (default: the OS user)")
        q.add_argument("--json", action="store_true", help="print the reviewed verdicts as JSON")
    p.set_defaults(handler=handler("edge_infer.review_cmd:main"))

    p = sub.add_parser("journal", help="maintain the station's journal (migrate an old one so retention can shrink it)",
                       description="migrate: rewrite a journal made before retention (one VACUUM, with "
                       "auto_vacuum=INCREMENTAL) so the retention job can give deleted verdicts' space back to the "
                       "disk while the line runs. Stop the station first; it needs as much free disk as the journal.")
    p.add_argument("action", choices=["migrate"], help="migrate: make the journal reclaimable (once)")
    p.add_argument("source", help="the station's config (station.yaml) or its journal file (journal.sqlite)")
    p.set_defaults(handler=handler("edge_infer.retention:main"))

    p = sub.add_parser("keys", help="make key pairs (CurveZMQ for the station's sockets; signing for bundles; "
                       "tls for the operator page and OPC UA)",
                       description="Write NAME.key (public) and NAME.key_secret (private, mode 0600) for each NAME. "
                       "signing: NAME.sign.key (Ed25519, keep it on the host that packs bundles) and "
                       "NAME.sign.pub (give it to devices: `lineside provision TARGET --trust NAME.sign.pub`). "
                       "tls: NAME.cert.pem (self-signed, for commissioning) and NAME.key.pem (its key, mode 0600); "
                       "`lineside keys tls --out DIR` makes operator-page.cert.pem and operator-page.key.pem.")
    p.add_argument("names", nargs="+", metavar="[TYPE] NAME", help="key names, e.g. server cam0 operator; a first "
                   "word curve, signing or tls picks the type")
    p.add_argument("--type", default=None, help="key type: curve, signing or tls (default: curve)")
    p.add_argument("--out", default="keys", help="folder to write into (default: ./keys)")
    p.add_argument("--force", action="store_true", help="replace existing keys of the same name")
    p.add_argument("--host", action="append", help="tls: a DNS name or IP address the certificate is for "
                   "(repeat; default: this host's name, localhost, 127.0.0.1)")
    p.add_argument("--uri", help="tls: an OPC UA application URI (e.g. urn:lineside:weld-3): RSA key and "
                   "the key usages OPC UA checks")
    p.set_defaults(handler=handler("edge_infer.keys_cmd:main"))

    p = sub.add_parser("users", help="people and machines that may change the station, with roles",
                       description="Manage the station's users file (security.users; mode 0600): operator (review, "
                       "acknowledge, trigger), engineer (+ recipe, thresholds, reload), admin (+ users, keys). "
                       "Passwords are read from a prompt, or from stdin when it is not a terminal; never from "
                       "the command line.")
    users = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions = {"add": "add a user (password prompt) or, with --token, a machine (prints its token once)",
               "passwd": "set a new password (or a new token for a machine)",
               "remove": "remove a user or machine: its sessions end at once", "list": "names and roles"}
    for name, helptext in actions.items():
        u = users.add_parser(name, help=helptext)
        u.add_argument("config", metavar="USERS|station.yaml", help="the users file, or the station config "
                       "that names it (security.users)")
        if name != "list":
            u.add_argument("name", help="user or machine name")
        if name == "add":
            u.add_argument("--role", required=True, choices=["operator", "engineer", "admin"])
            u.add_argument("--token", action="store_true", help="a machine: make a random token instead of a "
                           "password (hashed at rest; shown once)")
        u.set_defaults(handler=handler("edge_infer.users_cmd:main"))

    p = sub.add_parser("audit", help="who changed what on a station: the journal's audit log",
                       description="Print the station's journaled changes (recipe, thresholds, reload, review, "
                       "acknowledge, trigger, logins and refusals), oldest first, with who made them.")
    p.add_argument("journal", metavar="JOURNAL|station.yaml", help="the journal (journal.sqlite) or the station "
                   "config that names it")
    p.add_argument("--since", help="only events at or after this time: ISO 8601 (2026-12-01T08:00) or a "
                   "duration back from now (90m, 8h, 2d)")
    p.add_argument("--kind", help="only this kind of event (recipe, page_trigger, alarm_ack, review, ...)")
    p.add_argument("--who", help="only this user's events (alice matches alice@page and alice@opcua)")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.set_defaults(handler=handler("edge_infer.audit_cmd:main"))
