#!/usr/bin/env python3
"""Copies a sample of the host's files into DEST, up to BUDGET bytes, for
the benchmark's ext4 image: binaries, libraries, text and data in the mix a
real root filesystem has.

Files are taken in the order of a hash of their path, so the sample spreads
over every root instead of filling up with the first directory, and the
same host gives the same sample.

usage: fill.py DEST BUDGET_BYTES ROOT...
"""
import hashlib
import os
import shutil
import stat
import sys


def main():
    dest, budget, roots = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    files = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and os.access(path, os.R_OK):
                    files.append((hashlib.sha1(path.encode()).digest(), path, st.st_size))
    files.sort()
    total = 0
    for _, path, size in files:
        if total + size > budget:
            continue
        target = os.path.join(dest, path.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            shutil.copyfile(path, target)
        except OSError:
            continue
        total += size
    print(f"{total} bytes in sampled files", file=sys.stderr)


if __name__ == "__main__":
    main()
