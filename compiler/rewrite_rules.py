"""Rewrite rules and their registry: `Rule`, `@rewrite_rule("name", benefit=...)`, `RULES`.

A rule is a class with three methods:

    @rewrite_rule("fold-double-transpose", benefit=2)
    class DoubleTranspose(Rule):
        \"\"\"Transpose(Transpose(x)) ==> one Transpose with the composed permutation.\"\"\"
        def pattern(self, op, x):
            return op.Transpose(op.Transpose(x, _name="inner"), _name="outer")
        def check(self, m):
            if m.attr("inner", "perm", None) is None or m.attr("outer", "perm", None) is None:
                return "a permutation is implicit (reversal); the rank is needed to compose it"
        def rewrite(self, op, m):
            inner, outer = m.attr("inner", "perm"), m.attr("outer", "perm")
            return op.Transpose(m["x"], perm=[inner[i] for i in outer])

`pattern(self, op, *variables)` describes what to find with the op builder (see
`mdoc.rewrite_pattern`); `check(self, m)` may refuse with a reason string
(None or True accept); `rewrite(self, op, m)` returns the replacement value(s)
for what the pattern returns, built with the same op builder, or existing
values of the match (`return m["x"]`). See `mdoc.rewrite_match.Match` for `m`.

Class-level options: `benefit` (higher is tried first; set by the decorator),
`commute = True` (every commutative op of the pattern matches either operand
order), `keep_shared = True` (matched intermediate nodes with users outside
the match are kept instead of refusing the rewrite).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, ClassVar

from .errors import MdocError
from .rewrite_pattern import Pattern, compile_pattern

RULES: dict[str, type["Rule"]] = {}


class Rule:
    """Base of rewrite rules. Subclass it, write `pattern` and `rewrite` (and maybe `check`), register it
    with `@rewrite_rule("kebab-name")`."""

    name: ClassVar[str] = ""
    benefit: ClassVar[int] = 1
    commute: ClassVar[bool] = False
    keep_shared: ClassVar[bool] = False

    def pattern(self, op, *variables):
        """Return the value(s) to replace, built with `op`; parameters after `op` are variables."""
        raise NotImplementedError(f"rule {type(self).__name__} has no pattern()")

    def check(self, m) -> str | bool | None:
        """Return a reason (a string) to refuse this match; None or True to accept it."""
        return None

    def rewrite(self, op, m):
        """Return the replacement(s), one per value the pattern returns (or None to decline)."""
        raise NotImplementedError(f"rule {type(self).__name__} has no rewrite()")

    # -- used by the driver ------------------------------------------------------------
    @property
    def rule_name(self) -> str:
        return type(self).name or type(self).__name__

    @property
    def compiled(self) -> Pattern:
        """The rule's pattern, compiled once per class."""
        cls = type(self)
        pattern = cls.__dict__.get("_compiled_pattern")
        if pattern is None:
            pattern = compile_pattern(self.rule_name, self.pattern)
            cls._compiled_pattern = pattern
        return pattern

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def __repr__(self) -> str:
        return f"<Rule {self.rule_name} benefit={self.benefit}>"


def rewrite_rule(name: str, benefit: int = 1):
    """Class decorator: register a Rule under `name` (kebab-case, unique) and compile its pattern now,
    so a broken pattern fails at import with the rule's name."""
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name):
        raise MdocError(f"rewrite rule name '{name}' is not kebab-case")

    def wrap(cls):
        if not (isinstance(cls, type) and issubclass(cls, Rule)):
            raise MdocError(f"@rewrite_rule('{name}') decorates {cls!r}, which is not a subclass of Rule")
        other = RULES.get(name)
        if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
            raise MdocError(f"rewrite rule '{name}' is registered twice: by {other.__module__}.{other.__qualname__} "
                            f"and {cls.__module__}.{cls.__qualname__}")
        cls.name = name
        cls.benefit = benefit
        cls._compiled_pattern = None
        cls().compiled  # noqa: B018 - compile now, fail early
        RULES[name] = cls  # a module loaded again (a plugin) replaces its own rule
        return cls

    return wrap


def get_rule(name: str) -> type[Rule]:
    """The registered rule `name`; rules of the `mdoc.passes` entry points are loaded on demand."""
    if name not in RULES:
        from .pass_manager import load_passes

        load_passes()
    cls = RULES.get(name)
    if cls is None:
        known = ", ".join(sorted(RULES)) or "none registered"
        raise MdocError(f"unknown rewrite rule '{name}' (known rules: {known})")
    return cls


def resolve_rules(rules: Iterable[Any]) -> list[Rule]:
    """Rule names, Rule classes or Rule instances -> instances, highest benefit first (stable)."""
    if isinstance(rules, str | Rule) or (isinstance(rules, type) and issubclass(rules, Rule)):
        rules = [rules]
    out: list[Rule] = []
    for r in rules:
        if isinstance(r, str):
            r = get_rule(r)()
        elif isinstance(r, type) and issubclass(r, Rule):
            r = r()
        elif not isinstance(r, Rule):
            raise MdocError(f"{r!r} is not a rewrite rule (give a rule name, a Rule class or a Rule)")
        r.compiled  # noqa: B018 - unregistered rules compile here
        out.append(r)
    return sorted(out, key=lambda r: -r.benefit)
