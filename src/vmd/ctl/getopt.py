"""A BSD getopt(3)/getopt_long(3) work-alike for vmctl's per-command options.

Like OpenBSD's getopt, parsing stops at the first non-option argument (no GNU permutation), `--` ends the
options, and errors read `unknown option -- x` / `option requires an argument -- x`.
Long options (our extensions: `--json`, `--initrd`, ...) accept `--name value`, `--name=value` and a
unique prefix of the name, as getopt_long(3) does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class GetoptError(Exception):
    """The text getopt would print after `vmctl: `."""


def getopt(
    args: Sequence[str], optstring: str, longopts: Mapping[str, bool] | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """Return ([(option, value)], remaining args). Short options come back as "-x", long ones as "--name".

    longopts maps a long option name to whether it takes an argument.
    """
    longopts = longopts or {}
    takes_arg: dict[str, bool] = {}
    i = 0
    while i < len(optstring):
        ch = optstring[i]
        has_arg = i + 1 < len(optstring) and optstring[i + 1] == ":"
        takes_arg[ch] = has_arg
        i += 2 if has_arg else 1

    opts: list[tuple[str, str]] = []
    idx = 0
    while idx < len(args):
        arg = args[idx]
        if arg == "--":
            idx += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        idx += 1
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name in longopts:
                match = name
            else:
                candidates = [n for n in longopts if n.startswith(name)]
                if len(candidates) > 1:
                    raise GetoptError(f"ambiguous option -- {name}")
                if not candidates:
                    raise GetoptError(f"unknown option -- {name}")
                match = candidates[0]
            if longopts[match]:
                if not eq:
                    if idx >= len(args):
                        raise GetoptError(f"option requires an argument -- {match}")
                    value = args[idx]
                    idx += 1
                opts.append(("--" + match, value))
            else:
                if eq:
                    raise GetoptError(f"option doesn't take an argument -- {match}")
                opts.append(("--" + match, ""))
            continue
        pos = 1
        while pos < len(arg):
            ch = arg[pos]
            pos += 1
            if ch not in takes_arg or ch == ":":
                raise GetoptError(f"unknown option -- {ch}")
            if not takes_arg[ch]:
                opts.append(("-" + ch, ""))
                continue
            if pos < len(arg):
                value = arg[pos:]
            elif idx < len(args):
                value = args[idx]
                idx += 1
            else:
                raise GetoptError(f"option requires an argument -- {ch}")
            opts.append(("-" + ch, value))
            break
    return opts, list(args[idx:])
