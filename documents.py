"""
Documents out of files, one at a time, with bounded memory: .txt (one document per file, or
documents separated by a line equal to a delimiter), .jsonl and .jsonl.zst (a "text" field per
line), and .tar archives of those (OpenWebText2's layout), from comma-separated files or globs.
prepare.py reads its corpora with it, eval.py its file: sets. Bad input stops with a message.
"""
import glob
import io
import json
import os
import tarfile

import zstandard


def fail(message):
    raise SystemExit(message)



class Stream(io.RawIOBase):
    """A readable byte stream over `fileobj`, decompressed frame by frame if `zstd`. Why not the
    libraries' own: zstandard's stream_reader quietly returns a short file when the last frame is
    truncated, and tarfile's stream-mode members fail in io.TextIOWrapper (no seekable())."""

    def __init__(self, fileobj, zstd):
        self.fileobj, self.zstd = fileobj, zstd
        self.dctx = zstandard.ZstdDecompressor(max_window_size=1 << 31)
        self.frame, self.in_frame = None, False
        self.pending, self.offset = b'', 0

    def readable(self):
        return True

    def decompress(self, data):
        out = []
        while data:
            if self.frame is None or self.frame.eof:  # a file may hold several frames
                self.frame = self.dctx.decompressobj()
            out.append(self.frame.decompress(data))
            data = self.frame.unused_data if self.frame.eof else b''
        self.in_frame = not self.frame.eof
        return b''.join(out)

    def readinto(self, buffer):
        if not self.zstd:
            return self.fileobj.readinto(buffer)
        while self.offset == len(self.pending):
            data = self.fileobj.read(1 << 16)  # small bites: text can shrink 10x or more in zstd
            if not data:
                if self.in_frame or self.frame is None:
                    raise zstandard.ZstdError('truncated or empty zstd stream')
                return 0
            self.pending, self.offset = self.decompress(data), 0
        n = min(len(buffer), len(self.pending) - self.offset)
        buffer[:n] = self.pending[self.offset:self.offset + n]
        self.offset += n
        return n


def kind_of(name):
    return next((ext for ext in ('.jsonl.zst', '.jsonl', '.txt', '.tar') if name.endswith(ext)), None)


def input_files(spec):
    """Expand comma-separated files and globs ('**' recurses) into a list of readable files."""
    files = []
    for pattern in (p.strip() for p in spec.split(',') if p.strip()):
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            fail(f"input '{pattern}' matches no file")
        for path in matches:
            if not kind_of(path):
                fail(f"{path}: unsupported file type (use .txt, .jsonl, .jsonl.zst or .tar)")
            files.append(path)
    if not files:
        fail("input is empty: name files or globs (comma-separated)")
    return files


class Reader:
    """Reads the documents out of files, one at a time, and counts what it skips."""

    def __init__(self, text_delimiter, max_bad_lines):
        self.text_delimiter, self.max_bad_lines = text_delimiter, max_bad_lines
        self.bad_lines = self.skipped_members = 0

    def files(self, paths):
        for path in paths:
            with open(path, 'rb') as f:
                try:
                    yield from self.stream(f, path)
                except (tarfile.TarError, EOFError) as e:
                    fail(f"{path}: truncated or corrupt archive ({e})")

    def stream(self, fileobj, name):
        """The documents of one file or tar member, by its extension."""
        kind = kind_of(name)
        if kind == '.tar':
            yield from self.tar(fileobj, name)
            return
        binary = io.BufferedReader(Stream(fileobj, zstd=kind == '.jsonl.zst'), buffer_size=1 << 20)
        lines = io.TextIOWrapper(binary, encoding='utf-8', errors='strict')
        try:
            yield from self.txt(lines) if kind == '.txt' else self.jsonl(lines, name)
        except UnicodeDecodeError as e:
            fail(f"{name}: not UTF-8 text ({e})")
        except zstandard.ZstdError as e:
            fail(f"{name}: corrupt zstd data ({e})")

    def tar(self, fileobj, name):
        # mode 'r|' reads the archive as a stream, member after member, never the whole index
        with tarfile.open(fileobj=fileobj, mode='r|') as tar:
            for member in tar:
                if member.isfile() and kind_of(member.name) not in (None, '.tar'):
                    yield from self.stream(tar.extractfile(member), f"{name}/{member.name}")
                elif member.isfile():
                    self.skipped_members += 1
            end = tar.offset
        # tarfile ends quietly at a cut between two members; a whole archive ends with at least
        # one 512-byte block of zeros after its last member
        if os.fstat(fileobj.fileno()).st_size < end + 512:
            raise tarfile.ReadError('unexpected end of archive')

    def txt(self, lines):
        """One document per file, or documents separated by lines equal to text_delimiter."""
        document = []
        for line in lines:
            if self.text_delimiter and line.rstrip('\r\n') == self.text_delimiter:
                yield ''.join(document).strip('\n')
                document = []
            else:
                document.append(line)
        yield ''.join(document).strip('\n')

    def jsonl(self, lines, name):
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)['text']
                if not isinstance(text, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):  # not JSON, not an object, no "text" string
                self.bad_lines += 1
                if self.bad_lines > self.max_bad_lines:
                    fail(f"{name}:{lineno}: more than max_bad_lines={self.max_bad_lines} lines "
                         f"are not JSON objects with a \"text\" string, e.g. {line[:80]!r}")
                continue
            yield text
