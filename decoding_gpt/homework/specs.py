"""Grading specs: a graded part judged outside the sandbox, from data only.

For a part with a :class:`PartSpec`, the grader (its own process, never the submission's)

1. builds the inputs (``spec.cases()``) and writes them into the sandbox's working
   directory as ``inputs/<grade_id>.json`` plus ``inputs/<grade_id>.safetensors``;
2. the sandboxed kernel, right after the student's answer cell, calls the student's
   function on each case (:data:`HARNESS_SOURCE`) and writes only the results, in the same
   format, to ``outputs/<grade_id>.{json,safetensors}``;
3. after the sandbox is dead, the grader reads the outputs (regular files only, size
   capped, no symlinks, no pickle: JSON values, safetensors tensors) and ``spec.judge``
   compares them with its own reference computation.

A part scores its points only if the spec accepts the outputs AND the part's notebook cell
(the instructor's visible and hidden tests) ran without an exception: the spec is what a
submission cannot forge, the cell keeps every test the instructor wrote. Tampering with the
kernel (input transformers, patched checks or ``torch.allclose``, a forged harness) can
only make the student's own outputs wrong or missing.

Encoding: a JSON tree in which a tensor (or numpy array) is ``{"$tensor": key}`` (the key
in the safetensors file, written with ``safetensors.numpy`` so that a part without tensors
never imports torch in the kernel) and, in inputs only, a fresh seeded ``torch.Generator`` is
``{"$generator": seed}``; tuples travel as lists. A case whose call raised comes back as
``{"error": "Name: message"}``.

A class is judged the same way (:class:`ModuleCase`): the kernel builds it, loads the
grader's weights by ``state_dict`` name and returns ``forward``'s output; a shipped model,
tokenizer or story set travels by name (:class:`Shipped`), a logit-difference metric as its
answer tokens (:class:`LogitDiffMetric`), and a training function gets the grader's model
and data and sends back the trained weights with its losses (:class:`TrainCase`), so the
grader measures the trained model itself. Parts not expressed as data stay notebook-only
(``in-kernel`` in the report): the experiment cells of homeworks 1, 2 and 5 that only run
spec'd functions and plot; :data:`REQUIRES` makes each of them count only if the spec'd
parts it builds on passed.

What a spec proves is that the outputs are right, not who computed them: the sandbox can
import the course's own reference implementations (the notebooks need the package), so an
answer that calls them passes unless ``forbidden`` names catch it in the source.
"""

from __future__ import annotations

import ast
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save_file

from decoding_gpt import pretrained
from decoding_gpt.attention import AttentionHead, MultiHeadAttention, attention_pattern
from decoding_gpt.checks.hw4 import reference_head_patching
from decoding_gpt.checks.hw5 import reference_collect_residuals
from decoding_gpt.data import eos_id, get_tokenizer, load_token_array
from decoding_gpt.data.stories import LABEL_NAMES, generate_stories, ioi_prompts
from decoding_gpt.evals import single_token_id
from decoding_gpt.heads import induction_score, previous_token_score
from decoding_gpt.ngram import bigram_counts, row_normalize, stationary_distribution, to_dense
from decoding_gpt.patching import logit_diff_metric
from decoding_gpt.superposition import max_overlap as reference_max_overlap
from decoding_gpt.superposition import welch_bound as reference_welch_bound
from decoding_gpt.tokenizer import BytePairEncoding, merge_pair, pretokenize
from decoding_gpt.training import sample_batch
from decoding_gpt.transformer import (
    GPT,
    MLP,
    GPTConfig,
    LayerNorm,
    TransformerBlock,
    next_token_loss,
)

INPUTS_DIR = "inputs"
OUTPUTS_DIR = "outputs"
JSON_CAP = 16 * 1024**2
TENSORS_CAP = 256 * 1024**2


@dataclass(frozen=True)
class Raised:
    """A case whose call raised in the sandbox."""

    message: str


@dataclass(frozen=True)
class PartSpec:
    """How to judge one graded part from data.

    ``answer_id``: the answer cell (its grade_id) that defines ``function``; ``cases``:
    the argument tuples, built by the grader; ``judge(cases, outputs)``: None if the
    outputs are right, else the message the student sees; ``forbidden``: names (a
    module, a class, an attribute) the answer's source must not mention, read from the
    source text outside the sandbox.
    """

    answer_id: str
    function: str
    cases: Callable[[], list[tuple]]
    judge: Callable[[list[tuple], list[Any]], str | None]
    forbidden: tuple[str, ...] = ()  # names the answer's source may not use (checked by ast)

    @property
    def banned(self) -> tuple[str, ...]:
        """``forbidden`` plus, where there is something to forbid, the ways of reaching an
        object without naming it (``nn.Module.__subclasses__()`` finds the course's own
        ``MultiHeadAttention``; ``getattr`` and ``__import__`` build a name at run time)."""
        return (*self.forbidden, *INTROSPECTION) if self.forbidden else ()


# No answer needs these, and each reaches a class, a module or a global without its name.
INTROSPECTION = (
    "__subclasses__", "__import__", "__dict__", "__globals__", "__builtins__", "builtins",
    "importlib", "sys", "gc", "inspect", "getattr", "attrgetter", "globals", "vars", "eval",
    "exec",
    # the notebooks' check modules import the references they compare with
    "checks", "hw1", "hw2", "hw3", "hw4", "hw5",
)  # fmt: skip


# The kernel side: defined in the sandboxed kernel before any answer runs. It only moves
# data; a submission that rewrites it can only spoil its own outputs.
HARNESS_SOURCE = """\
def _dgpt_call(grade_id, name):
    import json as _json
    import os as _os
    import sys as _sys
    import numpy as _np
    from safetensors.numpy import load_file as _load, save_file as _save
    _inputs = _json.load(open(f"inputs/{grade_id}.json"))
    _arrays = _load(f"inputs/{grade_id}.safetensors")
    _out = {}

    def _decode(v):
        if isinstance(v, dict) and "$tensor" in v:
            import torch as _torch
            return _torch.from_numpy(_arrays[v["$tensor"]].copy())
        if isinstance(v, dict) and "$generator" in v:
            import torch as _torch
            return _torch.Generator().manual_seed(int(v["$generator"]))
        if isinstance(v, dict) and "$config" in v:
            from decoding_gpt.transformer import GPTConfig as _Config
            return _Config(**v["$config"])
        if isinstance(v, dict) and "$pretrained" in v:
            from decoding_gpt import pretrained as _pretrained
            return _pretrained.load_native(v["$pretrained"], device="cpu")
        if isinstance(v, dict) and "$tokenizer" in v:
            from decoding_gpt.data import get_tokenizer as _get_tokenizer
            return _get_tokenizer(v["$tokenizer"])
        if isinstance(v, dict) and "$stories" in v:
            from decoding_gpt.data.stories import generate_stories as _stories
            _n, _seed, _split = v["$stories"]
            return _stories(_n, seed=_seed, split=_split)
        if isinstance(v, dict) and "$logit_diff_metric" in v:
            from decoding_gpt.patching import logit_diff_metric as _metric
            return _metric(_decode(v["$logit_diff_metric"]))
        if isinstance(v, dict) and "$model" in v:
            from decoding_gpt.transformer import GPT as _GPT
            _model = _GPT(_decode(v["$model"]["config"]))
            _model.load_state_dict(_decode(v["$model"]["state"]))
            return _model.eval()
        if isinstance(v, dict):
            return {k: _decode(x) for k, x in v.items()}
        if isinstance(v, list):
            return [_decode(x) for x in v]
        return v

    def _run(case):
        if len(case) == 1 and isinstance(case[0], dict) and "$train" in case[0]:
            _args = _decode(case[0]["$train"])  # the first argument is the model to train
            _value = _fn(*_args)
            return {"value": _value, "state": dict(_args[0].state_dict())}
        if len(case) == 1 and isinstance(case[0], dict) and "$module" in case[0]:
            import torch as _torch
            _spec = case[0]["$module"]
            _module = _fn(*_decode(_spec["args"]))
            _module.load_state_dict(_decode(_spec["state"]), strict=True)
            with _torch.no_grad():
                return _module.eval()(*_decode(_spec["inputs"]))
        return _fn(*[_decode(a) for a in case])

    def _encode(v):
        _torch = _sys.modules.get("torch")
        if _torch is not None and isinstance(v, _torch.Tensor):
            v = v.detach().cpu().numpy()
        if isinstance(v, _np.generic):
            return v.item()
        if isinstance(v, _np.ndarray):
            key = f"t{len(_out)}"
            _out[key] = _np.array(v, order="C")  # keeps 0-d arrays 0-d
            return {"$tensor": key}
        if isinstance(v, (list, tuple)):
            return [_encode(x) for x in v]
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            return {k: _encode(x) for k, x in v.items()}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(f"cannot return a {type(v).__name__}")

    _fn = globals().get(name)
    _results = []
    for _args in _inputs["cases"]:
        try:
            if _fn is None:
                raise NameError(f"{name} is not defined")
            _results.append({"value": _encode(_run(_args))})
        except Exception as _err:
            _results.append({"error": f"{type(_err).__name__}: {_err}"[:300]})
    _os.makedirs("outputs", exist_ok=True)
    _save(_out, f"outputs/{grade_id}.safetensors")
    with open(f"outputs/{grade_id}.json", "w") as _f:
        _json.dump({"results": _results}, _f)
"""


def call_source(grade_id: str, spec: PartSpec) -> str:
    """The cell the grader inserts after the answer: run the student's function on the inputs.

    Self-contained (the harness and the call), so it works on a kernel restarted after a
    cell that had to be killed.
    """
    return f"{HARNESS_SOURCE}\n_dgpt_call({grade_id!r}, {spec.function!r})\n"


@dataclass(frozen=True)
class Seed:
    """An input argument that arrives in the sandbox as ``torch.Generator().manual_seed(seed)``."""

    seed: int


@dataclass(frozen=True)
class Config:
    """An argument that arrives in the sandbox as ``GPTConfig(**kwargs)``."""

    kwargs: dict[str, Any]


@dataclass(frozen=True)
class Model:
    """An argument that arrives as the course's ``GPT(config)`` with these weights (eval mode)."""

    config: Config
    state: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Shipped:
    """An argument built in the sandbox from a name: a shipped model (``kind="pretrained"``,
    ``load_native``), a tokenizer (``"tokenizer"``, ``get_tokenizer``) or generated stories
    (``"stories"``, ``generate_stories(*args)``)."""

    kind: str
    args: tuple

    def build(self) -> Any:
        """The same object, built here (the grader's side)."""
        if self.kind == "pretrained":
            return pretrained.load_native(self.args[0], device="cpu")
        if self.kind == "tokenizer":
            return get_tokenizer(self.args[0])
        n, seed, split = self.args
        return generate_stories(n, seed=seed, split=split)


@dataclass(frozen=True)
class LogitDiffMetric:
    """An argument that arrives as ``patching.logit_diff_metric(answers)``: a callable built in
    the sandbox from data (a kernel that changes it only spoils its own outputs)."""

    answers: torch.Tensor

    def build(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The same metric, built here (the grader's side)."""
        return logit_diff_metric(self.answers)


@dataclass(frozen=True)
class TrainCase:
    """A case for a training function: ``fn(model, *rest)`` trains ``model`` (a :class:`Model`)
    in place; what comes back is ``{"value": fn's result, "state": model's trained weights}``,
    so the grader evaluates the trained model itself. The case is ``(TrainCase(...),)``."""

    args: tuple


@dataclass(frozen=True)
class ModuleCase:
    """A case for a class: ``cls(*args)``, ``load_state_dict(state)``, ``forward(*inputs)``.

    The case is the tuple ``(ModuleCase(...),)``; the forward pass runs under ``no_grad``
    in eval mode, and its output is what comes back.
    """

    args: tuple
    state: dict[str, torch.Tensor]
    inputs: tuple


def _encode(value: Any, tensors: dict[str, np.ndarray]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().numpy()
        return {"$tensor": key}
    if isinstance(value, Seed):
        return {"$generator": value.seed}
    if isinstance(value, Config):
        return {"$config": value.kwargs}
    if isinstance(value, Shipped):
        return {f"${value.kind}": value.args[0] if len(value.args) == 1 else list(value.args)}
    if isinstance(value, Model):
        return {
            "$model": {
                "config": _encode(value.config, tensors),
                "state": _encode(value.state, tensors),
            }
        }
    if isinstance(value, LogitDiffMetric):
        return {"$logit_diff_metric": _encode(value.answers, tensors)}
    if isinstance(value, TrainCase):
        return {"$train": _encode(value.args, tensors)}
    if isinstance(value, ModuleCase):
        fields = {"args": value.args, "state": value.state, "inputs": value.inputs}
        return {"$module": {key: _encode(item, tensors) for key, item in fields.items()}}
    if isinstance(value, dict):
        return {key: _encode(item, tensors) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(item, tensors) for item in value]
    return value


def write_inputs(specs: dict[str, PartSpec], workdir: Path) -> dict[str, list[tuple]]:
    """Write each spec's cases into ``workdir/inputs`` (the grader side of step 1).

    Returns the cases, for :func:`judge_part`: the judge compares against the very inputs
    the sandbox received (built once per grade, not rebuilt at judging time).
    """
    folder = workdir / INPUTS_DIR
    folder.mkdir(exist_ok=True)
    built = {}
    for grade_id, spec in specs.items():
        built[grade_id] = spec.cases()
        tensors: dict[str, np.ndarray] = {}
        cases = [_encode(list(case), tensors) for case in built[grade_id]]
        (folder / f"{grade_id}.json").write_text(json.dumps({"cases": cases}))
        save_file(tensors, str(folder / f"{grade_id}.safetensors"))
    return built


def read_untrusted(path: Path, cap: int) -> bytes:
    """The bytes of a regular file the sandbox wrote: no symlink, no FIFO, at most ``cap``."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path.name} is not a regular file")
        if info.st_size > cap:
            raise ValueError(f"{path.name} is larger than {cap} bytes")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(cap + 1)[:cap]
    finally:
        os.close(fd)


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict) and set(value) == {"$tensor"}:
        return tensors[value["$tensor"]]
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if isinstance(value, dict):
        return {key: _decode(item, tensors) for key, item in value.items()}
    return value


def read_outputs(grade_id: str, folder: Path, n_cases: int) -> list[Any]:
    """The student's outputs for ``grade_id``: values, or :class:`Raised` for failed cases."""
    if folder.is_symlink() or not folder.is_dir():
        raise ValueError("no outputs folder")
    data = json.loads(read_untrusted(folder / f"{grade_id}.json", JSON_CAP))
    arrays = load_arrays(read_untrusted(folder / f"{grade_id}.safetensors", TENSORS_CAP))
    tensors = {key: torch.from_numpy(array.copy()) for key, array in arrays.items()}
    results = data["results"]
    if not isinstance(results, list) or len(results) != n_cases:
        raise ValueError("wrong number of results")
    outputs: list[Any] = []
    for item in results:
        if isinstance(item, dict) and isinstance(item.get("error"), str):
            outputs.append(Raised(item["error"]))
        elif isinstance(item, dict) and "value" in item:
            outputs.append(_decode(item["value"], tensors))
        else:
            raise ValueError("malformed result")
    return outputs


def forbidden_names(source: str, names: tuple[str, ...]) -> list[str]:
    """The ``names`` that ``source`` mentions: as a name, an attribute or an imported module.

    Read from the text (``ast``), so the kernel cannot hide them by patching; a name built
    at run time (``getattr(nn, "Multi" + "headAttention")``) is not seen.
    """
    # IPython's magics and shell escapes are not Python: drop those lines (a magic line
    # would otherwise make the cell unreadable, and the check skippable).
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return list(names)  # unreadable: nothing can be vouched for (and it would not run)
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            used.add(node.id)
        elif isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module:
            used |= set(node.module.split(".")) | {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            used |= {part for alias in node.names for part in alias.name.split(".")}
    return [name for name in names if name in used]


def judge_part(
    spec: PartSpec, cases: list[tuple], folder: Path, grade_id: str, source: str = ""
) -> tuple[bool, str]:
    """Judge one part from the outputs in ``folder``: (passed, message). Never raises.

    ``cases``: what :func:`write_inputs` sent; ``source``: the student's answer cell, for
    the ``forbidden`` names.
    """
    banned = forbidden_names(source, spec.banned)
    if banned:
        return False, f"`{spec.function}` may not use {', '.join(banned)}"
    try:
        outputs = read_outputs(grade_id, folder, len(cases))
    except Exception as err:  # whatever the sandbox left there
        return False, f"no valid outputs for `{spec.function}`: {str(err)[:200]}"
    for output in outputs:
        if isinstance(output, Raised):
            return False, f"`{spec.function}` raised {output.message}"
    try:
        verdict = spec.judge(cases, outputs)
    except Exception as err:  # an output of the wrong type or shape
        return False, f"`{spec.function}` returned something unexpected: {str(err)[:200]}"
    return verdict is None, verdict or ""


# --- judges ---------------------------------------------------------------------------


def _as_float64(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor | list | int | float):
        raise TypeError(f"expected a tensor, got {type(value).__name__}")
    return torch.as_tensor(value, dtype=torch.float64)


def close_to(reference: Callable[..., Any], *, atol: float, rtol: float = 0.0) -> Callable:
    """A judge: every output equals ``reference(*case)`` within the tolerances."""

    def judge(cases: list[tuple], outputs: list[Any]) -> str | None:
        for number, (case, output) in enumerate(zip(cases, outputs, strict=True)):
            want = _as_float64(reference(*case))
            got = _as_float64(output)
            if got.shape != want.shape:
                return f"case {number}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
            if not torch.allclose(got, want, atol=atol, rtol=rtol):
                error = (got - want).abs().max().item()
                return f"case {number}: off by up to {error:.3g} (tolerance {atol:g})"
        return None

    return judge


# --- homework 1: Markov chains and BPE -------------------------------------------------


def _random_ids(seed: int, n: int, vocab: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=generator).tolist()


def _hw1_transition_cases() -> list[tuple]:
    return [
        (_random_ids(5, 200, 9), 12),  # tokens 9-11 never occur: zero rows
        (_random_ids(6, 50, 4), 4),
        ([3], 5),  # one token has no successor: M = 0
        ([0, 1, 0, 1, 1], 2),
    ]


def _hw1_stationary_cases() -> list[tuple]:
    weather = [[0.8, 0.15, 0.05], [0.3, 0.4, 0.3], [0.2, 0.4, 0.4]]
    periodic = [[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.0, 1.0, 0.0]]  # eigenvalue -1 too
    random = torch.rand(6, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    return [(torch.tensor(m, dtype=torch.float64),) for m in (weather, periodic)] + [
        (random / random.sum(dim=1, keepdim=True),)
    ]


def _hw1_bpe_cases() -> list[tuple]:
    text = (
        "Dès Noël où un zéphyr haï me vêt de glaçons würmiens, je dîne d'exquis rôtis. " * 3
        + "1234 1234 12!"
    )
    return [(text, 25), ("the cat and the hat and the bat", 12), ("a b", 5)]


def _greedy_bpe_problem(text: str, n_merges: int, merges: Any) -> str | None:
    """None if ``merges`` is a valid greedy BPE of ``text`` (ties either way), else why not."""
    pairs = [(int(a), int(b)) for a, b in merges]
    if len(pairs) > n_merges:
        return f"{len(pairs)} merges, at most {n_merges} asked"
    words = [list(word.encode("utf-8")) for word in pretokenize(text)]
    for k, pair in enumerate(pairs):
        counts: dict[tuple[int, int], int] = {}
        for word in words:
            for left, right in zip(word, word[1:], strict=False):
                counts[left, right] = counts.get((left, right), 0) + 1
        if not counts or counts.get(pair, 0) != max(counts.values()):
            return f"merge {k} {pair} is not a most frequent pair"
        words = [merge_pair(word, pair, 256 + k) for word in words]
    possible = any(len(word) > 1 for word in words)
    if len(pairs) < n_merges and possible:
        return f"stopped after {len(pairs)} merges with pairs left"
    tokenizer = BytePairEncoding(pairs)
    if tokenizer.decode(tokenizer.encode(text)) != text:
        return "decode(encode(text)) != text"
    return None


def _judge_bpe(cases: list[tuple], outputs: list[Any]) -> str | None:
    for number, ((text, n_merges), merges) in enumerate(zip(cases, outputs, strict=True)):
        problem = _greedy_bpe_problem(text, n_merges, merges)
        if problem is not None:
            return f"case {number}: {problem}"
    return None


def _transition_reference(ids: list[int], vocab: int) -> torch.Tensor:
    """``M[a, b] = count(a b) / count(a .)``; a row without successors is 0."""
    if len(ids) < 2:  # no bigram at all: every row is empty
        return torch.zeros(vocab, vocab, dtype=torch.float64)
    return to_dense(row_normalize(bigram_counts(ids, vocab)))


HW1 = {
    "transition_matrix_tests": PartSpec(
        "transition_matrix",
        "transition_matrix",
        _hw1_transition_cases,
        close_to(_transition_reference, atol=1e-8),
    ),
    "stationary_tests": PartSpec(
        "stationary",
        "stationary",
        _hw1_stationary_cases,
        close_to(stationary_distribution, atol=1e-8),
    ),
    "train_bpe_tests": PartSpec("train_bpe", "train_bpe", _hw1_bpe_cases, _judge_bpe),
}


# --- homework 2: geometry of superposition --------------------------------------------


def _unit_rows_problem(vectors: Any, n: int, d: int) -> str | None:
    """None if ``vectors`` is an ``(n, d)`` array of finite unit rows, else what is wrong."""
    v = _as_float64(vectors)
    if tuple(v.shape) != (n, d):
        return f"shape {tuple(v.shape)}, expected {(n, d)}"
    if not torch.isfinite(v).all():
        return "NaN or inf entries"
    if not torch.allclose(v.norm(dim=1), torch.ones(n, dtype=torch.float64), atol=1e-5):
        return "rows are not unit vectors"
    return None


def _judge_random_unit(cases: list[tuple], outputs: list[Any]) -> str | None:
    """Unit rows; uniform on the sphere in R^3: z uniform on [-1, 1] (Archimedes)."""
    for number, ((n, d, _), output) in enumerate(zip(cases, outputs, strict=True)):
        problem = _unit_rows_problem(output, n, d)
        if problem is not None:
            return f"case {number}: {problem}"
    z = _as_float64(outputs[0])[:, 2]
    tail = (z > 0.5).double().mean().item()
    if abs(z.mean().item()) > 0.05 or abs(z.var().item() - 1 / 3) > 0.03 or abs(tail - 0.25) > 0.03:
        return "not uniform on the sphere: in R^3 each coordinate is uniform on [-1, 1]"
    return None


def _judge_orthonormal(cases: list[tuple], outputs: list[Any]) -> str | None:
    for number, ((n, d, _), output) in enumerate(zip(cases, outputs, strict=True)):
        q = _as_float64(output)
        if tuple(q.shape) != (n, d):
            return f"case {number}: shape {tuple(q.shape)}, expected {(n, d)}"
        if not torch.allclose(q @ q.T, torch.eye(n, dtype=torch.float64), atol=1e-5):
            return f"case {number}: the rows are not orthonormal"
    return None


def _judge_spread(cases: list[tuple], outputs: list[Any]) -> str | None:
    """Unit rows whose coherence is within 30% of the Welch bound (10% for the simplex)."""
    for number, ((n, d, _), output) in enumerate(zip(cases, outputs, strict=True)):
        problem = _unit_rows_problem(output, n, d)
        if problem is not None:
            return f"case {number}: {problem}"
        factor = 1.1 if (n, d) == (5, 4) else 1.3  # (5, 4): the regular simplex is reachable
        mu = reference_max_overlap(_as_float64(output))
        if mu > factor * reference_welch_bound(n, d) + 1e-6:
            return f"case {number}: coherence {mu:.3f}, above {factor} x Welch"
    return None


def _hw2_overlap_cases() -> list[tuple]:
    generator = torch.Generator().manual_seed(11)
    return [
        (torch.randn(200, 30, generator=generator),),
        (torch.tensor([[1.0, 0.0], [1.0, 1.0]]),),
        (3 * torch.randn(7, 4, generator=generator),),  # not unit length: normalise first
    ]


HW2 = {
    "random_unit_vectors_tests": PartSpec(
        "random_unit_vectors", "random_unit_vectors",
        lambda: [(3000, 3, Seed(7)), (5, 8, Seed(1)), (200, 64, Seed(2))], _judge_random_unit,
    ),
    "orthonormal_set_tests": PartSpec(
        "orthonormal_set", "orthonormal_set",
        lambda: [(64, 64, Seed(3)), (5, 12, Seed(4)), (1, 3, Seed(5))], _judge_orthonormal,
    ),
    "welch_bound_tests": PartSpec(
        "welch_bound", "welch_bound",
        lambda: [(2, 1), (3, 2), (17, 16), (10_000, 768), (50, 49), (1, 1), (5, 4), (4, 8)],
        close_to(reference_welch_bound, atol=1e-12, rtol=1e-9),
    ),
    "max_overlap_tests": PartSpec(
        "max_overlap", "max_overlap", _hw2_overlap_cases,
        close_to(reference_max_overlap, atol=1e-6),
    ),
    "spread_vectors_tests": PartSpec(
        "spread_vectors", "spread_vectors",
        lambda: [(48, 16, Seed(0)), (5, 4, Seed(1)), (20, 16, Seed(2))], _judge_spread,
    ),
}  # fmt: skip


# --- homework 3: a transformer from scratch -------------------------------------------


def module_close(reference: Callable[..., torch.nn.Module], *, atol: float) -> Callable:
    """A judge for classes: each output equals the reference class's, same weights and input."""

    def forward(module_case: ModuleCase) -> torch.Tensor:
        args = [GPTConfig(**a.kwargs) if isinstance(a, Config) else a for a in module_case.args]
        module = reference(*args)
        module.load_state_dict(module_case.state)
        with torch.no_grad():
            return module.eval()(*module_case.inputs)

    return close_to(forward, atol=atol)


def _random_state(
    module: torch.nn.Module, seed: int, scale: float = 0.5
) -> dict[str, torch.Tensor]:
    """Random weights for every entry of ``module``'s state dict (gains near 1)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in module.state_dict().items():
        noise = torch.randn(value.shape, generator=generator, dtype=value.dtype) * scale
        state[name] = noise + 1 if name.endswith(".w") or name == "w" else noise
    return state


def _initial_state(module: torch.nn.Module, seed: int, std: float) -> dict[str, torch.Tensor]:
    """``GPT``'s initialisation drawn from a seeded generator: weight matrices ~ N(0, std^2),
    LayerNorm gains 1, biases 0.

    Case builders never touch torch's global RNG: ``grade-class`` grades in threads, and a
    draw in one thread would change another thread's "seeded" weights.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in module.state_dict().items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("W_"):
            state[name] = torch.randn(value.shape, generator=generator, dtype=value.dtype) * std
        else:
            state[name] = torch.ones_like(value) if leaf == "w" else torch.zeros_like(value)
    return state


def _x(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _hw3_pattern_cases() -> list[tuple]:
    shapes = [(1, 1, 3), (5, 7), (2, 4, 9, 16), (3, 6, 8)]
    return [(_x(1 + 2 * i, *shape), _x(2 + 2 * i, *shape)) for i, shape in enumerate(shapes)]


def _case(module: torch.nn.Module, args: tuple, seed: int, *inputs: torch.Tensor) -> tuple:
    return (ModuleCase(args, _random_state(module, seed), inputs),)


CFG: dict[str, Any] = {
    "d_vocab": 29,
    "n_ctx": 10,
    "d_model": 24,
    "n_layers": 2,
    "n_heads": 3,
    "d_mlp": 36,
}
CFG_OTHER: dict[str, Any] = {  # the hidden test's: d_head set, the tanh GELU
    "d_vocab": 17, "n_ctx": 9, "d_model": 20, "n_layers": 3, "n_heads": 5, "d_head": 3,
    "d_mlp": 11, "act_fn": "gelu_new",
}  # fmt: skip


def _config_cases(reference: Callable[[GPTConfig], torch.nn.Module], tokens: bool) -> list[tuple]:
    cases = []
    for seed, kwargs in enumerate((CFG, CFG_OTHER)):
        cfg = GPTConfig(**kwargs)
        if tokens:
            x = torch.randint(
                0, cfg.d_vocab, (2, cfg.n_ctx), generator=torch.Generator().manual_seed(seed)
            )
        else:
            x = _x(seed, 2, cfg.n_ctx - 1, cfg.d_model)
        cases.append(_case(reference(cfg), (Config(kwargs),), seed, x))
    return cases


def _hw3_head_cases() -> list[tuple]:
    return [_case(AttentionHead(24, 8), (24, 8), 0, _x(1, 2, 6, 24)),
            _case(AttentionHead(16, 5), (16, 5), 1, _x(2, 1, 1, 16))]  # fmt: skip


def _hw3_mha_cases() -> list[tuple]:
    return [_case(MultiHeadAttention(24, 3, 8), (24, 3, 8), 0, _x(1, 2, 6, 24)),
            _case(MultiHeadAttention(8, 2, 4), (8, 2, 4), 1, _x(2, 2, 1, 8))]  # fmt: skip


def _hw3_layernorm_cases() -> list[tuple]:
    return [_case(LayerNorm(24), (24,), 0, 3 * _x(1, 2, 5, 24) + 1),
            _case(LayerNorm(16, 1e-3), (16, 1e-3), 1, 0.01 * _x(2, 3, 16))]  # fmt: skip


def _hw3_loss_cases() -> list[tuple]:
    tokens = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(4))
    return [(_x(3, 3, 7, 11), tokens), (_x(5, 1, 2, 5), torch.tensor([[4, 1]]))]


def _hw3_generate_cases() -> list[tuple]:
    cfg = GPTConfig(**CFG)
    model = Model(Config(CFG), _random_state(GPT(cfg), 7, scale=0.3))
    prompt = torch.randint(0, cfg.d_vocab, (4,), generator=torch.Generator().manual_seed(8))
    long_prompt = torch.zeros(cfg.n_ctx + 3, dtype=torch.long)  # longer than the context
    return [(model, prompt, 6, 0.0), (model, long_prompt, 3, 0.0), (model, prompt, 0, 0.0)]


def _greedy(model_arg: Model, prompt: torch.Tensor, n_new: int, temperature: float) -> torch.Tensor:
    """The greedy continuation (argmax at the last position, context cropped to n_ctx)."""
    model = GPT(GPTConfig(**model_arg.config.kwargs))
    model.load_state_dict(model_arg.state)
    seq = prompt.clone()
    with torch.no_grad():
        for _ in range(n_new):
            logits = model.eval()(seq[-model.cfg.n_ctx :][None])[0, -1]
            seq = torch.cat([seq, logits.argmax()[None]])
    return seq


TRAIN_CFG: dict[str, Any] = {"n_ctx": 32, "d_model": 32, "n_layers": 2, "n_heads": 4}
TRAIN_STEPS, TRAIN_BATCH, TRAIN_LR = 40, 8, 3e-3


def _stories_tokens(split: Literal["train", "val"], n_tokens: int) -> torch.Tensor:
    return torch.from_numpy(load_token_array("stories", split, n_tokens=n_tokens).astype("int64"))


def _hw3_train_cases() -> list[tuple]:
    """Train a fresh seeded GPT on stories tokens (the grader's weights, data and settings)."""
    cfg = GPTConfig(d_vocab=get_tokenizer("stories").get_vocab_size(), **TRAIN_CFG)
    model = Model(Config(cfg.to_dict()), _initial_state(GPT(cfg), seed=0, std=cfg.init_range))
    args = (model, _stories_tokens("train", 50_000), TRAIN_STEPS, TRAIN_BATCH, TRAIN_LR, 3)
    return [(TrainCase(args),)]


def _build_model(model_arg: Model) -> GPT:
    model = GPT(GPTConfig(**model_arg.config.kwargs))
    model.load_state_dict(model_arg.state)
    return model


def _reference_train(model: GPT, data: torch.Tensor, steps: int, batch: int, lr: float,
                     seed: int) -> list[float]:  # fmt: skip
    """The homework's recipe: AdamW without weight decay at a constant rate, one
    ``sample_batch`` of random windows per step from a generator seeded with ``seed``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        tokens = sample_batch(data, batch, model.cfg.n_ctx, generator)
        loss = next_token_loss(model.train()(tokens), tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def _val_loss(model: GPT) -> float:
    tokens = _stories_tokens("val", 20_000)
    batch = sample_batch(tokens, 32, model.cfg.n_ctx, torch.Generator().manual_seed(1))
    return next_token_loss(model.eval()(batch), batch).item()


def _judge_training(cases: list[tuple], outputs: list[Any]) -> str | None:
    """The student's losses follow the reference run's, and the weights they return are a
    trained model: the grader measures its validation loss itself."""
    for number, ((case,), output) in enumerate(zip(cases, outputs, strict=True)):
        model_arg, data, steps, batch, lr, seed = case.args
        reference = _build_model(model_arg)
        want = _reference_train(reference, data, steps, batch, lr, seed)
        got = output["value"]
        if not isinstance(got, list) or len(got) != steps:
            return f"case {number}: expected a list of {steps} losses"
        if not all(isinstance(x, float) for x in got):
            return f"case {number}: the losses must be Python floats (use loss.item())"
        if abs(got[0] - want[0]) > 1e-3:
            return f"case {number}: first loss {got[0]:.4f}, expected {want[0]:.4f} (same batch)"
        worst = max(abs(a - b) for a, b in zip(got, want, strict=True))
        if worst > 0.05:
            return f"case {number}: the losses leave the reference run's by up to {worst:.3f}"
        trained = _build_model(Model(model_arg.config, output["state"]))
        val, reference_val = _val_loss(trained), _val_loss(reference)
        if val > reference_val + 0.05:
            return f"case {number}: the returned model's validation loss is {val:.3f}, " \
                   f"the reference run reaches {reference_val:.3f}"  # fmt: skip
    return None


ATTENTION_BANNED = ("MultiheadAttention", "scaled_dot_product_attention", "decoding_gpt")
MODEL_BANNED = (*ATTENTION_BANNED, "TransformerEncoderLayer", "TransformerDecoderLayer")

HW3 = {
    "attention_pattern_tests": PartSpec(
        "attention_pattern", "attention_pattern", _hw3_pattern_cases,
        close_to(attention_pattern, atol=1e-5), ("decoding_gpt",),
    ),
    "attention_head_tests": PartSpec(
        "attention_head", "AttentionHead", _hw3_head_cases,
        module_close(AttentionHead, atol=1e-4), ATTENTION_BANNED,
    ),
    "multihead_attention_tests": PartSpec(
        "multihead_attention", "MultiHeadAttention", _hw3_mha_cases,
        module_close(MultiHeadAttention, atol=1e-4), ATTENTION_BANNED,
    ),
    "layernorm_tests": PartSpec(
        "layernorm", "LayerNorm", _hw3_layernorm_cases, module_close(LayerNorm, atol=1e-4),
        ("decoding_gpt",),
    ),
    "mlp_tests": PartSpec(
        "mlp", "MLP", lambda: _config_cases(MLP, tokens=False), module_close(MLP, atol=1e-4),
        ("decoding_gpt",),
    ),
    "transformer_block_tests": PartSpec(
        "transformer_block", "TransformerBlock",
        lambda: _config_cases(TransformerBlock, tokens=False),
        module_close(TransformerBlock, atol=1e-4), MODEL_BANNED,
    ),
    "gpt_tests": PartSpec(
        "gpt", "GPT", lambda: _config_cases(GPT, tokens=True), module_close(GPT, atol=1e-4),
        MODEL_BANNED,
    ),
    "loss_tests": PartSpec(
        "next_token_loss", "next_token_loss", _hw3_loss_cases,
        close_to(next_token_loss, atol=1e-5), ("decoding_gpt",),
    ),
    "generate_tests": PartSpec(
        "generate", "generate", _hw3_generate_cases, close_to(_greedy, atol=0), ("decoding_gpt",),
    ),
    "training_run": PartSpec(
        "train", "train", _hw3_train_cases, _judge_training, ("decoding_gpt",),
    ),
}  # fmt: skip

# --- homework 4: circuits (the parts that are functions of tensors) --------------------


def _repeated_tokens(batch: int, seq_len: int, d_vocab: int, bos: int, seed: Seed) -> torch.Tensor:
    """``[bos, r, r]`` per row, ``r`` one ``randint`` draw from the seeded generator."""
    generator = torch.Generator().manual_seed(seed.seed)
    r = torch.randint(0, d_vocab, (batch, seq_len), generator=generator)
    return torch.cat([torch.full((batch, 1), bos), r, r], dim=1)


def _pattern(seed: int, batch: int, heads: int, n: int) -> torch.Tensor:
    """A random causal attention pattern ``[batch, head, q, k]`` (rows sum to 1)."""
    scores = torch.randn(batch, heads, n, n, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(n, n, dtype=torch.bool).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1)


def _induction_reference(pattern: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Mean attention from ``q = T+1..2T`` to ``q - T + 1`` on ``[BOS, r, r]`` (distinct r)."""
    r = torch.arange(1, seq_len + 1)
    tokens = torch.cat([torch.zeros(1, dtype=torch.long), r, r])[None]
    return induction_score(pattern, tokens.expand(pattern.shape[0], -1))


def _half_loss_reference(logits: torch.Tensor, tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Mean cross-entropy of tokens ``T+2..2T`` (logits at ``p`` predict token ``p + 1``)."""
    per = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none"
    )
    return per[:, seq_len + 1 :].mean()


def _logit_difference_reference(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """``mean_b logits[b, -1, IO_b] - logits[b, -1, S_b]``."""
    rows = torch.arange(logits.shape[0])
    last = logits[:, -1]
    return (last[rows, answers[:, 0]] - last[rows, answers[:, 1]]).mean()


def _pairs(value: Any) -> list[tuple[int, int]]:
    return [(int(layer), int(head)) for layer, head in value]


def _judge_top_heads(cases: list[tuple], outputs: list[Any]) -> str | None:
    for number, ((effects, k), output) in enumerate(zip(cases, outputs, strict=True)):
        want = [divmod(int(i), effects.shape[1]) for i in effects.flatten().topk(k).indices]
        if _pairs(output) != want:
            return f"case {number}: {_pairs(output)}, expected {want} (largest first)"
    return None


def _judge_name_heads(cases: list[tuple], outputs: list[Any]) -> str | None:
    for number, ((induction, previous), output) in enumerate(zip(cases, outputs, strict=True)):
        induction_heads, previous_heads, top = output
        want_induction = {tuple(h) for h in (induction > 0.5).nonzero().tolist()}
        want_previous = {tuple(h) for h in (previous > 0.9).nonzero().tolist()}
        want_top = divmod(int(induction.argmax()), induction.shape[1])
        if set(_pairs(induction_heads)) != want_induction:
            return f"case {number}: induction heads {induction_heads}, expected score > 0.5"
        if set(_pairs(previous_heads)) != want_previous:
            return f"case {number}: previous-token heads {previous_heads}, expected score > 0.9"
        if tuple(int(x) for x in top) != want_top:
            return f"case {number}: top head {top}, expected {want_top}"
    return None


def _hw4_answers(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(30, generator=generator)[:2] for _ in range(5)])


def _hw4_half_loss_cases() -> list[tuple]:
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 20, (3, 13), generator=generator)
    return [(3 * torch.randn(3, 13, 20, generator=generator), tokens, 6)]


def _hw4_score_cases() -> list[tuple]:
    generator = torch.Generator().manual_seed(6)
    shapes = [(4, 4), (2, 3)]
    return [tuple(torch.rand(*shape, generator=generator) for _ in range(2)) for shape in shapes]


def _hw4_patching_cases() -> list[tuple]:
    """A random 2-layer GPT on random tokens, and ``stories-4l`` on IOI prompts (clean: the
    prompt; corrupt: the second mention of S replaced by IO, as in the homework)."""
    cfg = GPTConfig(d_vocab=24, n_ctx=16, d_model=32, n_layers=2, n_heads=4, init_range=0.3)
    tiny = Model(Config(cfg.to_dict()), _initial_state(GPT(cfg), seed=5, std=cfg.init_range))
    clean = torch.randint(0, 24, (3, 8), generator=torch.Generator().manual_seed(5))
    corrupt = clean.clone()
    corrupt[:, 2] = (clean[:, 2] + 7) % 24
    tiny_answers = torch.tensor([[1, 2], [3, 4], [5, 6]])
    tokenizer = get_tokenizer("stories")
    prompts = ioi_prompts(12, seed=3, templates=("went",))
    bos = eos_id(tokenizer)
    ioi_clean = torch.tensor([[bos, *tokenizer.encode(p.prompt).ids] for p in prompts])
    answers = torch.tensor(
        [[single_token_id(tokenizer, " " + name) for name in (p.io, p.s)] for p in prompts]
    )
    ioi_corrupt = ioi_clean.clone()
    ioi_corrupt[:, -5] = answers[:, 0]  # "..., S2 gave a drink to": S2 is 5 tokens from the end
    return [
        (tiny, clean, corrupt, LogitDiffMetric(tiny_answers)),
        (Shipped("pretrained", ("stories-4l",)), ioi_clean, ioi_corrupt, LogitDiffMetric(answers)),
    ]


def _judge_head_patching(cases: list[tuple], outputs: list[Any]) -> str | None:
    for number, ((model_arg, clean, corrupt, metric), output) in enumerate(
        zip(cases, outputs, strict=True)
    ):
        model = model_arg.build() if isinstance(model_arg, Shipped) else _build_model(model_arg)
        want = reference_head_patching(model.eval(), clean, corrupt, metric.build()).double()
        got = _as_float64(output)
        if got.shape != want.shape:
            return f"case {number}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
        if not torch.allclose(got, want, atol=1e-3):
            error = (got - want).abs().max().item()
            return f"case {number}: off by up to {error:.3g} from the normalised patching effect"
    return None


HW4 = {
    "repeated_tokens_tests": PartSpec(
        "repeated_tokens", "repeated_tokens",
        lambda: [(3, 7, 50, 99, Seed(0)), (5, 11, 1369, 3, Seed(4))],
        close_to(_repeated_tokens, atol=0),
    ),
    "induction_score_tests": PartSpec(
        "induction_score", "induction_score",
        lambda: [(_pattern(0, 3, 4, 13), 6), (_pattern(1, 2, 3, 21), 10)],
        close_to(_induction_reference, atol=1e-5),
    ),
    "previous_token_score_tests": PartSpec(
        "previous_token_score", "previous_token_score",
        lambda: [(_pattern(2, 3, 4, 11),), (_pattern(3, 1, 2, 5),)],
        close_to(previous_token_score, atol=1e-5),
    ),
    "name_heads_tests": PartSpec("name_heads", "name_heads", _hw4_score_cases, _judge_name_heads),
    "ablation_tests": PartSpec(
        "repeated_half_loss", "repeated_half_loss", _hw4_half_loss_cases,
        close_to(_half_loss_reference, atol=1e-5),
    ),
    "logit_difference_tests": PartSpec(
        "logit_difference", "logit_difference",
        lambda: [(2 * _x(3, 5, 7, 30), _hw4_answers(3)), (_x(4, 5, 2, 30), _hw4_answers(4))],
        close_to(_logit_difference_reference, atol=1e-5),
    ),
    "head_patching_tests": PartSpec(
        "patch_head_outputs", "patch_head_outputs", _hw4_patching_cases, _judge_head_patching,
        ("activation_patching", "reference_head_patching", "checks"),
    ),
    "ioi_heads_tests": PartSpec(
        "ioi_heads", "top_heads",
        lambda: [(torch.tensor([[0.1, 0.5, -0.9], [0.9, 0.2, 0.3]]), 2), (_x(5, 4, 4), 3)],
        _judge_top_heads,
    ),
}  # fmt: skip


# --- homework 5: sparse autoencoders (the parts that are functions of tensors) ----------


def _topk_relu_reference(pre: torch.Tensor, k: int) -> torch.Tensor:
    """``ReLU`` of the ``k`` largest entries along the last axis, zeros elsewhere."""
    order = pre.argsort(dim=-1, descending=True)[..., :k]
    kept = torch.zeros_like(pre, dtype=torch.bool).scatter(-1, order, True)
    return torch.where(kept, pre.clamp_min(0), torch.zeros_like(pre))


def _sae_case(seed: int, d_in: int = 10, d_sae: int = 24, n: int = 32) -> tuple:
    """``(x, W_enc, b_enc, W_dec, b_dec)``, decoder rows of very different norms."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=gen, dtype=torch.float64) + 0.5
    w_enc = torch.randn(d_in, d_sae, generator=gen, dtype=torch.float64) * 0.5
    b_enc = torch.randn(d_sae, generator=gen, dtype=torch.float64) * 0.1
    w_dec = torch.randn(d_sae, d_in, generator=gen, dtype=torch.float64)
    w_dec = w_dec * torch.linspace(0.2, 3.0, d_sae, dtype=torch.float64)[:, None]
    return x, w_enc, b_enc, w_dec, torch.randn(d_in, generator=gen, dtype=torch.float64)


def _relu_l1_reference(
    x: torch.Tensor,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    w_dec: torch.Tensor,
    b_dec: torch.Tensor,
    l1_coefficient: float,
) -> torch.Tensor:
    """``mean_tokens ||x - x_hat||^2 + lam * mean_tokens sum_i f_i ||W_dec[i]||``."""
    f = torch.relu(x @ w_enc + b_enc)
    error = (f @ w_dec + b_dec - x).pow(2).sum(-1)
    return (error + l1_coefficient * (f * w_dec.norm(dim=-1)).sum(-1)).mean()


def _judge_topk_sae(cases: list[tuple], outputs: list[Any]) -> str | None:
    """``f = ReLU(TopK_k((x - b_dec) W_enc + b_enc))``, ``x_hat = f W_dec + b_dec``."""
    for number, ((x, w_enc, b_enc, w_dec, b_dec, k), output) in enumerate(
        zip(cases, outputs, strict=True)
    ):
        want_f = _topk_relu_reference((x - b_dec) @ w_enc + b_enc, k)
        f, x_hat = (_as_float64(item) for item in output)
        if f.shape != want_f.shape or not torch.allclose(f, want_f, atol=1e-6):
            return f"case {number}: the feature activations f differ from the reference"
        if not torch.allclose(x_hat, want_f @ w_dec + b_dec, atol=1e-6):
            return f"case {number}: the reconstruction x_hat differs from the reference"
    return None


def _auroc_reference(features: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per column: P(a positive's activation > a negative's), ties counting one half."""
    positive, negative = features[label.bool()], features[~label.bool()]
    greater = (positive[:, None, :] > negative[None, :, :]).double().mean((0, 1))
    ties = (positive[:, None, :] == negative[None, :, :]).double().mean((0, 1))
    return greater + 0.5 * ties


def _hw5_auroc_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(12)
    cases = []
    for n, d in [(200, 6), (50, 3)]:
        label = (torch.rand(n, generator=gen) < 0.3).long()
        label[:2] = torch.tensor([0, 1])  # both classes present
        features = torch.relu(torch.randn(n, d, generator=gen) + label[:, None] * 0.5)
        cases.append((features, label))
    return cases


def _hw5_documents() -> torch.Tensor:
    """30 documents with ids 0, 3, 6, ... of 5-39 tokens each, in scrambled token order."""
    gen = torch.Generator().manual_seed(0)
    doc = torch.repeat_interleave(torch.arange(30) * 3, torch.randint(5, 40, (30,), generator=gen))
    return doc[torch.randperm(len(doc), generator=gen)]


def _judge_split(cases: list[tuple], outputs: list[Any]) -> str | None:
    """Bool masks; each token in one split, each document in one split, ~6 of 30 in test;
    the same seed twice gives the same split, another seed another one."""
    tests = []
    for number, ((doc, _, _), (train, test)) in enumerate(zip(cases, outputs, strict=True)):
        for mask in (train, test):
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                return f"case {number}: the masks must be bool tensors"
            if mask.shape != doc.shape:
                return f"case {number}: mask shape {tuple(mask.shape)}, expected {tuple(doc.shape)}"
        if bool((train & test).any()) or not bool((train | test).all()):
            return f"case {number}: every token must be in exactly one split"
        if set(doc[train].tolist()) & set(doc[test].tolist()):
            return f"case {number}: a document has tokens in both splits"
        if abs(len(set(doc[test].tolist())) - 6) > 1:
            return f"case {number}: test_fraction is a fraction of the documents"
        tests.append(test)
    if not torch.equal(tests[0], tests[1]) or torch.equal(tests[0], tests[2]):
        return "the split must be reproducible by seed, and differ between seeds"
    return None


def _planted_probe_data(seed: int, n: int = 1600, d: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Far from the origin, unequal scales, a planted direction; about 30 % positives."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0)
    x = torch.randn(n, d, generator=gen) * torch.linspace(0.5, 4.0, d) + 3.0
    score = (x - 3.0) @ u + 0.4 * torch.randn(n, generator=gen)
    return x, (score > 0.8).long()


def _judge_probe(cases: list[tuple], outputs: list[Any]) -> str | None:
    """Held-out accuracy within 0.03 of scikit-learn's, direction within cosine 0.9."""
    from sklearn.linear_model import LogisticRegression  # lazy: sklearn is slow to import

    for number, (seed, (w, b)) in enumerate(zip((0, 1), outputs, strict=True)):
        x, y = _planted_probe_data(seed)
        w, b = _as_float64(w).reshape(-1), _as_float64(b).reshape(())
        if w.shape != (x.shape[1],) or not (torch.isfinite(w).all() and torch.isfinite(b)):
            return f"case {number}: w must be a finite vector of length {x.shape[1]}"
        reference = LogisticRegression(C=10.0, max_iter=2000).fit(x[:1200].double(), y[:1200])
        ref_w = torch.from_numpy(reference.coef_[0])
        xt, yt = x[1200:].double(), y[1200:]
        ref_acc = ((xt @ ref_w + float(reference.intercept_[0]) > 0).long() == yt).double().mean()
        acc = ((xt @ w + b > 0).long() == yt).double().mean()
        cosine = torch.nn.functional.cosine_similarity(w, ref_w, dim=0).item()
        if acc < ref_acc - 0.03 or cosine < 0.9:
            return f"case {number}: held-out accuracy {acc:.3f} (reference {ref_acc:.3f})"
    return None


def _hw5_probe_cases() -> list[tuple]:
    return [tuple(t[:1200] for t in _planted_probe_data(seed)) for seed in (0, 1)]


def _hw5_control_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(0)
    token = torch.randint(0, 1000, (8000,), generator=gen) * 7 + 2  # ids need not be 0..n-1
    labels = (torch.rand(8000, generator=gen) < torch.rand(7002, generator=gen)[token] ** 3).long()
    return [(token, labels, 0), (token, labels, 0), (token, labels, 1)]


def _judge_control(cases: list[tuple], outputs: list[Any]) -> str | None:
    """One label per token type, drawn from the label distribution; reproducible by seed."""
    token, labels, _ = cases[0]
    types, inverse = token.unique(return_inverse=True)
    for number, output in enumerate(outputs):
        control = torch.as_tensor(output).long()
        if control.shape != labels.shape:
            return f"case {number}: shape {tuple(control.shape)}, expected {tuple(labels.shape)}"
        first = torch.zeros(len(types), dtype=torch.long).scatter_(0, inverse, control)
        if bool((control != first[inverse]).any()):
            return f"case {number}: a token type has different control labels"
        if not set(first.tolist()) <= set(labels.tolist()):
            return f"case {number}: control labels outside the task's labels"
        rate, want = first.double().mean().item(), labels.double().mean().item()
        if abs(rate - want) > 5 * (want * (1 - want) / len(types)) ** 0.5:
            return f"case {number}: {rate:.3f} of types have label 1, the labels {want:.3f}"
    if not torch.equal(*map(torch.as_tensor, outputs[:2])) or torch.equal(
        *map(torch.as_tensor, outputs[1:])
    ):
        return "the control labels must be reproducible by seed, and differ between seeds"
    return None


def _hw5_evaluate_cases() -> list[tuple]:
    """(x, y, train_mask, test_mask): the test half follows the opposite rule (train ~1,
    test ~0 only if the probe is fitted on the training tokens alone); pure noise with 9:1
    labels (balanced accuracy ~0.5, plain ~0.9); one rule for both halves, a quarter of the
    test labels flipped (so that swapping the halves shows)."""
    gen = torch.Generator().manual_seed(5)
    n = 800
    test = torch.arange(n) >= n // 2
    x = torch.randn(n, 4, generator=gen)
    opposite = (x[:, 0] > 0.6).long()
    opposite[test] = 1 - opposite[test]
    noise = torch.randn(n, 4, generator=gen)
    rare = (torch.rand(n, generator=gen) < 0.1).long()
    shared = (x[:, 1] > 0.6).long()
    flipped = test & (torch.rand(n, generator=gen) < 0.25)
    shared[flipped] = 1 - shared[flipped]
    return [(x, opposite, ~test, test), (noise, rare, ~test, test), (x, shared, ~test, test)]


def _judge_evaluate(cases: list[tuple], outputs: list[Any]) -> str | None:
    """Each (train, test) balanced accuracy within 0.05 of scikit-learn's logistic
    regression fitted on the training tokens, scored by its ``balanced_accuracy_score``."""
    from sklearn.linear_model import LogisticRegression  # lazy: sklearn is slow to import
    from sklearn.metrics import balanced_accuracy_score  # lazy: as above

    for number, ((x, y, train, test), output) in enumerate(zip(cases, outputs, strict=True)):
        if not isinstance(output, list | tuple) or len(output) != 2:
            return f"case {number}: return a tuple (train_accuracy, test_accuracy)"
        try:
            got = [float(_as_float64(value)) for value in output]
        except (TypeError, ValueError, RuntimeError):
            return f"case {number}: the accuracies must be numbers"
        probe = LogisticRegression(C=10.0, max_iter=2000).fit(x[train].numpy(), y[train].numpy())
        want = [
            balanced_accuracy_score(y[m].numpy(), probe.predict(x[m].numpy()))
            for m in (train, test)
        ]
        if any(abs(g - w) > 0.05 for g, w in zip(got, want, strict=True)):
            return (
                f"case {number}: (train, test) = ({got[0]:.3f}, {got[1]:.3f}), expected about "
                f"({want[0]:.3f}, {want[1]:.3f}): a probe fitted on x[train_mask] only, scored "
                "by BALANCED accuracy (the mean over classes of each class's recall)"
            )
    return None


HOOK = "blocks.3.hook_resid_post"


def _hw5_collect_cases() -> list[tuple]:
    model, tokenizer = Shipped("pretrained", ("stories-4l",)), Shipped("tokenizer", ("stories",))
    first, second = Shipped("stories", (3, 5, "train")), Shipped("stories", (2, 1, "val"))
    return [(model, first, tokenizer, HOOK), (model, second, tokenizer, "blocks.1.hook_resid_pre")]


def _judge_collect(cases: list[tuple], outputs: list[Any]) -> str | None:
    """Activations (``atol 1e-4``) and every label column equal the reference's."""
    model = cases[0][0].build()
    for number, ((_, stories, tokenizer, hook), got) in enumerate(zip(cases, outputs, strict=True)):
        want = reference_collect_residuals(model, stories.build(), tokenizer.build(), hook)
        acts = _as_float64(got["acts"])
        if acts.shape != want["acts"].shape:
            expected = tuple(want["acts"].shape)
            return f"case {number}: acts shape {tuple(acts.shape)}, expected {expected}"
        if not torch.allclose(acts, want["acts"].double(), atol=1e-4):
            return f"case {number}: the activations differ from the reference"
        for name in LABEL_NAMES:
            if not torch.equal(torch.as_tensor(got[name]).long(), want[name].long()):
                return f"case {number}: the `{name}` labels differ from the reference"
    return None


HW5 = {
    "collect_residuals_tests": PartSpec(
        "collect_residuals", "collect_residuals", _hw5_collect_cases, _judge_collect,
    ),
    "split_documents_tests": PartSpec(
        "split_documents", "split_documents",
        lambda: [(_hw5_documents(), 0.2, seed) for seed in (0, 0, 1)], _judge_split,
    ),
    "fit_probe_tests": PartSpec("fit_probe", "fit_probe", _hw5_probe_cases, _judge_probe),
    "control_labels_tests": PartSpec(
        "control_labels", "control_labels", _hw5_control_cases, _judge_control,
    ),
    "evaluate_probe_tests": PartSpec(
        "evaluate_probe", "evaluate_probe", _hw5_evaluate_cases, _judge_evaluate,
    ),
    "topk_relu_tests": PartSpec(
        "topk_relu", "topk_relu",
        lambda: [(_x(1, 3, 5, 50), 7), (_x(2, 4, 10), 3), (-_x(3, 2, 6).abs(), 2)],
        close_to(_topk_relu_reference, atol=0),
    ),
    "relu_l1_loss_tests": PartSpec(
        "relu_l1_loss", "relu_l1_loss",
        lambda: [(*_sae_case(0), 0.3), (*_sae_case(2, 6, 9, 5), 0.5)],
        close_to(_relu_l1_reference, atol=1e-6, rtol=1e-5),
    ),
    "topk_sae_forward_tests": PartSpec(
        "topk_sae_forward", "topk_sae_forward",
        lambda: [(*_sae_case(1), 5), (*_sae_case(3, 6, 9, 5), 2)], _judge_topk_sae,
    ),
    "auroc_per_latent_tests": PartSpec(
        "auroc_per_latent", "auroc_per_latent", _hw5_auroc_cases,
        close_to(_auroc_reference, atol=1e-6),
    ),
}  # fmt: skip


# Per homework folder: the parts judged from data. The others stay in-kernel.
SPECS: dict[str, dict[str, PartSpec]] = {
    "hw1_markov_tokenization": HW1,
    "hw2_superposition_geometry": HW2,
    "hw3_transformer_from_scratch": HW3,
    "hw4_circuits": HW4,
    "hw5_probes_and_saes": HW5,
}

# In-kernel parts that build on spec'd ones (a cell that trains or plots with the student's
# functions): they score only if those parts passed, so that a kernel that fakes its cells
# cannot collect them.
REQUIRES: dict[str, dict[str, tuple[str, ...]]] = {
    "hw1_markov_tokenization": {
        "char_chain": ("transition_matrix_tests", "stationary_tests"),
        "bpe_compression": ("train_bpe_tests",),
    },
    "hw2_superposition_geometry": {
        "overlap_experiments": (
            "random_unit_vectors_tests",
            "orthonormal_set_tests",
            "welch_bound_tests",
            "max_overlap_tests",
        ),
    },
    "hw5_probes_and_saes": {
        "selectivity_experiment": (
            "collect_residuals_tests",
            "split_documents_tests",
            "fit_probe_tests",
            "control_labels_tests",
            "evaluate_probe_tests",
        ),
        "sae_targets": ("collect_residuals_tests", "topk_relu_tests", "topk_sae_forward_tests"),
        "find_the_feature": (
            "collect_residuals_tests",
            "fit_probe_tests",
            "topk_sae_forward_tests",
            "auroc_per_latent_tests",
        ),
    },
}
