"""A 2-D map of image embeddings (``dino embed --plot``): t-SNE from scikit-learn (van der
Maaten and Hinton 2008), or UMAP (McInnes et al. 2018) when umap-learn is installed, of the
L2-normalised features (the geometry k-NN uses), coloured by class folder when the images
sit in one subfolder per class.

numpy, scikit-learn and umap are imported when used, so the command's parser stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from dino.errors import ConfigError
from dino.viz.figures import new_figure

if TYPE_CHECKING:
    import numpy as np

MAP_METHODS = ("auto", "tsne", "umap")
PCA_DIMS = 50  # t-SNE's usual first step: PCA to 50 dimensions (faster, less noise)


def map_method(method: str) -> str:
    """``tsne`` or ``umap``: ``auto`` is UMAP when umap-learn is installed, else t-SNE.
    Raises ConfigError naming what to install when the method's packages are missing, so
    that a command can check before it extracts any feature."""
    if method not in MAP_METHODS:
        raise ConfigError(f"plot: expected one of {', '.join(MAP_METHODS)}, got {method!r}")
    if method == "auto":
        method = "umap" if find_spec("umap") is not None else "tsne"
    maker = ("umap", "umap-learn") if method == "umap" else ("sklearn", "'dino[plot]'")
    for module, package in (("matplotlib", "'dino[plot]'"), maker):
        if find_spec(module) is None:
            raise ConfigError(f"plot: {method} maps need {module}; pip install {package}")
    return method


def embed_2d(features: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """Coordinates (N, 2) of ``features`` (N, D) by ``method`` (``tsne`` or ``umap``), on the
    L2-normalised rows; perplexity (t-SNE) and neighbours (UMAP) shrink for small N."""
    import numpy as np

    x = features.reshape(len(features), -1).astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    if n < 3:
        raise ConfigError(f"plot: a 2-D map needs at least 3 images, got {n}")
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ConfigError("plot: umap needs umap-learn; pip install umap-learn") from None
        reducer = umap.UMAP(n_neighbors=min(15, n - 1), random_state=seed)
        return np.asarray(reducer.fit_transform(x))
    try:
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE
    except ImportError:
        raise ConfigError("plot: t-SNE needs scikit-learn; pip install 'dino[plot]'") from None
    if x.shape[1] > PCA_DIMS and n > PCA_DIMS:
        x = PCA(PCA_DIMS, random_state=seed).fit_transform(x)
    perplexity = min(30.0, (n - 1) / 3)
    tsne = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    return np.asarray(tsne.fit_transform(x))


def plot_map(features: np.ndarray, names: Sequence[str], method: str, output: Path) -> str:
    """The map of ``features`` (N, D) of the images ``names`` (paths relative to the folder
    read) by ``method`` (``MAP_METHODS``) written to ``output``; returns what was drawn."""
    method = map_method(method)
    classes = class_folders(names)
    xy = embed_2d(features, method)
    label = {"tsne": "t-SNE", "umap": "UMAP"}[method]
    kinds = f" in {len(set(classes))} classes" if classes else ""
    plot_embedding_map(xy, classes, output, f"{label} of {len(names)} images{kinds}")
    return f"{label} map of {len(names)} images{kinds} -> {output}"


def class_folders(names: Sequence[str]) -> list[str] | None:
    """The class of each image, its first folder below the root, when every image sits in
    a subfolder and there are at least two; None otherwise."""
    parts = [Path(name).parts for name in names]
    if any(len(p) < 2 for p in parts) or len({p[0] for p in parts}) < 2:
        return None
    return [p[0] for p in parts]


def plot_embedding_map(
    xy: np.ndarray, classes: Sequence[str] | None, output: str | Path, title: str
) -> None:
    """Draw the points ``xy`` (N, 2) on an 800 x 800 px PNG at ``output``, one colour per
    class (a legend up to 20 classes), one colour for all when ``classes`` is None."""
    fig = new_figure(8, 8, "dino embed --plot")
    ax = fig.subplots()
    size = max(2.0, min(30.0, 3000 / len(xy)))
    if classes is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=0.7)
    else:
        names = sorted(set(classes))
        for i, name in enumerate(names):
            rows = [j for j, c in enumerate(classes) if c == name]
            colour = _colour(i, len(names))
            ax.scatter(xy[rows, 0], xy[rows, 1], s=size, alpha=0.7, color=colour, label=name)
        if len(names) <= 20:
            ax.legend(fontsize="small", markerscale=max(1.0, 20 / size), loc="best")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)


def _colour(i: int, n: int) -> tuple[float, float, float, float]:
    """Colour ``i`` of ``n`` classes: tab10 / tab20, else evenly spaced hues."""
    from matplotlib import colormaps

    if n <= 10:
        return colormaps["tab10"](i)
    if n <= 20:
        return colormaps["tab20"](i)
    return colormaps["hsv"](i / n)
