"""A loopback HTTP server with byte-range support, to test and benchmark remote (fsspec) stores.

Python's http.server ignores Range headers; fsspec's HTTPFileSystem (and so zarr) needs them to read
a chunk out of a shard. Serving on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class RangeHandler(SimpleHTTPRequestHandler):
    """GET/HEAD of files under the served folder, honouring a single ``Range: bytes=a-b``."""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        size = os.path.getsize(path)
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "") or "")
        start, end = 0, size - 1
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start = max(0, size - int(m.group(2)))
            if start > end:
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            self.wfile.write(f.read(end - start + 1))

    def do_HEAD(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(os.path.getsize(path)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()


def serve_directory(root: str) -> tuple[str, ThreadingHTTPServer]:
    """Serve ``root`` on 127.0.0.1 (a free port) from a daemon thread; returns (base URL, server).

    Stop it with ``server.shutdown()``.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=os.fspath(root)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="megastride-http").start()
    return f"http://127.0.0.1:{server.server_address[1]}", server
