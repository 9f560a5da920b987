import random

import pytest

import wgrouter
from wgrouter import uci


def parsed(text):
    return [(s.type, s.name, s.options) for s in uci.parse(text, "test")]


# (id, text, [(type, name, options)])
CASES = [
    ("named-and-lists", """
config interface 'wan'
	option device 'eth1'
	option proto dhcp
	list dns '1.1.1.1'
	list dns "9.9.9.9"
""", [("interface", "wan", {"device": "eth1", "proto": "dhcp", "dns": ["1.1.1.1", "9.9.9.9"]})]),
    ("package-ignored", "package network\nconfig a 'b'\n", [("a", "b", {})]),
    ("abbreviated-commands", "c a 'b'\n o x 1\n l y 2\n p foo\n", [("a", "b", {"x": "1", "y": ["2"]})]),
    ("unquoted-escape", "config a\n option x a\\ b\\'c\n", [("a", None, {"x": "a b'c"})]),
    ("single-quote-keeps-backslash", "config a\n option x 'a\\nb\\'\n", [("a", None, {"x": "a\\nb\\"})]),
    ("double-quote-escapes", 'config a\n option x "say \\"hi\\" \\\\ ok"\n',
     [("a", None, {"x": 'say "hi" \\ ok'})]),
    ("glued-pieces", "config a\n option x one'two 'three\"four\"five\n",
     [("a", None, {"x": "onetwo threefourfive"})]),
    ("single-in-double", "config a\n option x \"it's\"\n", [("a", None, {"x": "it's"})]),
    ("line-continuation-unquoted", "config a\n option x ab\\\ncd\n option y z\n",
     [("a", None, {"x": "abcd", "y": "z"})]),
    ("line-continuation-double", 'config a\n option x "ab\\\ncd"\n', [("a", None, {"x": "abcd"})]),
    ("line-continuation-crlf", "config a\r\n option x ab\\\r\ncd\r\n", [("a", None, {"x": "abcd"})]),
    ("line-continuation-between-args", "config a\n option x \\\n'v'\n", [("a", None, {"x": "v"})]),
    ("multi-line-quoted", "config a\n option x 'one\ntwo'\n option y \"3\n4\"\n",
     [("a", None, {"x": "one\ntwo", "y": "3\n4"})]),
    ("comments", """# top
config a 'b' # trailing
	# inside
	option x 'v' # after
	option y '#not a comment'
	option z foo#bar

   # indented comment
""", [("a", "b", {"x": "v", "y": "#not a comment", "z": "foo"})]),
    ("hash-glued-after-quote", "config a\n option x 'v'#c\n", [("a", None, {"x": "v"})]),
    ("blank-and-whitespace-lines", "\n   \n\t\nconfig a 'b'\n\n \t \n option x 1\n",
     [("a", "b", {"x": "1"})]),
    ("crlf", "config a 'b'\r\n\toption x 'v'\r\n", [("a", "b", {"x": "v"})]),
    ("no-final-newline", "config a 'b'\n option x 'v'", [("a", "b", {"x": "v"})]),
    ("option-twice-last-wins", "config a\n option x 1\n option x 2\n", [("a", None, {"x": "2"})]),
    ("option-empty-changes-nothing", "config a\n option x 1\n option x ''\n option y ''\n option z\n",
     [("a", None, {"x": "1"})]),
    ("option-then-list", "config a\n option x 1\n list x 2\n list x 3\n",
     [("a", None, {"x": ["1", "2", "3"]})]),
    ("list-then-option", "config a\n list x 1\n list x 2\n option x 3\n", [("a", None, {"x": "3"})]),
    ("list-empty-item", "config a\n list x ''\n list x b\n", [("a", None, {"x": ["", "b"]})]),
    ("named-section-twice-merges", "config a 'n'\n option x 1\nconfig b 'm'\nconfig a 'n'\n option y 2\n",
     [("a", "n", {"x": "1", "y": "2"}), ("b", "m", {})]),
    ("type-with-punctuation", "config wireguard_wg0\nconfig a.b-c:d\n",
     [("wireguard_wg0", None, {}), ("a.b-c:d", None, {})]),
    ("semicolon-after-quote", "config a\n option x 'v'; option y w\n", [("a", None, {"x": "v", "y": "w"})]),
    ("semicolon-after-blank", "config a\n option x v ; option y w\n", [("a", None, {"x": "v", "y": "w"})]),
    # libuci overwrites the ';' that ends an unquoted word: the rest is lost
    ("semicolon-glued-loses-rest", "config a\n option x v; option y w\n", [("a", None, {"x": "v"})]),
    ("semicolon-ends-config", "config a 'n'; option x v\n", [("a", "n", {"x": "v"})]),
    ("value-with-spaces-and-utf8", "config a\n option x 'Zürich office  2'\n",
     [("a", None, {"x": "Zürich office  2"})]),
    # A NUL ends what fgets read (libuci measures it with strlen); the next
    # read goes on at the NUL.  Each case observed with uci 66127cd.
    ("nul-ends-value", "config a\n option a b\0c\n", [("a", None, {"a": "b"})]),
    ("nul-at-eof", "config a\n option a b\0c", [("a", None, {"a": "b"})]),
    ("nul-then-blank-line", "config a\n option a b\0c\n\n option d e\n", [("a", None, {"a": "b", "d": "e"})]),
    ("nul-quoted-joins-next-line", "config a\n option x 'a\0b'\n'\n", [("a", None, {"x": "a"})]),
    ("nul-double-quoted", 'config a\n option x "a\0b"\nq" \n', [("a", None, {"x": "aq"})]),
    ("nul-first-skips-line", "\0config a\nconfig b\n", [("b", None, {})]),
    ("nul-first-in-section", "config a\n\0 option x 1\n option y 2\n", [("a", None, {"y": "2"})]),
    # fgets reads into a buffer of 32 bytes that doubles: what is lost after
    # the NUL ends where that read ended
    ("nul-in-a-long-line", "config a\n option x " + "v" * 20 + "\0" + "t" * 40 + "\n\n",
     [("a", None, {"x": "v" * 20 + "t" * 40})]),
    ("nul-in-a-longer-line", "config a\n option x " + "v" * 60 + "\0" + "t" * 100 + "\n\n option z 1\n",
     [("a", None, {"x": "v" * 60 + "t" * 44, "z": "1"})]),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse(text, expected):
    assert parsed(text) == expected


@pytest.mark.parametrize("text,order", [
    # uci_set (uci list.c) puts the new value after the old one and frees
    # the old: the option keeps its first place.  Observed with uci 66127cd.
    ("config a\n option x 1\n option y 2\n option x 33\n", ["x", "y"]),
    ("config a\n option x 1\n option y 2\n option x 3\n", ["x", "y"]),
    ("config a\n option x 1\n option y 2\n list x 3\n", ["x", "y"]),
    ("config a\n list x 1\n option y 2\n option x 3\n", ["x", "y"]),
    ("config a\n option x 1\n option y 2\n option x 1\n option z 3\n option y 22\n", ["x", "y", "z"]),
])
def test_option_given_again_keeps_its_place(text, order):
    (section,) = uci.parse(text, "f")
    assert list(section.options) == order


def test_bytes_are_decoded_per_value():
    (section,) = uci.parse_bytes(b"config a\n option x 'caf\xc3\xa9'\n option y 'caf\xe9'\n", "f")
    assert section.options == {"x": "café", "y": "caf\ufffd"}


def test_anonymous_refs_and_indexes():
    sections = uci.parse("""
config peer
	option a 1
config wan 'wan'
config peer
config wan
config peer 'named'
config wan 'wanb'
""", "f")
    assert [(s.ref, s.index) for s in sections] == [
        ("@peer[0]", 0), ("wan", 0), ("@peer[1]", 1), ("@wan[1]", 1), ("named", 2), ("wanb", 2)]
    assert [s.lineno for s in sections] == [2, 4, 5, 6, 7, 8]


def test_repeated_section_keeps_first_position_and_line():
    sections = uci.parse("config a 'x'\nconfig b\nconfig a 'x'\n option o 1\n", "f")
    assert [(s.ref, s.lineno) for s in sections] == [("x", 1), ("@b[0]", 2)]
    assert sections[0].options == {"o": "1"}


# (id, text, line, reason)
ERRORS = [
    ("option-before-section", "option a b\n", 1, "option/list command found before the first section"),
    ("list-before-section", "\n\nlist a b\n", 3, "option/list command found before the first section"),
    ("invalid-command", "config a\nfoo bar\n", 2, "invalid command"),
    ("long-command-prefix", "configure a\n", 1, "invalid command"),
    ("config-without-name", "config", 1, "config without name"),
    ("config-no-type", "config ''\n", 1, "insufficient arguments"),
    ("type-with-space", "config 'a b'\n", 1, "invalid character in type field"),
    ("name-with-dash", "config iface 'a-b'\n", 1, "invalid character in name field"),
    ("option-name-with-dash", "config a\n\toption 'x-y' 1\n", 2, "invalid character in name field"),
    ("option-without-name", "config a\n\toption", 2, "option without name"),
    ("option-no-name", "config a\n\toption ''\n", 2, "insufficient arguments"),
    ("too-many-arguments-config", "config a b c\n", 1, "too many arguments"),
    ("too-many-arguments-option", "config a\n option x 'y' z\n", 2, "too many arguments"),
    ("unterminated-single", "config a\n option x 'abc\n\n", 3, "EOF with unterminated '"),
    ("unterminated-double", 'config a\n option x "abc\n', 2, 'EOF with unterminated "'),
    ("type-change", "config a 'x'\nconfig b 'x'\n", 2,
     "section of different type overwrites prior section with same name"),
    # the joined line's indentation ends the (empty) value: 'v' is one too many
    ("continuation-then-indent", "config a\n option x \\\n  'v'\n", 3, "too many arguments"),
    # the NUL ends the read inside the quotes; the next read finds the end of the file
    ("nul-in-quotes", "config a\n option x 'a\0b'\n", 2, "EOF with unterminated '"),
    # what follows the NUL is lost, and the next line joins the statement
    ("nul-joins-next-line", "config a\n option a b\0c\n option d e\n", 3, "too many arguments"),
    ("nul-in-name", "config a 'n\0m'\n option x 1\n", 2, "EOF with unterminated '"),
    # a ';' before the line break leaves a statement that is only "\n"
    ("semicolon-at-end", "config a\n option x v ;\n", 2, "invalid command"),
]


@pytest.mark.parametrize("text,line,reason", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors(text, line, reason):
    with pytest.raises(uci.UciError) as info:
        uci.parse(text, "/etc/config/x")
    err = info.value
    assert isinstance(err, wgrouter.Error)
    assert (err.file, err.line, err.reason) == ("/etc/config/x", line, reason)
    assert str(err) == "/etc/config/x:%d: %s" % (line, reason)


def test_error_docstring_is_message():
    assert uci.UciError.__doc__ == "UCI syntax error"


def test_load(tmp_path):
    path = tmp_path / "network"
    path.write_bytes(b"# caf\xe9 in Latin-1\nconfig interface 'wan'\n\toption device 'eth1'\n")
    sections = uci.load(path)
    assert [(s.ref, s.options) for s in sections] == [("wan", {"device": "eth1"})]
    path.write_text("config a\nbad\n")
    with pytest.raises(uci.UciError, match=r"network:2: invalid command"):
        uci.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        uci.load(tmp_path / "nope")


TOKENS = ["config", "option", "list", "package", "c", "o", "l", "p", "wan", "x", "'", '"', "\\", "\n", "\r",
          " ", "\t", "#", ";", "'v'", '"v"', "a b", "-", "@", "\\\n", "é", "\0", "[", "]"]


def test_fuzz_tokens():
    rng = random.Random(1234)
    results = 0
    for _ in range(3000):
        text = "".join(rng.choice(TOKENS) for _ in range(rng.randint(0, 30)))
        try:
            sections = uci.parse(text, "fuzz")
        except uci.UciError as e:
            assert e.line >= 1 and e.reason
            continue
        results += 1
        for s in sections:
            assert isinstance(s.ref, str)
            for value in s.options.values():
                assert isinstance(value, (str, list))
    assert results > 100  # the generator also makes valid files


def test_fuzz_bytes(tmp_path):
    rng = random.Random(99)
    path = tmp_path / "f"
    for _ in range(500):
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 200))))
        try:
            uci.load(path)
        except uci.UciError:
            pass
