# %% [markdown]
# # Lesson 1: the data
#
# Six classes of 64x64 grayscale medical images, and the paper's 90/6/4 split.
#
# **What it teaches**
# - MedNIST ("Medical MNIST") holds six classes: AbdomenCT, BreastMRI, CXR, ChestCT, Hand, HeadCT. Class
#   indices follow the sorted folder names (AbdomenCT 0 ... HeadCT 5). Paper Fig. 5 shows examples of each.
# - An image is a (64, 64, 1) array of uint8 pixels (channels-last); the network sees x = pixels / 255 in [0, 1].
# - The split is shuffled and stratified by class with seed 123: first 90 % train / 10 % rest, then the rest
#   60 / 40 into validation / test, so every part has the class proportions of the whole (paper Fig. 6).
#   On the full set (58,954 images) that gives 53,058 / 3,537 / 2,359 images.
#
# It uses the 600-image sample shipped with minarn (100 per class), so no download is needed.
#
# **Prerequisites:** none; this is the first lesson (Python and NumPy arrays are enough).
#
# **Time:** about 15 minutes to read and try; it runs in about 4 s.
#
# **Try this**
# 1. In part 3, set `SEED = 7`: the count table (540 / 36 / 24, and 90 / 6 / 4 per class) and the Fig. 6
#    bars do not change at all, but the line "the first test images" lists other files: stratification
#    fixes how many images of each class go where, the seed fixes which ones.
# 2. In part 4, give BreastMRI 10,000 images like the others (`full_counts = [10000] * 6`): the sizes become
#    54,000 / 3,600 / 2,400 and the assertion of the paper's 53,058 / 3,537 / 2,359 fails: the paper's
#    numbers pin down the class counts too.
#
# Run it as a script, `python lessons/01_data.py` (figures go to `./lesson_figures`, or to
# `$MINARN_LESSON_OUT`), or cell by cell as a notebook (see `lessons/README.md`).

# %%
from minarn import lesson_support

lesson_support.use_matplotlib()  # Agg for a script; a notebook keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from minarn import data  # noqa: E402

# %% [markdown]
# ## 1. The MedNIST sample shipped with minarn
# `data.load_mednist()` with no argument loads the sample: images, labels (the index of the sorted class
# name) and the path of every file.

# %%
print("1. The MedNIST sample shipped with minarn")
ds = data.load_mednist()
print(f"   {ds}")
print(f"   images: shape {ds.images.shape}, dtype {ds.images.dtype}, "
      f"pixel range [{ds.images.min()}, {ds.images.max()}]")
assert ds.images.shape[1:] == (64, 64, 1) and ds.images.dtype == np.uint8
assert ds.class_names == data.MEDNIST_CLASSES == tuple(sorted(ds.class_names))
assert ds.class_counts().tolist() == [100] * 6
for k, name in enumerate(ds.class_names):
    imgs = ds.images[ds.labels == k].astype(np.float64) / 255
    print(f"   class {k} {name:<9}: {np.sum(ds.labels == k)} images, mean brightness {imgs.mean():.2f}, "
          f"dark pixels (<0.05) {np.mean(imgs < 0.05):4.0%}   e.g. {ds.paths[ds.labels == k][0]}")

# %% [markdown]
# ## 2. Paper Fig. 5: what the images look like (4 per class)

# %%
print("\n2. Paper Fig. 5: what the images look like (4 per class)")
fig, axes = plt.subplots(4, 6, figsize=(9, 6.4))
for k, name in enumerate(ds.class_names):
    for r, i in enumerate(np.flatnonzero(ds.labels == k)[:4]):
        axes[r, k].imshow(ds.images[i, :, :, 0], cmap="gray", vmin=0, vmax=255)
        axes[r, k].set_xticks([]), axes[r, k].set_yticks([])
    axes[0, k].set_title(f"{k}: {name}", fontsize=10)
fig.suptitle("MedNIST sample: six classes, 64x64 grayscale (paper Fig. 5)")
fig.tight_layout()
lesson_support.save(fig, "01_classes.png", dpi=100)

# %% [markdown]
# ## 3. The split: stratified, shuffled, seed 123
# `data.split_dataset` orders the images by path, then splits 90 / 10 and the 10 % again 60 / 40, each
# time keeping every class's share.

# %%
print("\n3. The split: stratified, shuffled, seed 123")
SEED = 123
splits = data.split_dataset(ds, seed=SEED)
print("   " + data.count_table(splits).replace("\n", "\n   "))
sizes = [len(p) for p in splits]
assert sizes == [540, 36, 24], sizes
for part in splits:  # stratified: each part holds the same share of every class
    assert np.all(part.class_counts() == len(part) // 6)

# %% [markdown]
# The three parts are disjoint and together hold every image; the same seed gives the same split, another
# seed another one.

# %%
ids = [set(p.paths.tolist()) for p in splits]
assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2]), "the parts must be disjoint"
assert set.union(*ids) == set(ds.paths.tolist()), "together the parts hold every image"
again = data.split_dataset(ds, seed=SEED)
assert all(np.array_equal(a.paths, b.paths) for a, b in zip(splits, again)), "same seed, same split"
other = data.split_dataset(ds, seed=SEED + 1)
assert not np.array_equal(other.train.paths, splits.train.paths), "another seed, another split"
print("   checked: 90/6/4 %, disjoint, covers all 600 images, every class in the same proportion, and")
print(f"   the same seed gives the same split (seed {SEED + 1} gives another one).")
print(f"   the first test images: {', '.join(splits.test.paths[:4])}")
print(f"   byte-identical copies of validation/test images inside train: {data.duplicates_in_train(splits)}")

# %% [markdown]
# ## 4. The same recipe on the full set's label counts gives the paper's sizes
# The split depends only on the labels in path order, so the full set's class counts are enough to
# reproduce the paper's 53,058 / 3,537 / 2,359.

# %%
print("\n4. The same recipe on the full set's label counts gives the paper's sizes")
full_counts = [10000, 8954, 10000, 10000, 10000, 10000]
labels = np.repeat(np.arange(6), full_counts)
train, valid, test = data.split_indices(labels, seed=123)
print(f"   {len(labels):,} labels -> train {len(train):,}, valid {len(valid):,}, test {len(test):,}")
assert (len(train), len(valid), len(test)) == (53058, 3537, 2359)
assert np.bincount(labels[test]).tolist() == [400, 359, 400, 400, 400, 400]

# %% [markdown]
# ## 5. Paper Fig. 6: label frequencies in each part

# %%
print("\n5. Paper Fig. 6: label frequencies in each part")
fig, ax = plt.subplots(figsize=(8, 3.6))
for j, (part_name, part) in enumerate(splits._asdict().items()):
    ax.bar(np.arange(6) + (j - 1) * 0.27, part.class_counts(), width=0.27, label=f"{part_name} ({len(part)})")
ax.set_xticks(np.arange(6), ds.class_names)
ax.set_yscale("log")
ax.set_ylabel("images (log scale)")
ax.set_title("Images per class in each part of the sample's split (paper Fig. 6)")
ax.legend()
fig.tight_layout()
lesson_support.save(fig, "01_split.png", dpi=100)

# %% [markdown]
# ## 6. What the network is fed: mini-batches
# x = pixels / 255 as float32, y = one-hot labels.

# %%
print("\n6. What the network is fed: mini-batches")
x, y = next(data.iterate_batches(splits.train.images, splits.train.labels, 40, num_classes=6))
print(f"   x {x.shape} {x.dtype} in [{x.min():.1f}, {x.max():.1f}];  y {y.shape} {y.dtype}, first row {y[0]}")
assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0 and x.shape == (40, 64, 64, 1)
assert np.array_equal(y.argmax(axis=1), splits.train.labels[:40]) and np.all(y.sum(axis=1) == 1)
print("\nLesson 1 done: every check passed.")
