"""DINOv2 backbone, checkpoint loaders, LoRA merge, the loss, and the knn memory bank in ONNX.

A randomly initialised DINOv2 has LayerScale gammas of 1e-5: its blocks are nearly the
identity, and a merge or parity test on it would pass whatever the blocks did. Every test
here that compares two computations first sets the gammas (and LoRA's B) to real values.
"""

import json

import numpy as np
import pytest
import torch
from mvtec_fixture import make_mvtec
from vit_fixture import nontrivial

from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec
from lineside.cli import main as cli
from train_host.models import dinov2_adapters, dinov2_knn, dinov2_knn_bank, dinov2_lora
from train_host.models.dinov2_backbone import (
    build_vit,
    default_layers,
    load_dinov2_weights,
    patch_tokens,
)
from train_host.models.dinov2_training import confidence_weighted_loss

D = 384  # ViT-S width: official key sets are built at ViT-S shapes, two blocks
SPEC = InputSpec(56, 56, 3)
SMALL = {"backbone": "vits14", "depth": 2, "layers": [0, 1]}  # fast; the default backbone is vitb14



def meta_checkpoint(depth=2, registers=False, seed=0):
    """Meta's dinov2_vits14[_reg4]_pretrain.pth names and shapes (37×37 grid at 518 px), random values."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.05
    state = {"cls_token": r(1, 1, D), "pos_embed": r(1, 1 + 37 * 37, D), "mask_token": r(1, D),
             "patch_embed.proj.weight": r(D, 3, 14, 14), "patch_embed.proj.bias": r(D),
             "norm.weight": 1 + r(D), "norm.bias": r(D)}
    if registers:
        state["register_tokens"] = r(1, 4, D)
    for i in range(depth):
        shapes = {"norm1.weight": (D,), "norm1.bias": (D,), "attn.qkv.weight": (3 * D, D), "attn.qkv.bias": (3 * D,),
                  "attn.proj.weight": (D, D), "attn.proj.bias": (D,), "ls1.gamma": (D,), "norm2.weight": (D,),
                  "norm2.bias": (D,), "mlp.fc1.weight": (4 * D, D), "mlp.fc1.bias": (4 * D,),
                  "mlp.fc2.weight": (D, 4 * D), "mlp.fc2.bias": (D,), "ls2.gamma": (D,)}
        state.update({f"blocks.{i}.{k}": r(*s) for k, s in shapes.items()})
    return state


def meta_to_hf(meta):
    """The same weights under Hugging Face Dinov2Model names (q, k, v split)."""
    hf = {"embeddings.cls_token": meta["cls_token"], "embeddings.mask_token": meta["mask_token"],
          "embeddings.position_embeddings": meta["pos_embed"],
          "embeddings.patch_embeddings.projection.weight": meta["patch_embed.proj.weight"],
          "embeddings.patch_embeddings.projection.bias": meta["patch_embed.proj.bias"],
          "layernorm.weight": meta["norm.weight"], "layernorm.bias": meta["norm.bias"]}
    if "register_tokens" in meta:
        hf["embeddings.register_tokens"] = meta["register_tokens"]
    for i in range(sum(k.endswith("ls1.gamma") for k in meta)):
        b, L = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = meta[f"{b}attn.qkv.{kind}"].chunk(3)
            hf.update({f"{L}attention.attention.query.{kind}": q, f"{L}attention.attention.key.{kind}": k,
                       f"{L}attention.attention.value.{kind}": v,
                       f"{L}attention.output.dense.{kind}": meta[f"{b}attn.proj.{kind}"],
                       f"{L}norm1.{kind}": meta[f"{b}norm1.{kind}"], f"{L}norm2.{kind}": meta[f"{b}norm2.{kind}"],
                       f"{L}mlp.fc1.{kind}": meta[f"{b}mlp.fc1.{kind}"], f"{L}mlp.fc2.{kind}": meta[f"{b}mlp.fc2.{kind}"]})
        hf[f"{L}layer_scale1.lambda1"] = meta[f"{b}ls1.gamma"]
        hf[f"{L}layer_scale2.lambda1"] = meta[f"{b}ls2.gamma"]
    return hf


@pytest.mark.parametrize("registers", [False, True])
def test_official_checkpoints_load_with_no_key_left_over(tmp_path, registers):
    from safetensors.torch import save_file

    meta = meta_checkpoint(registers=registers)
    torch.save(meta, tmp_path / "dinov2_vits14_pretrain.pth")
    save_file(meta_to_hf(meta), str(tmp_path / "model.safetensors"))
    name = "vits14_reg4" if registers else "vits14"
    x = torch.randn(2, 3, 56, 84)
    outputs = []
    for file, fmt in (("dinov2_vits14_pretrain.pth", "meta"), ("model.safetensors", "huggingface")):
        vit = build_vit(name, 56, 84, depth=2)
        info = load_dinov2_weights(vit, tmp_path / file)
        assert info["format"] == fmt and info["missing_keys"] == [] and info["unexpected_keys"] == []
        assert list(info["keys_ignored"]) == ["mask_token"]  # the pre-training token, and only it
        state = vit.state_dict()
        assert info["keys_loaded"] == len(state)
        torch.testing.assert_close(state["blocks.1.attn.qkv.weight"], meta["blocks.1.attn.qkv.weight"])
        torch.testing.assert_close(state["blocks.0.ls2.gamma"], meta["blocks.0.ls2.gamma"])
        assert state["pos_embed"].shape[1] == 4 * 6 + (0 if registers else 1)  # resampled to the 4×6 grid
        if registers:
            torch.testing.assert_close(state["reg_token"], meta["register_tokens"])
        outputs.append(vit.eval()(x))
    torch.testing.assert_close(outputs[0], outputs[1])  # both layouts give the same network


def test_checkpoint_of_another_variant_is_refused_with_the_keys(tmp_path):
    torch.save(meta_checkpoint(depth=2), tmp_path / "ck.pth")
    with pytest.raises(LinesideError, match=r"missing \['blocks.2"):
        load_dinov2_weights(build_vit("vits14", 56, 56, depth=3), tmp_path / "ck.pth")
    state = meta_checkpoint(depth=2)
    state["blocks.0.attn.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(LinesideError, match="unexpected.*attn.extra"):
        load_dinov2_weights(build_vit("vits14", 56, 56, depth=2), tmp_path / "extra.pth")


def test_any_multiple_of_14_and_nothing_else():
    vit = build_vit("vits14", 56, 84, depth=2)
    tokens = patch_tokens(vit, torch.randn(1, 3, 56, 84), (0, 1))
    assert [t.shape for t in tokens] == [torch.Size([1, D, 4, 6])] * 2
    assert patch_tokens(vit, torch.randn(1, 3, 70, 42), (1,))[0].shape == (1, D, 5, 3)  # interpolated embeddings
    with pytest.raises(LinesideError, match="multiple of 14"):
        build_vit("vits14", 60, 56)
    with pytest.raises(LinesideError, match="unknown DINOv2 backbone"):
        build_vit("vits16", 56, 56)
    assert default_layers(12, 3) == (7, 9, 11)


def adapted(preset, seed=0):
    model = dinov2_lora.build({**SMALL, "preset": preset}, SPEC)
    nontrivial(model.backbone)
    rank, alpha, targets = dinov2_adapters.lora_settings(model.config)
    adapter = dinov2_adapters.LoRAAdapter(model, rank, alpha, targets, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B starts at zero: give it values, or the adapters change nothing
        for name, p in model.backbone.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval(), adapter


@pytest.mark.parametrize("preset", ["default", "anomalyvfm"])
def test_merged_model_equals_adapted_model(preset):
    image = torch.randint(0, 256, (3, 3, 56, 56), dtype=torch.uint8)
    plain = dinov2_lora.build(SMALL, SPEC)
    nontrivial(plain.backbone)
    model, adapter = adapted(preset)
    with torch.no_grad():
        base_tokens = plain.tokens(image)
        tokens = model.tokens(image)
        assert (tokens - base_tokens).abs().max() > 1e-2  # the adapters really change the features
        adapter.merge()
        merged = model.tokens(image)
    torch.testing.assert_close(merged, tokens, rtol=1e-4, atol=1e-4)
    assert set(model.state_dict()) == set(plain.state_dict())  # a plain ViT again: no adapter left


def test_lora_parameter_share_is_reported():
    report = adapted("default")[1].report()
    assert report["lora_parameters"] == 2 * 16 * (D + 3 * D)  # A: r×D, B: 3D×r, per block
    vfm = adapted("anomalyvfm")[1].report()
    assert vfm["lora_parameters"] == 2 * 64 * (2 * D + 2 * D + 2 * D)  # query, value, output: r×D + D×r each


def test_default_lora_is_under_one_percent_of_the_default_backbone():
    """The default config, real full depth: rank 16 / alpha 32 on the fused qkv of all 12 ViT-B blocks.

    The share is of every parameter of the backbone (patch embedding, position embeddings
    at 224 px, blocks, final norm), not of the head; only the position embeddings depend
    on the input size (nothing is run here, so building at 224 costs no forward pass).
    """
    config = dinov2_lora.DinoLoRAConfig()
    assert (config.backbone, config.preset, config.rank, config.alpha) == ("vitb14", "default", "", None)
    model = dinov2_lora.build({}, InputSpec(224, 224, 3))
    assert len(model.backbone.blocks) == 12 and model.backbone.embed_dim == 768
    rank, alpha, targets = dinov2_adapters.lora_settings(model.config)
    assert (rank, alpha) == (16, 32.0)
    report = dinov2_adapters.LoRAAdapter(model, rank, alpha, targets).report()
    assert report["lora_parameters"] == 12 * 16 * (768 + 3 * 768)  # A: r×D, B: 3D×r, per block
    assert report["backbone_parameters"] == 85_724_928  # ViT-B/14 at 224 px (257 position embeddings)
    assert report["share_of_backbone"] < 0.01  # 589,824 / 85,724,928 = 0.69%


def test_confidence_cannot_buy_a_low_loss():
    """L = L_base·C − α·log C is smallest at C = α / L_base: confident where right, never 'all unsure'."""
    logit = torch.full((1, 1, 1, 1), 2.0)
    mask = torch.zeros_like(logit)  # a pixel the model gets wrong: L_base ≈ 2.13
    cs = torch.linspace(-8, 4, 2001)
    losses = torch.stack([confidence_weighted_loss(logit, torch.full_like(logit, c), mask, 4.0) for c in cs])
    base = float(torch.nn.functional.binary_cross_entropy_with_logits(logit, mask))
    best = float(cs[losses.argmin()])
    assert abs(best - np.log(4.0 / base - 1)) < 0.02
    # a pixel the model gets right earns a higher confidence than a wrong one
    right = torch.stack([confidence_weighted_loss(-logit, torch.full_like(logit, c), mask, 4.0) for c in cs])
    assert float(cs[right.argmin()]) > best + 1


def test_bad_options_get_clear_errors():
    with pytest.raises(LinesideError, match="LoRA rank"):
        dinov2_lora.build({**SMALL, "rank": "big"}, SPEC)
    with pytest.raises(LinesideError, match="layers"):
        dinov2_lora.build({**SMALL, "layers": [5]}, SPEC)


def test_zero_shot_fit_refuses_a_single_station_split(tmp_path):
    from train_host.data import load_split

    split = load_split(make_mvtec(tmp_path / "cat", n_train=4, n_good=1, n_defect=1))
    model = dinov2_lora.build({**SMALL, "zero_shot": True}, SPEC)
    with pytest.raises(LinesideError, match="two or more stations"):
        dinov2_lora.fit(model, Context(split, SPEC))


def test_greedy_coreset_covers_every_cluster():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 16, generator=g) * 20
    feats = torch.cat([c + torch.randn(200, 16, generator=g) for c in centres])
    picked = dinov2_knn_bank.greedy_coreset(feats, 5, projection=0, seed=0)
    assert sorted({int(i) // 200 for i in picked}) == [0, 1, 2, 3, 4]


def Context(split, spec):
    from train_host.context import TrainContext

    return TrainContext(split, spec, {"batch_size": 8}, log=lambda *_: None)


def test_knn_export_holds_the_bank_and_matches_pytorch(tmp_path):
    import onnx
    from onnx import numpy_helper

    from train_host.data import load_split
    from train_host.export import export_onnx, parity_check

    split = load_split(make_mvtec(tmp_path / "cat", n_train=6, n_good=2, n_defect=2))
    model = dinov2_knn.build({**SMALL, "bank_size": 40, "sigma": 1.0}, SPEC)
    nontrivial(model.backbone)
    info = dinov2_knn.fit(model, Context(split, SPEC))
    assert info["bank_rows"] == 40 and model.bank.shape == (40, 2 * D)
    export_onnx(model, SPEC, tmp_path / "knn.onnx", max_batch=4)
    graph = onnx.load(str(tmp_path / "knn.onnx")).graph
    constants = [numpy_helper.to_array(t) for t in graph.initializer]
    constants += [numpy_helper.to_array(a.t) for n in graph.node if n.op_type == "Constant" for a in n.attribute
                  if a.name == "value"]
    bank = model.bank.numpy()
    # the bank is a constant of the graph (the exporter stores it transposed, in GEMM layout)
    assert any(c.shape == bank.T.shape and np.allclose(c, bank.T) for c in constants)
    assert "MatMul" in {n.op_type for n in graph.node}
    images = torch.randint(0, 256, (3, 3, 56, 56), dtype=torch.uint8).numpy()
    parity = parity_check(model, tmp_path / "knn.onnx", SPEC, images, tolerance=1e-4)
    assert parity["score_rel_err"] < 1e-4


def test_lora_run_end_to_end_through_export(tmp_path, capsys):
    import onnx

    data = make_mvtec(tmp_path / "cat", n_train=6, n_good=2, n_defect=2)
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    assert cli(["train", "dinov2-lora", "--data", str(data), "--out", str(run), "--size", "56",
                "--backbone", "vits14", "--depth", "2", "--layers", "0,1", "--epochs", "1", "--per-kind", "2",
                "--adapt", "best", "--batch-size", "8"]) == 0
    assert "note: these adapters are 1.3" in capsys.readouterr().out  # ViT-S: over 1%, said once, not refused
    record = json.loads((run / "run.json").read_text())
    training = record["training"]
    assert set(training["results"]) == {"baseline", "lora"} and training["kept"] in ("baseline", "lora")
    assert training["merge_check"]["max_relative_error"] <= 1e-4
    assert training["results"]["lora"]["lora_parameters"] == 2 * 16 * 4 * D
    from train_host.run import load_run

    trained, _ = load_run(run)  # what was saved is the trained head, not the initial one
    fresh = dinov2_lora.build(record["config"], SPEC)
    assert not torch.equal(trained.head.net[0].weight, fresh.head.net[0].weight)
    assert cli(["export", str(run), "--out", str(bundle)]) == 0
    graph = onnx.load(str(bundle / "model.onnx")).graph
    names = [n.name for n in graph.node] + [t.name for t in graph.initializer]
    assert not [n for n in names if "lora" in n.lower()]  # no adapter ops reach the device


def test_train_loads_an_official_checkpoint_through_the_cli(tmp_path):
    data = make_mvtec(tmp_path / "cat", n_train=4, n_good=1, n_defect=1)
    torch.save(meta_checkpoint(depth=2), tmp_path / "dinov2_vits14_pretrain.pth")
    run = tmp_path / "knn"
    assert cli(["train", "dinov2-knn", "--data", str(data), "--out", str(run), "--size", "56",
                "--backbone", "vits14", "--depth", "2", "--weights", str(tmp_path / "dinov2_vits14_pretrain.pth"),
                "--bank-size", "30"]) == 0
    weights = json.loads((run / "run.json").read_text())["training"]["backbone_weights"]
    assert weights["format"] == "meta" and weights["unexpected_keys"] == [] and weights["keys_loaded"] > 30
    assert cli(["train", "dinov2-knn", "--data", str(data), "--out", str(tmp_path / "b"), "--size", "56",
                "--backbone", "vits14", "--depth", "3",
                "--weights", str(tmp_path / "dinov2_vits14_pretrain.pth")]) == 2  # a 2-block file
