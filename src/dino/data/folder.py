"""Datasets over folders: unlabelled (any layout) and labelled (one subfolder per class)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from dino.data.images import BadImageError, find_images, load_bands, load_rgb


class ImageList(Dataset):
    """Images from a list of files or in-memory PIL images, passed through ``transform``.

    ``__getitem__`` returns ``(transform(image), label)``; the label is -1 when unknown.
    With ``channels`` 3 an image is an RGB PIL image (``load_rgb``); with any other number
    a (channels, H, W) float tensor in [0, 1] (``load_bands``).
    """

    def __init__(
        self,
        images: Sequence[Path] | Sequence[Image.Image],
        labels: Sequence[int] | None = None,
        transform: Callable[[Any], Any] | None = None,
        classes: Sequence[str] = (),
        channels: int = 3,
    ) -> None:
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = list(images)
        self.labels = list(labels) if labels is not None else [-1] * len(self.images)
        self.transform = transform
        self.classes = list(classes)
        self.channels = channels

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Any:
        item = self.images[index]
        if self.channels != 3:
            return load_bands(item, self.channels)  # type: ignore[arg-type]
        if isinstance(item, Image.Image):
            return item.convert("RGB")
        return load_rgb(item)  # type: ignore[arg-type]

    def subset(self, indices: Sequence[int]) -> ImageList:
        """The items at ``indices`` (labels, transform, classes and channels kept)."""
        images: list[Any] = [self.images[i] for i in indices]
        labels = [self.labels[i] for i in indices]
        return ImageList(images, labels, self.transform, self.classes, self.channels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.load(index)
        return (self.transform(img) if self.transform else img), self.labels[index]


class SkipBadImages(Dataset):
    """A dataset of ``(sample, label)`` items with the files that fail to decode passed over
    and named, for training and for feature extraction alike.

    Item i is ``(sample, label, index, skipped)``: the sample and label of the item at
    ``index`` and the "path: reason" of every file passed over for it, so that the caller
    can report them. With ``fill`` (training) an unreadable file is replaced by another
    one, so that the batch stays full: up to ``max_tries`` items picked at random (the same
    ones for the same i, so a resumed epoch repeats). Random picks, not the next files:
    unreadable files sit together in a sorted folder, and a run should stop only when most
    of the data is unreadable; the chance that 64 picks all fail is 0.9^64 (1 in 850) with
    90% of the files unreadable, 2e-20 with half. Then it raises BadImageError naming a few.
    Without ``fill`` (feature extraction) an unreadable file leaves its place empty:
    ``sample`` is None and the label -1, so that no image's features stand in for another's.
    """

    def __init__(self, images: Dataset, fill: bool = True, max_tries: int = 64) -> None:
        self.images = images
        self.tries = max_tries if fill else 1
        self.fill = fill

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int, int, list[str]]:
        skipped: list[str] = []
        picks = random.Random(index)
        at = index
        for _ in range(self.tries):
            try:
                sample, label = self.images[at]
            except BadImageError as e:
                skipped.append(str(e))
                at = picks.randrange(len(self))
                continue
            return sample, label, at, skipped
        if not self.fill:
            return None, -1, index, skipped
        raise BadImageError(
            f"most images are unreadable: {len(skipped)} tried for item {index} could not be "
            f"read ({'; '.join(skipped[:3])})"
        )


def first_readable(images: ImageList) -> int:
    """Index of the first image that decodes; BadImageError when none does."""
    reasons = []
    for i in range(len(images)):
        try:
            images.load(i)
            return i
        except BadImageError as e:
            reasons.append(str(e))
    raise BadImageError(
        f"none of the {len(images)} image files could be read (first: {reasons[0]})"
    )


def image_folder(
    root: str | Path,
    transform: Callable[[Any], Any] | None = None,
    channels: int = 3,
    follow_links: bool = False,
) -> ImageList:
    """All images below ``root``, any layout, unlabelled (see ``find_images`` for links). An
    empty folder is an error."""
    files = find_images(root, follow_links)
    if not files:
        raise FileNotFoundError(
            f"{root}: no images found (looked for jpg, jpeg, png, bmp, webp, tif)"
        )
    return ImageList(files, transform=transform, channels=channels)


def labelled_folder(
    root: str | Path,
    transform: Callable[[Any], Any] | None = None,
    classes: Sequence[str] | None = None,
    channels: int = 3,
    follow_links: bool = False,
) -> ImageList:
    """Images in ``root/<class>/...`` (any depth below), labelled by sorted class name.

    ``classes`` fixes the label order instead (e.g. a validation split labelled like its
    training split); a subfolder not in it is an error. See ``find_images`` for links.
    """
    root = Path(root)
    files = find_images(root, follow_links)
    outside = [f for f in files if f.parent == root]
    if outside:
        raise ValueError(
            f"{root}: expected one subfolder per class, found an image directly in it "
            f"({outside[0].name})"
        )
    if not files:
        raise FileNotFoundError(f"{root}: no images found in class subfolders")
    found = sorted({f.relative_to(root).parts[0] for f in files})
    classes = list(classes) if classes is not None else found
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise ValueError(
            f"{root}: class folder {unknown[0]!r} is not among the {len(classes)} known classes"
        )
    index = {c: i for i, c in enumerate(classes)}
    labels = [index[f.relative_to(root).parts[0]] for f in files]
    return ImageList(files, labels, transform, classes, channels)
