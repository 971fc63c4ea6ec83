"""train_host's commands: train, evaluate, export. argparse only: handlers import torch when run."""

from __future__ import annotations

from edge_infer.cli import handler


def register(sub) -> None:
    train = sub.add_parser("train", help="train a detector on a station's good images",
                           description="Fit a detector family on the defect-free training images of a dataset "
                           "and save the run (run.json + weights.safetensors).")
    families = train.add_subparsers(dest="family", metavar="FAMILY", required=True)
    rx = families.add_parser("rx", help="Gaussian per patch location, Mahalanobis distance (PaDiM / Deep RX)",
                             description="Closed-form fit, streamed over the training set.")
    common_train_options(rx)
    rx_options(rx)
    rx.set_defaults(handler=handler("train_host.train:main"))
    lora = families.add_parser("dinov2-lora", help="DINOv2 ViT + LoRA + segmentation head, trained on synthetic "
                               "anomalies, merged for export",
                               description="Adapts a DINOv2 ViT to the station with LoRA on synthetic anomalies "
                               "(texture, structural, contextual, Cut&Paste) and merges the adapters before export. "
                               "--weights takes Meta's dinov2_vit*14_pretrain.pth or a Hugging Face "
                               "facebook/dinov2-* model.safetensors.")
    common_train_options(lora)
    dinov2_options(lora)
    dinov2_lora_options(lora)
    lora.set_defaults(handler=handler("train_host.train:main"))
    knn = families.add_parser("dinov2-knn", help="DINOv2 patch features + memory bank (PatchCore-style coreset, "
                              "kNN distance); no training",
                              description="Few-shot mode: a greedy-coreset memory bank of the good images' patch "
                              "features; the exported graph holds the bank and searches it as a matrix product.")
    common_train_options(knn)
    dinov2_options(knn)
    dinov2_knn_options(knn)
    knn.set_defaults(handler=handler("train_host.train:main"))

    synth = sub.add_parser("synth", help="write synthetic anomalies and their masks to a folder to look at",
                           description="Make synthetic anomalies (as dinov2-lora trains on) from a dataset's good "
                           "training images; writes KIND_NNN.png, KIND_NNN_mask.png and KIND_NNN_overlay.png.")
    synth.add_argument("--data", required=True, help="'elpv' or an MVTec-layout folder")
    synth.add_argument("--out", required=True, help="folder to write the samples to")
    synth.add_argument("--size", default="224", help="model input size: 224 or HEIGHTxWIDTH (default: 224)")
    synth.add_argument("--roi", help="crop x,y,width,height (source pixels) before resizing")
    synth.add_argument("--channels", type=int, default=3, choices=[1, 3], help="model input channels (default: 3)")
    synth.add_argument("--kinds", help="comma-separated kinds (default: all registered: texture, structural, "
                       "contextual, cutpaste, and confetti where present)")
    synth.add_argument("--per-kind", type=int, default=30, help="samples of each kind (default: 30)")
    synth.add_argument("--sources", type=int, default=50, help="good images to draw from (default: 50)")
    synth.add_argument("--seed", type=int, default=0, help="seed; the same seed writes the same samples")
    synth.set_defaults(handler=handler("train_host.synth.command:main"))

    ev = sub.add_parser("evaluate", help="image and pixel metrics of a run on its test split",
                        description="Score the test split with PyTorch and report image AUROC/AUPRC, and pixel "
                        "AUROC, AU-PRO (FPR 0.3 and 0.05) and SegF1 when masks exist.")
    ev.add_argument("run", help="run directory from `lineside train`")
    ev.add_argument("--data", help="dataset: 'elpv' or an MVTec-layout folder (default: the run's own data)")
    ev.add_argument("--json", metavar="FILE", help="also write the metrics to FILE as JSON")
    ev.add_argument("--limit", type=int, help="evaluate at most this many images per split part (quick checks)")
    ev.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    ev.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    ev.set_defaults(handler=handler("train_host.evaluate:main"))

    ex = sub.add_parser("export", help="export a run to an ONNX bundle, checked against PyTorch",
                        description="Write BUNDLE/model.onnx (uint8 `image` in; `anomaly_map`, `score` out), "
                        "manifest.json and a provisional thresholds.json, after a parity check of "
                        "onnxruntime against PyTorch on real images.")
    ex.add_argument("run", help="run directory from `lineside train`")
    ex.add_argument("--out", required=True, help="bundle directory to create")
    ex.add_argument("--data", help="images for the parity check (default: the run's own data)")
    ex.add_argument("--max-batch", type=int, default=8, help="largest batch the graph accepts (default: 8)")
    ex.add_argument("--parity-images", type=int, default=16, help="real images in the parity check (default: 16)")
    ex.add_argument("--tolerance", type=float, default=1e-3,
                    help="largest relative error against PyTorch that passes (default: 1e-3)")
    ex.add_argument("--force", action="store_true", help="replace --out if it exists")
    ex.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    ex.set_defaults(handler=handler("train_host.export:main"))


def common_train_options(p) -> None:
    p.add_argument("--data", required=True, help="'elpv' (pip install elpv-dataset; CC BY-NC-SA, non-commercial) "
                   "or a folder in MVTec AD / MVTec AD 2 layout")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--size", default="224", help="model input size: 224 or HEIGHTxWIDTH (default: 224)")
    p.add_argument("--roi", help="crop x,y,width,height (source pixels) before resizing")
    p.add_argument("--channels", type=int, default=3, choices=[1, 3], help="model input channels (default: 3)")
    p.add_argument("--weights", help="local backbone checkpoint (.safetensors or .pth); default: random init")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="seed for splits, sampling and init (default: 0)")
    p.add_argument("--val-share", type=float, default=0.1,
                   help="share of train/good held out for validation where the data has no validation set "
                   "(default: 0.1)")
    p.add_argument("--limit", type=int, help="use at most this many images per split part (quick runs)")
    p.add_argument("--contamination", type=float, default=0.0,
                   help="share of known-defective images mixed, unlabelled, into training (robustness studies)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")


def int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def rx_options(p) -> None:
    p.add_argument("--backbone", help="timm CNN with features_only support (default: resnet18)")
    p.add_argument("--layers", type=int_tuple, help="feature stages, comma-separated (default: 1,2,3)")
    p.add_argument("--grid-layer", type=int, help="stage whose grid the features share (default: 2, stride 8)")
    p.add_argument("--feature-dim", type=int, help="channels kept, a seeded random subset (default: 100)")
    p.add_argument("--shrinkage", help="covariance shrinkage: 'oas' or a weight in [0,1] (default: oas)")
    p.add_argument("--score", help="image score: 'max' or 'topk:FRACTION' of the map (default: max)")
    p.add_argument("--sigma", type=float, help="Gaussian smoothing of the map in pixels (default: 4)")


def dinov2_options(p) -> None:
    p.add_argument("--backbone", help="vits14, vitb14, vitl14 or a _reg4 variant (default: vits14)")
    p.add_argument("--depth", type=int, help="keep only the first N blocks (quick experiments; default: all)")
    p.add_argument("--layers", type=int_tuple, help="blocks whose patch tokens are used, comma-separated "
                   "(default: lora three, knn two, in the second half of the network)")
    p.add_argument("--score", help="image score: 'max' or 'topk:FRACTION' of the map (default: max)")
    p.add_argument("--sigma", type=float, help="Gaussian smoothing of the map in pixels")


def dinov2_lora_options(p) -> None:
    p.add_argument("--adapt", choices=["lora", "baseline", "best"],
                   help="lora (default), baseline (frozen backbone + head), best (train both, keep the one that "
                   "validates better)")
    p.add_argument("--preset", choices=["default", "anomalyvfm"],
                   help="default: rank 16 / alpha 32 on qkv; anomalyvfm: rank 64 on query, value, output")
    p.add_argument("--rank", help="LoRA rank, or 'auto' for a validation sweep over --ranks")
    p.add_argument("--ranks", type=int_tuple, help="ranks the auto sweep tries (default: 4,16,64)")
    p.add_argument("--alpha", type=float, help="LoRA alpha (default: the preset's, scaled with the rank)")
    p.add_argument("--epochs", type=int, help="training epochs (default: 10)")
    p.add_argument("--lr", type=float, help="AdamW learning rate of the LoRA adapters (default: 1e-4)")
    p.add_argument("--head-lr", type=float, help="AdamW learning rate of the head (default: 1e-3)")
    p.add_argument("--per-kind", type=int, help="synthetic anomalies of each kind (default: 30)")
    p.add_argument("--kinds", type=lambda t: tuple(t.split(",")),
                   help="synthetic kinds (default: texture,structural,contextual,cutpaste)")
    p.add_argument("--zero-shot", action="store_true", default=None,
                   help="train once over many stations and score new ones untrained (unfinished)")


def dinov2_knn_options(p) -> None:
    p.add_argument("--bank-size", type=int, help="most patch features in the memory bank (default: 4096)")
    p.add_argument("--coreset", choices=["greedy", "random"], help="how the bank is thinned (default: greedy)")
    p.add_argument("--shots", type=int, help="use only this many good images (few-shot; default: all)")
    p.add_argument("--k", type=int, help="nearest neighbours averaged (default: 1)")
