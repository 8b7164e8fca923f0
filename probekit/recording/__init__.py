"""Recording: a model and a dataset in, a feature cache out.

Modules: :mod:`~probekit.recording.pooling` (one vector per sample from a layer's output, inside
the hook), :mod:`~probekit.recording.prompts` (prompt templates and the read windows of text
models), :mod:`~probekit.recording.extraction` (:func:`extract` into a cache, :func:`record` into
memory) and :mod:`~probekit.recording.distributed` (the ranks of a ``torchrun`` job).

Names load on first use, so that the CLI's parser (which reads the pooling names) imports no
torch.
"""

from __future__ import annotations

from .._utils.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "POOLINGS": "pooling",
        "expand_poolings": "pooling",
        "pool": "pooling",
        "list_poolings": "pooling",
        "register_pooling": "pooling",
        "PRECISIONS": "options",
        "STORE_DTYPES": "options",
        "READS": "options",
        "extract": "extraction",
        "record": "extraction",
        "Ranks": "distributed",
    },
)
