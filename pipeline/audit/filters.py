"""`--where` filters: a tiny, safe expression language over manifest columns.

Grammar (keywords case-insensitive):

    expr   := term ("or" term)*
    term   := factor ("and" factor)*
    factor := "not" factor | "(" expr ")" | compare
    compare:= COLUMN OP value | COLUMN "is" ["not"] "null"
    OP     := "<" | "<=" | ">" | ">=" | "==" | "=" | "!="
    value  := number | 'string' | "string" | true | false

Examples: `vmaf < 80`, `codec == 'x264' and (psnr < 30 or lpips > 0.3)`, `status != 'ok'`,
`vmaf is null`. The text is tokenised and parsed here — never `eval`ed — into a pyarrow compute
expression, which the dataset scanner pushes down to the Parquet reader (row groups whose statistics
cannot match are skipped). Comparisons with a null value are false, as in SQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds


class FilterError(ValueError):
    """The --where text is not a valid filter; the message points at the problem."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
      | (?P<string>'[^']*'|"[^"]*")
      | (?P<op><=|>=|==|!=|<|>|=)
      | (?P<paren>[()])
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "is", "null", "true", "false"}


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise FilterError(f"--where: unexpected {text[position:].strip()[:20]!r} at character {position}")
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "word" and value.lower() in _KEYWORDS:
            kind, value = "keyword", value.lower()
        tokens.append((kind, value))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str, schema: pa.Schema) -> None:
        self.tokens = _tokenize(text)
        self.position = 0
        self.schema = schema

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise FilterError("--where: the expression ends too early")
        self.position += 1
        return token

    def accept_keyword(self, word: str) -> bool:
        if self.peek() == ("keyword", word):
            self.position += 1
            return True
        return False

    def parse(self) -> ds.Expression:
        expression = self.expr()
        if self.peek() is not None:
            raise FilterError(f"--where: unexpected {self.peek()[1]!r} after a complete expression")
        return expression

    def expr(self) -> ds.Expression:
        result = self.term()
        while self.accept_keyword("or"):
            result = result | self.term()
        return result

    def term(self) -> ds.Expression:
        result = self.factor()
        while self.accept_keyword("and"):
            result = result & self.factor()
        return result

    def factor(self) -> ds.Expression:
        if self.accept_keyword("not"):
            return ~self.factor()
        if self.peek() == ("paren", "("):
            self.take()
            inner = self.expr()
            if self.peek() != ("paren", ")"):
                raise FilterError("--where: missing ')'")
            self.take()
            return inner
        return self.compare()

    def compare(self) -> ds.Expression:
        kind, name = self.take()
        if kind != "word":
            raise FilterError(f"--where: expected a column name, got {name!r}")
        if name not in self.schema.names:
            raise FilterError(f"--where: unknown column {name!r}; columns: {', '.join(self.schema.names)}")
        column = pc.field(name)
        if self.accept_keyword("is"):
            negate = self.accept_keyword("not")
            if not self.accept_keyword("null"):
                raise FilterError("--where: 'is' must be followed by 'null' or 'not null'")
            return ~column.is_null() if negate else column.is_null()
        kind, op = self.take()
        if kind != "op":
            raise FilterError(f"--where: expected a comparison after {name!r}, got {op!r}")
        value = self.value(name)
        comparisons = {
            "<": column < value,
            "<=": column <= value,
            ">": column > value,
            ">=": column >= value,
            "==": column == value,
            "=": column == value,
            "!=": column != value,
        }
        return comparisons[op]

    def value(self, column: str) -> object:
        kind, text = self.take()
        field_type = self.schema.field(column).type
        if kind == "number":
            if not (pa.types.is_integer(field_type) or pa.types.is_floating(field_type)):
                raise FilterError(f"--where: {column} is {field_type}, compare it with a quoted string")
            number = float(text)
            return int(number) if pa.types.is_integer(field_type) and number.is_integer() else number
        if kind == "string":
            if not pa.types.is_string(field_type):
                raise FilterError(f"--where: {column} is {field_type}, compare it with a number")
            return text[1:-1]
        if kind == "keyword" and text in ("true", "false"):
            if not pa.types.is_boolean(field_type):
                raise FilterError(f"--where: {column} is {field_type}, not a boolean")
            return text == "true"
        raise FilterError(f"--where: expected a value after the comparison, got {text!r}")


def parse_filter(text: str | None, schema: pa.Schema) -> ds.Expression | None:
    """The pyarrow expression for `text` (None for no filter), or FilterError with a one-line reason."""
    if text is None or not text.strip():
        return None
    return _Parser(text, schema).parse()


def columns_in(names: Iterable[str], schema: pa.Schema) -> list[str]:
    """`names` restricted to the schema, in schema order (for column projection)."""
    wanted = set(names)
    return [name for name in schema.names if name in wanted]
