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

Lines are read as libuci's ``uci_getln`` reads them (uci ``file.c``): with
``fgets`` into a buffer of 32 bytes that doubles whenever a read does not end
in a line break, and ``strlen`` to find where the read ended.  A NUL byte
therefore ends what was read: the rest of that read is lost, and the next
read goes on at the NUL, so ``option a b<NUL>c`` followed by a blank line
reads as ``b``, and followed by another statement joins it to this one.

Data semantics are libuci's too: an option set twice keeps the last value,
in the place of its first definition (``uci_set`` in ``list.c`` puts the new
value after the old one and frees the old), ``option X ''`` is no change at
all, ``list`` after ``option`` of the same name turns the option into a list
that keeps the old value first, ``option`` after ``list`` replaces the list,
both in the same place, and a named section given twice is one section (with
its options merged) unless the types differ, which is an error.
"""

from __future__ import annotations

import dataclasses
import typing

import wgrouter

# C's isspace() in the "C" locale; Python's str.isspace() knows more.
_SPACE = " \t\n\v\f\r"
_NUL = "\0"
# The first size of libuci's line buffer (uci file.c, LINEBUF).
_LINEBUF = 32


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


def _text(raw: str) -> str:
    """A value parsed from the file's bytes (one character each) as text."""
    return raw.encode("latin-1").decode("utf-8", errors="replace")


class _Parser:
    """One file: a statement buffer edited in place, as libuci does.

    The file is given as its bytes, one character each (latin-1), because
    libuci's buffer sizes count bytes."""

    def __init__(self, data: str, filename: str):
        self.filename = filename
        self.data = data
        self.cursor = 0  # file position of the next fgets
        self.bufsz = _LINEBUF
        self.filled = 0  # libuci's buf_filled: where the last read ended
        self.buf: typing.List[str] = []
        self.pos = 0
        self.sections: typing.List[Section] = []
        self.named: typing.Dict[str, Section] = {}
        self.section: typing.Optional[Section] = None

    # ------------------------------------------------------------ buffer

    @property
    def next_line(self) -> int:
        """Physical lines read so far (libuci's own counter skips a line
        that a NUL cut short, and a last line without a line break)."""
        lines = self.data.count("\n", 0, self.cursor)
        if self.cursor and self.data[self.cursor - 1] != "\n":
            lines += 1
        return lines

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

    def fgets(self, size: int) -> str:
        """At most size - 1 bytes, up to and with the next line break."""
        end = self.data.find("\n", self.cursor, self.cursor + size - 1)
        stop = end + 1 if end >= 0 else min(len(self.data), self.cursor + size - 1)
        chunk = self.data[self.cursor:stop]
        self.cursor = stop
        return chunk

    def getline(self, offset: int) -> None:
        """Replace everything from offset on with what uci_getln reads."""
        if offset >= self.bufsz - 1:
            self.bufsz *= 2
        while True:
            del self.buf[offset:]
            chunk = self.fgets(self.bufsz - offset)
            if not chunk or chunk[0] == _NUL:
                return
            # strlen: the buffer ends at a NUL, whatever fgets read after it
            chunk = chunk.split(_NUL, 1)[0]
            self.buf.extend(chunk)
            offset += len(chunk)
            self.filled = offset
            if chunk.endswith("\n"):
                return
            self.bufsz *= 2

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
        if self.pos + step > self.filled:
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
        # a new value takes the place of the old one (a dict keeps the
        # position of a key that is assigned again)
        if is_list:
            if old is None:
                options[name] = [value]
            elif isinstance(old, str):
                options[name] = [old, value]
            else:
                old.append(value)
        elif value:
            # an empty value changes nothing
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
        while self.cursor < len(self.data):
            self.pos = 0
            self.getline(0)
            if self.buf and self.buf[0] != _NUL:
                self.line()
        counts: typing.Dict[str, int] = {}
        for section in self.sections:
            section.index = counts.get(section.type, 0)
            counts[section.type] = section.index + 1
            for option, value in section.options.items():
                if isinstance(value, list):
                    section.options[option] = [_text(item) for item in value]
                else:
                    section.options[option] = _text(value)
        return self.sections


def parse_bytes(data: bytes, filename: str) -> typing.List[Section]:
    """Parse a UCI file's bytes; ``filename`` is only used in error messages.
    Values are decoded as UTF-8: a stray Latin-1 byte must not make the file
    unreadable."""
    return _Parser(data.decode("latin-1"), filename).parse()


def parse(text: str, filename: str) -> typing.List[Section]:
    """Parse UCI text; ``filename`` is only used in error messages."""
    return parse_bytes(text.encode("utf-8"), filename)


def load(path) -> typing.List[Section]:
    """Parse a UCI file.  OSError passes through to the caller."""
    with open(path, "rb") as f:
        data = f.read()
    return parse_bytes(data, str(path))
