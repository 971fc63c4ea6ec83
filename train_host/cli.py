"""train_host's commands: train, evaluate, export. argparse only: handlers import torch when run."""

from __future__ import annotations

from edge_infer.cli import handler

from .device import add_device_options


def register(sub) -> None:
    train = sub.add_parser("train", help="train a detector on a station's good images",
                           description="Fit a detector family on the defect-free training images of a dataset "
                           "and save the run (run.json + weights.safetensors).")
    families = train.add_subparsers(dest="family", metavar="FAMILY", required=True)
    family = family_adder(families)
    family("rx", [rx_options, feature_options], help="Gaussian per patch location, Mahalanobis distance (PaDiM / Deep RX)",
           description="Closed-form fit, streamed over the training set.")
    family("rx-mix", [rx_options, rx_mix_options, feature_options],
           help="rx with one set of Gaussians per cluster of the good images (several kinds of normal)",
           description="Clusters the training images by their pooled backbone features (k-means++), fits rx's "
           "Gaussians per cluster, standardises each cluster's scores on its held-out good images, and chooses "
           "the number of clusters (1, 2, 3) and how an image picks its cluster on validation; K=1 is plain rx "
           "(docs/rx-mix.md).")
    family("adtr", [adtr_options], help="transformer reconstruction of EfficientNet-B4 features (ADTR)",
           description="A frozen EfficientNet-B4's five stages (720 channels) are "
           "reconstructed by a transformer with learned decoder queries; the error is the "
           "anomaly map. Features are cached once; the paper's schedule (500 epochs, "
           "lr x0.1 at 80%%) is the default, --epochs / --max-minutes shorten it.")
    family("rddpm", [rddpm_options], help="few-step diffusion reconstruction trained with a robust loss",
           description="Train a compact UNet denoiser (robust regression: Huber, LTS, Tukey; "
           "MSE baseline), choose t0 and K on validation, score by reconstruction. "
           "Small inputs train fastest on a CPU: e.g. --size 64 --channels 1.")
    family("cutpaste", [cutpaste_options], help="segmentation net trained from scratch on Cut&Paste defects, "
           "optionally with learned (bi-level) synthesis",
           description="DRAEM-style discriminative encoder-decoder trained on defects cut "
           "and pasted from the station's own good images; --learned-synthesis tunes where "
           "and how to paste by a validation hypergradient (docs/cutpaste.md).")
    family("draem", [draem_options], help="reconstructive + discriminative U-Nets trained together on "
           "Perlin-textured anomalies (DRAEM), from scratch",
           description="DRAEM without a texture dataset: Perlin masks filled with procedural textures; the "
           "epoch kept is chosen on good images vs a different synthetic family (plus --val-defects) "
           "(docs/draem.md).")
    family("dinov2-lora", [dinov2_options, dinov2_lora_options], stations=True,
           help="DINOv2 ViT + LoRA + segmentation head, trained on synthetic anomalies, merged for export",
           description="Adapts a DINOv2 ViT to the station with LoRA on synthetic anomalies "
           "(texture, structural, contextual, Cut&Paste) and merges the adapters before export. "
           "--weights takes Meta's dinov2_vit*14_pretrain.pth or a Hugging Face "
           "facebook/dinov2-* model.safetensors.")
    family("dinov2-knn", [dinov2_options, dinov2_knn_options, feature_options],
           help="DINOv2 patch features + memory bank (PatchCore-style coreset, kNN distance); no training",
           description="Few-shot mode: a greedy-coreset memory bank of the good images' patch "
           "features; the exported graph holds the bank and searches it as a matrix product.")

    auto = families.add_parser("auto", help="train every family that fits --budget-minutes here; keep the one that "
                               "validates best (no family names needed)",
                               description="Estimates each detector family's cost on this hardware (a timed training "
                               "step), trains those that fit the budget on the same split, exports and times each graph "
                               "with ONNX Runtime, and keeps the best validation AUROC (held-out good images vs synthetic "
                               "anomalies of kinds the family did not train on, plus --val-defects; never the test set) "
                               "within --latency-ms. RUN becomes the winner's run; RUN/auto.md and auto.json compare "
                               "every candidate; the others stay under RUN/candidates/ (docs/train-auto.md).")
    common_train_options(auto)
    auto.add_argument("--budget-minutes", type=float, required=True,
                      help="wall-clock minutes for everything: estimates, training, validation and latency")
    auto.add_argument("--latency-ms", type=float, help="keep only candidates whose exported graph scores one image "
                      "within this many ms here (ONNX Runtime, batch 1); default: no limit")
    auto.add_argument("--families", help="comma-separated subset of the candidates (default: all of them)")
    auto.set_defaults(handler=handler("train_host.auto:main"))

    register_weights(sub)

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
                        "AUROC, AU-PRO (FPR 0.3 and 0.05) and SegF1 when masks exist. Several runs are put "
                        "side by side on the test images none of them trained or validated on, e.g. robust "
                        "and MSE rddpm runs at each --contamination.")
    ev.add_argument("run", nargs="+", help="run directory from `lineside train` (several: a side-by-side table)")
    ev.add_argument("--data", help="dataset: 'elpv' or an MVTec-layout folder (default: the run's own data)")
    ev.add_argument("--json", metavar="FILE", help="also write the metrics to FILE as JSON")
    ev.add_argument("--correlate", action="store_true", help="with several runs: Spearman's rank correlation between "
                    "their validation AUROC (run.json) and their test image AUROC (does validation predict the test?)")
    ev.add_argument("--groups", metavar="CSV", help="rows 'image,group' (the image's file name, or its path's end where "
                    "names repeat: e.g. the product variant): each group's AUROC too, and whether their scores sit "
                    "apart")
    ev.add_argument("--limit", type=int, help="evaluate at most this many images per split part (quick checks)")
    ev.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    ev.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    add_device_options(ev, amp=False, workers=False)
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
    add_device_options(ex, amp=False, workers=False)
    ex.add_argument("--input", nargs=2, metavar=("native", "WIDTHxHEIGHT"),
                    help="`native WxH`: the graph takes uint8 N×H×W×C frames (BGR, as decoded) of that size "
                    "(the frame, or the station's ROI) and resizes inside (Resize, antialiased), so a GPU does "
                    "it; parity is then checked against the CPU path")
    ex.add_argument("--native-tolerance", type=float, default=2e-2,
                    help="with --input native: largest relative error against PyTorch on CPU-resized frames "
                    "(the in-graph resize is close to, not equal to, OpenCV's INTER_AREA; default: 2e-2)")
    precision_options(ex)
    ex.set_defaults(handler=handler("train_host.export:main"))


def precision_options(p) -> None:
    p.add_argument("--precision", default="fp32", help="variants to write, comma-separated: fp32,fp16,int8 "
                   "(default: fp32). Each is checked against FP32 on the evaluation split")
    p.add_argument("--calib", help="INT8 calibration images: a folder of the station's good images, or a dataset "
                   "('elpv', an MVTec folder: its training split) (default: the run's own training images)")
    p.add_argument("--calib-method", default="percentile", choices=["minmax", "entropy", "percentile"],
                   help="how activation ranges are chosen from the calibration images (default: percentile)")
    p.add_argument("--calib-images", type=int, default=128, help="calibration images to use (default: 128)")
    p.add_argument("--int8-activations", default="s8", choices=["s8", "u8"],
                   help="s8: symmetric INT8 activations, as TensorRT needs (default); u8: asymmetric, faster "
                   "with onnxruntime on x86 CPUs but not for TensorRT")
    p.add_argument("--auroc-tolerance", type=float, default=1.0,
                   help="AUROC points a variant may lose against FP32 before it is refused (default: 1)")
    p.add_argument("--eval-limit", type=int, help="evaluate variants on at most this many images per split part")


def family_adder(families):
    """``family(name, option_adders, stations=False, **parser_text)``: one `train FAMILY` subcommand."""

    def add(name: str, option_adders, stations: bool = False, **text) -> None:
        p = families.add_parser(name, **text)
        common_train_options(p, stations)
        for add_options in option_adders:
            add_options(p)
        p.set_defaults(handler=handler("train_host.train:main"))

    return add


def common_train_options(p, stations: bool = False) -> None:
    """``stations``: --data may repeat (a family with a zero-shot mode trains across several stations)."""
    data_help = "'elpv' (pip install elpv-dataset; CC BY-NC-SA, non-commercial) or a folder in MVTec AD / AD 2 layout"
    if stations:
        p.add_argument("--data", required=True, action="append", help=data_help + "; with --zero-shot repeat it, "
                       "once per station: --data DIR1 --data DIR2 ...")
    else:
        p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--size", default="224", help="model input size: 224 or HEIGHTxWIDTH (default: 224)")
    p.add_argument("--roi", help="crop x,y,width,height (source pixels) before resizing")
    p.add_argument("--tiles", metavar="SIZE[,OVERLAP]",
                   help="cut the ROI into tiles of SIZE source pixels (overlapping by at least OVERLAP), each "
                   "resized to --size: the good images' tiles are the training samples, and evaluate, export, "
                   "calibrate and serve follow the same tiling (docs/data.md); for small defects in large frames")
    p.add_argument("--channels", type=int, default=3, choices=[1, 3], help="model input channels (default: 3)")
    p.add_argument("--weights", help="pretrained backbone: 'imagenet' (CNN families) or 'dinov2' (ViT families), "
                   "resolved through the Hugging Face hub cache at a pinned revision (`lineside weights pull` carries "
                   "them to an offline host), or a local checkpoint (.safetensors or .pth); default: random init, "
                   "which costs accuracy (docs/training-hardware.md)")
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="seed for splits, sampling and init (default: 0)")
    p.add_argument("--val-share", type=float, default=0.1,
                   help="share of train/good held out for validation where the data has no validation set "
                   "(default: 0.1)")
    p.add_argument("--limit", type=int, help="use at most this many images per split part (quick runs)")
    p.add_argument("--contamination", type=float, default=0.0,
                   help="share of known-defective images mixed, unlabelled, into training (robustness studies)")
    p.add_argument("--val-defects", type=int, default=0,
                   help="move this many labelled defect images from test into validation: every family's settings "
                   "and `train auto`'s choice then weigh them as much as the synthetic anomalies; the test set "
                   "excludes them (default: 0)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    add_device_options(p)
    p.add_argument("--yes", action="store_true", help="train even when the expected time on this hardware is past "
                   "the bound `train` asks about (default: ask, or refuse when not on a terminal)")


def register_weights(sub) -> None:
    w = sub.add_parser("weights", help="pretrained backbones: carry them to an air-gapped training host",
                       description="`pull` downloads a pretrained backbone at its pinned revision (on a connected "
                       "machine) into a folder with its sha256; `import` checks the hashes and puts the files into "
                       "the Hugging Face hub cache, where `train --weights imagenet|dinov2` finds them offline.")
    cmds = w.add_subparsers(dest="weights_command", metavar="WEIGHTS_COMMAND", required=True)
    pull = cmds.add_parser("pull", help="download NAME (pinned revision) into DIR with its sha256")
    pull.add_argument("name", nargs="+", help="resnet18, efficientnet_b4, dinov2-vits14, dinov2-vitb14, ... "
                      "(`lineside weights list`)")
    pull.add_argument("--out", required=True, help="folder to write (a manifest weights.json and the files)")
    pull.set_defaults(handler=handler("train_host.pretrained:pull_main"))
    imp = cmds.add_parser("import", help="check DIR's hashes and put its files into the hub cache")
    imp.add_argument("dir", help="folder written by `lineside weights pull`")
    imp.set_defaults(handler=handler("train_host.pretrained:import_main"))
    ls = cmds.add_parser("list", help="the names `pull` and `train --weights` know, and what is cached")
    ls.set_defaults(handler=handler("train_host.pretrained:list_main"))


def register_device_check(sub) -> None:
    p = sub.add_parser("device-check", help="train every family a few steps on the GPU, export, compare with the CPU",
                       description="One script (`python -m train_host.device_check`) that verifies every GPU path: "
                       "each family trains a few steps on the accelerator and on the CPU, is exported, and the "
                       "scores are compared. Skips with the reason when there is no accelerator.")
    p.add_argument("--device", default="auto", help="the accelerator to check (default: the first CUDA GPU)")
    p.add_argument("--families", help="comma-separated (default: all)")
    p.add_argument("--out", help="working folder (default: a temporary one)")
    p.add_argument("--json", metavar="FILE", help="also write the report to FILE")
    p.set_defaults(handler=handler("train_host.device_check:main"))


def int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def rx_options(p) -> None:
    p.add_argument("--backbone", help="timm CNN with features_only support (default: resnet18)")
    p.add_argument("--layers", type=int_tuple, help="feature stages, comma-separated (default: chosen on validation "
                   "from 1,2,3 / 1,2 / 2,3; 1,2,3 unless another beats it)")
    p.add_argument("--grid-layer", type=int, help="stage whose grid the features share (default: 2, stride 8)")
    p.add_argument("--feature-dim", type=int, help="channels kept, a seeded random subset (default: 100)")
    p.add_argument("--shrinkage", help="covariance shrinkage: 'oas' or a weight in [0,1] (default: oas)")
    p.add_argument("--score", help="image score: 'max' or 'topk:FRACTION' of the map (default: chosen on validation "
                   "from max / topk:0.01; max unless the other beats it)")
    p.add_argument("--sigma", type=float, help="Gaussian smoothing of the map in pixels (default: chosen on validation "
                   "from 2 / 4 / 8; 4 unless another beats it)")


def rx_mix_options(p) -> None:
    p.add_argument("--clusters", type=int, help="clusters of good images, each with its own Gaussians (default: "
                   "chosen among 1, 2, 3 on validation)")
    p.add_argument("--groups", metavar="CSV", help="rows 'image,group' (the training image's file name, its group: "
                   "e.g. the product variant or supplier): one cluster per group instead of k-means; the graph still "
                   "picks the cluster per image")
    p.add_argument("--assign", choices=["score", "nearest"], help="which cluster scores an image: the one that finds "
                   "it most normal ('score') or the nearest centroid ('nearest') (default: chosen on validation)")


def feature_options(p) -> None:
    """Where a closed-form family's backbone features come from (train_host.features)."""
    p.add_argument("--features", default="random", metavar="random|station|FILE",
                   help="'random': the backbone as built (or --weights); 'station': train it first on the station's "
                   "good images (CutPaste 3-way pretext) and keep it if it beats random on validation; FILE: a "
                   "station-backbone.safetensors (or its run folder) from an earlier station run (default: random)")
    p.add_argument("--pretext-minutes", type=float, help="time bound of the station pretext (default: 10)")
    p.add_argument("--pretext-steps", type=int, help="step bound of the station pretext (default: until the minutes)")
    p.add_argument("--pretext-lr", type=float, help="AdamW learning rate of the station pretext (default: 5e-4)")
    p.add_argument("--pretext-crop", type=int, help="square crop side the pretext trains on, CNN backbones "
                   "(default: half the input's shorter side, at least 64 px; ViTs use the whole image)")


def cutpaste_options(p) -> None:
    p.add_argument("--learned-synthesis", action="store_true",
                   help="learn placement and transform weights bi-level (default: fixed uniform synthesis)")
    p.add_argument("--epochs", type=int, default=5, help="passes over the training images (default: 5)")
    p.add_argument("--max-minutes", type=float, help="stop training after this many minutes")
    p.add_argument("--lr", type=float, help="Adam learning rate of the network (default: 1e-3)")
    p.add_argument("--synth-lr", type=float, help="Adam learning rate of the transform weights (default: 0.05)")
    p.add_argument("--placement-lr", type=float, help="Adam learning rate of the placement U-Net "
                   "(default: a tenth of --synth-lr)")
    p.add_argument("--upper-every", type=int, help="lower steps per upper step (default: 2)")
    p.add_argument("--inner-lr", type=float, help="SGD step ξ of the unrolled look-ahead (default: 0.01)")
    p.add_argument("--defect-crops", metavar="DIR",
                   help="real defect crops as a third paste source: DIR holds defect images with masks "
                   "(X.png + X_mask.png, or an MVTec category's test/<defect>/ with ground_truth/<defect>/); "
                   "never the run's test or --val-defects images")
    p.add_argument("--synth-out", metavar="DIR",
                   help="write synthesis samples before/after training and the placement map as PNGs to DIR")
    p.add_argument("--base-channels", type=int, help="width of the network's first level (default: 16)")
    p.add_argument("--score", help="image score: 'max' or 'topk:FRACTION' of the map (default: topk:0.01)")
    p.add_argument("--sigma", type=float, help="Gaussian smoothing of the map in pixels (default: 2)")


def draem_options(p) -> None:
    p.add_argument("--epochs", type=int, help="passes over the training images (default: 10)")
    p.add_argument("--max-minutes", type=float, help="stop training after this many minutes")
    p.add_argument("--lr", type=float, help="Adam learning rate of both networks (default: 1e-3)")
    p.add_argument("--base-channels", type=int, help="width of both networks' first level (default: 16)")
    p.add_argument("--score-pool", type=float, help="average-pool window of the image score, as a share of the "
                   "shorter side (default: 0.08)")
    p.add_argument("--anomaly-share", type=float, help="share of training images given an anomaly (default: 0.5)")


def adtr_options(p) -> None:
    p.add_argument("--epochs", type=int, help="normal-only (L_norm) epochs, lr x0.1 at 80%% (default: 500)")
    p.add_argument("--px-epochs", type=int, help="anomaly-available (L_px) epochs, lr x0.1 for the last third "
                   "(default: 300)")
    p.add_argument("--max-minutes", type=float, help="wall-clock cap for training; epochs (and the lr drop) are "
                   "scaled to fit it")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default: 1e-4)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: 1e-4)")
    p.add_argument("--anomaly-available", action="store_true", default=None,
                   help="train with L_px on confetti-noise anomalies: after a normal-only phase, or from --init")
    p.add_argument("--init", metavar="RUN", help="start from this normal-only adtr run (same size and weights)")
    p.add_argument("--real-defects", action="store_true", default=None,
                   help="also use the training split's labelled defective images (with masks) in L_px")
    p.add_argument("--alpha", type=float, help="weight of L_px's anomaly term (default: 0.003)")
    p.add_argument("--pool-refresh", type=int, help="epochs between new confetti pools (default: 10)")
    p.add_argument("--backbone", help="timm CNN with features_only support (default: efficientnet_b4)")
    p.add_argument("--hidden-dim", type=int, help="transformer width (default: 256)")
    p.add_argument("--encoder-layers", type=int, help="transformer encoder layers (default: 4)")
    p.add_argument("--decoder-layers", type=int, help="transformer decoder layers (default: 4)")
    p.add_argument("--heads", type=int, help="attention heads (default: 8)")
    p.add_argument("--ff-dim", type=int, help="feed-forward width (default: 1024)")
    p.add_argument("--sigma", type=float, help="Gaussian smoothing of the map in pixels (default: 4)")
    p.add_argument("--score-pool", type=int, help="average-pool kernel before the max image score (default: 16)")


def rddpm_options(p) -> None:
    p.add_argument("--loss", choices=["huber", "lts", "tukey", "mse"], help="denoising loss (default: huber)")
    p.add_argument("--delta", type=float, help="Huber's delta on the noise residual (default: 0.2)")
    p.add_argument("--keep", type=float, help="LTS: share of per-image losses kept per batch (default: 0.8)")
    p.add_argument("--t0", type=int, help="noising depth of 1000 steps (default: chosen on validation)")
    p.add_argument("--steps", type=int, help="DDIM steps K (default: chosen on validation from 2, 4, 8)")
    p.add_argument("--seeds", type=int, help="fixed noise draws averaged at inference (default: 1)")
    p.add_argument("--unet", choices=["tiny", "nano", "small", "base"], help="UNet preset (default: nano, Jetson Orin Nano)")
    p.add_argument("--epochs", type=int, help="passes over the training images (default: 200)")
    p.add_argument("--max-minutes", type=float, help="training wall-clock budget in minutes (default: none: the "
                   "200 epochs; on a CPU `train` measures a step and asks first when they would run long)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default: 1e-3)")
    p.add_argument("--crop", type=int, help="train on random N×N crops (cheaper steps, no global context); "
                   "default 0: whole images")
    p.add_argument("--feature-weight", type=float, help="weight of the feature-level term (random-init ResNet-18 "
                   "features of input vs reconstruction) beside the pixel residual; 0 turns it off (default: 1)")
    p.add_argument("--score", help="image score: 'max' or 'topk:FRACTION' of the map (default: topk:0.01)")
    p.add_argument("--sigma", type=float, help="Gaussian smoothing of the map in pixels (default: 2)")


def dinov2_options(p) -> None:
    p.add_argument("--backbone", help="vits14, vitb14, vitl14 or a _reg4 variant (default: vitb14)")
    p.add_argument("--depth", type=int, help="keep only the first N blocks (quick experiments; default: all)")
    p.add_argument("--layers", type=int_tuple, help="blocks whose patch tokens are used, comma-separated "
                   "(default: lora three, knn two, in the second half of the network; knn chooses on validation "
                   "between the two together and each alone)")
    p.add_argument("--score", help="image score: 'max' or 'topk:FRACTION' of the map (default: max; knn chooses on "
                   "validation from max / topk:0.01)")
    p.add_argument("--sigma", type=float, help="Gaussian smoothing of the map in pixels (default: 4; knn chooses on "
                   "validation from 2 / 4 / 8)")


def dinov2_lora_options(p) -> None:
    p.add_argument("--adapt", choices=["lora", "baseline", "best"],
                   help="lora (default), baseline (frozen backbone + head), best (train both, keep the one that "
                   "validates better)")
    p.add_argument("--preset", choices=["default", "anomalyvfm"],
                   help="default: rank 16 / alpha 32 on qkv (0.69%% of ViT-B, 1.36%% of ViT-S); anomalyvfm: rank 64 on "
                   "query, value, output")
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
                   help="train once on synthetic anomalies over several stations (--data given once per station); "
                   "score a new station untrained: `lineside evaluate RUN --data NEW`, `lineside export RUN --out B "
                   "--data NEW` (its threshold comes from NEW's good images)")


def dinov2_knn_options(p) -> None:
    p.add_argument("--bank-size", type=int, help="most patch features in the memory bank (default: 4096)")
    p.add_argument("--coreset", choices=["greedy", "random"], help="how the bank is thinned (default: greedy)")
    p.add_argument("--shots", type=int, help="use only this many good images (few-shot; default: all)")
    p.add_argument("--k", type=int, help="nearest neighbours averaged (default: chosen on validation from 1 / 3 / 9; "
                   "1 unless another beats it)")
