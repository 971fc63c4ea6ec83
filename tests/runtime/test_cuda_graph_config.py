"""`cuda_graph: true` reaches the backend from the station config and from `lineside bench latency`."""

from __future__ import annotations

import pytest

from edge_infer.errors import LinesideError
from edge_infer.station import load_station
from edge_infer.pipeline import Model


def write(tmp_path, bundle, **extra):
    lines = ["station: st1", f"bundle: {bundle}"] + [f"{k}: {v}" for k, v in extra.items()]
    path = tmp_path / "station.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cuda_graph_is_a_station_setting(tmp_path, tiny_bundle):
    assert load_station(write(tmp_path, tiny_bundle)).cuda_graph is False
    assert load_station(write(tmp_path, tiny_bundle, backend="tensorrt", cuda_graph="true")).cuda_graph is True


def test_cuda_graph_on_an_onnxruntime_backend_is_refused_with_the_fix(tmp_path, tiny_bundle):
    with pytest.raises(LinesideError, match=r"cuda_graph: true applies to the tensorrt backend only.*backend: tensorrt"):
        load_station(write(tmp_path, tiny_bundle, backend="ort-cpu", cuda_graph="true"))


def test_auto_without_tensorrt_says_it_runs_without_graphs(tmp_path, tiny_bundle, capsys):
    cfg = load_station(write(tmp_path, tiny_bundle, backend="auto", cuda_graph="true"))
    model = Model(cfg)
    assert model.scorer.backend.name == "ort-cpu"
    assert "cuda_graph applies to the tensorrt backend only: ort-cpu runs without CUDA graphs" in capsys.readouterr().err


def test_bench_latency_has_the_cuda_graph_flag():
    from lineside.cli import build_parser

    args = build_parser().parse_args(["bench", "latency", "bundle", "--cuda-graph"])
    assert args.cuda_graph is True
