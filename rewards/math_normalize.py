"""Answer extraction and MATH-style string normalization (pure string work, no sympy).

Two levels of cleaning exist on purpose:

* :func:`light_clean` only removes things that never change the value (math delimiters,
  ``\\dfrac``, units, degrees, ``1.5e3``). Its output is still LaTeX that math-verify parses, so
  it keeps spaces and ``\\text{...}`` (unwrapping text would turn ``Monday`` into a product of
  symbols for sympy).
* :func:`normalize_answer` goes further, in the spirit of Hendrycks et al.'s ``strip_string``,
  to a canonical string that is only ever compared for equality.
"""

from __future__ import annotations

import re

__all__ = ["extract_boxed", "last_boxed_span", "light_clean", "normalize_answer"]

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed_span(text: str) -> tuple[int, int, int] | None:
    """Locate the last ``\\boxed``/``\\fbox`` in ``text``.

    Returns ``(content_start, content_end, box_end)`` (``text[content_start:content_end]`` is the
    content, ``box_end`` is just past the closing brace), or None if there is no box or the last
    box is unterminated (a truncated answer is no answer, so no fallback to an earlier box).
    """
    start, command = max((text.rfind(c), c) for c in _BOX_COMMANDS)
    if start < 0:
        return None
    i = start + len(command)
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] != "{":
        # "\boxed 5": the argument is the next whitespace/$-delimited token.
        m = re.match(r"[^\s$]+", text[i:])
        if m is None or command != "\\boxed" or i == start + len(command):
            return None
        return i, i + m.end(), i + m.end()
    depth = 0
    j = i
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2  # "\{", "\}" and "\\" are literal, not grouping braces
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1, j, j + 1
        j += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, or None.

    Braces are balanced, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``; escaped braces
    (``\\{1,2\\}``) do not count. ``\\boxed 5`` (no braces) gives ``5``.
    """
    span = last_boxed_span(text)
    return None if span is None else text[span[0] : span[1]].strip()


# Unit words removed only when they follow a number ("5 dollars"); single letters ("m", "s") are
# left alone because they are more often variables than units.
_UNIT_WORDS = (
    "dollars?|cents?|degrees?|units?|square units|sq units|percent|cm|mm|km|m\\^2|cm\\^2|"
    "centimeters?|millimeters?|kilometers?|meters?|inch(?:es)?|feet|foot|ft|yards?|miles?|mph|"
    "hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|pounds?|lbs?|"
    "ounces?|oz|grams?|kg|kilograms?|liters?|litres?|ml|gallons?|cups?|students?|people|"
    "ways?|times|marbles|apples|cookies|eggs|pages|books|points?"
)
_NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:\s*/\s*\d+)?"
_TEXT_CMD = r"\\(?:text|textrm|textnormal|mbox|mathrm|textit|textbf)"
# "\text{ m}" (leading space) is a unit; "\mathrm{i}" (one bare letter) may be the imaginary unit.
_UNIT_TEXT = r"\s+[a-zA-Z][a-zA-Z .]*|[a-zA-Z][a-zA-Z .]+"
# Only the suffix is matched (with search): a "^(value.*)suffix$" pattern backtracks
# quadratically, and model output can be long.
_UNIT_SUFFIX = re.compile(
    rf"\s*(?:{_TEXT_CMD}\{{(?:{_UNIT_TEXT})\}}|\s(?:{_UNIT_WORDS})\b)"
    r"\s*(?:\^\s*\{?\s*[23]\s*\}?)?\s*\.?$",
)
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\degree|°")
_SCI = re.compile(rf"^({_NUMBER})\s*[eE]\s*\+?(-?\d+)$")
_COLUMN_VECTOR = re.compile(r"^\\begin\{([pb]matrix)\}([^&]*?)\\end\{\1\}$", re.S)
_VAR_PREFIX = re.compile(r"^[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?\s*=\s*(?P<rhs>[^=<>]+)$")


def _strip_units(s: str) -> str:
    # Loop: "5\text{ cm}^2" may hide another unit behind the first one ("5 ft \text{ long}").
    for _ in range(3):
        m = _UNIT_SUFFIX.search(s)
        if m is None or not any(ch.isdigit() for ch in s[: m.start()]):
            break  # a unit needs a number before it: "\text{Monday}" alone is the answer
        s = s[: m.start()].rstrip()
    return s


def light_clean(s: str) -> str:
    """Value-preserving cleanup whose output is still LaTeX math-verify can parse."""
    s = s.strip()
    s = re.sub(r"\s+", " ", s)
    s = s.replace("\\$", " ")  # an escaped dollar is a currency sign
    s = s.replace("$", "")
    s = re.sub(r"^\\[(\[]|\\[)\]]$", "", s).strip()
    # "\\" (a matrix row break) is matched first so that "\\ " is not read as "\ " (a space).
    s = re.sub(r"(\\\\)|\\[!,;:> ]|\\q?quad\b|~", lambda m: m.group(1) or " ", s)
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    s = _DEGREES.sub("", s)
    s = _strip_units(s.strip())
    s = s.replace("{,}", ",")
    m = _SCI.match(s)
    if m is not None:
        s = f"{m.group(1)}\\times 10^{{{m.group(2)}}}"
    m = _COLUMN_VECTOR.match(s)
    if m is not None and "\\\\" in m.group(2):
        # A column vector and the tuple with the same entries are the same answer.
        entries = [e.strip() for e in m.group(2).split("\\\\") if e.strip()]
        s = "(" + ",".join(entries) + ")"
    return s.strip().rstrip(".").strip()


def _unwrap_text(s: str) -> str:
    pattern = re.compile(rf"{_TEXT_CMD}\{{([^{{}}]*)\}}")
    for _ in range(5):  # innermost first; nesting deeper than 5 does not occur in answers
        s, n = pattern.subn(r"\1", s)
        if n == 0:
            break
    return s


def _fix_braces(s: str) -> str:
    # \frac12 -> \frac{1}{2}, \frac1{x} -> \frac{1}{x}, \sqrt2 -> \sqrt{2}
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\d)", r"\\frac\1{\2}", s)
    return re.sub(r"\\sqrt\s*(\d|[a-zA-Z](?![a-zA-Z]))", r"\\sqrt{\1}", s)


def _canonical_number(s: str) -> str:
    if not re.fullmatch(r"-?(?:\d+(?:\.\d*)?|\.\d+)", s):
        return s
    sign, body = ("-", s[1:]) if s.startswith("-") else ("", s)
    if "." in body:
        body = body.rstrip("0").rstrip(".")
    body = body.lstrip("0") or "0"
    if body.startswith("."):
        body = "0" + body
    return "0" if body == "0" else sign + body  # "-0" and "-0.0" are 0


def normalize_answer(s: str) -> str:
    """Canonical string form of a final answer, for exact-match comparison.

    Applies :func:`light_clean`, then: unwraps ``\\text{}``-like commands, drops ``\\left``/
    ``\\right``, ``\\%``/``%``, thousands separators in plain numbers (``1,000`` -> ``1000``, but
    not tuples such as ``(1,2)``), a leading ``x =``, parentheses around a single choice letter
    (``(B)`` -> ``B``) and all spaces; rewrites ``\\frac12`` -> ``\\frac{1}{2}``, ``a/b`` ->
    ``\\frac{a}{b}`` for integers, mixed numbers ``2\\frac{1}{2}`` -> ``\\frac{5}{2}``, and
    plain numbers canonically (``.5`` -> ``0.5``, ``2.50`` -> ``2.5``, ``27.0`` -> ``27``,
    ``-0`` -> ``0``); lower-cases answers that are plain words (``Monday``).
    """
    s = _unwrap_text(light_clean(s))
    s = re.sub(r"\\(?:left|right)(?:\.|(?![a-zA-Z]))|\\[bB]igg?[lr]?(?![a-zA-Z])", "", s)
    s = s.replace("\\%", "").replace("%", "").strip()
    m = _VAR_PREFIX.match(s)
    if m is not None:
        s = m.group("rhs").strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    s = _fix_braces(s).replace(" ", "")
    m = re.fullmatch(r"(-?)(\d+)/(\d+)", s)
    if m is not None:
        s = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    m = re.fullmatch(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", s)
    if m is not None and int(m.group(4)) > 0:
        whole, num, den = int(m.group(2)), int(m.group(3)), int(m.group(4))
        s = f"{m.group(1)}\\frac{{{whole * den + num}}}{{{den}}}"
    m = re.fullmatch(r"\(([A-Za-z])\)", s)
    if m is not None:
        s = m.group(1)
    s = _canonical_number(s)
    if re.fullmatch(r"[A-Za-z][A-Za-z\-]+", s):
        s = s.lower()
    return s
