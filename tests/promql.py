"""A small PromQL evaluator, for the queries the README gives an operator, over scrapes the tests took.

It knows the subset those queries use: selectors with `=`, `!=`, `=~` and `!~` matchers, `rate`
over a range, `sum` and `max` (optionally `by (...)`), `histogram_quantile`, and `/` between two
vectors. Each instance is scraped twice; `rate(x[5m])` is then the increase between the two scrapes
divided by the seconds between them, and a series missing from the first scrape has no rate, as in
Prometheus (which needs two samples). Every series gets the label `instance`, as a scrape adds it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from prometheus_client.samples import Sample

Labels = frozenset[tuple[str, str]]
Vector = dict[Labels, float]

TOKEN = re.compile(r"\s*(?:(?P<number>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<string>\"[^\"]*\")"
                   r"|(?P<range>\[[0-9]+[smhd]\])|(?P<op>=~|!~|!=|[(){},=/]))")


@dataclass
class Scrapes:
    """Two scrapes of every instance, `seconds` apart: {instance: samples}."""

    before: dict[str, list[Sample]]
    after: dict[str, list[Sample]]
    seconds: float

    def series(self, scrape: dict[str, list[Sample]], name: str) -> Vector:
        out: Vector = {}
        for instance, samples in scrape.items():
            for s in samples:
                if s.name == name:
                    out[frozenset({**s.labels, "__name__": name, "instance": instance}.items())] = s.value
        return out


def tokens(text: str) -> list[tuple[str, str]]:
    out, position = [], 0
    text = text.strip()
    while position < len(text):
        m = TOKEN.match(text, position)
        if m is None or m.end() == position:
            raise ValueError(f"cannot read the query at {text[position:]!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        position = m.end()
    return out


class Parser:
    def __init__(self, text: str, scrapes: Scrapes) -> None:
        self.tokens = tokens(text)
        self.position = 0
        self.scrapes = scrapes

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, value: str | None = None) -> str:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise ValueError(f"expected {value!r} at token {self.position}, got {token}")
        self.position += 1
        return token[1]

    def parse(self) -> Vector:
        result = self.expression()
        if self.peek() is not None:
            raise ValueError(f"unexpected {self.peek()}")
        return result

    def expression(self) -> Vector:
        left = self.term()
        while self.peek() == ("op", "/"):
            self.take("/")
            right = self.term()
            left = {labels: v / right[labels] for labels, v in left.items() if right.get(labels)}
        return left

    def term(self) -> Vector:
        token = self.peek()
        if token is None:
            raise ValueError("the query ends too early")
        kind, value = token
        if kind == "name" and value in ("sum", "max"):
            return self.aggregation()
        if kind == "name" and value == "rate":
            self.take("rate")
            self.take("(")
            name, matchers = self.selector()
            if self.peek() is None or self.peek()[0] != "range":  # type: ignore[index]
                raise ValueError("rate() needs a range")
            self.take()
            self.take(")")
            return self.rate(name, matchers)
        if kind == "name" and value == "histogram_quantile":
            self.take("histogram_quantile")
            self.take("(")
            q = float(self.take())
            self.take(",")
            inner = self.expression()
            self.take(")")
            return histogram_quantile(q, inner)
        if kind == "op" and value == "(":
            self.take("(")
            inner = self.expression()
            self.take(")")
            return inner
        name, matchers = self.selector()
        return select(self.scrapes.series(self.scrapes.after, name), matchers)

    def aggregation(self) -> Vector:
        op = self.take()
        by: list[str] | None = None
        if self.peek() == ("name", "by"):
            self.take("by")
            by = self.label_list()
        self.take("(")
        inner = self.expression()
        self.take(")")
        if self.peek() == ("name", "by"):  # `sum (x) by (l)` is allowed too
            self.take("by")
            by = self.label_list()
        groups: dict[Labels, list[float]] = {}
        for labels, v in inner.items():
            kept = frozenset((k, val) for k, val in labels if by is not None and k in by)
            groups.setdefault(kept, []).append(v)
        return {labels: (sum(vs) if op == "sum" else max(vs)) for labels, vs in groups.items()}

    def label_list(self) -> list[str]:
        self.take("(")
        names = [self.take()]
        while self.peek() == ("op", ","):
            self.take(",")
            names.append(self.take())
        self.take(")")
        return names

    def selector(self) -> tuple[str, list[tuple[str, str, str]]]:
        name = self.take()
        matchers = []
        if self.peek() == ("op", "{"):
            self.take("{")
            while self.peek() != ("op", "}"):
                label, op, text = self.take(), self.take(), self.take()
                matchers.append((label, op, text.strip('"')))
                if self.peek() == ("op", ","):
                    self.take(",")
            self.take("}")
        return name, matchers

    def rate(self, name: str, matchers: list[tuple[str, str, str]]) -> Vector:
        before = select(self.scrapes.series(self.scrapes.before, name), matchers)
        after = select(self.scrapes.series(self.scrapes.after, name), matchers)
        # rate() drops the metric name, as Prometheus does.
        return {without_name(labels): (v - before[labels]) / self.scrapes.seconds
                for labels, v in after.items() if labels in before}


def without_name(labels: Labels) -> Labels:
    return frozenset((k, v) for k, v in labels if k != "__name__")


def select(series: Vector, matchers: list[tuple[str, str, str]]) -> Vector:
    def matches(labels: Labels) -> bool:
        given = dict(labels)
        for label, op, pattern in matchers:
            value = given.get(label, "")
            ok = {"=": value == pattern, "!=": value != pattern,
                  "=~": re.fullmatch(pattern, value) is not None, "!~": re.fullmatch(pattern, value) is None}[op]
            if not ok:
                return False
        return True

    return {labels: v for labels, v in series.items() if matches(labels)}


def histogram_quantile(q: float, buckets: Vector) -> Vector:
    """Prometheus's estimate: find the bucket holding rank q * count, interpolate linearly in it."""
    groups: dict[Labels, list[tuple[float, float]]] = {}
    for labels, v in buckets.items():
        le = dict(labels)["le"]
        rest = frozenset((k, val) for k, val in labels if k not in ("le", "__name__"))
        groups.setdefault(rest, []).append((math.inf if le == "+Inf" else float(le), v))
    out: Vector = {}
    for labels, pairs in groups.items():
        pairs.sort()
        total = pairs[-1][1]
        if total == 0 or pairs[-1][0] != math.inf:
            out[labels] = math.nan
            continue
        rank = q * total
        index = next(i for i, (_, count) in enumerate(pairs) if count >= rank)
        if index == len(pairs) - 1:
            out[labels] = pairs[-2][0]
            continue
        start = pairs[index - 1][0] if index > 0 else 0.0
        below = pairs[index - 1][1] if index > 0 else 0.0
        end, count = pairs[index]
        out[labels] = start + (end - start) * (rank - below) / (count - below)
    return out


def evaluate(query: str, scrapes: Scrapes) -> dict[tuple[tuple[str, str], ...], float]:
    """The query's result as {sorted label pairs: value}."""
    return {tuple(sorted(labels)): v for labels, v in Parser(query, scrapes).parse().items()}


def readme_queries(text: str, section: str = "## Observability") -> dict[str, str]:
    """The README's PromQL queries of `section`: {the comment line above each: the query}."""
    body = text.split(section, 1)[1].split("\n## ", 1)[0]
    queries: dict[str, str] = {}
    for block in re.findall(r"```promql\n(.*?)```", body, re.S):
        title = None
        for line in block.splitlines():
            if line.startswith("#"):
                title = line.lstrip("# ").strip()
            elif line.strip() and title is not None:
                queries[title] = (queries.get(title, "") + " " + line.strip()).strip()
    return queries


def as_dict(result: dict[tuple[tuple[str, str], ...], float], label: str) -> dict[str, Any]:
    """A result grouped by one label: {value of `label`: value}."""
    return {dict(labels).get(label, ""): v for labels, v in result.items()}
