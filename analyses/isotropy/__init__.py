"""Isotropy of representations: IsoScore and its rivals on every layer (docs/isotropy.md).

One job per module; this package re-exports their public names:

* ``scores`` — the scores of one point cloud: IsoScore, IsoScore*, average cosine,
  partition score, self-similarity, outlier dimensions;
* ``clouds`` — the streaming state of many clouds folded in during one forward pass, and
  their scoring (per-head outputs through W_O);
* ``result`` and ``analysis`` — :func:`isotropy` over a text set (``probes.texts``) and its
  :class:`IsotropyResult`;
* ``sanity`` — Rudman et al.'s sanity clouds;
* ``whitening`` — :func:`whitening_effect`: ZCA, Zipfian and outlier-removal whitening fitted
  on one text set and applied to another;
* ``decoding`` — :func:`decoding_isotropy`: greedy, nucleus sampling and contrastive search.
"""

from __future__ import annotations

from mechscope.probes import capture  # noqa: F401  (the module the analyses run through)

from mechscope.analyses.isotropy.scores import (  # noqa: F401
    C0_CHOICES,
    average_cosine,
    check_multiple,
    check_zeta,
    covariance,
    isoscore,
    isoscore_from_cov,
    isoscore_from_eigenvalues,
    isoscore_star,
    mean_pair_cosine,
    outlier_dimensions,
    pair_cosines,
    partition_score,
    random_pairs,
    self_similarity,
    shrunk_cov,
    star_from_eigenvalues,
)
from mechscope.analyses.isotropy.clouds import sample_slots, top_eigenvectors  # noqa: F401
from mechscope.analyses.isotropy.result import FINAL_NORM, SCORES, IsotropyResult  # noqa: F401
from mechscope.analyses.isotropy.analysis import (  # noqa: F401
    LINALG_DEVICE,
    IsotropyParams,
    isotropy,
    token_ids,
    weight_clouds,
)
from mechscope.analyses.isotropy.sanity import figure_rudman, rudman_clouds, rudman_table  # noqa: F401
from mechscope.analyses.isotropy.whitening import (  # noqa: F401
    WhiteningParams,
    WhiteningResult,
    _score_variants,
    corpus_frequencies,
    split_texts,
    whitening_effect,
    zipf_weights,
)
from mechscope.analyses.isotropy.decoding import (  # noqa: F401
    DecodingIsotropyParams,
    DecodingIsotropyResult,
    decoding_isotropy,
    diversity,
    final_states,
    rep_n,
)
from mechscope.probes.covariance import CloudStats  # noqa: F401
