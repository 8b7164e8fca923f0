"""The on-disk feature cache: pooled layer features in safetensors shards plus a JSON manifest.

Modules: :mod:`~probekit.cache.layout` (format, file names, identity checks),
:mod:`~probekit.cache.writer` (:class:`CacheWriter`: atomic shards, resume, finalize),
:mod:`~probekit.cache.reader` (:class:`FeatureCache`), :mod:`~probekit.cache.integrity`
(digests of every file, checked while reading) and :mod:`~probekit.cache.files` (atomic writes,
canonical JSON).

Every read path checks what it reads: the manifest's own sha256 on open, each shard's header,
labels and index on open, and each feature block the first time it is read (an XXH3-128 of the
bytes as they are read, not a second pass). A mismatch raises :class:`CacheError` naming the
file; ``FeatureCache.open(path, verify=False)`` is the explicit opt-out for shard digests, and
``FeatureCache.verify()`` checks each shard's whole-file sha256.

Example:
    >>> writer = CacheWriter.create(path, manifest, n_samples=len(data))  # doctest: +SKIP
    >>> for i in writer.missing_shards():                                  # doctest: +SKIP
    ...     start, stop = writer.shard_range(i)
    ...     writer.write_shard(i, {"layers.0.cls": x0, ...}, labels[start:stop])
    >>> cache = writer.finalize()                                          # doctest: +SKIP
    >>> X = cache.load(layers=-1, pooling="cls")                           # doctest: +SKIP
"""

from __future__ import annotations

from .._utils.lazy import attach
from ..errors import CacheError, CacheMismatchError

# Names load on first use: the CLI's parser reads the pooling spelling of
# :mod:`~probekit.cache.poolings` without torch.
__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "CacheWriter": "writer",
        "DEFAULT_SHARD_SIZE": "layout",
        "FORMAT_VERSION": "layout",
        "FeatureCache": "reader",
        "CacheSubset": "rows",
        "cache_subset": "rows",
    },
)
__all__ += ["CacheError", "CacheMismatchError"]
