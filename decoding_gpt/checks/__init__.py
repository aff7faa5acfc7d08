"""Exercise checks: feedback for students, one module per lecture or homework.

A check takes the student's function, runs it on seeded inputs, compares the result
with a reference, and either prints a one-line success message or raises
:class:`CheckError` saying *what* is wrong (shape, NaNs, which values, by how much) and,
where a common mistake explains the symptom, *why*. Checks are ordinary functions, so
tests call them too (``pytest.raises(CheckError)`` on known-wrong implementations).

Shared helpers live here:

- :class:`CheckError` -- an ``AssertionError`` (so pytest and nbval report it as a
  failed assertion) whose message is meant for a student.
- :func:`compare_tensors` -- shape, finiteness and value comparison with specific messages.
- :func:`passed` -- the uniform success line.
- :class:`Mistake` and :func:`diagnose` -- a catalogue of classic wrong answers, each a
  wrong reference implementation with the message a student who made it sees.
- :func:`exercise` -- the decorator every public ``check_*`` wears: a check handed an
  exercise the student has not written yet (its body is still the stub
  :func:`stub_statement` writes) raises :class:`NotAttempted`, naming the function to
  write, instead of any other error, and can never print a pass.

Checks of a concept that the lectures ask for as a function and homework 3 as an
``nn.Module`` class live once, in :mod:`decoding_gpt.checks.components` (attention, layer
norm, block, loss) and :mod:`decoding_gpt.checks.markov`; the per-lecture and homework
modules import them, so a notebook calls ``checks.check_layer_norm(...)`` either way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = [
    "STUB_PREFIX",
    "CheckError",
    "Mistake",
    "NotAttempted",
    "compare_tensors",
    "diagnose",
    "exercise",
    "passed",
    "stub_statement",
    "to_numpy",
    "to_scalar",
]

# Every stub in a student edition raises NotImplementedError with a message that starts
# with this, so a check can tell "not written yet" from a student's own NotImplementedError.
STUB_PREFIX = "Not attempted yet:"


class CheckError(AssertionError):
    """A check failed; the message explains what is wrong for the student."""


class NotAttempted(CheckError):
    """The exercise a check was handed is still the stub of the student edition."""


def stub_statement(name: str | None) -> str:
    """The line that replaces a solution in the student edition.

    It raises when the exercise is *called*, not when its cell runs, so the cell that
    defines ``name`` runs and the first check (or use) that calls it stops the notebook
    with a message naming it.
    """
    what = f"write `{name}`" if name else "write your answer"
    return f'raise NotImplementedError("{STUB_PREFIX} {what} here.")'


def _stub_error(err: BaseException | None) -> NotImplementedError | None:
    """The stub's NotImplementedError in ``err``'s chain of causes, if there is one."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, NotImplementedError) and str(err).startswith(STUB_PREFIX):
            return err
        err = err.__cause__ or err.__context__
    return None


Check = TypeVar("Check", bound=Callable[..., Any])


def exercise(check: Check) -> Check:
    """Mark ``check`` as an exercise check: a stub raises :class:`NotAttempted`.

    Whatever the check does with the student's answer, if a stub's NotImplementedError
    is raised anywhere inside it (or is the cause of the error it raises), the student
    sees which exercise is unwritten and that nothing below the check runs until it is,
    never "passed" and never a diagnosis of a wrong answer they did not give.
    """

    @functools.wraps(check)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return check(*args, **kwargs)
        except NotAttempted:
            raise
        except BaseException as err:
            stub = _stub_error(err)
            if stub is None:
                raise
            task = str(stub)[len(STUB_PREFIX) :].strip().removesuffix(" here.")
            raise NotAttempted(
                f"{check.__name__}: not attempted yet, so not checked. To do: {task}, in "
                "place of the `raise NotImplementedError(...)` line of its cell; run that "
                "cell, then this one. The notebook stops here until it passes."
            ) from None

    run.__exercise__ = True  # type: ignore[attr-defined]
    return run  # type: ignore[return-value]


def to_numpy(
    value: Any, name: str = "value", complex_hint: str = "return a real tensor."
) -> np.ndarray:
    """Convert a tensor, array, list or number to a float64 NumPy array.

    Raises:
        CheckError: ``value`` is ``None`` (a stub left unfilled), complex (converting
            would silently drop the imaginary part; ``complex_hint`` says what to return
            instead), or not numeric.
    """
    if value is None:
        raise CheckError(f"{name} is None: did you forget to `return` it?")
    if isinstance(value, torch.Tensor) and value.is_complex():
        raise CheckError(f"{name} is complex: {complex_hint}")
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64).numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise CheckError(f"{name} should be numeric, got {type(value).__name__}") from err


def to_scalar(value: Any, name: str) -> float:
    """``value`` as one float: a number, or a tensor/array with exactly one element.

    Raises:
        CheckError: ``value`` is ``None``, not numeric, or holds more than one number.
    """
    array = to_numpy(value, name)
    if array.size != 1:
        raise CheckError(f"{name} should be one number, got an array of shape {array.shape}.")
    return float(array.reshape(()))


def compare_tensors(
    actual: Any,
    expected: Any,
    name: str,
    atol: float = 1e-6,
    rtol: float = 0.0,
    hint: str = "",
) -> None:
    """Raise :class:`CheckError` unless ``actual`` matches ``expected`` elementwise.

    The comparison is ``|actual - expected| <= atol + rtol * |expected|``, made in
    float64 after moving both to NumPy. Failures are reported in this order, each with
    its own message: wrong shape, NaN/inf where the reference is finite, wrong values
    (with the max absolute difference and where it occurs). ``hint`` is appended to the
    message so a check can name the likely mistake.
    """
    got = to_numpy(actual, name)
    want = to_numpy(expected, f"reference for {name}")
    suffix = f" {hint}" if hint else ""
    if got.shape != want.shape:
        raise CheckError(
            f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}.{suffix}"
        )
    bad = ~np.isfinite(got) & np.isfinite(want)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CheckError(
            f"{name} has {int(bad.sum())} NaN/inf entries (first at index {index}) "
            f"where the reference is finite.{suffix}"
        )
    diff = np.abs(got - want)
    diff = np.where(np.isfinite(want) | np.isfinite(got), diff, 0.0)  # inf == inf is fine
    tolerance = atol + rtol * np.abs(want)
    wrong = diff > tolerance
    if wrong.any():
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
        at = f" at index {index}" if got.ndim else ""
        raise CheckError(
            f"{name} has wrong values: {int(wrong.sum())} of {got.size} entries differ, "
            f"max abs diff {float(diff.max()):.3g}{at} (got {float(got[index]):.6g}, "
            f"expected {float(want[index]):.6g}; atol {atol:g}).{suffix}"
        )


def passed(name: str) -> None:
    """Print the uniform success line of a check."""
    print(f"{name}: all checks passed.")


@dataclass(frozen=True)
class Mistake:
    """A classic wrong answer: ``wrong`` computes what it returns from the reference's
    inputs, ``message`` tells the student what went wrong and how to fix it.

    ``forms`` names the forms of the exercise in which the mistake can be made
    (``"function"``: the lectures' plain function; ``"class"``: homework 3's
    ``nn.Module``); a missing bias, say, is only a mistake where there is a bias.
    """

    name: str
    wrong: Callable[..., Any]
    message: str
    forms: tuple[str, ...] = ("function", "class")


def _same(got: np.ndarray, want: np.ndarray, atol: float) -> bool:
    """Equal shape and values up to ``atol`` plus a float32-sized relative error (NaN
    never matches)."""
    return got.shape == want.shape and bool(np.allclose(got, want, atol=atol, rtol=1e-5))


def diagnose(
    got: Any,
    want: Any,
    catalogue: Iterable[Mistake],
    args: tuple[Any, ...],
    atol: float,
    form: str = "function",
) -> None:
    """Raise the message of the first mistake of ``catalogue`` whose output on ``args``
    equals ``got`` (and differs from the right answer ``want``, so a mistake that makes no
    difference on these inputs is never blamed)."""
    got_np, want_np = to_numpy(got, "answer"), to_numpy(want, "reference")
    for mistake in catalogue:
        if form not in mistake.forms:
            continue
        with torch.no_grad():
            wrong = to_numpy(mistake.wrong(*args), f"mistake {mistake.name}")
        if _same(got_np, wrong, atol) and not _same(want_np, wrong, atol):
            raise CheckError(mistake.message)


def judge(
    got: Any,
    want: Any,
    catalogue: Iterable[Mistake],
    args: tuple[Any, ...],
    *,
    what: str,
    atol: float,
    hint: str,
    form: str = "function",
) -> None:
    """The end of every catalogue check: name the classic mistake ``got`` makes
    (:func:`diagnose`), else compare it with ``want`` (:func:`compare_tensors`)."""
    diagnose(got, want, catalogue, args, atol, form)
    compare_tensors(got, want, what, atol=atol, hint=hint)
