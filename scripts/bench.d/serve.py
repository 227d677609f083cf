#!/usr/bin/env python3
"""Serves one directory over HTTP on 127.0.0.1 for scripts/bench.

http.server copies files through Python in 64 KiB pieces; this handler
hands the socket to the kernel with sendfile(2) instead, so the server is
not what a benchmark measures. It answers single byte ranges (206), as
DRP's file server does: imprint reads the xz index from the end of a file.

usage: serve.py DIR PORT_FILE   (binds an ephemeral port, writes it to PORT_FILE)
"""
import http.server
import os
import re
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_file(body=True)

    def do_HEAD(self):
        self.send_file(body=False)

    def send_file(self, body):
        path = self.translate_path(self.path)
        try:
            f = open(path, "rb")
        except OSError:
            self.send_error(404)
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            start, end = 0, size
            status = 200
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
            if m and size > 0 and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(size, int(m.group(2)) + 1) if m.group(2) else size
                else:
                    start = max(0, size - int(m.group(2)))
                if start >= end:
                    self.send_error(416)
                    return
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if body:
                try:
                    self.connection.sendfile(f, start, end - start)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True


def main():
    directory, port_file = sys.argv[1], sys.argv[2]
    handler = lambda *a, **kw: Handler(*a, directory=directory, **kw)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
