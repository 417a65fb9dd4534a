"""Message ids (new_id), both implementations: 128 random bits as 32 hex digits, unique across threads and forks."""

from __future__ import annotations

import os
import re
import threading
from types import ModuleType

import pytest

HEX32 = re.compile(r"[0-9a-f]{32}\Z")


def test_an_id_is_32_hex_digits(envelope_module: ModuleType) -> None:
    ids = [envelope_module.new_id() for _ in range(10_000)]  # several draws of randomness (128 or 256 ids each)
    assert all(type(i) is str and HEX32.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_ids_have_no_sequence_to_follow(envelope_module: ModuleType) -> None:
    # The old ids were a per-process prefix and a counter: seeing one told the next. Now consecutive ids share
    # no prefix beyond chance, and every hex digit is about equally likely in every position.
    ids = [envelope_module.new_id() for _ in range(4096)]
    shared = [len(os.path.commonprefix([a, b])) for a, b in zip(ids, ids[1:])]
    assert sum(shared) / len(shared) < 0.2  # 1/15 expected
    for position in (0, 15, 31):
        counts = {d: sum(i[position] == d for i in ids) for d in "0123456789abcdef"}
        assert min(counts.values()) > 4096 / 16 * 0.6 and max(counts.values()) < 4096 / 16 * 1.4, (position, counts)


def test_ids_are_unique_across_threads(envelope_module: ModuleType) -> None:
    new_id = envelope_module.new_id
    made: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def make(out: list[str]) -> None:
        start.wait()
        for _ in range(20_000):
            out.append(new_id())

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every) == 160_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_does_not_repeat_its_parents_ids(envelope_module: ModuleType) -> None:
    envelope_module.new_id()  # randomness drawn and partly used: the child inherits the rest
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids to the parent, then leave at once
        try:
            os.write(write, "".join(envelope_module.new_id() for _ in range(64)).encode())
        finally:
            os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    child = {data[i:i + 32].decode() for i in range(0, len(data), 32)}
    parent = {envelope_module.new_id() for _ in range(64)}
    assert len(child) == 64 and not child & parent


def test_new_message_uses_the_active_core(envelope_module: ModuleType) -> None:
    from agentcore.envelope import IdGenerator, new_message

    assert HEX32.match(new_message("task", None, source_id="a")["id"])
    assert HEX32.match(IdGenerator()())
