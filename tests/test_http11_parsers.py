"""Both HTTP/1.1 response parsers, ResponseParser and its llhttp-backed twin, on the same cases.

Every case runs against each parser (httptools, which the llhttp one needs, is a test dependency).
A differential property test then feeds both the same random responses, split at random points,
and requires identical results read by read.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from messages_mw._http11_llhttp import LlhttpResponseParser
from messages_mw._http11_parse import (
    ProtocolError,
    ResponseHead,
    ResponseParser,
    ResponseParserLike,
    new_response_parser,
)

from .test_transport import CHUNKED_HEAD, chunk, encode_chunked, response, split_at

NewParser = Callable[[deque[bytes]], ResponseParserLike]

PARSERS: list[NewParser] = [ResponseParser, LlhttpResponseParser]

each_parser = pytest.mark.parametrize(
    "new_parser", PARSERS, ids=[parser.__name__ for parser in PARSERS]
)


@dataclass
class Outcome:
    """What a parser made of a response: per read, the payload count and its state after."""

    reads: list[tuple[int, ResponseHead | None, bool, bool]]
    body: bytes
    eof_complete: bool | None = None
    # Whether the llhttp parser handed the response over to ResponseParser.
    by_pure_parser: bool = field(default=True, compare=False)


def parse(new_parser: NewParser, pieces: list[bytes], *, eof: bool = False) -> Outcome:
    decoded: deque[bytes] = deque()
    parser = new_parser(decoded)
    reads = []
    for piece in pieces:
        produced = parser.feed(piece)
        reads.append((produced, parser.head, parser.complete, parser.keep_alive))
    outcome = Outcome(reads, b"".join(decoded))
    outcome.by_pure_parser = getattr(parser, "uses_pure_parser", True)
    if eof:
        outcome.eof_complete = parser.feed_eof()
    assert sum(read[0] for read in reads) == len(outcome.body)
    return outcome


def parse_whole(new_parser: NewParser, wire: bytes) -> tuple[ResponseParserLike, bytes]:
    decoded: deque[bytes] = deque()
    parser = new_parser(decoded)
    assert parser.feed(wire) == sum(map(len, decoded))
    return parser, b"".join(decoded)


@each_parser
@given(
    body=st.binary(max_size=3000),
    sizes=st.lists(st.integers(1, 700), max_size=20),
    cuts=st.lists(st.integers(0, 10_000), max_size=40),
    extensions=st.booleans(),
    trailers=st.booleans(),
)
def test_chunked_decoding_survives_any_split(
    new_parser: NewParser,
    body: bytes,
    sizes: list[int],
    cuts: list[int],
    extensions: bool,
    trailers: bool,
) -> None:
    wire = encode_chunked(body, sizes, extensions, trailers)
    outcome = parse(new_parser, split_at(wire, cuts))
    _, _, complete, keep_alive = outcome.reads[-1]
    assert complete and keep_alive
    assert outcome.body == body


@each_parser
@given(body=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 10_000), max_size=40))
def test_content_length_decoding_survives_any_split(
    new_parser: NewParser, body: bytes, cuts: list[int]
) -> None:
    outcome = parse(new_parser, split_at(response(body, extra=b"X-A: 1\r\n"), cuts))
    _, head, complete, _ = outcome.reads[-1]
    assert complete
    assert outcome.body == body
    assert head is not None and head.headers[-1] == (b"X-A", b"1")


@each_parser
@given(garbage=st.binary(min_size=1, max_size=200))
def test_parser_rejects_or_waits_on_garbage(new_parser: NewParser, garbage: bytes) -> None:
    assume(b"HTTP/1." not in garbage)  # garbage: no status line in it
    decoded: deque[bytes] = deque()
    parser = new_parser(decoded)
    try:
        parser.feed(garbage)
        parser.feed(b"\r\n\r\n")
        at_eof = parser.feed_eof()
    except ProtocolError:
        return  # rejected
    # Not rejected, so still waiting for a response: none was read out of the garbage.
    assert parser.head is None
    assert not parser.complete and not at_eof
    assert not decoded


def _chunked_reading(data: bytes) -> tuple[bool, bytes]:
    """The most lenient reading of ``data`` as a chunked body (bare LF line ends, chunk
    extensions and trailer lines unchecked): whether it is complete, and its payload so far.
    Raises ValueError where no reading works."""
    payload, position = b"", 0

    def line() -> bytes | None:
        nonlocal position
        end = data.find(b"\n", position)
        if end < 0:
            return None
        found, position = data[position:end], end + 1
        return found[:-1] if found.endswith(b"\r") else found

    while True:
        size_line = line()
        if size_line is None:
            return False, payload
        size_text = size_line.split(b";", 1)[0].strip(b" \t")
        if not size_text or size_text.translate(None, b"0123456789abcdefABCDEF"):
            raise ValueError(f"no chunk size in {size_line!r}")
        size = int(size_text, 16)
        if not size:
            break
        piece = data[position : position + size]
        payload, position = payload + piece, position + len(piece)
        if len(piece) < size:
            return False, payload
        end_of_chunk = line()
        if end_of_chunk is None:
            return False, payload
        if end_of_chunk:
            raise ValueError("chunk data longer than its size")
    while (trailer := line()) is not None:
        if not trailer:
            return True, payload
    return False, payload


_LENGTH_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"


@each_parser
@given(
    head=st.sampled_from([CHUNKED_HEAD, _LENGTH_HEAD]),
    garbage=st.binary(min_size=1, max_size=200),
)
def test_parser_rejects_or_waits_on_garbage_bodies(
    new_parser: NewParser, head: bytes, garbage: bytes
) -> None:
    decoded: deque[bytes] = deque()
    parser = new_parser(decoded)
    tail = b"\r\n0\r\n\r\n"
    try:
        parser.feed(head + garbage)
        parser.feed(tail)
        at_eof = parser.feed_eof()
    except ProtocolError:
        return  # rejected
    # Not rejected: the parser waits for more, or the "garbage" happens to frame a body (a
    # 9-byte Content-Length takes any bytes; "0" ends a chunked body). Either way it made up
    # nothing: its verdict and payload are what the bytes themselves say.
    wire_body = garbage + tail
    if head == _LENGTH_HEAD:
        expected = (len(wire_body) >= 9, wire_body[:9])
    else:
        expected = _chunked_reading(wire_body)  # ValueError: it took malformed framing
    assert (parser.complete, b"".join(decoded)) == expected
    assert at_eof == parser.complete


@each_parser
def test_parser_accepts_bare_line_feeds_in_chunk_framing(new_parser: NewParser) -> None:
    parser, body = parse_whole(new_parser, CHUNKED_HEAD + b"5\nhello\n0\n\n")
    assert parser.complete
    assert body == b"hello"


@each_parser
@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000,
        CHUNKED_HEAD + b"1" + b" " * 9000,
        CHUNKED_HEAD + b"12345678901234567\r\n",
    ],
)
def test_parser_refuses_unbounded_input(new_parser: NewParser, wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        new_parser(deque()).feed(wire)


@each_parser
def test_parser_refuses_endless_head_in_small_reads(new_parser: NewParser) -> None:
    parser = new_parser(deque())
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(ProtocolError):
        for _ in range(100):
            parser.feed(b"X-Filler: " + b"a" * 1000 + b"\r\n")


@each_parser
def test_parser_refuses_endless_chunk_framing_in_small_reads(new_parser: NewParser) -> None:
    parser = new_parser(deque())
    parser.feed(CHUNKED_HEAD + chunk(b"first") + b"5;name=")
    with pytest.raises(ProtocolError):
        for _ in range(100):
            parser.feed(b"a" * 1000)


@each_parser
def test_parser_eof_ends_only_bodies_framed_by_close(new_parser: NewParser) -> None:
    until_close = new_parser(deque())
    until_close.feed(b"HTTP/1.1 200 OK\r\n\r\nabc")
    assert until_close.feed_eof() and not until_close.keep_alive
    truncated = new_parser(deque())
    truncated.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    assert not truncated.feed_eof()
    head_only = new_parser(deque())
    head_only.feed(b"HTTP/1.1 200 OK\r\n")
    assert not head_only.feed_eof()


@each_parser
def test_transfer_coding_other_than_chunked_runs_until_close(new_parser: NewParser) -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabcdef"
    parser, body = parse_whole(new_parser, wire)
    assert not parser.complete and not parser.keep_alive
    assert body == b"abcdef"


@each_parser
def test_a_response_with_both_framings_is_read_chunked_and_not_kept_alive(
    new_parser: NewParser,
) -> None:
    wire = CHUNKED_HEAD.replace(b"\r\n\r\n", b"\r\nContent-Length: 100\r\n\r\n")
    parser, body = parse_whole(new_parser, wire + chunk(b"abc") + b"0\r\n\r\n")
    assert parser.complete and body == b"abc"
    assert not parser.keep_alive


@each_parser
@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"RTSP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000000\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nName : value\r\n\r\n",
        # Controls in a value, a space in a name: a client's server would refuse to relay them
        # mid-response, or a lax one split them into headers of their own.
        b"HTTP/1.1 200 OK\r\nX-Ctl: a\x7fb\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Ctl: a\x00b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Ctl: a\rb\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Ctl: one\nX-Injected: yes\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX Ctl: v\r\nContent-Length: 0\r\n\r\n",
        CHUNKED_HEAD + b"zz\r\nhello\r\n0\r\n\r\n",
        CHUNKED_HEAD + b"2\r\nhello\r\n0\r\n\r\n",
        CHUNKED_HEAD + chunk(b"first") + b"2\r\nhello\r\n0\r\n\r\n",
    ],
)
def test_malformed_responses_raise_protocol_error(new_parser: NewParser, wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        new_parser(deque()).feed(wire)


@each_parser
@pytest.mark.parametrize("cut", [0, 10, 25, 40, 60])
def test_interim_responses_are_skipped(new_parser: NewParser, cut: int) -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
    wire += response(b"final", b"201 Created")
    outcome = parse(new_parser, [wire[:cut], wire[cut:]])
    _, head, complete, keep_alive = outcome.reads[-1]
    assert head is not None and head.status_code == 201 and head.headers[0][1] == b"5"
    assert outcome.body == b"final" and complete and keep_alive


@each_parser
@pytest.mark.parametrize(
    ("wire", "keep_alive"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", True),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n", True),
        (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", True),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", False),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\nnot http", False),
        # No body is read after a code under 100, so one it had must not pass for the next.
        (b"HTTP/1.1 099 Odd\r\nContent-Length: 5\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    ],
)
def test_responses_without_a_body(new_parser: NewParser, wire: bytes, keep_alive: bool) -> None:
    parser, body = parse_whole(new_parser, wire)
    assert parser.complete and parser.keep_alive == keep_alive
    assert body == b""


def test_head_requests_always_get_the_pure_parser() -> None:
    decoded: deque[bytes] = deque()
    parser = new_response_parser(decoded, head_request=True)
    assert isinstance(parser, ResponseParser)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    assert parser.complete and parser.keep_alive and not decoded


def test_other_requests_get_the_llhttp_parser() -> None:
    assert isinstance(new_response_parser(deque()), LlhttpResponseParser)


@each_parser
@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nConnection: foo, CLOSE\r\n", False),
        (b"HTTP/1.1 200 OK\r\nProxy-Connection: close\r\n", True),
        (b"HTTP/1.0 200 OK\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n", True),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\n", False),
    ],
)
def test_keep_alive_follows_version_and_connection(
    new_parser: NewParser, head: bytes, keep_alive: bool
) -> None:
    parser, body = parse_whole(new_parser, head + b"Content-Length: 2\r\n\r\nok")
    assert parser.complete and parser.keep_alive == keep_alive
    assert body == b"ok"


@each_parser
@pytest.mark.parametrize("after", [b"junk", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot"])
@pytest.mark.parametrize("same_read", [True, False])
def test_bytes_after_the_response_spoil_the_connection(
    new_parser: NewParser, after: bytes, same_read: bool
) -> None:
    wire = response(b"ok", extra=b"X: y\r\n")
    outcome = parse(new_parser, [wire + after] if same_read else [wire, after])
    _, head, complete, keep_alive = outcome.reads[-1]
    assert head is not None and head.headers == [(b"Content-Length", b"2"), (b"X", b"y")]
    assert outcome.body == b"ok" and complete and not keep_alive


@each_parser
def test_header_bytes_are_kept_as_sent(new_parser: NewParser) -> None:
    wire = b"HTTP/1.1 200 \xc3\x89t\xe9 ok\r\nX-Raw-Case:  A  b \t\r\nX-Empty:\r\n"
    wire += b"X-Utf8: caf\xc3\xa9\r\nX-Latin: \xe9\r\nContent-Length: 0\r\n\r\n"
    parser, _ = parse_whole(new_parser, wire)
    assert parser.head == ResponseHead(
        b"HTTP/1.1",
        200,
        b"\xc3\x89t\xe9 ok",
        [
            (b"X-Raw-Case", b"A  b"),
            (b"X-Empty", b""),
            (b"X-Utf8", b"caf\xc3\xa9"),
            (b"X-Latin", b"\xe9"),
            (b"Content-Length", b"0"),
        ],
    )


@each_parser
@pytest.mark.parametrize(
    ("head", "wire_body", "body"),
    [
        # Repeated but agreeing lengths, which llhttp refuses and RFC 9110 allows.
        (b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc", b"abc"),
        (b"Content-Length: 3, 3\r\n", b"abc", b"abc"),
        (b"Transfer-Encoding: gzip, chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n", b"abc"),
        (b"Transfer-Encoding: chunked\r\n", b"3 \r\nabc\r\n0\r\n\r\n", b"abc"),
        (b"Transfer-Encoding: chunked\r\n", b"3; a = b\r\nabc\r\n0\r\n\r\n", b"abc"),
    ],
)
def test_heads_and_framing_llhttp_refuses_are_read_like_responseparser(
    new_parser: NewParser, head: bytes, wire_body: bytes, body: bytes
) -> None:
    parser, decoded = parse_whole(new_parser, b"HTTP/1.1 200 OK\r\n" + head + b"\r\n" + wire_body)
    assert parser.complete and parser.keep_alive
    assert decoded == body


@each_parser
@pytest.mark.parametrize("later", [b"5 \r\nworld\r\n", b"5\t\r\nworld\r\n", b"5 ;a=b\r\nworld\r\n"])
def test_whitespace_after_a_later_chunk_size_is_read_like_responseparser(
    new_parser: NewParser, later: bytes
) -> None:
    # Accepted by h11 too (an SDK reading the upstream itself): refused after the first
    # payload, it broke a stream mid-way that any client reads well.
    body: deque[bytes] = deque()
    parser = new_parser(body)
    parser.feed(CHUNKED_HEAD + chunk(b"hello"))
    parser.feed(later)
    parser.feed(b"0\r\n\r\n")
    assert parser.complete and b"".join(body) == b"helloworld"


def test_llhttp_stays_strict_once_payload_has_been_delivered() -> None:
    parser = LlhttpResponseParser(deque())
    parser.feed(CHUNKED_HEAD + chunk(b"first"))
    with pytest.raises(ProtocolError):
        parser.feed(b"5\nhello\n0\n\n")


def test_llhttp_parses_ordinary_responses_itself() -> None:
    for wire in (
        response(b"body", extra=b"Connection: keep-alive\r\n"),
        CHUNKED_HEAD + chunk(b"a") + b"0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    ):
        parser = LlhttpResponseParser(deque())
        parser.feed(wire)
        assert not parser.uses_pure_parser


_TOKEN = st.lists(
    st.sampled_from(
        b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    ),
    min_size=1,
    max_size=12,
).map(bytes)
# Field values and reasons: visible ASCII, obs-text and inner whitespace, as RFC 9110 allows.
_TEXT = st.lists(
    st.one_of(st.integers(0x21, 0x7E), st.integers(0x80, 0xFF), st.sampled_from(b" \t")),
    max_size=20,
).map(bytes)
_OWS = st.sampled_from([b"", b" ", b"  ", b"\t", b" \t"])
_QUOTED = st.lists(st.sampled_from([b"a", b" ", b"\t", b"\xe9", b'\\"', b"\\\\", b"="])).map(
    lambda parts: b'"' + b"".join(parts) + b'"'
)
_EXTENSION = st.lists(
    st.tuples(_TOKEN, st.one_of(st.just(b""), _TOKEN.map(b"=".__add__), _QUOTED.map(b"=".__add__)))
).map(lambda pairs: b"".join(b";" + name + value for name, value in pairs))
_CONNECTION = st.sampled_from(
    [b"close", b"keep-alive", b"Keep-Alive", b"upgrade", b"foo, close", b"keep-alive, te", b"TE"]
)
# Framing headers as servers send them, and a few that llhttp leaves to ResponseParser.
_CHUNKED = st.sampled_from([b"chunked", b"Chunked", b"CHUNKED"])
_UNUSUAL_CODINGS = st.sampled_from([b"gzip, chunked", b"chunked, gzip", b"gzip"])


@st.composite
def _field_lines(draw: st.DrawFn, names: st.SearchStrategy[bytes] = _TOKEN) -> list[bytes]:
    fields = draw(st.lists(st.tuples(names, _OWS, _TEXT, _OWS), max_size=6))
    return [name + b":" + before + value + after + b"\r\n" for name, before, value, after in fields]


@st.composite
def _chunked_body(draw: st.DrawFn, body: bytes) -> bytes:
    sizes = draw(st.lists(st.integers(1, 300), max_size=12))
    encoded, start = [], 0
    for size in sizes:
        piece, start = body[start : start + size], start + size
        if not piece:
            break
        extension = draw(_EXTENSION)
        encoded.append(b"%x%s\r\n%s\r\n" % (len(piece), extension, piece))
    if start < len(body):
        encoded.append(chunk(body[start:]))
    trailers = draw(_field_lines())
    encoded.append(b"0%s\r\n%s\r\n" % (draw(_EXTENSION), b"".join(trailers)))
    return b"".join(encoded)


@dataclass
class Case:
    wire: bytes
    body: bytes
    framing: str
    status: int
    interim: bool
    # Whether its framing is the kind llhttp parses itself rather than hands over.
    plain: bool


@st.composite
def valid_responses(draw: st.DrawFn) -> Case:
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    status = draw(
        st.one_of(st.sampled_from([200, 201, 204, 304, 101, 404, 429, 529]), st.integers(0, 999))
    )
    reason = draw(st.one_of(st.just(b""), st.just(b" "), _TEXT.map(b" ".__add__)))
    body = draw(st.binary(max_size=1500))
    framing = draw(st.sampled_from(["length", "chunked", "close", "unusual"]))
    plain = framing != "unusual"
    fields = draw(_field_lines())
    if framing == "length":
        fields.append(b"Content-Length:%s%d%s\r\n" % (draw(_OWS), len(body), draw(_OWS)))
        framed = body
    elif framing == "close":
        framed = body
    else:
        coding = draw(_CHUNKED if framing == "chunked" else _UNUSUAL_CODINGS)
        fields.append(b"Transfer-Encoding: %s\r\n" % coding)
        if coding.lower().endswith(b"chunked"):
            framed = draw(_chunked_body(body))
        else:
            # A final coding other than chunked leaves the body to run until the close.
            framed, framing = body, "close"
    fields += [b"Connection: %s\r\n" % option for option in draw(st.lists(_CONNECTION, max_size=2))]
    interim = draw(
        st.lists(st.sampled_from([b"100 Continue", b"102 Processing", b"103 Early Hints"]))
    )
    head = b"".join(b"%s %s\r\n%s\r\n" % (version, line, b"".join(fields[:1])) for line in interim)
    head += b"%s %03d%s\r\n" % (version, status, reason)
    head += b"".join(draw(st.permutations(fields))) + b"\r\n"
    return Case(head + framed, body, framing, status, bool(interim), plain)


def parse_or_fail(new_parser: NewParser, pieces: list[bytes]) -> Outcome | None:
    try:
        return parse(new_parser, pieces, eof=True)
    except ProtocolError:
        return None


@given(case=valid_responses(), cuts=st.lists(st.integers(0, 5000), max_size=12))
def test_both_parsers_read_valid_responses_alike(case: Case, cuts: list[int]) -> None:
    pieces = split_at(case.wire, cuts)
    pure = parse_or_fail(ResponseParser, pieces)
    llhttp = parse_or_fail(LlhttpResponseParser, pieces)
    assert llhttp == pure
    if pure is None:
        # A 1xx or sub-100 status line makes the bytes after its head a malformed response.
        assert case.status < 200
        return
    assert llhttp is not None
    status = case.status
    if status >= 200 and status not in (204, 304) and case.framing != "close":
        assert pure.body == case.body and pure.reads[-1][2]
    ordinary = case.plain and not case.interim and (status >= 200 or status == 101)
    assert llhttp.by_pure_parser != ordinary


@each_parser
@given(case=valid_responses(), position=st.integers(0, 5000), byte=st.integers(0, 255))
def test_a_corrupted_byte_raises_nothing_but_protocol_error(
    new_parser: NewParser, case: Case, position: int, byte: int
) -> None:
    wire = bytearray(case.wire)
    wire[position % len(wire)] = byte
    with contextlib.suppress(ProtocolError):
        parse(new_parser, split_at(bytes(wire), [position]), eof=True)


@given(
    case=valid_responses(),
    position=st.integers(0, 5000),
    byte=st.integers(0, 255),
    cuts=st.lists(st.integers(0, 5000), max_size=4),
)
def test_both_parsers_read_corrupted_heads_alike(
    case: Case, position: int, byte: int, cuts: list[int]
) -> None:
    """Whatever llhttp refuses or reads differently in a head goes to ResponseParser, so a
    corrupted head gets the same verdict from both. (A corrupted chunk extension after the
    first payload does not: llhttp checks extensions, ResponseParser skips them.)"""
    wire = bytearray(case.wire)
    wire[position % (case.wire.find(b"\r\n\r\n") + 4)] = byte
    pieces = split_at(bytes(wire), cuts)
    assert parse_or_fail(LlhttpResponseParser, pieces) == parse_or_fail(ResponseParser, pieces)
