"""Read UCI configuration files the way OpenWrt's libuci reads them.

The grammar is line based: ``config TYPE [NAME]``, ``option NAME [VALUE]``,
``list NAME [VALUE]`` and ``package NAME`` (ignored here: the file name is
the package).  Arguments are words made of unquoted, 'single quoted' and
"double quoted" pieces glued together; a backslash takes the next character
literally outside single quotes, and a backslash at the end of a line joins
the next line.  Quoted strings may run over several lines and keep the line
breaks.  ``#`` starts a comment where an unquoted piece could start, and
``;`` ends a statement.

libuci parses in place, in one buffer, and some of its edge cases come from
that; this module reproduces them (for example ``option a b; option c d``
loses the second statement, while ``option a 'b'; option c d`` keeps it),
because the router reads these files with libuci and we must see what it
sees.  Like libuci in its default strict mode, the first syntax error ends
the parse.

Data semantics are libuci's too: an option set twice keeps the last value,
``option X ''`` is no change at all, ``list`` after ``option`` of the same
name turns the option into a list that keeps the old value first, ``option``
after ``list`` replaces the list, and a named section given twice is one
section (with its options merged) unless the types differ, which is an error.
"""

from __future__ import annotations

import dataclasses
import typing

import wgrouter

# C's isspace() in the "C" locale; Python's str.isspace() knows more.
_SPACE = " \t\n\v\f\r"
_NUL = "\0"


class UciError(wgrouter.Error):
    """UCI syntax error"""

    def __init__(self, file: str, line: int, reason: str):
        super().__init__("%s:%d: %s" % (file, line, reason))
        self.file = file
        self.line = line
        self.reason = reason


@dataclasses.dataclass
class Section:
    type: str
    name: typing.Optional[str]  # None for an anonymous section
    index: int  # position among the sections of the same type, from 0
    options: typing.Dict[str, typing.Union[str, typing.List[str]]]
    lineno: int  # line of its first `config` statement

    @property
    def ref(self) -> str:
        """How uci names the section: its name, or "@type[index]"."""
        if self.name is not None:
            return self.name
        return "@%s[%d]" % (self.type, self.index)


def _valid(text: str, name: bool, package: bool = False) -> bool:
    """libuci's rule: names are [A-Za-z0-9_]+, types any printable ASCII."""
    if not text:
        return False
    for c in text:
        if c.isascii() and (c.isalnum() or c == "_"):
            continue
        if c == "-" and package:
            continue
        if name or not "!" <= c <= "~":
            return False
    return True


def _physical_lines(text: str) -> typing.List[str]:
    """Split like fgets: on "\\n" only, keeping it."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


class _Parser:
    """One file: a statement buffer edited in place, as libuci does."""

    def __init__(self, text: str, filename: str):
        self.filename = filename
        self.lines = _physical_lines(text)
        self.next_line = 0  # index into self.lines of the next line to read
        self.buf: typing.List[str] = []
        self.pos = 0
        self.sections: typing.List[Section] = []
        self.named: typing.Dict[str, Section] = {}
        self.section: typing.Optional[Section] = None

    # ------------------------------------------------------------ buffer

    def error(self, reason: str) -> typing.NoReturn:
        raise UciError(self.filename, max(self.next_line, 1), reason)

    def at(self, i: int) -> str:
        return self.buf[i] if i < len(self.buf) else _NUL

    def put(self, i: int, c: str) -> None:
        while len(self.buf) <= i:
            self.buf.append(_NUL)
        self.buf[i] = c

    def cstr(self, i: int) -> str:
        """The NUL-terminated string that starts at i."""
        end = i
        while end < len(self.buf) and self.buf[end] != _NUL:
            end += 1
        return "".join(self.buf[i:end])

    def getline(self, offset: int) -> None:
        """Replace everything from offset on with the next physical line."""
        del self.buf[offset:]
        if self.next_line < len(self.lines):
            self.buf.extend(self.lines[self.next_line])
            self.next_line += 1

    def skip_space(self) -> None:
        while self.at(self.pos) != _NUL and self.at(self.pos) in _SPACE:
            self.pos += 1

    def copy(self, target: int) -> int:
        self.put(target, self.at(self.pos))
        self.pos += 1
        return target + 1

    # ------------------------------------------------------------ words

    def backslash(self) -> bool:
        """Step over a backslash; False when it joined the next line."""
        self.pos += 1
        c = self.at(self.pos)
        if (
            c == _NUL
            or c == "\n"
            or (c == "\r" and self.at(self.pos + 1) == "\n" and self.at(self.pos + 2) == _NUL)
        ):
            self.getline(self.pos)
            return False
        return True

    def quoted(self, target: int, quote: str) -> int:
        self.pos += 1
        while True:
            c = self.at(self.pos)
            if c == quote:
                self.pos += 1
                return target
            if c == _NUL:
                # the string goes on on the next line
                self.getline(self.pos)
                if self.at(self.pos) == _NUL:
                    self.error("EOF with unterminated %s" % quote)
                continue
            if c == "\\" and quote == '"':
                if not self.backslash():
                    continue
            target = self.copy(target)

    def word(self, target: int) -> None:
        """Parse one argument, writing it over the buffer from target."""
        more = True
        while True:
            c = self.at(self.pos)
            if c == "'" or c == '"':
                target = self.quoted(target, c)
            elif c == "#":
                self.put(self.pos, _NUL)
                break
            elif c == _NUL:
                break
            elif c == ";":
                more = False
                break
            elif c == "\\" and not self.backslash():
                pass
            else:
                target = self.copy(target)
            c = self.at(self.pos)
            if c == _NUL or c in _SPACE:
                break
        # an unquoted word stops on a blank that the terminator overwrites
        if self.at(self.pos) != _NUL and more:
            self.pos += 1
        self.put(target, _NUL)

    def argument(self, required: bool, name: bool = False, package: bool = False) -> str:
        self.skip_space()
        start = self.pos
        if self.at(self.pos) == ";":
            self.put(self.pos, _NUL)
            self.pos += 1
        else:
            self.word(start)
        value = self.cstr(start)
        if not value:
            if required:
                self.error("insufficient arguments")
            return ""
        if name and not _valid(value, name=True, package=package):
            self.error("invalid character in name field")
        return value

    def end_of_statement(self) -> None:
        self.skip_space()
        if self.argument(False):
            self.error("too many arguments")

    def command(self) -> typing.Optional[str]:
        """The next command word, split off like strtok(" \\t") does."""
        i = self.pos
        while self.at(i) in (" ", "\t"):
            i += 1
        if self.at(i) == _NUL:
            return None
        j = i
        while self.at(j) not in (" ", "\t", _NUL):
            j += 1
        word = "".join(self.buf[i:j])
        if j < len(self.buf):
            self.buf[j] = _NUL
        return word

    def skip_command(self, what: str) -> None:
        step = len(self.cstr(self.pos)) + 1
        if self.pos + step > len(self.buf):
            self.error("%s without name" % what)
        self.pos += step

    # ------------------------------------------------------------ statements

    def statement_package(self) -> None:
        self.skip_command("package")
        self.argument(True, name=True, package=True)
        self.end_of_statement()

    def statement_config(self) -> None:
        lineno = self.next_line
        self.skip_command("config")
        stype = self.argument(True)
        if not _valid(stype, name=False):
            self.error("invalid character in type field")
        name = self.argument(False, name=True)
        self.end_of_statement()
        if name and name in self.named:
            section = self.named[name]
            if section.type != stype:
                self.error("section of different type overwrites prior section with same name")
        else:
            section = Section(stype, name or None, 0, {}, lineno)
            self.sections.append(section)
            if name:
                self.named[name] = section
        self.section = section

    def statement_option(self, is_list: bool) -> None:
        if self.section is None:
            self.error("option/list command found before the first section")
        self.skip_command("option")
        name = self.argument(True, name=True)
        value = self.argument(False)
        self.end_of_statement()
        options = self.section.options
        old = options.get(name)
        if is_list:
            if old is None:
                options[name] = [value]
            elif isinstance(old, str):
                del options[name]
                options[name] = [old, value]
            else:
                old.append(value)
        elif value and old != value:
            # an empty value changes nothing; a new value goes last, as the
            # option is freed and allocated again
            options.pop(name, None)
            options[name] = value

    def line(self) -> None:
        self.skip_space()
        while True:
            word = self.command()
            if word is None or word.startswith("#"):
                return
            # each command may be abbreviated to its first letter
            if word in ("p", "package"):
                self.statement_package()
            elif word in ("c", "config"):
                self.statement_config()
            elif word in ("o", "option"):
                self.statement_option(False)
            elif word in ("l", "list"):
                self.statement_option(True)
            else:
                self.error("invalid command")

    def parse(self) -> typing.List[Section]:
        if _NUL in "".join(self.lines):
            self.next_line = 1 + next(i for i, l in enumerate(self.lines) if _NUL in l)
            self.error("NUL character")
        while self.next_line < len(self.lines):
            self.pos = 0
            self.getline(0)
            if self.buf and self.buf[0] != _NUL:
                self.line()
        counts: typing.Dict[str, int] = {}
        for section in self.sections:
            section.index = counts.get(section.type, 0)
            counts[section.type] = section.index + 1
        return self.sections


def parse(text: str, filename: str) -> typing.List[Section]:
    """Parse UCI text; ``filename`` is only used in error messages."""
    return _Parser(text, filename).parse()


def load(path) -> typing.List[Section]:
    """Parse a UCI file.  OSError passes through to the caller."""
    with open(path, "rb") as f:
        data = f.read()
    # uci values are bytes; a stray Latin-1 byte in a comment must not
    # make the file unreadable
    return parse(data.decode("utf-8", errors="replace"), str(path))
