#!/usr/bin/python3
"""Lists the .cc files under the given directories that reach a header through their includes.

Usage: tools/sources_including.py [--no-tests] --dirs D1,D2,... PATTERN...
Run from the repository root. A PATTERN is an include name ("base/mutex.h") or a prefix ending in
"/" ("torch/": any header under it). A file reaches a pattern if it includes a matching header, or
includes one of our own files (a path that exists from the root) that reaches it. --no-tests
leaves out *_test.cc. Used by tools/thread_safety_check.sh (files that can draw a thread-safety
diagnostic) and tools/libtorch2_check.sh (files that compile against LibTorch).
"""
import os
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)


def main(argv):
    no_tests = "--no-tests" in argv
    argv = [a for a in argv if a != "--no-tests"]
    if len(argv) < 3 or argv[0] != "--dirs":
        sys.exit(__doc__)
    dirs, patterns = argv[1].split(","), argv[2:]

    def matches(name):
        return any(name.startswith(p) if p.endswith("/") else name == p for p in patterns)

    cache = {}

    def reaches(path, seen):
        if path in cache:
            return cache[path]
        if path in seen:
            return False
        seen.add(path)
        try:
            names = INCLUDE.findall(open(path, errors="replace").read())
        except OSError:
            return False
        found = any(matches(n) for n in names) or any(
            os.path.isfile(n) and reaches(n, seen) for n in names)
        cache[path] = found
        return found

    for d in dirs:
        for top, subdirs, names in os.walk(d):
            subdirs.sort()
            for n in sorted(names):
                p = os.path.join(top, n)
                if n.endswith(".cc") and not (no_tests and n.endswith("_test.cc")) and reaches(p, set()):
                    print(p)


if __name__ == "__main__":
    main(sys.argv[1:])
