"""Which programs a shell command line runs, and which of them print the output a filter sees.

Agents send lines like ``cd app && FOO=1 uv run pytest -x 2>&1 | tail -50`` or
``bash -lc "npm ci && npm test"``. A filter needs the program behind the wrappers (``uv run``,
``python -m``, ``npx``, ``timeout``...) and, for a pipeline, the stage whose output format
reaches the agent (``tail`` and ``grep`` on stdin keep their input's format). The tokenizer is a
regex, not :mod:`shlex`: it is linear, needs no exception handling for unbalanced quotes, and
keeps this hot path cheap.
"""

from __future__ import annotations

import re

__all__ = ["MAX_COMMAND_CHARS", "main_programs", "names_files", "operands", "program_name"]

# Longer command lines are scripts; their head says enough about what runs.
MAX_COMMAND_CHARS = 8192
_MAX_SHELL_DEPTH = 3
# Each heredoc is searched to its end marker; past a few, a line is not a real command anyway.
_MAX_HEREDOCS = 8

# Each token takes the blanks before it, so that blanks cost no loop turn of their own; blanks
# at the end make one empty token, rather than a failed try at each of them.
_TOKEN_RE = re.compile(
    r"""
    [^\S\n]*+
    (?:
      (\d*(?:&>>?|[<>]+[&|]?))                                     # a redirection
    | ((?:[^\s'"\\;&|<>()]++|'[^']*+'?|"(?:[^"\\]|\\.)*+"?|\\.?)++)  # a word
    | ([;&|()\n]+)                                                # separators
    | \Z
    )
    """,
    re.VERBOSE | re.DOTALL,
)
# Most agent commands are plain words (``uv run pytest -q``); they need no tokenizer. Without
# quotes, escapes, redirections, comments or subshells (``cd web && npm ci``), the words and
# separators are all there is, and a split on the separators finds them.
_SHELL_SYNTAX_RE = re.compile(r"""['"\\;&|<>()\n#]""")
_TOKENIZER_SYNTAX_RE = re.compile(r"""['"\\<>()#]""")
_SEPARATOR_SPLIT_RE = re.compile(r"([;&|\n]+)")
_QUOTED_RE = re.compile(r"""'([^']*)'?|"((?:[^"\\]|\\.)*)"?|\\(.?)|([^'"\\]+)""", re.DOTALL)
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_HEREDOC_RE = re.compile(
    r"""(<<-?[ \t]*(['"]?)([A-Za-z_][A-Za-z0-9_]*+)\2[^\n]*)\n.*?^[ \t]*\3[ \t]*$""",
    re.MULTILINE | re.DOTALL,
)
_ASSIGNMENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\+?=")
_PYTHON_RE = re.compile(r"(?:python|pypy)(?:\d+(?:\.\d+)*)?|py")

_SHELLS = frozenset({"bash", "sh", "zsh", "dash", "ksh", "fish"})
_PLAIN_WRAPPERS = frozenset({"time", "nohup", "exec", "command", "builtin", "noglob", "unbuffer"})
# Options of wrappers that take a separate value; every other ``-x`` is taken as a flag.
_UV_VALUE_OPTIONS = frozenset(
    {"--with", "--python", "-p", "--project", "--directory", "--extra", "--group", "--package",
     "--env-file", "--with-requirements", "--index", "--index-url", "--from"}
)  # fmt: skip
_VALUE_OPTIONS: dict[str, frozenset[str]] = {
    "env": frozenset({"-u", "-C", "-S", "--unset", "--chdir"}),
    "sudo": frozenset({"-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "--user", "--group"}),
    "doas": frozenset({"-u", "-C"}),
    "nice": frozenset({"-n", "--adjustment"}),
    "timeout": frozenset({"-s", "-k", "--signal", "--kill-after"}),
    "gtimeout": frozenset({"-s", "-k", "--signal", "--kill-after"}),
    "stdbuf": frozenset({"-i", "-o", "-e"}),
    "xargs": frozenset({"-n", "-I", "-P", "-L", "-d", "-E", "-s", "-a", "--max-args"}),
    "uv": _UV_VALUE_OPTIONS,
    "poetry": frozenset({"-C", "--directory", "-P", "--project"}),
    "conda": frozenset({"-n", "-p", "--name", "--prefix"}),
    "npx": frozenset({"-p", "--package", "-c", "--call"}),
}
_RUNNERS = frozenset({"uv", "poetry", "pdm", "hatch", "rye", "pipenv", "conda", "pixi"})
_EXECUTORS = frozenset({"npx", "bunx", "pnpx"})
_PACKAGE_EXEC = {
    "npm": {"exec", "x"},
    "pnpm": {"exec", "dlx"},
    "yarn": {"dlx", "exec"},
    "bun": {"x"},
}
_WRAPPERS = frozenset(
    {*_PLAIN_WRAPPERS, *_VALUE_OPTIONS, *_RUNNERS, *_EXECUTORS, *_PACKAGE_EXEC, "timeout"}
)
# Stages that pass their input's lines through in the same format (when reading stdin).
_PASSTHROUGH = frozenset({"head", "tail", "tee", "cat", "less", "more", "sort", "uniq"})
_STDIN_FILTERS = frozenset({"grep", "egrep", "fgrep", "rg", "sed", "awk", "cut", "tr"})
_GREP_VALUES = frozenset({"-e", "-f", "-m", "-A", "-B", "-C", "--max-count"})
_STAGE_VALUE_OPTIONS: dict[str, frozenset[str]] = {
    "head": frozenset({"-n", "-c", "--lines", "--bytes"}),
    "tail": frozenset({"-n", "-c", "--lines", "--bytes"}),
    "grep": _GREP_VALUES,
    "egrep": _GREP_VALUES,
    "fgrep": _GREP_VALUES,
    "rg": _GREP_VALUES | {"-g", "-t", "-T", "-M", "-j", "--glob", "--type"},
    "sed": frozenset({"-e", "-f", "-l"}),
    "awk": frozenset({"-f", "-v", "-F"}),
    "sort": frozenset({"-k", "-t", "-o", "-S"}),
    "uniq": frozenset({"-f", "-s"}),
    "cut": frozenset({"-d", "-f", "-c", "-b"}),
}


def main_programs(command: str, depth: int = 0) -> list[list[str]]:
    """The argv of the program whose output each pipeline of ``command`` prints.

    ``cd app && pytest -q | tail -50`` gives ``[["cd", "app"], ["pytest", "-q"]]``; wrappers
    are unwrapped, a ``bash -c`` script is parsed in turn. Never raises.
    """
    command = command[:MAX_COMMAND_CHARS]
    if _SHELL_SYNTAX_RE.search(command) is None:
        # Plain words, the most common command line, are one pipeline of one stage.
        words = command.split()
        return _unwrap(words, depth) if words else []
    result: list[list[str]] = []
    for pipeline in _pipelines(command):
        result += _pipeline_output(pipeline, depth)
    return result


def program_name(word: str) -> str:
    """``/usr/bin/python3`` -> ``python3``, ``jest.cmd`` -> ``jest``."""
    if "/" not in word and "." not in word:
        return word
    name = word.rsplit("/", 1)[-1]
    lower = name.lower()
    if lower.endswith((".exe", ".cmd", ".bat")):
        return name[:-4]
    return name


def operands(args: list[str], value_options: frozenset[str]) -> list[str]:
    """The non-option arguments, skipping the separate values of ``value_options``."""
    found: list[str] = []
    skip = False
    for arg in args:
        if skip or arg == "--":
            skip = False
        elif arg.startswith("-") and arg != "-":
            skip = arg in value_options
        else:
            found.append(arg)
    return found


def names_files(argv: list[str]) -> bool:
    """Whether ``cat``, ``sed``, ``head``... was given files to read (not stdin or a heredoc)."""
    name = program_name(argv[0])
    given = operands(argv[1:], _STAGE_VALUE_OPTIONS.get(name, frozenset()))
    if name in ("sed", "awk") and not any(arg in ("-e", "-f") for arg in argv[1:]):
        return len(given) > 1
    return bool(given)


def _pipelines(command: str) -> list[list[list[str]]]:
    """Split a command line into pipelines of argv lists, dropping redirections and comments;
    a line without shell syntax is left to :func:`main_programs`."""
    if _TOKENIZER_SYNTAX_RE.search(command) is None:
        return _separated_pipelines(command)
    command = command.replace("\\\n", " ")
    if 0 < command.count("<<") <= _MAX_HEREDOCS:
        command = _HEREDOC_RE.sub(r"\1", command)
    pipelines: list[list[list[str]]] = []
    stages: list[list[str]] = []
    argv: list[str] = []
    skip_word = comment = False
    for redirection, word, separator in _TOKEN_RE.findall(command):
        if comment:
            comment = "\n" not in separator
            if comment:
                continue
        if word:
            if skip_word:
                skip_word = False
            elif word[0] == "#":
                comment = True
            else:
                quoted = "'" in word or '"' in word or "\\" in word
                argv.append(_unquote(word) if quoted else word)
        elif redirection:
            skip_word = True
        elif separator:
            if argv:
                stages.append(argv)
                argv = []
            if separator not in ("|", "|&") and stages:
                pipelines.append(stages)
                stages = []
    if argv:
        stages.append(argv)
    if stages:
        pipelines.append(stages)
    return pipelines


def _separated_pipelines(command: str) -> list[list[list[str]]]:
    """:func:`_pipelines` for words and separators alone, without the tokenizer loop."""
    pipelines: list[list[list[str]]] = []
    stages: list[list[str]] = []
    parts = _SEPARATOR_SPLIT_RE.split(command)
    for index in range(0, len(parts), 2):
        argv = parts[index].split()
        if argv:
            stages.append(argv)
        if index + 1 < len(parts) and parts[index + 1] not in ("|", "|&") and stages:
            pipelines.append(stages)
            stages = []
    if stages:
        pipelines.append(stages)
    return pipelines


def _unquote(word: str) -> str:
    parts: list[str] = []
    for match in _QUOTED_RE.finditer(word):
        single, double, escaped, plain = match.groups()
        if single is not None:
            parts.append(single)
        elif double is not None:
            parts.append(_ESCAPE_RE.sub(r"\1", double))
        elif escaped is not None:
            parts.append(escaped)
        else:
            parts.append(plain)
    return "".join(parts)


def _pipeline_output(stages: list[list[str]], depth: int) -> list[list[str]]:
    """The unwrapped programs of the last stage that does not just pass lines through."""
    if len(stages) == 1:
        return _unwrap(stages[0], depth)
    for stage in reversed(stages[1:]):
        if not _passes_through(stage):
            programs = _unwrap(stage, depth)
            if programs:
                return programs
    return _unwrap(stages[0], depth) if stages else []


def _passes_through(argv: list[str]) -> bool:
    """A later pipeline stage reading stdin that keeps the format of the lines it passes on."""
    argv = _without_assignments(argv)
    if not argv:
        return True
    name = program_name(argv[0])
    if name == "tee":
        return True
    given = operands(argv[1:], _STAGE_VALUE_OPTIONS.get(name, frozenset()))
    if name in _PASSTHROUGH:
        return not given
    if name in _STDIN_FILTERS:
        # grep PATTERN, sed SCRIPT, awk PROGRAM: one operand means stdin.
        script_given = any(arg in ("-e", "-f") for arg in argv[1:])
        return len(given) <= (0 if script_given else 1)
    return False


def _unwrap(argv: list[str], depth: int) -> list[list[str]]:
    """Peel assignments and wrappers off one stage; a shell script yields its own programs."""
    while argv:
        if "=" in argv[0]:
            argv = _without_assignments(argv)
            if not argv:
                return []
        name = program_name(argv[0])
        if name in _SHELLS:
            return _shell_script(argv, depth)
        inner = _inner_command(name, argv)
        if inner is None:
            return [argv]
        argv = inner
    return []


def _without_assignments(argv: list[str]) -> list[str]:
    """``FOO=1 BAR=2 cmd`` -> ``cmd``."""
    start = 0
    while start < len(argv) and "=" in argv[start] and _ASSIGNMENT_RE.match(argv[start]):
        start += 1
    return argv[start:] if start else argv


def _inner_command(name: str, argv: list[str]) -> list[str] | None:
    """The command a wrapper runs, or ``None`` when ``argv`` is the program itself."""
    if name not in _WRAPPERS:
        # No wrapper name is also a Python interpreter's; most names fail the cheap test.
        if (name == "py" or name.startswith(("python", "pypy"))) and _PYTHON_RE.fullmatch(name):
            return _python_module(argv[1:])
        return None
    if name in _PLAIN_WRAPPERS:
        return _after_options(argv[1:], frozenset())
    if name in ("timeout", "gtimeout"):
        rest = _after_options(argv[1:], _VALUE_OPTIONS[name])
        return rest[1:]
    if name in _VALUE_OPTIONS and name not in _RUNNERS and name not in _EXECUTORS:
        return _after_options(argv[1:], _VALUE_OPTIONS[name])
    if name in _RUNNERS and "run" in argv[1:3]:
        start = argv.index("run", 1) + 1
        return _after_options(argv[start:], _VALUE_OPTIONS.get(name, frozenset()))
    if name in _EXECUTORS:
        return _after_options(argv[1:], _VALUE_OPTIONS["npx"])
    if len(argv) > 1 and argv[1] in _PACKAGE_EXEC.get(name, ()):
        return _after_options(argv[2:], _VALUE_OPTIONS["npx"])
    return None


def _after_options(args: list[str], value_options: frozenset[str]) -> list[str]:
    """``args`` from the first word that is neither an option, an option's value nor ``--``."""
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return args[index + 1 :]
        if not arg.startswith("-") or arg == "-":
            if "=" in arg and _ASSIGNMENT_RE.match(arg):
                index += 1
                continue
            return args[index:]
        index += 2 if arg in value_options else 1
    return []


def _python_module(args: list[str]) -> list[str] | None:
    """``python -m pytest -q`` -> ``["pytest", "-q"]``; a script or ``-c`` is not a program."""
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "-m" and index + 1 < len(args):
            return args[index + 1 :]
        if arg.startswith("-m") and len(arg) > 2:
            return [arg[2:], *args[index + 1 :]]
        if not arg.startswith("-") or arg == "-c":
            return None
        index += 2 if arg in ("-W", "-X") else 1
    return None


def _shell_script(argv: list[str], depth: int) -> list[list[str]]:
    """``bash -lc "cd x && pytest"``: the programs of the script; a script file is unknown."""
    for index, arg in enumerate(argv[1:], start=1):
        if arg.startswith("-") and not arg.startswith("--") and "c" in arg:
            if index + 1 < len(argv) and depth < _MAX_SHELL_DEPTH:
                return main_programs(argv[index + 1], depth + 1)
            return []
        if not arg.startswith("-"):
            break
    return [argv]
