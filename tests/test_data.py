"""Data sets in their real layouts (small fixtures), the demo set, joint transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.build import classes_of
from workbench.cache import cache_dir
from workbench.config import Config
from workbench.data import (
    ADE20K,
    Cityscapes,
    DemoDataset,
    FolderDataset,
    ImageFolderClassification,
    PascalContext,
    TrainTransform,
)
from workbench.data.demo import CLASSES, ensure_demo_set, render_scene
from workbench.data.transforms import IGNORE_INDEX, _hsv_to_rgb, _rgb_to_hsv, random_crop, rescale_size


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _scene(seed, size=(24, 32)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8), rng.integers(0, 5, size, dtype=np.uint8)


def test_ade20k_layout_and_reduce_zero_label(tmp_path):
    for split, folder in (("train", "training"), ("val", "validation")):
        for i in range(2):
            image, labels = _scene(i)
            _write(tmp_path / "images" / folder / f"ADE_{split}_{i}.jpg", image)
            _write(tmp_path / "annotations" / folder / f"ADE_{split}_{i}.png", labels)
    data = ADE20K(tmp_path, "val")
    assert len(data) == 2 and len(data.classes) == 150
    image, labels = data[0]
    raw = np.asarray(Image.open(tmp_path / "annotations" / "validation" / "ADE_val_0.png")).astype(np.int64)
    assert image.shape == (3, 24, 32) and image.dtype == torch.uint8
    assert torch.equal(labels, torch.from_numpy(np.where(raw == 0, IGNORE_INDEX, raw - 1)))


def test_cityscapes_layout(tmp_path):
    for city in ("aachen", "bonn"):
        image, labels = _scene(len(city))
        _write(tmp_path / "leftImg8bit" / "train" / city / f"{city}_000000_000019_leftImg8bit.png", image)
        _write(
            tmp_path / "gtFine" / "train" / city / f"{city}_000000_000019_gtFine_labelTrainIds.png", labels
        )
    data = Cityscapes(tmp_path, "train")
    assert len(data) == 2 and data.classes.names[0] == "road" and len(data.classes) == 19
    assert data[1][1].max() < 19


def test_pascal_context_layout(tmp_path):
    ids = ["2008_000002", "2008_000003"]
    for name in ids:
        image, labels = _scene(int(name[-1]))
        _write(tmp_path / "JPEGImages" / f"{name}.jpg", image)
        _write(tmp_path / "SegmentationClassContext" / f"{name}.png", labels)
    (tmp_path / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (tmp_path / "ImageSets" / "SegmentationContext" / "val.txt").write_text("\n".join(ids))
    data = PascalContext(tmp_path, "val")
    assert len(data) == 2 and len(data.classes) == 59
    assert set(data[0][1].unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}


def test_imagenet_style_class_folders(tmp_path):
    for name in ("cat", "dog"):
        _write(tmp_path / "train" / name / "a.png", _scene(1)[0])
    data = ImageFolderClassification(tmp_path, "train")
    assert data.classes.names == ("cat", "dog") and [label for _, label in data.samples] == [0, 1]
    assert data[1][0].shape == (3, 24, 32)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "classes.txt").write_text("sky 0 0 255\nroad\ncar 255 0 0\n")
    for i in range(2):
        image, labels = _scene(i)
        _write(tmp_path / "images" / "train" / f"{i}.png", image)
        _write(tmp_path / "masks" / "train" / f"{i}.png", labels % 3)
    return tmp_path


def test_folder_layout_with_classes_file(folder):
    data = FolderDataset(folder, "train")
    assert data.classes.names == ("sky", "road", "car")
    assert data.classes.palette[0] == (0, 0, 255) and data.classes.palette[2] == (255, 0, 0)
    assert len(data) == 2


def test_data_sets_declare_their_real_classes_and_palettes():
    """The mmseg tables: names and colours a model's predictions are shown with."""
    assert len(ADE20K.classes) == 150 and ADE20K.classes.names[:3] == ("wall", "building", "sky")
    assert ADE20K.classes.names[-1] == "flag" and ADE20K.classes.palette[-1] == (92, 0, 255)
    assert ADE20K.classes.palette[:2] == ((120, 120, 120), (180, 120, 120))
    assert len(Cityscapes.classes) == 19 and Cityscapes.classes.palette[0] == (128, 64, 128)
    assert len(PascalContext.classes) == 59 and PascalContext.classes.names[::58] == ("aeroplane", "wood")
    assert PascalContext.classes.palette[0] == (180, 120, 120)  # mmseg: ADE20K's colours from the 2nd on
    for dataset in (ADE20K, Cityscapes, PascalContext):
        assert len(set(dataset.classes.names)) == len(dataset.classes), dataset.__name__


def test_classes_of_a_config_come_from_its_data_set_class_without_reading_images(folder, tmp_path):
    cfg = Config()
    cfg.data.demo_size = 20
    assert classes_of(cfg) == DemoDataset.classes and classes_of(cfg).names == CLASSES
    assert not any(cache_dir().glob("demo-v*-20px-*"))  # the demo set was not generated for it
    cfg.data.dataset, cfg.data.root = "folder", str(folder)
    assert classes_of(cfg).names == ("sky", "road", "car")
    cfg.data.dataset = "ade20k"
    assert classes_of(cfg) == ADE20K.classes
    cfg.data.num_classes = 3  # e.g. a converted checkpoint with another head
    assert classes_of(cfg).names == ("0", "1", "2")
    cfg.data.dataset = "imagefolder"
    with pytest.raises(
        ValueError, match="'imagefolder' is a classification data set but task is 'segmentation'"
    ):
        classes_of(cfg)


def test_missing_root_shows_the_expected_layout(tmp_path):
    with pytest.raises(ValueError, match=r"(?s)does not exist\. Expected layout:.*leftImg8bit/\{train,val\}"):
        Cityscapes(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="lacks images/train"):
        (tmp_path / "classes.txt").write_text("a\n")
        FolderDataset(tmp_path)


def test_bad_files_are_named(folder):
    data = FolderDataset(folder, "train")
    (folder / "images" / "train" / "1.png").write_bytes(
        (folder / "images" / "train" / "1.png").read_bytes()[:60]
    )
    with pytest.raises(ValueError, match=r"cannot read image .*1\.png"):
        data[1]
    _write(folder / "masks" / "train" / "0.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"image .*0\.png is 32x24 but its label map .*0\.png is 10x10"):
        data[0]
    _write(folder / "masks" / "train" / "0.png", np.full((24, 32), 7, np.uint8))
    with pytest.raises(ValueError, match=r"label map .*0\.png holds values \[7\] outside 0\.\.2"):
        data[0]
    (folder / "masks" / "train" / "0.png").unlink()
    with pytest.raises(ValueError, match=r"image .*0\.png has no label map"):
        FolderDataset(folder, "train")


def test_demo_set_is_seeded_cached_and_labelled_by_shape():
    root = ensure_demo_set(size=48, train=6, val=3)
    assert ensure_demo_set(size=48, train=6, val=3) == root  # cached, not regenerated
    data = FolderDataset(root, "train")
    assert data.classes.names == CLASSES and len(data) == 6
    first = np.asarray(Image.open(data.pairs[0][0]))
    again, _ = render_scene(np.random.default_rng([1, 0]), 48)
    assert np.array_equal(first, again)  # the same generator version and seed give the same scene
    labels = np.stack([data[i][1].numpy() for i in range(6)])
    assert len(np.unique(labels)) > 2
    # Colour does not give the class away: the mean colour of discs is close to the overall mean.
    scenes = [render_scene(np.random.default_rng(s), 64) for s in range(30)]
    pixels = np.concatenate([im[lab == 1] for im, lab in scenes]).mean(0)
    assert np.abs(pixels - np.concatenate([im.reshape(-1, 3) for im, _ in scenes]).mean(0)).max() < 25


def test_train_transform_is_a_function_of_the_seed():
    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    labels = torch.randint(0, 3, (40, 60))
    transform = TrainTransform(crop_size=48, scale=(60, 40), ratio_range=(0.5, 2.0))
    a = transform(image, labels, torch.Generator().manual_seed(5))
    b = transform(image, labels, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 48, 48) and a[0].dtype == torch.float32 and a[1].shape == (48, 48)
    small = TrainTransform(crop_size=48, scale=(30, 20), ratio_range=(1.0, 1.0), photometric=False, flip=0)
    _, padded = small(image, labels, torch.Generator().manual_seed(0))
    assert (padded[20:] == IGNORE_INDEX).all() and (padded[:, 30:] == IGNORE_INDEX).all()
    assert (padded[:20, :30] != IGNORE_INDEX).all()


def test_rescale_keeps_the_ratio_within_the_scale():
    assert rescale_size(1024, 2048, (2048, 512)) == (512, 1024)
    assert rescale_size(375, 500, (2048, 512)) == (512, 683)


def test_random_crop_limits_the_largest_category():
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[:, 48:] = 1  # class 0 covers 75% overall; most 32-wide crops are dominated by it
    _, crop = random_crop(torch.zeros(3, 64, 64), labels, 32, 0.75, torch.Generator().manual_seed(0))
    counts = torch.bincount(crop.flatten(), minlength=2)
    assert counts.max() < 0.75 * counts.sum()


def test_hsv_round_trip():
    rgb = torch.rand(3, 5, 7)
    torch.testing.assert_close(_hsv_to_rgb(_rgb_to_hsv(rgb)), rgb, atol=1e-5, rtol=1e-5)
