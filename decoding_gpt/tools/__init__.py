"""Maintainer command lines. Nothing else in the package imports these modules.

* ``python -m decoding_gpt.tools.train CONFIG.toml`` (``dgpt-train``): train a GPT from a
  TOML config (:mod:`~decoding_gpt.tools.train`);
* ``python -m decoding_gpt.tools.build_model NAME`` (``dgpt-build-model``): train, measure
  and register a shipped model, with its card (:mod:`~decoding_gpt.tools.build_model`;
  ``modadd-1l``'s own loop in :mod:`~decoding_gpt.tools.build_modadd`, code-4l's probe in
  :mod:`~decoding_gpt.tools.string_probe`);
* ``python -m decoding_gpt.tools.build_data`` (``dgpt-build-data``): rebuild the shipped
  tokenizers (:mod:`~decoding_gpt.tools.build_data`);
* ``python -m decoding_gpt.tools.scaling_sweep --out FILE`` (``dgpt-scaling-sweep``): train
  the scaling family and fit ``L(N)`` (:mod:`~decoding_gpt.tools.scaling_sweep`);
* ``python -m decoding_gpt.tools.homework {make-student,grade}`` (``dgpt-homework``):
  student notebooks from solutions, and the grader (:mod:`~decoding_gpt.tools.homework`).
"""
