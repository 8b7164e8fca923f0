"""Analysis of fitted probes and caches: layer attribution and ablation
(:mod:`~probekit.analysis.attribution`), online-code MDL (:mod:`~probekit.analysis.mdl`),
CKA / RSA layer similarity (:mod:`~probekit.analysis.similarity`), the logit and tuned lenses
of causal LMs (:mod:`~probekit.analysis.lens`, :mod:`~probekit.analysis.tuned_lens`) and the
bootstrap statistics every score and comparison uses (:mod:`~probekit.analysis.stats`)."""

from __future__ import annotations

from .._utils.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "AblationResult": "attribution",
        "ablation_sensitivity": "attribution",
        "attribution_agreement": "attribution",
        "captum_attribution": "attribution",
        "layer_attribution": "attribution",
        "layer_map": "attribution",
        "MDLResult": "mdl",
        "label_token_ids": "lens",
        "lens_logits": "lens",
        "logit_lens": "lens",
        "TunedLens": "tuned_lens",
        "fit_tuned_lens": "tuned_lens",
        "lens_divergence": "tuned_lens",
        "token_states": "tuned_lens",
        "PairedBootstrap": "stats",
        "binary_scores": "stats",
        "bootstrap_interval": "stats",
        "paired_binary": "stats",
        "paired_bootstrap": "stats",
    },
)
