"""The command channel's framing, without a VM: replies split anywhere, nonces, quoting."""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmlab.channels.guest_channel import (
    GuestChannel,
    GuestResult,
    ReplyReader,
    command_line,
    encode_request,
)
from kvmlab.errors import GuestChannelError, GuestTimeoutError, InvalidInputError

NONCE = "00ff00ff00ff00ff"


def feed_in_chunks(reader: ReplyReader, data: bytes, cuts: list[int]) -> GuestResult | None:
    result = None
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        result = reader.feed(data[start:cut]) or result
        start = cut
    return result


def test_the_reply_is_the_output_before_the_marker() -> None:
    reader = ReplyReader(NONCE)
    assert reader.feed(b"hello\n\nKVMLAB-EXIT 00ff00ff00ff00ff 3\n") == GuestResult(3, "hello\n")


def test_output_without_a_trailing_newline_comes_back_without_one() -> None:
    reader = ReplyReader(NONCE)
    assert reader.feed(b"abc\nKVMLAB-EXIT 00ff00ff00ff00ff 0\n") == GuestResult(0, "abc")


def test_empty_output() -> None:
    assert ReplyReader(NONCE).feed(b"\nKVMLAB-EXIT 00ff00ff00ff00ff 0\n") == GuestResult(0, "")


def test_a_marker_with_another_nonce_is_output() -> None:
    reader = ReplyReader(NONCE)
    stream = b"x\nKVMLAB-EXIT 1111222233334444 0\ny\nKVMLAB-EXIT 00ff00ff00ff00ff 1\n"
    assert reader.feed(stream) == GuestResult(1, "x\nKVMLAB-EXIT 1111222233334444 0\ny")


def test_a_marker_not_at_a_line_start_or_unfinished_is_not_the_end() -> None:
    reader = ReplyReader(NONCE)
    assert reader.feed(b"say KVMLAB-EXIT 00ff00ff00ff00ff 0\n") is None
    assert reader.feed(b"\nKVMLAB-EXIT 00ff00ff00ff00ff 12") is None  # the line is not over
    assert reader.feed(b"3\n") == GuestResult(123, "say KVMLAB-EXIT 00ff00ff00ff00ff 0\n")


def test_crlf_line_ends_are_tolerated_around_the_marker() -> None:
    reader = ReplyReader(NONCE)
    assert reader.feed(b"a\r\nKVMLAB-EXIT 00ff00ff00ff00ff 0\r\n") == GuestResult(0, "a")


def test_bytes_after_the_marker_are_kept_and_invalid_utf8_is_replaced() -> None:
    reader = ReplyReader(NONCE)
    result = reader.feed(b"\xff\nKVMLAB-EXIT 00ff00ff00ff00ff 0\nmore")
    assert result == GuestResult(0, "\ufffd")
    assert reader.rest == b"more"


@given(
    # A CR right before the marker reads as a CRLF line end (see the test above).
    output=st.binary(max_size=200).filter(lambda b: NONCE.encode() not in b and b[-1:] != b"\r"),
    status=st.integers(0, 255),
    cuts=st.lists(st.integers(0, 300), max_size=12),
)
def test_a_reply_split_at_any_byte_boundaries_parses_the_same(
    output: bytes, status: int, cuts: list[int]
) -> None:
    stream = output + b"\nKVMLAB-EXIT " + NONCE.encode() + f" {status}\n".encode()
    cuts = [cut for cut in cuts if cut <= len(stream)]
    expected = GuestResult(status, output.decode("utf-8", errors="replace"))
    assert feed_in_chunks(ReplyReader(NONCE), stream, cuts) == expected


def test_words_are_quoted_and_strings_are_shell_lines() -> None:
    assert command_line(["echo", "a b", "*", "$HOME", "it's"]) == (
        "echo 'a b' '*' '$HOME' 'it'\"'\"'s'"
    )
    assert command_line("cat /sys/class/net/*/address") == "cat /sys/class/net/*/address"
    assert encode_request(NONCE, 31, "true") == b"00ff00ff00ff00ff 31 true\n"


@pytest.mark.parametrize("cmd", [[], "", " \t", ["a\n"], "a\rb", ["\x00"], ["x" * 3001]])
def test_what_cannot_be_one_request_line_is_refused(cmd: object) -> None:
    with pytest.raises(InvalidInputError):
        command_line(cmd)  # type: ignore[arg-type]


def test_a_missing_socket_is_a_channel_error(tmp_path: Path) -> None:
    with pytest.raises(GuestChannelError, match="cannot reach"):
        GuestChannel("vm1", tmp_path / "none.cmd").run(["true"])


Handler = Callable[[socket.socket], object]


def serve(path: Path, *handlers: Handler) -> list[str]:
    """Listen at ``path`` as QEMU does (a backlog of one) and serve one connection with
    each handler in turn; the list returned names the handlers that got one."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    served: list[str] = []

    def accept() -> None:
        with listener:
            for handler in handlers:
                conn, _ = listener.accept()
                served.append(getattr(handler, "__name__", "handler"))
                with conn:
                    handler(conn)

    threading.Thread(target=accept, daemon=True).start()
    return served


def read_line(conn: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode()


def reset(conn: socket.socket) -> None:
    """Close with the client's ping unread: the client's next read fails with ECONNRESET."""
    conn.recv(1, socket.MSG_PEEK)


def answer(conn: socket.socket, hold: float = 0.0) -> None:
    """A guest that answers pings, then runs ``echo WORDS`` (``hold`` s before each reply)."""
    line = ":"
    while line == ":":  # pings, then the command
        nonce, _seconds, line = read_line(conn).rstrip("\n").split(" ", 2)
        reply = "" if line == ":" else line.removeprefix("echo ") + "\n"
        threading.Event().wait(hold)
        conn.sendall(f"{reply}\nKVMLAB-EXIT {nonce} 0\n".encode())


def test_stale_ping_replies_and_leftovers_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "c"

    def guest(conn: socket.socket) -> None:
        first = read_line(conn).split(" ")[0]  # not answered: the guest "is booting"
        second = read_line(conn).split(" ")[0]
        conn.sendall(f"leftover\nKVMLAB-EXIT {first} 0\nmore\nKVMLAB-EXIT {second} 0\n".encode())
        request = read_line(conn)
        nonce, seconds, line = request.rstrip("\n").split(" ", 2)
        assert (seconds, line) == ("6", "echo 'a b'")
        # Split in the middle of the marker, byte by byte.
        for byte in f"a b\n\nKVMLAB-EXIT {nonce} 4\n".encode():
            conn.sendall(bytes([byte]))

    served = serve(path, guest)
    assert GuestChannel("vm1", path).run(["echo", "a b"], timeout=5) == GuestResult(4, "a b\n")
    assert served == ["guest"]


def test_no_answer_is_a_timeout_and_a_closed_channel_an_error(tmp_path: Path) -> None:
    silent = tmp_path / "s"
    serve(silent, lambda conn: conn.recv(4096) and threading.Event().wait(3))
    with pytest.raises(GuestTimeoutError, match=r"did not answer within 0\.5 s"):
        GuestChannel("vm1", silent).run(["true"], ready_timeout=0.5)
    closing = tmp_path / "c"
    serve(closing, lambda conn: conn.recv(4096))
    with pytest.raises(GuestChannelError, match="closed"):
        GuestChannel("vm1", closing).run(["true"], ready_timeout=5)


def test_concurrent_callers_wait_for_their_turn_at_a_full_backlog(tmp_path: Path) -> None:
    """QEMU serves one client at a time with a backlog of one: a connect beyond that
    fails at once with EAGAIN on a unix socket, and the caller must wait its turn."""
    path = tmp_path / "busy"
    # Each client holds the channel a while.
    serve(path, *[functools.partial(answer, hold=0.05)] * 6)
    results: dict[int, object] = {}

    def call(index: int) -> None:
        try:
            results[index] = GuestChannel("vm1", path).run(f"echo {index}", timeout=5)
        except Exception as err:  # the test reports what each caller got
            results[index] = err

    callers = [threading.Thread(target=call, args=(index,)) for index in range(6)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(30)
    assert results == {index: GuestResult(0, f"{index}\n") for index in range(6)}


def test_a_connection_reset_before_the_guest_answers_is_made_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only pings were sent on it, so nothing is lost or run twice."""
    path = tmp_path / "c"
    served = serve(path, reset, reset, answer)
    assert GuestChannel("vm1", path).run("echo up", ready_timeout=5) == GuestResult(0, "up\n")
    assert served == ["reset", "reset", "answer"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert all("vm1 failed: Connection reset by peer: connecting again" in w for w in warnings)


def test_a_channel_that_keeps_dropping_its_clients_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c"
    served = serve(path, reset, reset, reset, answer)
    with pytest.raises(GuestChannelError, match="Connection reset by peer") as caught:
        GuestChannel("vm1", path).run("echo up", ready_timeout=5)
    assert not isinstance(caught.value, GuestTimeoutError)
    assert served == ["reset"] * 3, "the first connection and two more"
