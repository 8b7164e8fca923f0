"""Models: ``load_model(spec) -> LoadedModel``, which of its modules are "the layers", the
forward hooks that record them, and where a big model's weights go.

Modules: :mod:`~probekit.models.loading` (HF, timm, bundled and local checkpoints),
:mod:`~probekit.models.layers` (:class:`LayerSpec`, the one meaning of ``layers=``),
:mod:`~probekit.models.hooks` (:class:`LayerRecorder`), :mod:`~probekit.models.components`
(the attention / MLP terms each decoder block adds to the residual stream),
:mod:`~probekit.models.listing` (:func:`list_layers`), :mod:`~probekit.models.placement`
(accelerate's ``device_map`` / ``max_memory``, dtypes, quantisation),
:mod:`~probekit.models.bundled_llm` (the bundled decoder LM ``bundled:gemma3-270m``: its
de-quantised, sha256-checked cache folder and its unembedding).

The recorder lives here, not in :mod:`probekit.record`: loading an HF model checks its layers
against ``output_hidden_states`` with it, and listing a model's layers runs it.

Names load on first use, so that the CLI's parser (which reads the option parsers of
:mod:`~probekit.models.placement` and :mod:`~probekit.models.layers`) imports no torch.
"""

from __future__ import annotations

from .._utils.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "BUNDLED_MODELS": "loading",
        "LoadedModel": "loading",
        "load_model": "loading",
        "LayerSpec": "layers",
        "parse_layers": "layers",
        "resolve_indices": "layers",
        "select_layers": "layers",
        "LayerRecorder": "hooks",
        "COMPONENTS": "components",
        "component_layers": "components",
        "select_component": "components",
        "LayerListing": "listing",
        "format_layers": "listing",
        "list_layers": "listing",
    },
)
