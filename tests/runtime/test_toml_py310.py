"""TOML station and fleet configs on Python 3.10 (JetPack 6), where the standard library has no
tomllib: they are read through tomli, which pyproject.toml installs there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

AS_ON_PY310 = """
import json, sys
sys.modules["tomllib"] = None  # Python 3.10 has no tomllib
from edge_infer.station import load_station
from deploy_jetson.configfile import read_config
cfg = load_station(sys.argv[1])
print(json.dumps({"station": cfg.station, "max_frames": cfg.batch.max_frames,
                  "tomli": "tomli" in sys.modules, "fleet": read_config(sys.argv[2])}))
"""


def test_toml_configs_load_without_tomllib(tmp_path, tiny_bundle):
    station = tmp_path / "station.toml"
    station.write_text(f'station = "press-1"\nbundle = "{tiny_bundle}"\n[batch]\nmax_frames = 4\n')
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[defaults]\nuser = "lineside"\n')
    out = subprocess.run([sys.executable, "-c", AS_ON_PY310, str(station), str(fleet)],
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert (got["station"], got["max_frames"], got["tomli"]) == ("press-1", 4, True)
    assert got["fleet"] == {"defaults": {"user": "lineside"}}
