"""Adapters between the checks and the two forms a student's answer comes in.

The lectures ask for a plain **function** (``layer_norm(x, w, b, eps)``); homework 3 asks
for an ``nn.Module`` **class** (``LayerNorm(d_model, eps)`` with parameters ``w, b``).
A check in :mod:`decoding_gpt.checks.components` talks to either through one thin
adapter (the idea of CS336's ``tests/adapters.py``): the adapter turns a class into a
function of the same inputs as the lecture's, by building the module, loading the given
weights into it by name and calling it. The check, its reference and its catalogue of
mistakes then see only that function.

**Which form.** A class (``isinstance(impl, type)``, a subclass of ``nn.Module``) is the
class form; anything else callable is the function form.

**Names.** Weights are loaded through their ``state_dict`` names, by default
TransformerLens's (``w``, ``b``; ``W_Q`` ``[n_heads, d_model, d_head]``, ``b_O``;
``ln1.w``, ``attn.W_Q``, ``mlp.W_in``...). A class with other names passes ``name_map``:
a dict of substring replacements applied in order to each reference name
(``{"blocks.": "layers."}``), or a function from reference name to the student's name.

**Forbidden.** Homework 3 builds attention from scratch: :func:`check_no_forbidden_modules`
rejects ``nn.MultiheadAttention``, ``nn.Transformer*`` and
``F.scaled_dot_product_attention`` found in the module tree, in the source of the model's
classes (``ast``), or at run time (a ``TorchFunctionMode`` that sees every torch function
the forward pass calls, so an aliased import is caught too).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from decoding_gpt.checks import CheckError, exercise

__all__ = [
    "FORBIDDEN_FUNCTIONS",
    "FORBIDDEN_MODULES",
    "Adapted",
    "NameMap",
    "as_tensor",
    "build_module",
    "check_no_forbidden_modules",
    "close",
    "is_module_class",
    "load_weights",
    "randomise",
    "seeded",
]

NameMap = dict[str, str] | Callable[[str], str] | None


class Adapted(NamedTuple):
    """A student's answer seen as a function of the lecture's inputs, with the numerics
    of its form: the lectures compute in float64 (tight ``atol``), modules in their
    default float32 (``atol`` a few float32 roundings of the outputs)."""

    run: Callable[..., Any]
    form: str  # "function" or "class"
    dtype: torch.dtype
    atol: float


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)`` without changing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


M = TypeVar("M", bound=nn.Module)


def randomise(module: M, seed: int, scale: float = 0.3) -> M:
    """Overwrite every parameter with N(0, scale^2) (LayerNorm gains: 1 + N(0, scale^2)).

    Biases and gains at their init (0 and 1) would hide a missing bias or gain; random
    values make every parameter matter.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * scale
            is_gain = name.split(".")[-1] == "w" and param.ndim == 1
            param.copy_(noise + 1.0 if is_gain else noise)
    return module


def is_module_class(impl: object) -> bool:
    """Whether ``impl`` is an ``nn.Module`` class (homework 3's form of an answer)."""
    return isinstance(impl, type) and issubclass(impl, nn.Module)


def _map_name(name: str, name_map: NameMap) -> str:
    if name_map is None:
        return name
    if callable(name_map):
        return name_map(name)
    for old, new in name_map.items():
        name = name.replace(old, new)
    return name


def build_module(cls: Callable[..., Any], *args: Any, what: str) -> nn.Module:
    """``cls(*args)`` under a fixed seed; a :class:`CheckError` unless it is a module."""
    with seeded(0):
        module = cls(*args)
    if not isinstance(module, nn.Module):
        raise CheckError(f"{what} must build an nn.Module, got {type(module).__name__}.")
    return module


def load_weights(
    student: nn.Module, weights: Mapping[str, Tensor], name_map: NameMap, what: str
) -> None:
    """Copy ``weights`` (reference name -> tensor) into ``student``'s parameters.

    The names (after ``name_map``) must be exactly the student's parameter names, and
    the shapes equal: a missing bias, a buffer instead of a parameter, or ``W @ x``
    instead of ``x @ W`` fail here with a message that names the parameter.
    """
    if not isinstance(student, nn.Module):
        raise CheckError(f"your {what} must be an nn.Module, got {type(student).__name__}.")
    want = {_map_name(k, name_map): v for k, v in weights.items()}
    have = dict(student.named_parameters())
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    if missing or unexpected:
        raise CheckError(
            f"your {what}'s parameter names differ from the reference's: missing "
            f"{missing[:6]}, unexpected {unexpected[:6]}. Use the TransformerLens names of "
            "the README (or pass name_map={reference_substring: yours}); every weight must "
            "be an nn.Parameter, and no extra parameters."
        )
    for key, value in want.items():
        if have[key].shape != value.shape:
            raise CheckError(
                f"parameter {key} has shape {tuple(have[key].shape)}, expected "
                f"{tuple(value.shape)} (TransformerLens layout, e.g. W_Q [n_heads, d_model, "
                "d_head], W_in [d_model, d_mlp]; x @ W, not W @ x)."
            )
    with torch.no_grad():
        for key, value in want.items():
            have[key].copy_(value)


def as_tensor(value: Any, name: str) -> Tensor:
    """``value`` detached; a :class:`CheckError` for ``None`` or a non-tensor."""
    if value is None:
        raise CheckError(f"{name} is None: did you forget to `return` it?")
    if not isinstance(value, Tensor):
        raise CheckError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    return value.detach()


def close(a: Tensor, b: Tensor, atol: float = 1e-5) -> bool:
    """Same shape and ``|a - b| <= atol`` everywhere (compared in float64)."""
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol))


# ======================================================================== forbidden modules
FORBIDDEN_MODULES: tuple[type[nn.Module], ...] = (
    nn.MultiheadAttention,
    nn.Transformer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)
# torch functions a forward pass must not call (as TorchFunctionMode reports them)
FORBIDDEN_FUNCTIONS = ("scaled_dot_product_attention", "multi_head_attention_forward")
_TRUSTED_PACKAGES = ("torch", "decoding_gpt", "transformer_lens", "builtins")
_FORBIDDEN_NAMES = {cls.__name__ for cls in FORBIDDEN_MODULES} | set(FORBIDDEN_FUNCTIONS)


@exercise
def check_no_forbidden_modules(model: nn.Module, example_input: Tensor | None = None) -> None:
    """No ``nn.MultiheadAttention``/``nn.Transformer*`` modules, no
    ``F.scaled_dot_product_attention``: in the module tree, in the source of every class
    of the tree outside torch and this course's package, and, if ``example_input`` is
    given, among the torch functions that ``model(example_input)`` calls.
    """
    for name, module in model.named_modules():
        if isinstance(module, FORBIDDEN_MODULES):
            raise CheckError(
                f"forbidden module {type(module).__name__} at {name or 'the top'}: this "
                "homework builds attention from scratch (no nn.MultiheadAttention, "
                "nn.Transformer*, F.scaled_dot_product_attention)."
            )
    for cls in {type(module) for module in model.modules()}:
        used = _forbidden_in_source(cls)
        if used:
            raise CheckError(
                f"the source of {cls.__name__} uses {sorted(used)}: forbidden in this "
                "homework; write the attention out (scores, mask, softmax, pattern @ v)."
            )
    if example_input is not None:
        with _Recorder() as recorder, torch.no_grad():
            model(example_input)
        used = recorder.seen & set(FORBIDDEN_FUNCTIONS)
        if used:
            raise CheckError(
                f"the forward pass calls {sorted(used)}: forbidden in this homework (even "
                "under another name); write the attention out (scores, mask, softmax, "
                "pattern @ v)."
            )


class _Recorder(TorchFunctionMode):
    """Records the name of every torch function called inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.seen.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def _forbidden_in_source(cls: type) -> set[str]:
    """Forbidden names used in the methods of ``cls`` (source read with ``inspect``)."""
    used: set[str] = set()
    own = [c for c in cls.__mro__ if c.__module__.split(".")[0] not in _TRUSTED_PACKAGES]
    for attr in (value for c in own for value in vars(c).values()):
        if not inspect.isfunction(attr):
            continue
        try:  # notebook cells have source via linecache; builtins and lambdas may not
            tree = ast.parse(textwrap.dedent(inspect.getsource(attr)))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in _FORBIDDEN_NAMES:
                used.add(node.attr)
            elif isinstance(node, ast.Name) and node.id in FORBIDDEN_FUNCTIONS:
                used.add(node.id)
            elif isinstance(node, ast.alias) and node.name in _FORBIDDEN_NAMES:
                used.add(node.name)
    return used
