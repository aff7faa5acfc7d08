"""The course plan's lecture and homework names (COURSE.md), shared by the tests.

A deck, its notebook and its syllabus row share the lecture's stem.
"""

LECTURES = [
    "01_why_decode_gpt",
    "02_neurons_and_networks",
    "03_autodiff_and_backprop",
    "04_optimisation_and_architectures",
    "05_language_modelling",
    "06_attention_heads",
    "07_positional_information",
    "08_the_transformer",
    "09_evals_and_scaling_laws",
    "10_residual_stream",
    "11_induction_heads",
    "12_causal_interventions",
    "13_linear_probes",
    "14_superposition",
    "15_sparse_autoencoders",
    "16_parameter_interpretability",
    "17_rlhf_and_dpo",
    "18_alignment_and_safety",
]

HOMEWORK = [
    "hw1_markov_tokenization",
    "hw2_superposition_geometry",
    "hw3_transformer_from_scratch",
    "hw4_circuits",
    "hw5_probes_and_saes",
]
