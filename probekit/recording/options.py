"""The allowed values of the recording options, without torch: :func:`probekit.extract` checks
against them and :class:`~probekit.runs.RunConfig` offers them as choices."""

from __future__ import annotations

from ..models.components import COMPONENTS

__all__ = [
    "COMPONENTS",
    "PRECISIONS",
    "READS",
    "SPAN_POOLINGS",
    "STORE_DTYPES",
    "UNITS",
    "WORD_POOLINGS",
]

PRECISIONS = ("auto", "fp32", "medium", "bf16")
"""Numerics of the forward: ``auto`` (bf16 where native, else fp32), ``fp32``, ``medium``
(TF32 matmuls), ``bf16``."""

STORE_DTYPES = ("float32", "float16", "bfloat16")
"""The dtypes features are stored in."""

UNITS = ("sample", "word", "token", "span")
"""What one row of a cache is: an input, a labelled word of it, a sub-word token of one, or a
labelled span (or pair of spans) of words."""

SPAN_POOLINGS = ("mean", "endpoints")
"""How a span's words become one vector: their mean, or its first and last word concatenated."""

WORD_POOLINGS = ("mean", "first", "last")
"""How a word's sub-word tokens become one vector."""

READS = ("prompt", "text")
"""Where a prompt's poolings read: every token of the templated prompt, or the tokens of its
``{text}`` span."""
