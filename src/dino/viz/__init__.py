"""Pictures of a run and of what a backbone sees: training curves from ``log.txt``
(``curves``), the multi-crop views of images (``crops``), the principal components of patch
features (``pca``) and 2-D maps of embeddings (``embedding_map``).

matplotlib (the ``plot`` extra) is imported only by the functions that draw with it, and
without pyplot, so nothing here touches global plotting state.
"""
