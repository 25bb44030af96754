"""The vm.conf tokenizer: OpenBSD's parse.y `yylex`/`lgetc` rules, character for character where it matters.

* `\\` + newline joins lines; outside quotes `\\x` stands for `x`.
* `#` starts a comment to the end of the line.
* Strings are quoted with `"` or `'`; inside, `\\<quote>`, `\\<space>`, `\\<tab>` are escapes, `\\<newline>`
  and a plain newline are dropped, any other `\\` stays.
* An unquoted word starts with a letter, digit, `:`, `_` or `/` and goes on with letters, digits and
  punctuation other than `( ) { } ! = # ,`; a word in the keyword table is a keyword.
* A number is `-`? digits ended by whitespace, `) , / } =` or the end of the file; anything else (`512M`,
  `10.0.0.1`) makes it a word again.
* `$name` (letters, digits, `_`) outside quotes is replaced by the macro's value, which is lexed again once
  (a `$` inside it is not expanded).
* Every other character is a token of its own; a file ends with one newline token even if its last line has
  no newline. `include` pushes a file; at its end the lexer goes back to the including file.

Classification is ASCII only (the C library's "C" locale): a non-ASCII character outside quotes is a token of
its own, which the parser rejects. Our one extension: a carriage return directly before a newline is ignored,
so files with CRLF line ends parse.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass, field

# parse.y lookup(): the keyword table (1.72)
KEYWORDS = frozenset({
    "add", "agentx", "allow", "boot", "cdrom", "context", "delay", "device", "disable", "disk", "down",
    "enable", "format", "group", "id", "include", "inet6", "instance", "interface", "interfaces", "lladdr",
    "local", "locked", "memory", "net", "owner", "parallel", "path", "prefix", "rdomain", "sev", "seves",
    "size", "socket", "staggered", "start", "switch", "up", "vm",
})

STRING, NUMBER, KEYWORD, CHAR, ERROR, EOF = "STRING", "NUMBER", "KEYWORD", "CHAR", "ERROR", "EOF"

MAX_TOKEN = 8095  # yylex's 8096-byte buffer
_ALNUM = frozenset(string.ascii_letters + string.digits)
_DIGITS = frozenset(string.digits)
_PUNCT = frozenset(string.punctuation)
_WORD_START = _ALNUM | frozenset(":_/")
_WORD_CHARS = _ALNUM | (_PUNCT - frozenset("(){}!=#,"))  # allowed_in_string()
_NUMBER_END = frozenset(" \t\n\r\v\f),/}=")  # allowed_to_end_number()
_MACRO_CHARS = _ALNUM | frozenset("_")
LLONG_MAX = (1 << 63) - 1
LLONG_MIN = -(1 << 63)

# Markers pushed around a macro's value (parse.y START_EXPAND / DONE_EXPAND); never characters of a file.
_START_EXPAND = "<start-expand>"
_DONE_EXPAND = "<done-expand>"
_EOF = ""


@dataclass(frozen=True)
class Token:
    """kind: STRING, NUMBER, KEYWORD (value is the word), CHAR (value is the character, "\\n" for a newline),
    ERROR (the lexer reported an error and skipped the rest of the line) or EOF.
    text is the source text of a number ("007"), so a number can be used as a string where one is allowed."""

    kind: str
    value: str
    file: str
    line: int
    number: int = 0
    text: str = ""

    def is_char(self, c: str) -> bool:
        return self.kind == CHAR and self.value == c

    def is_keyword(self, word: str) -> bool:
        return self.kind == KEYWORD and self.value == word



@dataclass
class Macro:
    value: str
    persist: bool = False  # set with -D: a definition in the file does not replace it (parse.y symset)
    used: bool = False


@dataclass
class Source:
    """One open file (parse.y struct file)."""

    name: str
    text: str
    pos: int = 0
    line: int = 1
    unget: list[str] = field(default_factory=list)
    eof_reached: bool = False


Reporter = Callable[[str, int, str], None]  # (file, line, message)


class Lexer:
    """Turns the files of a vm.conf into tokens. Errors go to `report`; the lexer itself never raises."""

    def __init__(self, report: Reporter, macros: dict[str, Macro] | None = None) -> None:
        self.report = report
        self.macros: dict[str, Macro] = macros if macros is not None else {}
        self.sources: list[Source] = []
        self.expanding = False
        self.token_line = 0

    # -- files -----------------------------------------------------------------------------------------------

    def push(self, name: str, text: str) -> None:
        self.sources.append(Source(name, text))

    @property
    def source(self) -> Source:
        return self.sources[-1]

    @property
    def filename(self) -> str:
        return self.sources[-1].name if self.sources else ""

    def error(self, message: str) -> None:
        self.report(self.filename, self.token_line, message)

    def _pop(self) -> bool:
        """Back to the including file (popfile); False at the end of the top file."""
        if len(self.sources) <= 1:
            return False
        self.sources.pop()
        return True

    # -- characters (igetc, lgetc, lungetc) ------------------------------------------------------------------

    def _igetc(self) -> str:
        while True:
            src = self.source
            if src.unget:
                c = src.unget.pop()
            elif src.pos < len(src.text):
                c = src.text[src.pos]
                src.pos += 1
                if c == "\r" and src.text.startswith("\n", src.pos):  # CRLF (our extension)
                    continue
            else:
                c = _EOF
            if c == _START_EXPAND:
                self.expanding = True
            elif c == _DONE_EXPAND:
                self.expanding = False
            else:
                return c

    def _ungetc(self, c: str) -> None:
        if c != _EOF:
            self.source.unget.append(c)

    def _getc_quoted(self, quote: str) -> str:
        c = self._igetc()
        if c == _EOF:
            self.error("reached end of file while parsing quoted string")
            if not self._pop():
                return _EOF
            return quote  # the string ends where the included file ends
        return c

    def _getc(self) -> str:
        while True:
            c = self._igetc()
            if c != "\\":
                break
            nxt = self._igetc()
            if nxt != "\n":
                c = nxt
                break
            self.token_line = self.source.line  # a continued line
            self.source.line += 1
        if c in (" ", "\t"):  # blanks become one space
            while True:
                c2 = self._igetc()
                if c2 not in (" ", "\t"):
                    self._ungetc(c2)
                    break
            c = " "
        if c == _EOF:
            src = self.source
            if not src.eof_reached:  # one newline at the end of every file
                src.eof_reached = True
                return "\n"
            while c == _EOF:
                if not self._pop():
                    return _EOF
                c = self._igetc()
        return c

    def _findeol(self) -> Token:
        """Skip to the end of the line after an error; the ERROR token stands for the line."""
        line, name = self.token_line, self.filename
        while True:
            c = self._getc()
            if c == "\n":
                self.source.line += 1
                break
            if c == _EOF:
                break
        return Token(ERROR, "", name, line)

    # -- tokens ----------------------------------------------------------------------------------------------

    def next(self) -> Token:
        if not self.sources:
            return Token(EOF, "", "", 0)
        c = _EOF
        while True:
            c = self._getc()
            while c in (" ", "\t"):
                c = self._getc()
            src = self.source
            self.token_line = src.line
            if c == "#":
                while c not in ("\n", _EOF):
                    c = self._getc()
            if c == "$" and not self.expanding:
                name_chars: list[str] = []
                while True:
                    c = self._getc()
                    if c == _EOF:
                        return self._eof()
                    if len(name_chars) >= MAX_TOKEN:
                        self.error("string too long")
                        return self._findeol()
                    if c in _MACRO_CHARS:
                        name_chars.append(c)
                        continue
                    self._ungetc(c)
                    break
                name = "".join(name_chars)
                macro = self.macros.get(name)
                if macro is None:
                    self.error(f"macro '{name}' not defined")
                    return self._findeol()
                macro.used = True
                unget = self.source.unget
                unget.append(_DONE_EXPAND)
                unget.extend(reversed(macro.value))
                unget.append(_START_EXPAND)
                continue
            break
        name = self.filename
        line = self.token_line
        if c in ("'", '"'):
            return self._quoted(c, name, line)
        if c == "-" or c in _DIGITS:
            tok = self._number(c, name, line)
            if tok is not None:
                return tok
            c = self._getc()
            if c == "-":
                return Token(CHAR, "-", name, line)
        if c in _WORD_START:
            run = self._run_of(c, _WORD_CHARS)
            if run is None:
                return self._findeol()
            word = run[0]
            return Token(KEYWORD if word in KEYWORDS else STRING, word, name, line)
        if c == "\n":
            self.source.line += 1
        if c == _EOF:
            return self._eof()
        return Token(CHAR, c, name, line)

    def _eof(self) -> Token:
        # the line of the fake newline, not the one after it
        line = self.source.line - 1 if self.source.eof_reached else self.token_line
        return Token(EOF, "", self.filename, max(line, 1))

    def _quoted(self, quote: str, name: str, line: int) -> Token:
        chars: list[str] = []
        while True:
            c = self._getc_quoted(quote)
            if c == _EOF:
                return self._eof()
            if c == "\n":
                self.source.line += 1
                continue
            if c == "\\":
                nxt = self._getc_quoted(quote)
                if nxt == _EOF:
                    return self._eof()
                if nxt in (quote, " ", "\t"):
                    c = nxt
                elif nxt == "\n":
                    self.source.line += 1
                    continue
                else:
                    self._ungetc(nxt)
            elif c == quote:
                break
            elif c == "\0":
                self.error("syntax error")
                return self._findeol()
            if len(chars) >= MAX_TOKEN - 1:
                self.error("string too long")
                return self._findeol()
            chars.append(c)
        return Token(STRING, "".join(chars), name, line)

    def _run_of(self, first: str, allowed: frozenset[str]) -> tuple[str, str] | None:
        """first and the characters of allowed that follow it, with the character that ended the run (pushed
        back); None, after the error, when the run reaches MAX_TOKEN."""
        chars = [first]
        while True:
            c = self._getc()
            if c == _EOF or c not in allowed:
                break
            chars.append(c)
            if len(chars) >= MAX_TOKEN:
                self.error("string too long")
                return None
        self._ungetc(c)
        return "".join(chars), c

    def _number(self, first: str, name: str, line: int) -> Token | None:
        """A number token, or None after pushing the characters back (then it is a word or a '-')."""
        run = self._run_of(first, _DIGITS)
        if run is None:
            return self._findeol()
        text, c = run
        if text != "-" and (c == _EOF or c in _NUMBER_END):
            value = int(text)
            if value > LLONG_MAX or value < LLONG_MIN:  # strtonum's messages
                self.error(f'"{text}" invalid number: {"too large" if value > 0 else "too small"}')
                return self._findeol()
            return Token(NUMBER, text, name, line, number=value, text=text)
        for ch in reversed(text):
            self._ungetc(ch)
        return None
