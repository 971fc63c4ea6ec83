"""rx-mix: rx with one set of per-location Gaussians for each cluster of the station's good images.

One Gaussian per location must cover every kind of normal a station sees (two product
variants, two suppliers, mono and poly cells, two lighting states): it grows wide, and a
defect that looks like the other kind's normal hides inside it. rx-mix clusters the
training images by an image-level descriptor of the same backbone features (the kept
channels averaged over the image, z-scored, k-means++ with restarts: scikit-learn's
KMeans, a dependency already) and fits rx's Gaussians (`rx_gaussians.MomentAccumulator`) per cluster.

Scores of different clusters are made comparable: each cluster's image scores are
standardised by the mean and spread of its own held-out good images' scores (a seeded
fifth of the training images, left out of that cluster's first fit, then added back), so
a loose cluster's defects do not look normal next to a tight cluster's good images. An
image is scored by the cluster that finds it most normal (``assign: score``: the lowest
standardised score) or by its nearest centroid (``nearest``).

The number of clusters (1, 2 or 3) and the assignment rule are chosen on the shared
validation set (`train_host.validation`: held-out good images against synthetic anomalies,
plus ``--val-defects``; never the test split): the simplest candidate within ``TIE`` of the
best validation AUROC wins, so a station with one kind of normal keeps K=1, which is plain
rx (no standardisation: the same graph arithmetic and the same scores). The exported graph
computes every cluster's distance map and selects per image; only the backbone lowers
precision (FP16/INT8), as for rx. The runtime is unchanged: one map and one score out. The model
(config, head, graph) is in rx_mixture_model.py; this module is the family: its build, fit and choice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec

from .rx_gaussians import MomentAccumulator
from .rx_mixture_model import RULES, Mixture, RXMixConfig, RXMixture

FAMILY = "rx-mix"
CHOICES = (1, 2, 3)  # cluster counts tried when --clusters is not given
# A candidate ties with the best when its validation AUROC is within TIE of it, or within one standard error of
# the paired difference (a stratified bootstrap of the validation images, BOOTSTRAP draws): the simpler one wins
# (fewer clusters, then "score"), so noise on a small validation set does not buy clusters.
TIE = 0.01
BOOTSTRAP = 200
HOLDOUT_SHARE = 0.2  # training images held out of the first fit to measure each cluster's score scale
MIN_CLUSTER_SHARE = 0.05  # a clustering with a cluster smaller than this share of the images is not used
MIN_CLUSTER_IMAGES = 8
MIN_HOLDOUT = 3  # held-out images a cluster needs for its score scale
# A clustering whose mean silhouette is below this found no structure (Kaufman & Rousseeuw, "Finding Groups in
# Data", 1990: 0.25 or less, "no substantial structure"); such K are not tried, whatever validation would say.
MIN_SILHOUETTE = 0.25
SILHOUETTE_SAMPLE = 2000  # images the silhouette is computed on (it is quadratic in them)
KMEANS_RESTARTS = 10


def build(config: dict, spec: InputSpec) -> RXMixture:
    return RXMixture(RXMixConfig.from_dict(config), spec).eval()


def fit(model, context) -> dict:
    """Fit on the backbone features ``--features`` picks (random, learned on the station, or a file)."""
    from ..features import fit_with_features

    return fit_with_features(model, context, fit_mixture)


@torch.no_grad()
def fit_mixture(model: RXMixture, context) -> dict:
    """Two passes over the training images (descriptors and K=1's moments; then each clustering's moments),
    then the choice of K and of the assignment rule on validation."""
    from ..validation import build_validation

    config = model.config
    clusters, assign = model.requested
    if config.groups and clusters:
        raise LinesideError("--groups sets the clusters (one per group): leave --clusters out")
    counts = (clusters,) if clusters else CHOICES
    rules = RULES if assign == "auto" else (assign,)
    train = context.split.train
    seed = int(config.seed)
    locations, dim = model.features_shape()
    device = model.channels.device

    # pass 1: every image's descriptor, and one Gaussian per location over all of them (K=1: rx's own fit)
    whole = MomentAccumulator(locations, dim, device)
    descriptors = []
    for batch in context.loader(train, progress="rx-mix: descriptors", keep=True):
        feats = model.features(batch["image"])
        whole.add(feats)
        descriptors.append(model.descriptor(feats).double().cpu())
    descriptors = torch.cat(descriptors)
    rows = len(descriptors)
    candidates = {}
    if 1 in counts:
        mean, whiten, _ = whole.gaussian(config.shrinkage)
        candidates[1] = Mixture(mean[None], whiten[None], torch.zeros(1), torch.ones(1), torch.zeros(1, dim),
                                torch.zeros(dim), torch.ones(dim))
    del whole

    # cluster, then pass 2: each clustering's moments per cluster, the held-out images' features kept aside
    desc_mean, desc_scale = descriptors.mean(0), descriptors.std(0).clamp_min(1e-6)
    z = ((descriptors - desc_mean) / desc_scale).numpy()
    clusterings, refused, silhouettes = {}, {}, {}
    if config.groups:  # the station's own groups: the only candidate, as a fixed --clusters is
        labels, names = read_groups(config.groups, train, rows)
        k = len(names)
        centroids = torch.stack([torch.from_numpy(z[labels == c].mean(0)) for c in range(k)]).float()
        clusterings[k] = (labels, centroids, held_out(labels, k, seed))
        candidates.clear()
        counts = (k,)
        context.log(f"rx-mix: {k} groups from {config.groups}: {', '.join(names)}")
    for k in (k for k in counts if k > 1 and not config.groups):
        labels, centroids, reason, silhouettes[k] = cluster(z, k, seed)
        if reason:
            refused[k] = reason
            context.log(f"rx-mix: K={k} not used: {reason}")
        else:
            clusterings[k] = (labels, centroids, held_out(labels, k, seed))
    if clusterings:
        candidates.update(fit_clusterings(model, context, clusterings, rows, desc_mean, desc_scale))
    if not candidates:
        raise LinesideError(f"rx-mix: no clustering of the {rows} training images could be used "
                            f"({'; '.join(f'K={k}: {r}' for k, r in refused.items())}): leave --clusters out, or "
                            "give more training images")

    # choose on validation (never the test split): features of the validation images once, every head on them
    try:
        validation = build_validation(context, trained_kinds(context))
    except LinesideError as exc:  # nothing to choose on: the simplest candidate, said in the record
        k = min(candidates)
        model.set_mixture(candidates[k], "score")
        context.log(f"rx-mix: keeping K={k} without validation: {exc}")
        return {"images": rows, "clusters": k, "assign": "score", "refused": refused, "validation_skipped": str(exc),
                "config": asdict(model.config)}
    context.log(f"rx-mix validation: {validation.signal}")
    batch_size = int(context.options.get("batch_size") or 16)
    val_feats = [model.features(validation.images[i:i + batch_size].to(device)).cpu()
                 for i in range(0, len(validation.images), batch_size)]
    tried = []
    for k, mixture in sorted(candidates.items()):
        for rule in (rules[:1] if k == 1 else rules):
            model.set_mixture(mixture, rule)
            scores = torch.cat([model.head(f.to(device))[1].float().cpu() for f in val_feats]).numpy()
            result = validation.summarise(scores)
            tried.append({"clusters": k, "assign": rule, "result": result, "scores": scores})
            context.log(f"rx-mix: K={k} ({rule}): validation AUROC {result['validation_auroc']:.4f}")
    chosen = choose(tried, validation, seed)
    model.set_mixture(candidates[chosen["clusters"]], chosen["assign"])
    sizes = {k: np.bincount(labels, minlength=k).tolist() for k, (labels, _, _) in clusterings.items()}
    context.log(f"rx-mix: keeping K={chosen['clusters']} ({chosen['assign']}), validation AUROC "
                f"{chosen['result']['validation_auroc']:.4f} (the best, or within {chosen['tolerance']:.4f} of it: "
                "ties go to fewer clusters)")
    return {"images": rows, "clusters": chosen["clusters"], "assign": chosen["assign"],
            "cluster_sizes": sizes, "refused": refused,
            "silhouette": {k: None if v is None else round(v, 4) for k, v in silhouettes.items()},
            "tie": f"within max({TIE}, one bootstrap standard error of the difference) of the best",
            "scales": {k: {"offset": [round(float(v), 4) for v in m.offset],
                           "scale": [round(float(v), 4) for v in m.scale]} for k, m in candidates.items()},
            "candidates": [{"clusters": t["clusters"], "assign": t["assign"],
                            "validation_auroc": t["result"]["validation_auroc"],
                            "tolerance": t.get("tolerance"),
                            "per_kind": t["result"]["per_kind"]} for t in tried],
            "config": asdict(model.config), **validation.record(chosen["result"]),
            "validation_used_for": "the number of clusters and the assignment rule"}


def read_groups(path: str, samples, rows: int) -> tuple[np.ndarray, list[str]]:
    """``--groups`` CSV rows ``image,group`` (train_host.data.groups) → each training image's group index, and
    the group names (sorted)."""
    from ..data.groups import groups_of, read_table

    if len(samples) != rows:
        raise LinesideError(f"--groups: {len(samples) - rows} training images were unreadable; remove them from the "
                            "training folder so that every image has its group")
    named = groups_of(samples, read_table(path), path, what="training images")
    groups = sorted(set(named))
    if len(groups) < 2:
        raise LinesideError(f"--groups {path}: the training images are all in one group ({groups[0]}): leave --groups "
                            "out (that is plain rx)")
    index = {g: i for i, g in enumerate(groups)}
    labels = np.array([index[g] for g in named])
    sizes = np.bincount(labels, minlength=len(groups))
    if sizes.min() < MIN_CLUSTER_IMAGES:
        raise LinesideError(f"--groups {path}: group {groups[int(sizes.argmin())]} has {int(sizes.min())} training "
                            f"images; each group needs at least {MIN_CLUSTER_IMAGES} (merge it into another)")
    return labels, groups


def cluster(z: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, torch.Tensor, str, float | None]:
    """k-means++ (``KMEANS_RESTARTS`` seeded restarts) of the z-scored descriptors: (labels, centroids, why not)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    if len(z) < k * MIN_CLUSTER_IMAGES:
        return np.zeros(0, int), torch.zeros(0), f"{len(z)} images are too few for {k} clusters", None
    km = KMeans(n_clusters=k, init="k-means++", n_init=KMEANS_RESTARTS, random_state=seed).fit(z)
    labels = km.labels_.astype(int)
    sizes = np.bincount(labels, minlength=k)
    least = max(MIN_CLUSTER_IMAGES, int(np.ceil(MIN_CLUSTER_SHARE * len(z))))
    if sizes.min() < least:
        return labels, torch.zeros(0), f"a cluster of {int(sizes.min())} images: each needs {least}", None
    silhouette = float(silhouette_score(z, labels, sample_size=min(len(z), SILHOUETTE_SAMPLE), random_state=seed))
    if silhouette < MIN_SILHOUETTE:
        return labels, torch.zeros(0), (f"mean silhouette {silhouette:.3f} < {MIN_SILHOUETTE}: the images form no "
                                         "distinct groups"), silhouette
    return labels, torch.from_numpy(km.cluster_centers_).float(), "", silhouette


def held_out(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A seeded ``HOLDOUT_SHARE`` of each cluster (at least ``MIN_HOLDOUT`` images), to measure its score scale."""
    holdout = np.zeros(len(labels), bool)
    rng = np.random.default_rng([seed, 22, k])
    for c in range(k):
        members = np.flatnonzero(labels == c)
        holdout[rng.permutation(members)[:max(MIN_HOLDOUT, round(HOLDOUT_SHARE * len(members)))]] = True
    return holdout


def fit_clusterings(model: RXMixture, context, clusterings: dict, rows: int, desc_mean: torch.Tensor,
                    desc_scale: torch.Tensor) -> dict:
    """Each clustering's Gaussians: fitted without the held-out images, whose own cluster's scores then give
    each cluster its scale; the held-out images' moments are added back before the final fit."""
    locations, dim = model.features_shape()
    device = model.channels.device
    accs = {k: [MomentAccumulator(locations, dim, device) for _ in range(k)] for k in clusterings}
    kept, row = [], 0
    for batch in context.loader(context.split.train, progress="rx-mix: clusters", keep=True):
        feats = model.features(batch["image"])
        rows_here = torch.arange(row, row + len(feats))
        row += len(feats)
        if row > rows:
            break
        anywhere = torch.zeros(len(feats), dtype=torch.bool)
        for k, (labels, _, holdout) in clusterings.items():
            lab = torch.from_numpy(labels[rows_here.numpy()])
            held = torch.from_numpy(holdout[rows_here.numpy()])
            anywhere |= held
            for c in range(k):
                pick = (lab == c) & ~held
                if pick.any():
                    accs[k][c].add(feats[pick.to(feats.device)])
        if anywhere.any():  # kept once, whichever clusterings hold it out
            kept.append((rows_here[anywhere], feats[anywhere.to(feats.device)].cpu()))
    if row != rows:
        raise LinesideError(f"rx-mix: the second pass over the training images read {row} images, the first {rows} "
                            "(did the data change during training?): train again")
    held_rows = torch.cat([r for r, _ in kept]).numpy()
    held_feats = torch.cat([f for _, f in kept])
    out = {}
    for k, (labels, centroids, holdout) in clusterings.items():
        mine_rows = holdout[held_rows]  # the kept features this clustering held out
        feats_k, own = held_feats[torch.from_numpy(mine_rows)], labels[held_rows[mine_rows]]
        first = [acc.gaussian(model.config.shrinkage)[:2] for acc in accs[k]]
        mixture = Mixture(torch.stack([m for m, _ in first]), torch.stack([w for _, w in first]), torch.zeros(k),
                          torch.ones(k), centroids, desc_mean.float(), desc_scale.float())
        model.set_mixture(mixture)
        raw = held_scores(model, feats_k, device)  # N_held×K, unstandardised
        offset, scale = torch.zeros(k), torch.ones(k)
        for c in range(k):
            mine = raw[own == c, c]
            offset[c], scale[c] = mine.mean(), mine.std().clamp_min(1e-6 * max(1.0, abs(float(mine.mean()))))
            accs[k][c].add(feats_k[torch.from_numpy(own == c)].to(device))
        final = [acc.gaussian(model.config.shrinkage)[:2] for acc in accs[k]]
        out[k] = Mixture(torch.stack([m for m, _ in final]), torch.stack([w for _, w in final]), offset, scale,
                         centroids, desc_mean.float(), desc_scale.float())
        context.log(f"rx-mix: K={k}: clusters of {np.bincount(labels, minlength=k).tolist()} images, held-out "
                    f"score mean {[round(float(v), 3) for v in offset]} / spread {[round(float(v), 3) for v in scale]}")
    return out


def held_scores(model: RXMixture, feats: torch.Tensor, device, batch: int = 16) -> torch.Tensor:
    return torch.cat([model.cluster_maps(feats[i:i + batch].to(device))[1].cpu() for i in range(0, len(feats), batch)])


def choose(tried: list[dict], validation, seed: int) -> dict:
    """The first candidate (fewest clusters, then "score" before "nearest") that ties with the best: within
    ``TIE``, or within one standard error of its paired difference to the best (bootstrap over the images,
    resampled within each part: good, each synthetic kind, real defects)."""
    from dataclasses import replace

    best = max(tried, key=lambda t: t["result"]["validation_auroc"])
    rng = np.random.default_rng([seed, 22, 1])
    groups = [np.flatnonzero(validation.parts == p) for p in np.unique(validation.parts)]
    draws = [np.concatenate([rng.choice(g, len(g)) for g in groups]) for _ in range(BOOTSTRAP)]

    def auroc(scores, idx):
        return replace(validation, parts=validation.parts[idx]).summarise(scores[idx])["validation_auroc"]

    for t in tried:
        gap = best["result"]["validation_auroc"] - t["result"]["validation_auroc"]
        if t is best or gap <= TIE:
            t["tolerance"] = TIE
        else:
            t["tolerance"] = round(max(TIE, float(np.std([auroc(best["scores"], i) - auroc(t["scores"], i)
                                                           for i in draws], ddof=1))), 4)
        if gap <= t["tolerance"]:
            return t
    return best


def trained_kinds(context) -> tuple[str, ...]:
    """rx-mix trains on no synthetic anomaly; a station-trained backbone did, on the pretext's kinds."""
    source = (getattr(context, "options", None) or {}).get("features") or "random"
    if source == "random":
        return ()
    from ..features.pretext import KINDS

    return KINDS
