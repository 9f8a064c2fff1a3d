"""The text of `bertc help`, `bertc COMMAND --help` and `bertc --version`.

The commands and the flags each one owns are the table `bertc.cli.COMMANDS`;
this module only renders it (absl's own flags are left to --helpfull).
"""

import re
import textwrap

WIDTH = 92
NAME_COLUMN = 28


def overview(commands) -> str:
    """`bertc`, `bertc help`, `bertc --help`: one line per command."""
    lines = ["usage: bertc COMMAND [flags]", "", "commands:"]
    lines += [f"  {name:<10}{command.summary}" for name, command in commands.items()]
    lines += ["", "bertc COMMAND --help (or bertc help COMMAND) lists that command's flags;",
              "bertc --helpfull lists every flag; bertc --version prints the versions.",
              "Exit codes: 0 ok, 1 a check failed, 2 bad input or usage, 70 internal "
              "error, 130 interrupted."]
    return "\n".join(lines)


_METAVARS = {"int": "N", "float": "X", "string": "VALUE"}


def _choices(flag):
    return getattr(flag.parser, "enum_values", None)


def _flag_name(flag) -> str:
    if flag.boolean:
        return f"--[no]{flag.name}"
    if _choices(flag):
        return f"--{flag.name}={{{'|'.join(_choices(flag))}}}"
    if isinstance(flag.default, list):
        return f"--{flag.name}=A,B"
    return f"--{flag.name}={_METAVARS.get(flag.flag_type(), 'VALUE')}"


def _help_text(flag) -> str:
    """The flag's help without absl's <choices> prefix and the 'serve: ' style owner."""
    text = " ".join(flag.help.split())
    if _choices(flag):
        text = text.split(": ", 1)[-1]
    return re.sub(r"^[a-z/]+: ", "", text)


def _default(flag) -> str:
    value = flag.default
    if value is None or value == []:
        return ""
    if isinstance(value, bool):
        return f" (default:\u00a0{'true' if value else 'false'})"
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return f" (default:\u00a0{value})"  # kept on one line by the wrapping


def flag_lines(flag) -> list:
    """One flag: its name, then its help (and default) wrapped beside it."""
    text = _help_text(flag) + _default(flag)
    name = "  " + _flag_name(flag)
    body = [line.replace("\u00a0", " ") for line in textwrap.wrap(text, WIDTH - NAME_COLUMN)]
    if len(name) >= NAME_COLUMN:
        return [name] + [" " * NAME_COLUMN + line for line in body]
    return [name.ljust(NAME_COLUMN) + body[0]] + [" " * NAME_COLUMN + line
                                                  for line in body[1:]]


GLOBAL_FLAGS = ("  -v, --verbosity=1".ljust(NAME_COLUMN) + "INFO logs, and the traceback of an "
                "internal error",
                "  --helpfull".ljust(NAME_COLUMN) + "every flag of every command, and absl's")


def command_help(name: str, command, flag_values) -> str:
    """`bertc NAME --help`: the command's flags by group, with defaults, and examples."""
    lines = [f"bertc {name}: {command.summary}", "", f"usage: {command.usage}"]
    for title, names in command.groups:
        lines += ["", f"{title}:"]
        for flag_name in names:
            lines += flag_lines(flag_values[flag_name])
    lines += ["", "global:", *GLOBAL_FLAGS, "", "examples:"]
    lines += [f"  {example}" for example in command.examples]
    return "\n".join(lines)


def versions(tensorflow_version: str) -> str:
    """`bertc --version`: bertc's, TensorFlow's and, when importable, OpenVINO's."""
    from bertc.version import __version__
    lines = [f"bertc {__version__}", f"tensorflow {tensorflow_version}"]
    try:
        import openvino  # only here: the rest of bertc does not use it
        lines.append(f"openvino {openvino.__version__}")
    except ImportError:
        pass
    return "\n".join(lines)
