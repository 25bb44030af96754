"""The vm.conf tokenizer (parse.y yylex rules)."""

from __future__ import annotations

from vmd.config.lexer import CHAR, EOF, KEYWORD, NUMBER, STRING, Lexer, Macro


def lex(text: str, macros: dict[str, str] | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    errs: list[str] = []
    lexer = Lexer(lambda f, line, m: errs.append(f"{f}:{line}: {m}"),
                  {k: Macro(v) for k, v in (macros or {}).items()})
    lexer.push("t", text)
    out: list[tuple[str, str]] = []
    while True:
        tok = lexer.next()
        if tok.kind == EOF:
            return out, errs
        out.append((tok.kind, tok.value))


def test_words_numbers_keywords() -> None:
    toks, errs = lex("vm foo 512M 42 -7 10.0.0.0/16 /a/b :g a,b\n")
    assert errs == []
    assert toks == [(KEYWORD, "vm"), (STRING, "foo"), (STRING, "512M"), (NUMBER, "42"), (NUMBER, "-7"),
                    (STRING, "10.0.0.0/16"), (STRING, "/a/b"), (STRING, ":g"), (STRING, "a"), (CHAR, ","),
                    (STRING, "b"), (CHAR, "\n"), (CHAR, "\n")]


def test_number_ends() -> None:
    assert lex("1}")[0][:2] == [(NUMBER, "1"), (CHAR, "}")]
    assert lex("1/8")[0][:2] == [(NUMBER, "1"), (STRING, "/8")]
    assert lex("- x")[0][:2] == [(CHAR, "-"), (STRING, "x")]


def test_quotes() -> None:
    toks, _ = lex("'a b' \"c\\\"d\" \"e\nf\" \"g\\\nh\" \"i\\j\"")
    assert [v for k, v in toks if k == STRING] == ["a b", 'c"d', "ef", "gh", "i\\j"]


def test_comment_and_continuation() -> None:
    toks, _ = lex("a # b c\nd \\\ne\n")
    assert toks == [(STRING, "a"), (CHAR, "\n"), (STRING, "d"), (STRING, "e"), (CHAR, "\n"), (CHAR, "\n")]


def test_macro_expansion_is_not_recursive() -> None:
    toks, errs = lex("$a\n", {"a": "x $b", "b": "y"})
    assert toks[:3] == [(STRING, "x"), (CHAR, "$"), (STRING, "b")]
    assert errs == []


def test_lexer_errors() -> None:
    assert lex("$nope\n")[1] == ["t:1: macro 'nope' not defined"]
    assert lex('"abc')[1] == ["t:1: reached end of file while parsing quoted string"]
    assert lex('"a\0b"\n')[1] == ["t:1: syntax error"]
    assert lex("x" * 9000)[1] == ["t:1: string too long"]
