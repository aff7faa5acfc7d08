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
* ``python -m decoding_gpt.tools.homework {make-student,grade,grade-class}``
  (``dgpt-homework``): student editions of lectures and homework, the grader, and batch
  grading of a class (:mod:`~decoding_gpt.tools.homework`);
* ``python -m decoding_gpt.tools.export_hf NAME OUT`` (``dgpt-export-hf``): a shipped model
  as an HF folder for ``AutoModelForCausalLM``/``AutoTokenizer``
  (:mod:`~decoding_gpt.tools.export_hf`).
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import PureWindowsPath


def prog(module: str) -> str:
    """The program name for ``module``'s usage line: the name it was invoked by.

    Run as a console script (``dgpt-train --help``), ``sys.argv[0]`` is the script, and the
    usage line shows ``dgpt-train``; run as ``python -m decoding_gpt.tools.train`` (or by
    ``torchrun -m``, or called from Python) it shows ``python -m decoding_gpt.tools.train``.
    A script counts only if it is one of this package's console scripts for ``module``.
    """
    # PureWindowsPath splits on "/" and "\\" alike.
    invoked = PureWindowsPath(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    for suffix in (".exe", "-script.py"):  # the launchers pip writes on Windows
        invoked = invoked.removesuffix(suffix)
    scripts = entry_points(group="console_scripts", name=invoked) if invoked else ()
    if any(script.value.split(":")[0].strip() == module for script in scripts):
        return invoked
    return f"python -m {module}"
