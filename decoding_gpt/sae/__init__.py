"""Sparse autoencoders (SAEs): a dictionary of sparse features for a model's activations.

An SAE rewrites an activation ``x in R^{d_in}`` (one token at one hook) as a sparse,
non-negative combination of ``d_sae >> d_in`` learned directions::

    f(x)  = sigma((x - a * b_dec) W_enc + b_enc)        # [d_sae] feature activations
    x_hat = f(x) W_dec + b_dec                          # [d_in]  reconstruction

(``a = apply_b_dec_to_input`` in {0, 1}; row ``W_dec[i]`` is latent ``i``'s direction.)
Training minimises the reconstruction error ``||x - x_hat||^2`` while keeping ``f``
sparse. The architectures differ in ``sigma`` and in how sparsity is enforced; each is
one row of ``model.ARCHITECTURES``::

    name       sigma at inference  sigma in training       penalty                    decoder
    standard   ReLU                ReLU                    lam sum_i f_i ||W_dec[i]|| free
    topk       ReLU(TopK_k) / tok  same (gathered decode)  none: L0 = k (+ AuxK)      rescale
    batchtopk  JumpReLU(theta)     TopK_{k*batch} / batch  none: L0 = k on average    project

- ``"standard"``: **ReLU + L1** (Bricken et al. 2023, with Anthropic's April 2024
  update). The L1 penalty is weighted by the decoder norms (otherwise the model shrinks
  ``f`` and grows ``W_dec`` to dodge it); ``b_dec`` is not subtracted from the input.
  L1 shrinks every active feature toward 0, so reconstructions are biased low.
- ``"topk"``: **TopK** (Gao et al. 2024) keeps the k largest pre-activations per token.
  Trained SAEs have unit decoder rows: as SAELens's ``TopKTrainingSAE`` training selects
  and decodes through ``W_dec[i] / ||W_dec[i]||`` and folds the norms into the encoder at
  the end (``rescale``); re-projecting the rows after each step is an option. **AuxK**
  (``SAEConfig.use_auxk``, off by default): the ``k_aux`` most active *dead* latents
  (silent for ``dead_steps`` steps) reconstruct the error ``x - x_hat``, with weight
  ``aux_coefficient`` (1/32), so that dead latents get a gradient and come back.
- ``"batchtopk"``: **BatchTopK** (Bussmann et al. 2024) keeps the ``k * batch`` largest
  ``ReLU(pre)`` over the whole batch in training. At inference a batch may be a single
  token, so it becomes a JumpReLU ``sigma(z) = z * 1[z > theta]`` whose ``theta`` is an
  EMA of the smallest activation BatchTopK kept; on disk it is a SAELens ``"jumprelu"``.

How SAEs mislead: good MSE with poor CE loss score means the SAE reconstructs the
*directions that do not matter* to the model; a low L0 can come from a few dense latents
that fire everywhere; latents are found, not given -- an "explanation" from
top-activating examples must be checked by intervention (steering) and, where the true
features are known (synthetic data), by a ground-truth score. Feature splitting means
the dictionary size decides which features you find.

Modules:

- ``model``: ``SAEConfig``, the table ``ARCHITECTURES``, ``SAE`` (encode, decode,
  training loss), ``auxk_loss``.
- ``train``: ``train_sae`` (Adam on an iterator of activation batches), ``TrainResult``.
- ``metrics``: ``l0``, ``mse``, ``explained_variance``, ``evaluate_sae``,
  ``ce_loss_score``, firing frequency, dead/dense latents, and ground-truth scores
  (``auroc_matrix``, ``f1_matrix``, ``ground_truth_score``, ``mean_max_cosine``).
- ``analysis``: one latent at a time: ``top_activating_examples``, ``steer_with_latent``.
- ``ground_truth``: the stories corpus's per-token labels as binary targets (``TARGETS``,
  one-vs-rest per class where the label is defined), ``collect_labelled`` (activations,
  tokens and labels of stories), ``match_table`` (per class, the best latent's AUROC and
  F1), ``packed_story_tokens`` (BOS-separated rows for CE losses).
- ``shipped``: the SAEs shipped under ``decoding_gpt/pretrained/saes/`` (``list_saes``,
  ``load_shipped_sae`` after a sha256 check, ``sae_info`` with the build's metrics), built by
  ``python -m decoding_gpt.tools.build_sae NAME``.
- ``io``: ``save_sae`` / ``load_sae`` in SAELens's format (``cfg.json`` +
  ``sae_weights.safetensors``). SAELens's own standard, topk and jumprelu files load with
  SAELens's outputs (every ``normalize_activations`` mode, ``rescale_acts_by_decoder_norm``,
  ``hook_z`` reshaping); any other architecture or field value raises a ``ValueError``
  that names the field.

SAELens itself is not a dependency (sae-lens 6 needs transformer-lens < 4): it lives in
its own venv, ``make saelens-venv``. To train or analyse with SAELens on a shipped model,
export the model to a TransformerLens 3.x ``HookedTransformer`` there:
``scripts/saelens_recipe.py`` builds ``HookedTransformerConfig`` from the checkpoint's
``config.json`` and loads its ``model.safetensors`` unchanged (our ``GPT`` has
``HookedTransformer``'s parameter names and shapes), checks the logits against ours,
trains a SAELens SAE on a hook and saves it for ``load_sae`` (CONTRIBUTING.md, "SAELens").
"""

from decoding_gpt.sae.analysis import TopExample, steer_with_latent, top_activating_examples
from decoding_gpt.sae.io import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, load_sae, save_sae
from decoding_gpt.sae.metrics import (
    GroundTruthScore,
    auroc_matrix,
    ce_loss_score,
    dead_latents,
    dense_latents,
    evaluate_sae,
    explained_variance,
    f1_matrix,
    feature_acts_of,
    firing_frequency,
    ground_truth_score,
    l0,
    mean_max_cosine,
    mse,
    splice_hook,
)
from decoding_gpt.sae.model import ARCHITECTURES, SAE, Architecture, SAEConfig, auxk_loss
from decoding_gpt.sae.train import TrainResult, train_sae

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "SAE_CFG_FILENAME",
    "SAE_WEIGHTS_FILENAME",
    "Architecture",
    "GroundTruthScore",
    "SAEConfig",
    "TopExample",
    "TrainResult",
    "auroc_matrix",
    "auxk_loss",
    "ce_loss_score",
    "dead_latents",
    "dense_latents",
    "evaluate_sae",
    "explained_variance",
    "f1_matrix",
    "feature_acts_of",
    "firing_frequency",
    "ground_truth_score",
    "l0",
    "load_sae",
    "mean_max_cosine",
    "mse",
    "save_sae",
    "splice_hook",
    "steer_with_latent",
    "top_activating_examples",
    "train_sae",
]
