"""Dataset layouts: MVTec AD categories, the Magnetic Tile Defect set and plain image folders.

Layout readers only list files and check what can be checked from file headers (mask present,
mask size equal to image size); pixels are decoded later by ``defectscope.data.io``. Files and
folders whose names start with a dot are ignored everywhere (editor and OS metadata such as
``.ipynb_checkpoints`` or macOS ``._name.png`` files). Listings are sorted by name, so the same
folder always gives the same order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from defectscope.data.io import IMAGE_EXTENSIONS, _describe
from defectscope.errors import ConfigError, DatasetError, ImageReadError

__all__ = [
    "Category",
    "Sample",
    "discover",
    "labelled_defects",
    "magnetic_tile",
    "mvtec_category",
    "plain_folder",
    "training_images",
]

_EXTENSION_LIST = ", ".join(sorted(IMAGE_EXTENSIONS, key=lambda ext: (len(ext), ext)))
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class Sample:
    """One image: its label (0 normal, 1 defective, None unknown) and optional ground-truth mask.

    ``mask_path`` None on a labelled sample means "no mask file": for a normal image an empty
    mask, for a defective one in a category without masks, no pixel ground truth.
    ``defect_type`` is the defect folder or class name; None for normal and unlabelled images.
    """

    path: Path
    label: int | None
    mask_path: Path | None = None
    defect_type: str | None = None


@dataclass
class Category:
    """A dataset category: training images (normal only) and labelled test images.

    ``layout`` is "mvtec" or "magnetic_tile". ``has_masks`` False means image-level labels only
    (no ground_truth folder at all); pixel metrics are then reported as absent, not as zero.
    """

    name: str
    root: Path
    layout: str
    train: list[Sample]
    test: list[Sample]
    has_masks: bool


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not _is_hidden(path) and path.is_file()


def _images_in(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if _is_image_file(p)), key=lambda p: p.name)


def _subfolders(folder: Path) -> list[Path]:
    """Visible subfolders of ``folder``, sorted by name."""
    visible = (p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p))
    return sorted(visible, key=lambda p: p.name)


def _oriented_size(path: Path, what: str) -> tuple[int, int]:
    """(width, height) as ``read_image`` will return it, read from the header only."""
    try:
        with open(path, "rb") as handle, Image.open(handle) as image:
            width, height = image.size
            if image.format == "PNG":
                exif = Image.Exif()
                raw = image.info.get("exif")
                if raw:
                    exif.load(raw)
            else:
                exif = image.getexif()
            orientation = exif.get(_ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(_describe(path, exc, what)) from exc
    if orientation in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def _check_mask_size(image_path: Path, mask_path: Path) -> None:
    """Raise DatasetError when the mask's size differs from its image's size (headers only)."""
    image_size = _oriented_size(image_path, "image")
    mask_size = _oriented_size(mask_path, "mask")
    if image_size != mask_size:
        raise DatasetError(
            f"mask '{mask_path}' is {mask_size[0]}x{mask_size[1]} pixels (width x height) "
            f"but its image '{image_path}' is {image_size[0]}x{image_size[1]}"
        )


def _require_folder(root: str | os.PathLike[str]) -> Path:
    folder = Path(root)
    if not folder.exists():
        raise DatasetError(f"dataset folder '{folder}' does not exist")
    if not folder.is_dir():
        raise DatasetError(f"dataset path '{folder}' is a file, not a folder")
    return folder


def _find_mvtec_mask(ground_truth: Path, defect_type: str, image_path: Path) -> Path:
    """The mask of a defective test image: ``<stem>_mask.png`` or ``<stem>.png``, never a guess."""
    folder = ground_truth / defect_type
    candidates = [folder / f"{image_path.stem}_mask.png", folder / f"{image_path.stem}.png"]
    found = [c for c in candidates if c.is_file()]
    if not found:
        looked = " and ".join(f"'{c}'" for c in candidates)
        raise DatasetError(f"defective image '{image_path}' has no mask: looked for {looked}")
    if len(found) > 1:
        raise DatasetError(
            f"defective image '{image_path}' has two possible masks, '{found[0]}' and "
            f"'{found[1]}'; keep only one"
        )
    return found[0]


def mvtec_category(root: str | os.PathLike[str]) -> Category:
    """Read one MVTec AD category: ``train/good``, ``test/<type>``, ``ground_truth/<type>``.

    ``test/good`` is normal (label 0), every other test folder is a defect type (label 1). Masks
    are ``ground_truth/<type>/<stem>_mask.png`` (MVTec) or ``<stem>.png`` (equal names). Without a
    ground_truth folder the category has image-level labels only (``has_masks`` False). With one,
    every defective image must have exactly one mask of its own size, else DatasetError.
    """
    folder = _require_folder(root)
    train_dir, test_dir = folder / "train", folder / "test"
    if not train_dir.is_dir() and not test_dir.is_dir():
        raise DatasetError(
            f"'{folder}' is not an MVTec AD category: it has neither a train/ nor a test/ folder"
        )
    train: list[Sample] = []
    if train_dir.is_dir():
        for sub in _subfolders(train_dir):
            if sub.name != "good" and _images_in(sub):
                raise DatasetError(
                    f"training folder '{sub}' is not 'good': MVTec AD training images must all "
                    f"be normal and lie in '{train_dir / 'good'}'"
                )
        if (train_dir / "good").is_dir():
            train = [Sample(path=p, label=0) for p in _images_in(train_dir / "good")]
    ground_truth = folder / "ground_truth"
    has_masks = ground_truth.is_dir()
    test: list[Sample] = []
    if test_dir.is_dir():
        for sub in _subfolders(test_dir):
            if sub.name == "good":
                test.extend(Sample(path=p, label=0) for p in _images_in(sub))
                continue
            for image_path in _images_in(sub):
                mask_path = None
                if has_masks:
                    mask_path = _find_mvtec_mask(ground_truth, sub.name, image_path)
                    _check_mask_size(image_path, mask_path)
                test.append(
                    Sample(path=image_path, label=1, mask_path=mask_path, defect_type=sub.name)
                )
    if not train and not test:
        raise DatasetError(
            f"no images found in MVTec AD category '{folder}' (looked in train/good and test/*"
            f" for {_EXTENSION_LIST})"
        )
    return Category(
        name=folder.name, root=folder, layout="mvtec", train=train, test=test, has_masks=has_masks
    )


def magnetic_tile(
    root: str | os.PathLike[str], seed: int = 0, train_fraction: float = 0.5
) -> Category:
    """Read the Magnetic Tile Defect set (``MT_<class>/Imgs/<id>.jpg``, mask ``<id>.png`` beside).

    Returns one Category. ``MT_Free`` tiles are normal; every other class is a defect type named
    after the class (Blowhole, Break, Crack, Fray, Uneven). Images are the non-PNG image files of
    ``Imgs``; PNG files there are masks (foreground is value > 127 when read). MTD has no official
    split, so this one is documented and seeded: the normal tiles, sorted by name, are shuffled by
    ``numpy.random.default_rng(seed)`` and the first ``round(train_fraction * n)`` go to train (kept
    sorted), the rest to test; all defective tiles go to test (methods needing labelled defects
    make their own documented split from them). Test order: normal tiles, then classes by name.
    Defective tiles keep label 1 from their folder even where the published mask is empty (4
    Uneven tiles). Normal tiles keep the mask file beside them when there is one (all are empty).
    """
    folder = _require_folder(root)
    if not 0.0 <= train_fraction <= 1.0:
        raise ConfigError(f"train_fraction must lie between 0 and 1, got {train_fraction}")
    class_dirs = [p for p in _subfolders(folder) if p.name.startswith("MT_")]
    if not class_dirs:
        raise DatasetError(f"'{folder}' is not a Magnetic Tile root: it has no MT_* folders")
    if not any(p.name == "MT_Free" for p in class_dirs):
        raise DatasetError(f"Magnetic Tile root '{folder}' has no MT_Free folder of normal tiles")
    normal: list[Sample] = []
    defective: list[Sample] = []
    for class_dir in class_dirs:
        class_name = class_dir.name[len("MT_") :]
        images_dir = class_dir / "Imgs"
        if not images_dir.is_dir():
            raise DatasetError(f"Magnetic Tile class folder '{class_dir}' has no Imgs/ folder")
        is_normal = class_name == "Free"
        for image_path in _images_in(images_dir):
            if image_path.suffix.lower() == ".png":
                continue
            mask_path: Path | None = image_path.with_suffix(".png")
            if not mask_path.is_file():
                if not is_normal:
                    raise DatasetError(
                        f"defective image '{image_path}' has no mask: looked for '{mask_path}'"
                    )
                mask_path = None
            if mask_path is not None:
                _check_mask_size(image_path, mask_path)
            if is_normal:
                normal.append(Sample(path=image_path, label=0, mask_path=mask_path))
            else:
                defective.append(
                    Sample(path=image_path, label=1, mask_path=mask_path, defect_type=class_name)
                )
    if not normal:
        raise DatasetError(f"no normal tiles found in '{folder / 'MT_Free' / 'Imgs'}'")
    order = np.random.default_rng(seed).permutation(len(normal))
    n_train = int(round(train_fraction * len(normal)))
    train_idx = sorted(int(i) for i in order[:n_train])
    test_idx = sorted(int(i) for i in order[n_train:])
    return Category(
        name=folder.name,
        root=folder,
        layout="magnetic_tile",
        train=[normal[i] for i in train_idx],
        test=[normal[i] for i in test_idx] + defective,
        has_masks=True,
    )


def plain_folder(root: str | os.PathLike[str]) -> list[Sample]:
    """All images under ``root`` (recursive, sorted by relative path), unlabelled.

    Only files with a suffix in IMAGE_EXTENSIONS count; an empty result raises DatasetError.
    """
    folder = _require_folder(root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        base = Path(dirpath)
        found.extend(
            base / name
            for name in filenames
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
        )
    if not found:
        raise DatasetError(f"no images found in '{folder}' (looked for {_EXTENSION_LIST})")
    found.sort(key=lambda p: p.relative_to(folder).parts)
    return [Sample(path=p, label=None) for p in found]


def _looks_like_mvtec_category(folder: Path) -> bool:
    return (folder / "train").is_dir() or (folder / "test").is_dir()


def discover(root: str | os.PathLike[str], seed: int = 0) -> list[Category]:
    """Detect the layout of ``root`` and read it.

    Recognised, in this order: one MVTec AD category (``train/`` or ``test/`` inside), a Magnetic
    Tile root (``MT_*`` folders, split with ``seed``), a folder of MVTec AD categories (each
    subfolder holding ``train/`` or ``test/``, sorted by name). Anything else raises DatasetError;
    plain folders of images are read with ``plain_folder``.
    """
    folder = _require_folder(root)
    if _looks_like_mvtec_category(folder):
        return [mvtec_category(folder)]
    subfolders = _subfolders(folder)
    if any(p.name.startswith("MT_") for p in subfolders):
        return [magnetic_tile(folder, seed=seed)]
    categories = [p for p in subfolders if _looks_like_mvtec_category(p)]
    if categories:
        return [mvtec_category(p) for p in categories]
    raise DatasetError(
        f"cannot recognise the dataset layout of '{folder}': expected an MVTec AD category "
        "(train/ and test/ folders), a folder of MVTec AD categories, or a Magnetic Tile root "
        "(MT_* folders)"
    )


MASK_SUFFIX = "_mask"


def training_images(root: str | os.PathLike[str]) -> list[Sample]:
    """Normal training images: ``train/good`` of an MVTec category, else every image under
    ``root`` (a plain folder of good parts)."""
    folder = _require_folder(root)
    if _looks_like_mvtec_category(folder):
        samples = mvtec_category(folder).train
        if not samples:
            raise DatasetError(f"no training images in '{folder / 'train' / 'good'}'")
        return samples
    return [Sample(path=s.path, label=0) for s in plain_folder(folder)]


def labelled_defects(root: str | os.PathLike[str]) -> list[Sample]:
    """Defective images with masks, for supervised training (PRN ``--anomalies``).

    Either an MVTec category (its defective test images with their ``ground_truth`` masks) or a
    folder where each image ``<name>.<ext>`` has its mask ``<name>_mask.png`` beside it. An
    image without a mask is reported by name, never guessed.
    """
    folder = _require_folder(root)
    if _looks_like_mvtec_category(folder):
        category = mvtec_category(folder)
        found = [s for s in category.test if s.label == 1 and s.mask_path is not None]
        if not found:
            raise DatasetError(f"'{folder}' holds no defective images with ground-truth masks")
        return found
    images = [s.path for s in plain_folder(folder) if not s.path.stem.endswith(MASK_SUFFIX)]
    samples = []
    for image in images:
        mask = image.with_name(f"{image.stem}{MASK_SUFFIX}.png")
        if not mask.is_file():
            raise DatasetError(f"defective image '{image}' has no mask: expected '{mask}' beside it")
        _check_mask_size(image, mask)
        samples.append(Sample(path=image, label=1, mask_path=mask, defect_type=image.parent.name))
    if not samples:
        raise DatasetError(f"no defective images (with '<name>{MASK_SUFFIX}.png' masks) found in '{folder}'")
    return samples
