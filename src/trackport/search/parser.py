"""MLflow's run search syntax, read once into clauses, with the aggregates MLflow lacks.

    filter  := clause (AND clause)*
    clause  := operand comparator value | operand IS [NOT] NULL | operand [NOT] IN (value, ...)
    operand := [MIN|MAX|LATEST] '(' metrics.KEY ')' | TYPE.KEY | ATTRIBUTE
    TYPE    := metrics | params | tags | attributes | datasets (and MLflow's other spellings)
    KEY     := a word (letters, digits, _ - . / : and spaces inside quotes), `backticked` or "quoted"
    value   := a number | 'string' | "string"

Keywords are case-insensitive. Like MLflow, clauses combine with AND only. Where MLflow takes
only a quoted string (a param or tag) an unquoted number is taken as its text as written
(`params.alpha = 0.5` is `params.alpha = '0.5'`), as the MLflow UI accepts. A malformed
filter is refused with the position of the problem.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from trackport.errors import ExitCode, TrackportError

METRIC, PARAM, TAG, ATTRIBUTE, DATASET = "metric", "param", "tag", "attribute", "dataset"
AGGREGATES = ("MIN", "MAX", "LATEST")
_TYPES = {
    "metric": METRIC, "metrics": METRIC,
    "param": PARAM, "params": PARAM, "parameter": PARAM, "parameters": PARAM,
    "tag": TAG, "tags": TAG,
    "attribute": ATTRIBUTE, "attributes": ATTRIBUTE, "attr": ATTRIBUTE, "run": ATTRIBUTE,
    "dataset": DATASET, "datasets": DATASET,
}
# Attributes by the name MLflow searches them with (its aliases included), and their kind.
STRING_ATTRIBUTES = ("run_id", "run_name", "status", "user_id", "artifact_uri", "lifecycle_stage")
NUMERIC_ATTRIBUTES = ("start_time", "end_time", "deleted_time")
_ATTRIBUTE_ALIASES = {"created": "start_time", "Created": "start_time", "run name": "run_name", "Run name": "run_name", "Run Name": "run_name"}
DATASET_FIELDS = ("name", "digest", "context")

NUMERIC_COMPARATORS = ("=", "!=", ">", ">=", "<", "<=")
STRING_COMPARATORS = ("=", "!=", "LIKE", "ILIKE")
NULL_COMPARATORS = ("IS NULL", "IS NOT NULL")
LIST_COMPARATORS = ("IN", "NOT IN")


class FilterError(TrackportError):
    """A filter that cannot be read: a bad argument, said with where it goes wrong."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Clause:
    kind: str  # METRIC | PARAM | TAG | ATTRIBUTE | DATASET
    key: str
    comparator: str  # upper case: one of the *_COMPARATORS
    value: float | int | str | tuple[str, ...] | None
    aggregate: str | None = None  # MIN | MAX | LATEST, metrics only


@dataclass(frozen=True)
class Filter:
    text: str
    clauses: tuple[Clause, ...]

    def metric_keys(self) -> frozenset[str]:
        return frozenset(c.key for c in self.clauses if c.kind == METRIC)

    def aggregates(self) -> bool:
        """Whether a clause needs a whole history (MIN or MAX), not only the latest point."""
        return any(c.aggregate in ("MIN", "MAX") for c in self.clauses)


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
      | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<backtick>`[^`]*`)
      | (?P<op>!=|<>|>=|<=|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][\w\-/:]*(?:\.[\w\-/:]+)*)
      | (?P<dot>\.)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # number | string | backtick | op | punct | word | dot | end
    text: str
    at: int  # 1-based position in the filter


def _tokens(text: str) -> list[_Token]:
    found, at = [], 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        match = _TOKEN.match(text, at)
        if match is None or match.end() == at:
            start = at + len(text[at:]) - len(text[at:].lstrip())
            raise _error(text, start + 1, f"unexpected {text[start]!r}")
        kind = match.lastgroup
        start = match.start(kind)
        found.append(_Token(kind, match.group(kind), start + 1))
        at = match.end()
    found.append(_Token("end", "", len(text) + 1))
    return found


def _error(text: str, at: int, what: str) -> FilterError:
    return FilterError(f"--filter {text!r}, position {at}: {what}")


@lru_cache(maxsize=64)
def parse(text: str) -> Filter:
    """The clauses of a filter; FilterError (exit 2) naming the position of the first problem."""
    if not text or not text.strip():
        raise FilterError("--filter is empty; give a search such as \"metrics.r2 > 0.3\" or leave it out")
    return _Parser(text).filter()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, token: _Token, what: str) -> FilterError:
        got = "the end of the filter" if token.kind == "end" else repr(token.text)
        return _error(self.text, token.at, f"{what}, found {got}")

    def keyword(self, *words: str) -> bool:
        """Take the next tokens if they are these words (any case)."""
        ahead = self.tokens[self.i : self.i + len(words)]
        if len(ahead) == len(words) and all(t.kind == "word" and t.text.upper() == w for t, w in zip(ahead, words)):
            self.i += len(words)
            return True
        return False

    def filter(self) -> Filter:
        clauses = [self.clause()]
        while self.peek().kind != "end":
            token = self.peek()
            if token.kind == "word" and token.text.upper() == "OR":
                raise _error(self.text, token.at, "OR is not supported (MLflow's search combines clauses with AND only; run two searches)")
            if not self.keyword("AND"):
                raise self.fail(token, "expected AND between clauses")
            clauses.append(self.clause())
        return Filter(self.text, tuple(clauses))

    def clause(self) -> Clause:
        start = self.peek()
        kind, key, aggregate = self.operand()
        negated = self.keyword("IS", "NOT", "NULL")
        if negated or self.keyword("IS", "NULL"):
            comparator = "IS NOT NULL" if negated else "IS NULL"
            if kind not in (PARAM, TAG):
                raise _error(self.text, start.at, f"{comparator} applies to params and tags only (as in MLflow)")
            return Clause(kind, key, comparator, None)
        negated = self.keyword("NOT", "IN")
        if negated or self.keyword("IN"):
            comparator = "NOT IN" if negated else "IN"
            if not ((kind == ATTRIBUTE and key == "run_id") or kind == DATASET):
                raise _error(self.text, start.at, f"{comparator} applies to attributes.run_id and datasets only (as in MLflow)")
            return Clause(kind, key, comparator, self.values())
        comparator = self.comparator()
        value_token = self.peek()
        value, quoted = self.value()
        numeric = kind == METRIC or (kind == ATTRIBUTE and key in NUMERIC_ATTRIBUTES)
        allowed = NUMERIC_COMPARATORS if numeric else STRING_COMPARATORS
        if comparator not in allowed:
            what = f"{'MIN/MAX/LATEST of ' if aggregate else ''}{kind} {key!r}"
            raise _error(self.text, start.at, f"{comparator} does not apply to {what}; use one of {', '.join(allowed)}")
        if numeric:
            if quoted:
                raise self.fail(value_token, f"expected a number for {kind} {key!r}")
            value = float(value) if kind == METRIC else _integer(self, value_token, value)
        elif not quoted and kind in (ATTRIBUTE, DATASET):
            raise self.fail(value_token, f"expected a quoted string for {kind} {key!r}")
        return Clause(kind, key, comparator, value, aggregate)

    def operand(self) -> tuple[str, str, str | None]:
        token = self.peek()
        if token.kind == "word" and token.text.upper() in AGGREGATES and self.tokens[self.i + 1].text == "(":
            self.i += 2
            kind, key, _ = self.operand()
            if kind != METRIC:
                raise _error(self.text, token.at, f"{token.text.upper()}() takes a metric, e.g. {token.text.upper()}(metrics.rmse)")
            self.expect(")")
            return kind, key, token.text.upper()
        return (*self.identifier(), None)

    def identifier(self) -> tuple[str, str]:
        token = self.take()
        if token.kind == "backtick" or token.kind == "string":  # a bare quoted attribute name
            return self.attribute(token, token.text[1:-1])
        if token.kind != "word":
            raise self.fail(token, "expected metrics.KEY, params.KEY, tags.KEY, attributes.NAME or datasets.NAME")
        head, dot, rest = token.text.partition(".")
        if not dot and self.peek().kind == "dot":  # metrics.`key with spaces`
            self.take()
            quoted = self.take()
            if quoted.kind not in ("backtick", "string", "word"):
                raise self.fail(quoted, f"expected a key after {head!r}.")
            rest = quoted.text[1:-1] if quoted.kind != "word" else quoted.text
            dot = "."
        if not dot:
            return self.attribute(token, head)
        kind = _TYPES.get(head.lower())
        if kind is None:
            raise _error(self.text, token.at, f"unknown type {head!r}; expected metrics, params, tags, attributes or datasets")
        if not rest:
            raise _error(self.text, token.at, f"expected a key after {head!r}.")
        if kind == ATTRIBUTE:
            return self.attribute(token, rest)
        if kind == DATASET and rest not in DATASET_FIELDS:
            raise _error(self.text, token.at, f"unknown dataset field {rest!r}; expected one of {', '.join(DATASET_FIELDS)}")
        return kind, rest

    def attribute(self, token: _Token, name: str) -> tuple[str, str]:
        name = _ATTRIBUTE_ALIASES.get(name, name)
        if name not in STRING_ATTRIBUTES + NUMERIC_ATTRIBUTES:
            raise _error(
                self.text, token.at,
                f"unknown attribute {name!r}; expected one of {', '.join(STRING_ATTRIBUTES + NUMERIC_ATTRIBUTES)}"
                " (or metrics.KEY, params.KEY, tags.KEY, datasets.NAME)",
            )
        return ATTRIBUTE, name

    def comparator(self) -> str:
        token = self.peek()
        if token.kind == "op":
            self.i += 1
            return "!=" if token.text == "<>" else token.text
        for word in ("LIKE", "ILIKE"):
            if self.keyword(word):
                return word
        raise self.fail(token, "expected a comparison (=, !=, <, <=, >, >=, LIKE, ILIKE, IN, IS NULL)")

    def value(self) -> tuple[str, bool]:
        token = self.take()
        if token.kind == "string":
            return _unquote(token.text), True
        if token.kind == "number":
            return token.text, False
        raise self.fail(token, "expected a number or a quoted string")

    def values(self) -> tuple[str, ...]:
        self.expect("(")
        found = []
        while True:
            token = self.take()
            if token.kind != "string":
                raise self.fail(token, "expected a quoted string in the list")
            found.append(_unquote(token.text))
            closing = self.take()
            if closing.text == ")":
                return tuple(found)
            if closing.text != ",":
                raise self.fail(closing, "expected ',' or ')'")

    def expect(self, text: str) -> None:
        token = self.take()
        if token.text != text:
            raise self.fail(token, f"expected {text!r}")


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _integer(parser: _Parser, token: _Token, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise parser.fail(token, "expected a whole number of milliseconds") from None
