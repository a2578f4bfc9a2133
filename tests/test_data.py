"""Data loading: DeiT preprocessing, wnid label mapping, digits split, errors, real-data accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vit2hw.data import (
    DataError,
    imagenet_wnids,
    load_calib_data,
    load_digits_split,
    load_eval_data,
    load_imagefolder,
    normalize,
    preprocess_image,
    synthetic_images,
)
from vit2hw.models import create_model, get_spec
from vit2hw.models.evaluate import top1_correct

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEIT_TINY = SHARED / "models" / "deit_tiny_patch16_224.pth"
SAMPLES = SHARED / "data" / "imagenet-samples"
#: Measured FP32 top-1 of the shared DeiT-Tiny on the 200 samples (short side 248), see data.py.
DEIT_TINY_SAMPLES_TOP1 = 0.805

TINY = get_spec("deit_tiny")
DIGITS = get_spec("vit_digits")


def _write_image(path: Path, size=(40, 30), fmt=None, color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


def test_packaged_wnids_are_the_standard_list():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 == len(set(wnids))
    assert wnids[0] == "n01440764" and wnids[999] == "n15075141"


def test_imagefolder_labels_come_from_the_wnid_list(tmp_path):
    """Two classes that sorted(listdir) would number 0 and 1 get their ImageNet indices 5 and 417."""
    wnids = imagenet_wnids()
    a, b = wnids[417], wnids[5]
    _write_image(tmp_path / a / "x.JPEG")
    _write_image(tmp_path / a / "y.png", fmt="PNG")
    _write_image(tmp_path / b / "z.jpg", fmt="JPEG")
    (tmp_path / b / "notes.txt").write_text("not an image")
    (tmp_path / "labels.tsv").write_text("ignored")
    data = load_imagefolder(tmp_path, TINY)
    expected = sorted([(a, "x.JPEG", 417), (a, "y.png", 417), (b, "z.jpg", 5)])
    assert data.labels.tolist() == [label for *_, label in expected]
    assert data.images.shape == (3, 3, 224, 224) and data.images.dtype == np.uint8
    assert load_imagefolder(tmp_path, TINY, limit=1).labels.tolist() == [expected[0][2]]


def test_preprocess_resizes_short_side_and_center_crops():
    # Left half black, right half white, wide image: after the crop the boundary is centred.
    image = np.zeros((300, 600, 3), np.uint8)
    image[:, 300:] = 255
    out = preprocess_image(Image.fromarray(image))
    assert out.shape == (3, 224, 224)
    assert out[:, :, :100].max() < 10 and out[:, :, 124:].min() > 245


def test_normalize_uses_spec_scale_mean_std():
    x = normalize(np.full((1, 3, 2, 2), 255, np.uint8), TINY)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([(1 - m) / s for m, s in zip(TINY.mean, TINY.std)]))
    d = normalize(np.array([0, 8, 16], np.uint8).reshape(1, 1, 1, 3), DIGITS)
    assert d.flatten().tolist() == [-1.0, 0.0, 1.0]
    with pytest.raises(DataError, match="expected images"):
        normalize(np.zeros((1, 3, 8, 8), np.uint8), DIGITS)


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("empty", "no class subfolders"),
    ("no_images", "no JPEG/PNG images"),
    ("unknown_wnid", "'cats' is not an ImageNet-1k wnid"),
    ("unreadable", r"cannot read image file .*broken\.JPEG"),
])
def test_imagefolder_errors(tmp_path, case, match):
    root = tmp_path / "imgs"
    if case != "missing":
        root.mkdir()
    if case == "no_images":
        (root / "n01440764").mkdir()
        (root / "n01440764" / "readme.txt").write_text("x")
    if case == "unknown_wnid":
        _write_image(root / "cats" / "a.jpg", fmt="JPEG")
    if case == "unreadable":
        (root / "n01440764").mkdir()
        (root / "n01440764" / "broken.JPEG").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match=match):
        load_imagefolder(root, TINY)


def test_digits_split_is_fixed_stratified_and_disjoint():
    train, test, calib = (load_digits_split(s) for s in ("train", "test", "calib"))
    assert (len(train), len(test), len(calib)) == (1347, 450, 64)
    assert test.images.shape == (450, 1, 8, 8) and test.images.dtype == np.uint8 and test.images.max() == 16
    assert np.array_equal(calib.images, train.images[:64])
    again = load_digits_split("test")
    assert np.array_equal(again.images, test.images) and np.array_equal(again.labels, test.labels)
    per_class = np.bincount(np.concatenate([train.labels, test.labels]))
    assert np.abs(np.bincount(test.labels) - 0.25 * per_class).max() <= 1  # stratified
    train_rows = {img.tobytes() + bytes([lab]) for img, lab in zip(train.images, train.labels)}
    assert sum(img.tobytes() + bytes([lab]) in train_rows for img, lab in zip(test.images, test.labels)) < 5
    with pytest.raises(DataError, match="unknown digits split"):
        load_digits_split("val")


def test_eval_and_calib_helpers(capsys):
    assert len(load_eval_data(DIGITS)) == 450
    assert np.array_equal(load_calib_data(DIGITS, n=16).images, load_digits_split("train").images[:16])
    with pytest.raises(DataError, match="needs an ImageNet image folder"):
        load_eval_data(TINY)
    calib = load_calib_data(TINY, n=2)
    assert "synthetic" in capsys.readouterr().err
    assert calib.images.shape == (2, 3, 224, 224) and calib.labels.tolist() == [-1, -1]
    assert np.array_equal(calib.images, synthetic_images(TINY, 2).images)
    assert calib.images.std() > 10  # not a constant image


@pytest.mark.realdata
def test_real_deit_tiny_fp_top1_on_the_samples():
    if not (DEIT_TINY.is_file() and SAMPLES.is_dir()):
        pytest.skip(f"real DeiT-Tiny weights / ImageNet samples not found under {SHARED}")
    model = create_model("deit_tiny", weights=DEIT_TINY)
    data = load_eval_data(TINY, SAMPLES)
    assert len(data) == 200
    rows = sorted(line.split("\t") for line in (SAMPLES / "labels.tsv").read_text().splitlines()[1:] if line)
    assert [int(row[1]) for row in rows] == data.labels.tolist()  # files load in sorted path order
    accuracy = top1_correct(model, data, TINY) / len(data)
    assert abs(accuracy - DEIT_TINY_SAMPLES_TOP1) <= 0.005
