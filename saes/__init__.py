"""Sparse autoencoders for the embedded model: SAE-Lens training, shipped weights, evals,
feature pages, steering/splicing interventions and feature absorption.

Importing the package registers the SAE interventions (``sae_steer``, ``sae_clamp``,
``sae_splice``); SAE-Lens itself is imported only when an SAE is loaded or trained.
"""

from mechscope.saes import interventions as _interventions  # noqa: F401  (registers the kinds)
