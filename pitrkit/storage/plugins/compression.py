"""Built-in compressors: `zstd` (the default) and `none`.

zstd is imported only when an object actually needs it. Compression uses every core by
default: one 16 MiB segment at level 3 takes ~42 ms on one core here and ~25 ms on two,
and archive_command is strictly serial, so threads are the only way to use the second core.
"""

from __future__ import annotations

import os
import threading

from pitrkit.hookspecs import hookimpl

# The most a zstd body can expand by: a block regenerates at most 128 KiB, and the
# smallest block (an RLE block) takes 4 bytes. A size beyond this is a lie, refused
# before zstd is asked to allocate it.
_ZSTD_MAX_RATIO = (128 << 10) // 4

class NoCompression:
    name = "none"

    def compress(self, data: bytes) -> bytes:
        return data

    def decompress(self, data: bytes | memoryview, size: int) -> bytes:
        if len(data) != size:
            raise ValueError(f"the body is {len(data)} bytes, the header says {size}")
        return bytes(data)

    def decompress_into(self, data: bytes | memoryview, size: int, buffer: bytearray) -> memoryview:
        """The body itself: nothing to copy."""
        if len(data) != size:
            raise ValueError(f"the body is {len(data)} bytes, the header says {size}")
        return memoryview(data)


class Zstd:
    name = "zstd"

    def __init__(self, level: int, threads: int) -> None:
        import zstandard

        if not 1 <= level <= zstandard.MAX_COMPRESSION_LEVEL:
            raise ValueError(f"zstd levels are 1 to {zstandard.MAX_COMPRESSION_LEVEL}, not {level}")
        self._zstandard = zstandard
        self.level = level
        # The cores this process may run on, not all the machine has (taskset, cpusets).
        self.threads = threads or len(os.sched_getaffinity(0))
        # One compression and one decompression context per thread, reused (a context is
        # not thread-safe): making one costs more than decompressing a 64 KiB super-block
        # (12 us against 2), and a quarter of compressing one (measured on pgbench pages:
        # 55 us per 64 KiB with a new compressor, 40 us with one used again; in a perf
        # profile of an incremental backup-push, making and zeroing contexts and faulting
        # their pages in were ~12 % of its CPU).
        self._local = threading.local()

    def compress(self, data: bytes) -> bytes:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            # threads=1 would add a worker thread for nothing; 0 is zstd's single-threaded mode.
            threads = self.threads if self.threads > 1 else 0
            compressor = self._local.compressor = self._zstandard.ZstdCompressor(level=self.level, threads=threads)
        return compressor.compress(data)

    def decompress(self, data: bytes | memoryview, size: int) -> bytes:
        try:
            decompressor = self._decompressor(data, size)
            return decompressor.decompress(data, max_output_size=size)
        except self._zstandard.ZstdError as exc:
            raise ValueError(f"zstd: {exc}") from None

    def decompress_into(self, data: bytes | memoryview, size: int, buffer: bytearray) -> memoryview:
        """As `decompress`, into `buffer` (a size it cannot take is refused): a view of the
        plaintext in it. A 32 MiB part decoded into a buffer used again costs a third of
        the CPU of one decoded into new memory, whose pages the kernel maps and zeroes
        as they are first written (measured: 0.09 against 0.30 s for 384 MiB)."""
        try:
            decompressor = self._decompressor(data, size)
            if size > len(buffer):
                raise ValueError(f"the header says {size} bytes, more than the {len(buffer)} expected")
            view = memoryview(buffer)[:size]
            with decompressor.stream_reader(data, read_across_frames=False) as reader:
                filled = 0
                while filled < size and (count := reader.readinto(view[filled:])):
                    filled += count
                if filled == size and reader.read(1):
                    raise ValueError(f"the zstd body holds more than the {size} bytes expected")
        except self._zstandard.ZstdError as exc:
            raise ValueError(f"zstd: {exc}") from None
        return view[:filled]

    def _decompressor(self, data: bytes | memoryview, size: int):  # type: ignore[no-untyped-def]
        """This thread's context, once `size` is known to be a size `data` can decode to."""
        if size > len(data) * _ZSTD_MAX_RATIO:
            raise ValueError(f"the header claims {size} bytes from a {len(data)}-byte zstd body, more than "
                             "zstd can expand to")
        # zstd honours max_output_size only for frames that do not state their size;
        # a frame that does is trusted, so a corrupt one could claim terabytes.
        claimed = self._zstandard.frame_content_size(data)
        if claimed > size:
            raise ValueError(f"zstd frame claims {claimed} bytes, more than the {size} expected")
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = self._local.decompressor = self._zstandard.ZstdDecompressor()
        return decompressor


@hookimpl
def pitrkit_compressor(name: str, level: int, threads: int):
    if name == "zstd":
        return Zstd(level, threads)
    if name == "none":
        return NoCompression()
    return None
