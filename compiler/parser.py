"""The textual IR, reading side: `parse_model(print_model(m))` gives back an equivalent model.

Grammar (EBNF; `#` starts a comment that runs to the end of the line):

    module     = [ "module" "{" [ field { "," field } ] "}" ] graph EOF
    field      = "ir_version" "=" INT | "producer_name" "=" STRING | "producer_version" "=" STRING
               | "opset_imports" "=" "{" [ STRING "=" INT { "," STRING "=" INT } ] "}"
               | "metadata" "=" "{" [ STRING "=" STRING { "," STRING "=" STRING } ] "}"
    graph      = "graph" GRAPHNAME "(" [ VALUE ":" type { "," VALUE ":" type } ] ")"
                 "->" "(" [ output { "," output } ] ")" "{" { node } "return" [ VALUE { "," VALUE } ] "}"
    output     = [ VALUE ":" ] type                    (export name of the returned value, and its type)
    node       = [ VALUE { "," VALUE } "=" ] OPNAME "(" [ operand { "," operand } ] ")"
                 [ "{" [ attr { "," attr } ] "}" ] [ ":" type { "," type } ]
                 [ "loc" "(" STRING ")" ] [ "from" "(" STRING ")" ]
    operand    = VALUE | "none"
    attr       = ( WORD | STRING ) "=" attrvalue
    attrvalue  = INT | FLOAT | "true" | "false" | STRING | BYTES | "[" [ attrvalue { "," attrvalue } ] "]"
               | "dense" "<" elements ">" [ ":" type ] | "resource" "<" STRING ">" [ ":" type ]
               | "type" "<" type ">" | graph
    elements   = element | "[" [ elements { "," elements } ] "]"
    element    = INT | FLOAT | "true" | "false" | STRING | BYTES | "(" number "," number ")"   (complex)
    number     = INT | FLOAT
    type       = "?" | "seq" "<" type ">" | "opt" "<" type ">" | DTYPE "[" ( "*" | [ dim { "," dim } ] ) "]"
    dim        = INT | "?" | WORD | STRING
    VALUE      = "%" ( IDENT | DIGITS | STRING )        (%12 is a value without a name hint)
    GRAPHNAME  = "@" ( IDENT | STRING )
    OPNAME     = WORD | STRING
    IDENT      = [A-Za-z_][A-Za-z0-9_.]*                 (WORD is the same)
    FLOAT      = a number with "." or an exponent | "nan" | "inf" | "-inf"

Meaning:

* A value is defined once, before its uses; a nested graph sees the values of the
  graphs around it (implicit capture), so a name may not be defined again while the
  earlier definition is in scope.
* A returned value takes the export name its output entry gives it (its name hint); a
  value returned twice must get the same name both times. An entry with just a type
  leaves the value's name alone. Result types may be left out (they are then `?`); an
  output's declared type then becomes the returned value's type.
* `dense<...>` and `resource<...>` take their element type and shape from `: type`;
  only an `onnx.Constant`'s `value` may leave it out and use the result type.
* The module header may be left out (defaults: IR version 8, opset 17, producer "mdoc").

Errors are one-line `ParseError("<line>:<col>: <message>")`s; a syntax error says what was
expected and what was found ("expected ')' after ..., found '{'").
"""

from __future__ import annotations

import bisect
import json
import os
import re
import sys
import zipfile
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import onnx

from .errors import MdocError, ParseError
from .ir import CONSTANT, Graph, Model, Value
from .limits import MAX_NESTED_BODIES
from .printer import NOT_INLINE, RESOURCE_INDEX, print_type
from .types import UNKNOWN, DType, OptionalType, SequenceType, TensorType, Type, type_to_onnx

__all__ = ["parse_model", "parse_graph", "parse_type", "load_mdir", "load_resources"]

_DTYPES = {d.text: d for d in DType}
_INTS = {DType.U8, DType.I8, DType.U16, DType.I16, DType.I32, DType.I64, DType.U32, DType.U64}
_FLOATS = {DType.F16, DType.BF16, DType.F32, DType.F64}
_MAX_DEPTH = 100

# -- tokens ----------------------------------------------------------------------

_STR = r'"(?:[^"\\\n\r]|\\[^\n\r])*"'
_TOKEN = re.compile(rf"""
  (?:[ \t\r\n]+|\#[^\n]*)*        # whitespace and comments before each token
  (?: (?P<punct>[(){{}}\[\]<>,=:?*])
    | (?P<value>%(?:[A-Za-z_][A-Za-z0-9_.]*|[0-9]+|{_STR}))
    | (?P<number>-?[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?(?![A-Za-z0-9_.])|-inf(?![A-Za-z0-9_.]))
    | (?P<bytes>b{_STR})
    | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    | (?P<string>{_STR})
    | (?P<gname>@(?:[A-Za-z_][A-Za-z0-9_.]*|{_STR}))
    | (?P<arrow>->)
    | (?P<end>\Z)
    | (?P<error>[\s\S]))
""", re.VERBOSE)

EOF = "eof"


class _Tok(NamedTuple):
    kind: str          # value, gname, bytes, string, number, word, punct, arrow or eof
    key: str | None    # the text of a word, punctuation or '->', for quick checks; None for the rest
    text: str          # the source text
    pos: int           # offset in the source
    value: Any = None  # the decoded string, bytes or name (an int for %12)


class _Pending:
    """A `dense<...>` or `resource<...>` still waiting for its type (a Constant's value)."""

    def __init__(self, kind: str, body: Any, tok: _Tok):
        self.kind, self.body, self.tok = kind, body, tok


class _List:
    __slots__ = ("items", "tok")

    def __init__(self, items: list, tok: _Tok):
        self.items, self.tok = items, tok


def _decode_bytes(body: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1]
            if nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", body[i + 2:i + 4]):
                out.append(int(body[i + 2:i + 4], 16))
                i += 4
                continue
            simple = {"\\": 0x5C, '"': 0x22, "n": 0x0A, "r": 0x0D, "t": 0x09, "0": 0x00}
            if nxt in simple:
                out.append(simple[nxt])
                i += 2
                continue
            raise ValueError(f"unknown escape '\\{nxt}' in bytes (use \\xNN)")
        if not 0x20 <= ord(c) < 0x7F:
            raise ValueError("bytes literals hold printable ASCII and \\xNN escapes only")
        out.append(ord(c))
        i += 1
    return bytes(out)


class _Parser:
    def __init__(self, text: str, resources: Mapping[str, np.ndarray] | None):
        self.text = text
        self.resources = resources
        self._line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]
        self.toks = self._tokenize(text)
        self.i = 0
        self.scopes: list[dict] = []
        self.depth = 0
        self.export_names: dict[Value, tuple[str, _Tok]] = {}

    # positions and errors
    def where(self, pos: int) -> str:
        line = bisect.bisect_right(self._line_starts, pos)
        return f"{line}:{pos - self._line_starts[line - 1] + 1}"

    def fail(self, tok: _Tok, message: str) -> ParseError:
        return ParseError(f"{self.where(tok.pos)}: {message}")

    def describe(self, tok: _Tok) -> str:
        if tok.kind == EOF:
            return "end of input"
        text = tok.text if len(tok.text) <= 24 else tok.text[:21] + "..."
        return repr(text) if "'" not in text else json.dumps(text)

    def expected(self, what: str, tok: _Tok | None = None) -> ParseError:
        tok = tok or self.peek()
        return self.fail(tok, f"expected {what}, found {self.describe(tok)}")

    def _tokenize(self, text: str) -> list[_Tok]:
        toks: list[_Tok] = []
        append, make = toks.append, tuple.__new__  # tuple.__new__ builds a _Tok faster than _Tok(...)
        for m in _TOKEN.finditer(text):
            kind = m.lastgroup
            s, pos = m.group(kind), m.start(kind)
            if kind in ("word", "punct", "arrow"):
                append(make(_Tok, (kind, s, s, pos, None)))
            elif kind == "number":
                append(make(_Tok, (kind, None, s, pos, None)))
            elif kind == "end":
                break
            elif kind == "error":
                bad = _Tok(kind, None, s, pos)
                if s == '"' or text.startswith(('%"', '@"'), pos):
                    raise self.fail(bad, "unterminated string (strings end with '\"' on the same line)")
                if s in "%@":
                    raise self.fail(bad, f"expected a name after '{s}' (an identifier, digits or a quoted string)")
                raise self.fail(bad, f"unexpected character {s!r}")
            else:
                append(_Tok(kind, None, s, pos, self._decode(kind, s, pos)))
        toks.append(_Tok(EOF, None, "", len(text)))
        return toks

    def _decode(self, kind: str, s: str, pos: int) -> Any:
        """The value of a string, bytes, %value or @graph token."""
        try:
            if kind == "string":
                return json.loads(s)
            if kind == "bytes":
                return _decode_bytes(s[2:-1])
            body = s[1:]
            if body.startswith('"'):
                return json.loads(body)
            if kind == "value" and body[0].isdigit():
                if len(body) > 18:
                    raise self.fail(_Tok(kind, None, s, pos), f"value number {s[:12]}... is too long")
                return int(body)
            return body
        except json.JSONDecodeError as e:
            raise self.fail(_Tok(kind, None, s, pos + s.index('"') + e.pos), f"bad string literal: {e.msg}") from None
        except ValueError as e:
            raise self.fail(_Tok(kind, None, s, pos), f"bad string literal: {e}") from None

    # token helpers
    def peek(self) -> _Tok:
        return self.toks[self.i]

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind != EOF:
            self.i += 1
        return tok

    def at(self, key: str) -> bool:
        """Whether the next token is the word, punctuation or arrow `key`."""
        return self.toks[self.i].key == key

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.next()
            return True
        return False

    def expect(self, text: str, context: str = "") -> _Tok:
        if not self.at(text):
            raise self.expected(f"'{text}'{context}")
        return self.next()

    def expect_kind(self, kind: str, what: str) -> _Tok:
        if self.peek().kind != kind:
            raise self.expected(what)
        return self.next()

    def int_token(self, what: str) -> int:
        tok = self.peek()
        if tok.kind != "number" or not _is_int_text(tok.text):
            raise self.expected(what)
        self.next()
        return self._int(tok)

    def _float_token(self, tok: _Tok) -> float:
        x = float(tok.text)
        if np.isinf(x) and "inf" not in tok.text:
            raise self.fail(tok, f"{tok.text} is too large for a float (write inf for infinity)")
        return x

    def _int(self, tok: _Tok) -> int:
        try:
            return int(tok.text)
        except ValueError:
            raise self.fail(tok, "integer has too many digits") from None

    # module
    def module(self) -> Model:
        fields: dict[str, Any] = {}
        if self.at("module"):
            self.next()
            self.expect("{", " after 'module'")
            while not self.at("}"):
                if fields:
                    self.expect(",", " or '}' between module fields")
                key_tok = self.expect_kind("word", "a module field (ir_version, opset_imports, producer_name, "
                                                   "producer_version or metadata)")
                key = key_tok.text
                if key in fields:
                    raise self.fail(key_tok, f"module field '{key}' is given twice")
                self.expect("=", f" after '{key}'")
                if key == "ir_version":
                    fields[key] = self.int_token("an integer IR version")
                elif key in ("producer_name", "producer_version"):
                    fields[key] = self.expect_kind("string", f"a quoted {key.replace('_', ' ')}").value
                elif key == "opset_imports":
                    fields[key] = self.string_dict(lambda: self.int_token("an integer opset version"))
                elif key == "metadata":
                    fields[key] = self.string_dict(lambda: self.expect_kind("string", "a quoted value").value)
                else:
                    raise self.fail(key_tok, f"unknown module field '{key}' (expected ir_version, opset_imports, "
                                             "producer_name, producer_version or metadata)")
            self.next()
        if not self.at("graph"):
            raise self.expected("'graph'" if fields else "'module' or 'graph'")
        graph = self.graph()
        if self.peek().kind != EOF:
            raise self.expected("end of input after the graph")
        model = Model(graph, ir_version=fields.get("ir_version", 8), producer_name=fields.get("producer_name", "mdoc"),
                      producer_version=fields.get("producer_version", ""), metadata=fields.get("metadata"))
        if "opset_imports" in fields:
            model.opset_imports = fields["opset_imports"]  # kept as written, even when empty
        return model

    def string_dict(self, item) -> dict:
        self.expect("{")
        out: dict = {}
        while not self.at("}"):
            if out:
                self.expect(",", " or '}'")
            key_tok = self.expect_kind("string", "a quoted key")
            if key_tok.value in out:
                raise self.fail(key_tok, f"key {json.dumps(key_tok.value)} is given twice")
            self.expect("=", " after the key")
            out[key_tok.value] = item()
        self.next()
        return out

    # scopes
    def lookup(self, tok: _Tok) -> Value:
        for scope in reversed(self.scopes):
            if tok.value in scope:
                return scope[tok.value][0]
        raise self.fail(tok, f"undefined value {tok.text} (a value must be defined before its uses, "
                             "in this graph or one around it)")

    def check_new(self, tok: _Tok) -> None:
        for scope in self.scopes:
            if tok.value in scope:
                raise self.fail(tok, f"value {tok.text} is already defined at {self.where(scope[tok.value][1])}")

    def define(self, tok: _Tok, value: Value) -> None:
        self.check_new(tok)
        self.scopes[-1][tok.value] = (value, tok.pos)

    # graphs
    def graph(self) -> Graph:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.fail(self.peek(), f"graphs nested more than {_MAX_DEPTH} deep")
        if len(self.scopes) > MAX_NESTED_BODIES:  # bodies inside bodies: an ONNX file holds no deeper
            raise self.fail(self.peek(), f"bodies nested more than {MAX_NESTED_BODIES} deep (more than ONNX can hold)")
        self.expect("graph")
        name = self.expect_kind("gname", "a graph name such as @main").value
        g = Graph(name)
        self.scopes.append({})
        self.expect("(", " to open the graph's inputs")
        while not self.at(")"):
            if g.inputs:
                self.expect(",", " or ')' between graph inputs")
            tok = self.expect_kind("value", "a graph input such as %x")
            self.expect(":", f" and a type after input {tok.text}")
            v = g.add_input(self.type(), _hint(tok))
            self.define(tok, v)
        self.next()
        self.expect("->", " after the graph's inputs")
        self.expect("(", " to open the graph's outputs")
        outputs: list[tuple[str | None, Type, _Tok]] = []
        while not self.at(")"):
            if outputs:
                self.expect(",", " or ')' between graph outputs")
            tok = self.peek()
            name_ = None
            if tok.kind == "value":
                self.next()
                name_ = _hint(tok) or None
                self.expect(":", f" and a type after output {tok.text}")
            outputs.append((name_, self.type(), tok))
        self.next()
        self.expect("{", " to open the graph's body")
        while not self.at("return"):
            if self.at("}"):
                raise self.expected("'return' before the '}' that closes the graph")
            self.node(g)
        ret_tok = self.next()
        returned: list[tuple[Value, _Tok]] = []
        if not self.at("}"):
            while True:
                tok = self.expect_kind("value", "a returned value such as %y")
                returned.append((self.lookup(tok), tok))
                if not self.accept(","):
                    break
        self.expect("}", " to close the graph (after 'return')")
        if len(returned) != len(outputs):
            raise self.fail(ret_tok, f"graph @{name} declares {_count(len(outputs), 'output')} but returns "
                                          f"{_count(len(returned), 'value')}")
        for (export, declared, decl_tok), (v, tok) in zip(outputs, returned):
            self._bind_output(v, tok, export, declared, decl_tok)
            g.outputs.append(v)
        self.scopes.pop()
        self.depth -= 1
        return g

    def _bind_output(self, v: Value, tok: _Tok, export: str | None, declared: Type, decl_tok: _Tok) -> None:
        if v.type != declared:
            if v.type != UNKNOWN:
                raise self.fail(tok, f"{tok.text} has type {_type_text(v.type)} but the graph declares "
                                     f"this output as {_type_text(declared)} at {self.where(decl_tok.pos)}")
            v.type = declared
        if export is None:
            return
        if v in self.export_names and self.export_names[v][0] != export:
            first, first_tok = self.export_names[v]
            raise self.fail(decl_tok, f"{tok.text} is returned as {json.dumps(export)} here but as "
                                      f"{json.dumps(first)} at {self.where(first_tok.pos)}; a value has "
                                      "one name (return an onnx.Identity of it for a second name)")
        self.export_names[v] = (export, decl_tok)
        v.name = export

    # nodes
    def node(self, g: Graph) -> None:
        results: list[_Tok] = []
        if self.peek().kind == "value":
            while True:
                tok = self.expect_kind("value", "a result name such as %y")
                self.check_new(tok)
                if any(r.value == tok.value for r in results):
                    raise self.fail(tok, f"result {tok.text} is named twice")
                results.append(tok)
                if not self.accept(","):
                    break
            self.expect("=", " after the results")
        op_tok = self.peek()
        if op_tok.kind not in ("word", "string") or (op_tok.kind == "word" and op_tok.text == "return"):
            raise self.expected("an op name such as onnx.Relu" if results else "a node or 'return'")
        self.next()
        op = op_tok.text if op_tok.kind == "word" else op_tok.value
        self.expect("(", f" after the op name {op_tok.text}")
        inputs: list[Value | None] = []
        while not self.at(")"):
            if inputs:
                self.expect(",", " or ')' between operands")
            tok = self.peek()
            if tok.kind == "value":
                inputs.append(self.lookup(self.next()))
            elif self.at("none"):
                self.next()
                inputs.append(None)
            else:
                raise self.expected("an operand (%value or none)")
        self.next()
        while inputs and inputs[-1] is None:
            inputs.pop()
        attrs: dict[str, Any] = {}
        if self.at("{"):
            attrs = self.attr_dict()
        types: list[Type] = [UNKNOWN] * len(results)
        if self.at(":"):
            colon = self.next()
            if not results:
                raise self.fail(colon, f"{op} has no results, so it takes no ': type'")
            types = [self.type()]
            for k in range(2, len(results) + 1):
                self.expect(",", f" before the type of result {k} ({op} has {len(results)} results)")
                types.append(self.type())
            if self.at(","):
                raise self.fail(self.peek(), f"{op} has {_count(len(results), 'result')}, so it takes "
                                             f"{_count(len(results), 'type')} after ':'")
        loc = prov = ""
        if self.at("loc"):
            self.next()
            self.expect("(", " after 'loc'")
            loc = self.expect_kind("string", "a quoted node name").value
            self.expect(")", " after the node name")
        if self.at("from"):
            self.next()
            self.expect("(", " after 'from'")
            prov = self.expect_kind("string", "a quoted rule name").value
            self.expect(")", " after the rule name")
        for key, value in attrs.items():
            if isinstance(value, _Pending):
                kw = value.tok.text
                if not (op == CONSTANT and key == "value" and len(types) == 1):
                    raise self.fail(value.tok, f"{kw}<...> needs a type here: write {kw}<...> : T (only the "
                                               "value of an onnx.Constant may take its type from the result)")
                if not _is_array_type(types[0]):
                    raise self.fail(value.tok, f"{kw}<...> takes its type from the result, which must be "
                                               f"{_ARRAY_TYPE}, not {_type_text(types[0])}")
                attrs[key] = self.tensor(value, types[0])
        node = g.add(op, inputs, attrs, outputs=types, name=loc, output_names=[_hint(t) for t in results],
                     provenance=prov)
        for tok, v in zip(results, node.outputs):
            self.define(tok, v)

    # attributes
    def attr_dict(self) -> dict[str, Any]:
        self.expect("{")
        attrs: dict[str, Any] = {}
        first = True
        while not self.at("}"):
            if not first:
                self.expect(",", " or '}' between attributes")
            first = False
            key_tok = self.peek()
            if key_tok.kind not in ("word", "string"):
                raise self.expected("an attribute name")
            self.next()
            key = key_tok.text if key_tok.kind == "word" else key_tok.value
            if key in attrs:
                raise self.fail(key_tok, f"attribute '{key}' is given twice")
            self.expect("=", f" after attribute '{key}'")
            attrs[key] = self.attr_value(top=True)
        self.next()
        return attrs

    def attr_value(self, top: bool = False) -> Any:
        tok = self.peek()
        if tok.kind == "number":
            self.next()
            return self._int(tok) if _is_int_text(tok.text) else self._float_token(tok)
        if tok.kind == "string":
            self.next()
            return tok.value
        if tok.kind == "bytes":
            self.next()
            return tok.value
        if tok.kind == "word":
            if tok.text in ("true", "false"):
                self.next()
                return tok.text == "true"
            if tok.text in ("nan", "inf"):
                self.next()
                return float(tok.text)
            if tok.text in ("dense", "resource"):
                return self.tensor_attr(top)
            if tok.text == "type":
                self.next()
                self.expect("<", " after 'type'")
                t = self.type()
                self.expect(">", " to close type<...>")
                return type_to_onnx(t) or onnx.TypeProto()
            if tok.text == "graph":
                return self.graph()
        if self.at("["):
            self.next()
            self.depth += 1
            if self.depth > _MAX_DEPTH:
                raise self.fail(tok, f"lists nested more than {_MAX_DEPTH} deep")
            items = []
            while not self.at("]"):
                if items:
                    self.expect(",", " or ']' in the list")
                items.append(self.attr_value())
            self.next()
            self.depth -= 1
            return tuple(items)
        raise self.expected("an attribute value (a number, \"string\", b\"bytes\", true, false, [list], "
                            "dense<...>, resource<...>, type<...> or a graph)")

    def tensor_attr(self, top: bool) -> Any:
        kw = self.next()
        self.expect("<", f" after '{kw.text}'")
        if kw.text == "dense":
            body = self.elements(0)
        else:
            body = self.expect_kind("string", "a quoted resource name")
        self.expect(">", f" to close {kw.text}<...>")
        pending = _Pending(kw.text, body, kw)
        if self.at(":"):
            self.next()
            t_tok = self.peek()
            t = self.type()
            if not _is_array_type(t):
                raise self.fail(t_tok, f"the type of {kw.text}<...> must be {_ARRAY_TYPE}, not {_type_text(t)}")
            return self.tensor(pending, t)
        if not top:
            raise self.expected(f"':' and the type of the {kw.text}<...> tensor")
        return pending

    def elements(self, level: int) -> Any:
        tok = self.peek()
        if self.at("["):
            if level > _MAX_DEPTH:
                raise self.fail(tok, f"dense<...> nested more than {_MAX_DEPTH} deep")
            self.next()
            items = []
            while not self.at("]"):
                if items:
                    self.expect(",", " or ']' between elements")
                items.append(self.elements(level + 1))
            self.next()
            return _List(items, tok)
        if self.at("("):
            self.next()
            re_ = self._number_element("the real part of a complex number")
            self.expect(",", " between the real and imaginary parts")
            im = self._number_element("the imaginary part of a complex number")
            self.expect(")", " after the imaginary part")
            return ("complex", complex(re_, im), tok)
        if tok.kind == "number":
            self.next()
            if _is_int_text(tok.text):
                return ("int", self._int(tok), tok)
            return ("float", self._float_token(tok), tok)
        if tok.kind == "word" and tok.text in ("nan", "inf"):
            self.next()
            return ("float", float(tok.text), tok)
        if tok.kind == "word" and tok.text in ("true", "false"):
            self.next()
            return ("bool", tok.text == "true", tok)
        if tok.kind in ("string", "bytes"):
            self.next()
            return (tok.kind, tok.value, tok)
        raise self.expected("a tensor element (number, true, false, \"string\") or '['")

    def _number_element(self, what: str) -> float:
        tok = self.peek()
        if tok.kind == "number":
            self.next()
            if _is_int_text(tok.text):
                return self._float(("int", self._int(tok), tok), DType.F64)
            return self._float_token(tok)
        if tok.kind == "word" and tok.text in ("nan", "inf"):
            self.next()
            return float(tok.text)
        raise self.expected(what)

    def tensor(self, pending: _Pending, t: TensorType) -> np.ndarray:
        if pending.kind == "resource":
            return self.resource(pending.body.value, pending.body, t)
        if t.dtype in NOT_INLINE:
            raise self.fail(pending.tok, f"{t.dtype.text} tensors cannot be written inline; use resource<\"name\">")
        leaves: list = []
        self._collect(pending.body, t.shape, 0, leaves, t)
        return self._array(leaves, t)

    def _collect(self, node: Any, shape: tuple, level: int, leaves: list, t: TensorType) -> None:
        if level == len(shape):
            if isinstance(node, _List):
                raise self.fail(node.tok, f"expected an element, found a list: dense<...> is nested deeper "
                                          f"than its type {_type_text(t)} says")
            leaves.append(node)
            return
        if not isinstance(node, _List):
            raise self.fail(node[2], f"expected a list of {shape[level]} elements for dimension {level} of "
                                     f"{_type_text(t)}, found {self.describe(node[2])}")
        if len(node.items) != shape[level]:
            raise self.fail(node.tok, f"dimension {level} of {_type_text(t)} has size {shape[level]} but this "
                                      f"list has {_count(len(node.items), 'element')}")
        for item in node.items:
            self._collect(item, shape, level + 1, leaves, t)

    def _array(self, leaves: list, t: TensorType) -> np.ndarray:
        dtype = t.dtype
        np_dtype = dtype.numpy
        shape = t.shape

        def bad(leaf, what: str) -> ParseError:
            return self.fail(leaf[2], f"expected {what} for {_type_text(t)}, found {self.describe(leaf[2])}")

        if dtype is DType.BOOL:
            for leaf in leaves:
                if leaf[0] != "bool":
                    raise bad(leaf, "true or false")
            return np.array([leaf[1] for leaf in leaves], dtype=np.bool_).reshape(shape)
        if dtype in _INTS:
            info = np.iinfo(np_dtype)
            for leaf in leaves:
                if leaf[0] != "int":
                    raise bad(leaf, "an integer")
                if not info.min <= leaf[1] <= info.max:
                    raise self.fail(leaf[2], f"{leaf[1]} does not fit {dtype.text} ({info.min} to {info.max})")
            return np.array([leaf[1] for leaf in leaves], dtype=np_dtype).reshape(shape)
        if dtype in _FLOATS:
            for leaf in leaves:
                if leaf[0] not in ("int", "float"):
                    raise bad(leaf, "a number")
            wide = np.array([self._float(leaf, dtype) for leaf in leaves], dtype=np.float64)
            with np.errstate(over="ignore", invalid="ignore"):
                arr = wide.astype(np_dtype)
                lost = np.isfinite(wide) & ~np.isfinite(arr.astype(np.float64))
            if lost.any():
                leaf = leaves[int(np.argmax(lost))]
                raise self.fail(leaf[2], f"{leaf[2].text} does not fit {dtype.text}")
            return arr.reshape(shape)
        if dtype in (DType.C64, DType.C128):
            for leaf in leaves:
                if leaf[0] not in ("int", "float", "complex"):
                    raise bad(leaf, "a number or (real, imag)")
            values = [leaf[1] if leaf[0] == "complex" else complex(self._float(leaf, dtype)) for leaf in leaves]
            return np.array(values, dtype=np_dtype).reshape(shape)
        if dtype is DType.STR:
            arr = np.empty(len(leaves), dtype=object)
            for i, leaf in enumerate(leaves):
                if leaf[0] not in ("string", "bytes"):
                    raise bad(leaf, "a \"string\" or b\"bytes\"")
                arr[i] = leaf[1]
            return arr.reshape(shape)
        raise self.fail(leaves[0][2] if leaves else self.peek(), f"{dtype.text} tensors cannot be written inline")

    def _float(self, leaf: tuple, dtype: DType) -> float:
        try:
            return float(leaf[1])
        except OverflowError:
            raise self.fail(leaf[2], f"{leaf[2].text} does not fit {dtype.text}") from None

    def resource(self, name: str, tok: _Tok, t: TensorType) -> np.ndarray:
        if self.resources is None:
            raise self.fail(tok, f"resource {json.dumps(name)} has no data: no resources were given "
                                 "(load the .mdir file together with its .npz)")
        if name not in self.resources:
            raise self.fail(tok, f"resource {json.dumps(name)} is missing from the resources given")
        arr = np.asarray(self.resources[name])
        try:
            have = TensorType(DType.STR if arr.dtype.kind in "SUO" else DType.from_numpy(arr.dtype),
                              tuple(int(d) for d in arr.shape))
        except (ValueError, KeyError, TypeError):
            raise self.fail(tok, f"resource {json.dumps(name)} has numpy dtype {arr.dtype}, "
                                 "which has no ONNX element type") from None
        if have != t:
            raise self.fail(tok, f"resource {json.dumps(name)} holds {_type_text(have)} but its type here "
                                 f"is {_type_text(t)}")
        return arr

    # types
    def type(self) -> Type:
        self.depth += 1
        try:
            if self.depth > _MAX_DEPTH:
                raise self.fail(self.peek(), f"types nested more than {_MAX_DEPTH} deep")
            tok = self.peek()
            if self.at("?"):
                self.next()
                return UNKNOWN
            if tok.kind == "word" and tok.text in ("seq", "opt"):
                self.next()
                self.expect("<", f" after '{tok.text}'")
                elem = self.type()
                self.expect(">", f" to close {tok.text}<...>")
                return SequenceType(elem) if tok.text == "seq" else OptionalType(elem)
            if tok.kind != "word" or tok.text not in _DTYPES:
                raise self.expected("a type such as f32[1,N], i64[*], seq<...>, opt<...> or ?")
            self.next()
            dtype = _DTYPES[tok.text]
            self.expect("[", f" after the element type {tok.text}")
            if self.accept("*"):
                self.expect("]", " after '*'")
                return TensorType(dtype, None)
            dims: list = []
            while not self.at("]"):
                if dims:
                    self.expect(",", " or ']' between dimensions")
                d = self.peek()
                if d.kind == "number" and _is_int_text(d.text):
                    dims.append(self._int(self.next()))
                elif self.at("?"):
                    self.next()
                    dims.append(None)
                elif d.kind == "word":
                    dims.append(self.next().text)
                elif d.kind == "string":
                    dims.append(self.next().value)
                else:
                    raise self.expected("a dimension (an integer, a symbol such as N, or ?)")
            self.next()
            return TensorType(dtype, tuple(dims))
        finally:
            self.depth -= 1


def _is_int_text(text: str) -> bool:
    return not any(c in text for c in ".eEni")


_ARRAY_TYPE = "a tensor type with a static shape that numpy can hold"


def _is_array_type(t: Type | None) -> bool:
    """A tensor type with a static, non-negative shape that numpy can hold."""
    if not isinstance(t, TensorType) or t.shape is None:
        return False
    size = 1
    for d in t.shape:
        if not isinstance(d, int) or d < 0:
            return False
        size *= max(d, 1)  # numpy refuses shapes this large even when one dimension is 0
    return size < 2**56


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _hint(tok: _Tok) -> str:
    """The name hint a value spelling gives: `%12` gives none."""
    return "" if isinstance(tok.value, int) else tok.value


def _type_text(t: Type) -> str:
    return print_type(t)


# -- public entry points ---------------------------------------------------------

def parse_model(text: str, resources: Mapping[str, np.ndarray] | None = None) -> Model:
    """Read a model from its text; `resources` supplies the arrays named by `resource<"...">`."""
    parser = _Parser(text, resources)
    try:
        return parser.module()
    except RecursionError:
        raise ParseError(f"{parser.where(parser.peek().pos)}: the text is nested too deeply to read") from None


def parse_graph(text: str, resources: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Read `graph @name(...) -> (...) {...}` (a module header is allowed too) and return the graph."""
    return parse_model(text, resources).graph


def parse_type(text: str) -> Type:
    """Read one type, such as `f32[N,3]` or `seq<i64[*]>`."""
    parser = _Parser(text, None)
    t = parser.type()
    if parser.peek().kind != EOF:
        raise parser.expected("end of input after the type")
    return t


def load_resources(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a resources .npz written by `save_mdir`."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            index = json.loads(npz[RESOURCE_INDEX].tobytes().decode("utf-8"))
            if index.get("format") != "mdoc-resources":
                raise ValueError("not an mdoc resources file")
            out = {}
            for entry in index["resources"]:
                dtype = DType.from_text(entry["dtype"])
                shape = tuple(int(d) for d in entry["shape"])
                raw = npz[entry["key"]]
                if dtype is DType.STR or raw.dtype != np.uint8:
                    raise ValueError(f"resource '{entry['name']}' is not raw bytes of a numeric type")
                np_dtype = dtype.numpy
                if sys.byteorder == "big" and np_dtype.kind in "iufc":
                    np_dtype = np_dtype.newbyteorder("<")  # the file holds little-endian bytes
                count = int(np.prod(shape, dtype=np.int64))
                if raw.size != count * np_dtype.itemsize:
                    raise ValueError(f"resource '{entry['name']}' has {raw.size} bytes, "
                                     f"not the {count * np_dtype.itemsize} that {dtype.text}{list(shape)} needs")
                arr = raw.view(np_dtype).reshape(shape)
                out[entry["name"]] = arr.astype(dtype.numpy, copy=False)
            return out
    except FileNotFoundError:
        raise MdocError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError,
            UnicodeDecodeError) as e:
        raise MdocError(f"{path}: not a valid mdoc resources file ({e})") from None


def load_mdir(path: str | os.PathLike) -> Model:
    """Read a model saved by `save_mdir`: the text at `path` and its resources in `path + ".npz"`."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise MdocError(f"{path}: no such file") from None
    except OSError as e:
        raise MdocError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MdocError(f"{path}: not mdoc text (byte {e.start} is not UTF-8)") from None
    npz = path + ".npz"
    resources = load_resources(npz) if os.path.exists(npz) else None
    try:
        return parse_model(text, resources)
    except ParseError as e:
        raise ParseError(f"{path}:{e}") from None
