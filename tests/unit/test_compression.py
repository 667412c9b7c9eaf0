"""storage/plugins/compression.Zstd's decompression context, kept per thread and reused:
a body it refused leaves nothing behind for the next, and threads never share one."""

from __future__ import annotations

import os
import threading

import pytest

from pitrkit.storage.plugins import Plugins
from pitrkit.storage.plugins.compression import Zstd


def test_a_refused_body_leaves_the_reused_context_sound():
    zstd = Zstd(3, 1)
    data = os.urandom(3000) * 20
    body = zstd.compress(data)
    with pytest.raises(ValueError, match="zstd"):
        zstd.decompress(body[: len(body) // 2], len(data))  # a frame cut short
    assert zstd.decompress(body, len(data)) == data
    assert zstd.decompress(zstd.compress(b"other"), 5) == b"other"


def test_threads_decompressing_at_once_each_get_their_own_bytes():
    zstd = Zstd(3, 1)
    payloads = [os.urandom(1000) * (number + 1) for number in range(8)]
    bodies = [zstd.compress(payload) for payload in payloads]
    wrong = []

    def work(number: int) -> None:
        for _ in range(200):
            if zstd.decompress(bodies[number], len(payloads[number])) != payloads[number]:
                wrong.append(number)

    threads = [threading.Thread(target=work, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_a_compressor_is_made_once_for_the_same_arguments():
    plugins = Plugins()
    zstd = plugins.compressor("zstd")
    assert plugins.compressor("zstd") is zstd  # with its per-thread decompression context
    assert plugins.compressor("zstd", 5) is not zstd and plugins.compressor("zstd", 5).level == 5
