"""Count what the test suite tries against closurepack, for docs/reliability.md.

Run from the checkout: ``python scripts/reliability_counts.py``. It collects the tests (nothing is
run), reads every Hypothesis ``max_examples`` in tests/, and rebuilds the blobs whose every byte
the corruption tests damage, so the figures follow the suite as it changes.
"""

from __future__ import annotations

import ast
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
BAD_INPUT = re.compile(
    r"error|bad|invalid|reject|refuse|corrupt|damag|truncat|tamper|missing|wrong|absurd|fifo"
    r"|unreadable|not_a|no_image|nested|escape|outside|fails|leaves|keeps_the_previous|interrupt"
)


def collected() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [line for line in out.splitlines() if "::" in line]


def hypothesis_examples(ids: list[str]) -> tuple[int, int]:
    """(examples in a normal run, in a run with the slow tests) over every @settings test."""
    per_test: dict[str, int] = {}
    for path in TESTS.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                for deco in node.decorator_list:
                    if isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "settings":
                        for kw in deco.keywords:
                            if kw.arg == "max_examples" and isinstance(kw.value, ast.Constant):
                                per_test[f"{path.name}::{node.name}"] = kw.value.value
    normal = 0
    for test_id in ids:
        file_and_name = test_id.split("[")[0].removeprefix("tests/")
        normal += per_test.get(file_and_name, 0)
    sys.path.insert(0, str(TESTS))
    import test_fuzz_parsers as fuzz  # noqa: PLC0415 (tests/ is on the path only now)

    fuzzers = [i for i in ids if "test_fuzz_parsers.py" in i and "[" in i]
    normal += sum(fuzz.NORMAL for i in fuzzers if i.endswith("[normal]"))
    slow = normal + sum(fuzz.SLOW for i in fuzzers if i.endswith("[slow]"))
    return normal, slow


def damaged_bytes() -> dict[str, int]:
    """Bytes flipped one at a time, and prefixes tried, by test_compression.py, per codec
    ("zstd flipped bytes", ...) and in all ("flipped bytes", "truncations"). The zstd blobs are
    the same everywhere; the gzip ones' lengths follow the ISA-L kernels the CPU selects."""
    sys.path.insert(0, str(TESTS))
    from test_compression import compress  # noqa: PLC0415 (the same)

    flips = random.Random(0).randbytes(2000) + b"some text, repeated " * 500
    cuts = random.Random(2).randbytes(3000) + b"text " * 3000
    counts: Counter[str] = Counter()
    for codec in ("gzip", "zstd"):
        for what, data in (("flipped bytes", flips), ("truncations", cuts)):
            length = len(compress(codec, data))
            counts[f"{codec} {what}"] = length
            counts[what] += length
    return dict(counts)


LEFTOVER = re.compile(r"listdir\(|iterdir\(\)|not [\w.()/ \"']+\.exists\(\)|threading\.enumerate")


def leftover_checks() -> int:
    """Test functions that look at what is left behind (directory listings, files that must not
    exist, threads still running)."""
    count = 0
    for path in TESTS.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                count += bool(LEFTOVER.search(ast.unparse(node)))
    return count


def main() -> int:
    ids = collected()
    files = Counter(i.split("::")[0] for i in ids)
    bad = [i for i in ids if BAD_INPUT.search(i.split("::", 1)[1])]
    normal, slow = hypothesis_examples(ids)
    print(f"tests collected: {len(ids)} in {len(files)} files")
    print(f"bad-input / failure-path test cases (by name): {len(bad)}")
    print(f"hypothesis examples: {normal} with -m 'not slow', {slow} in ./run-tests (all)")
    print(f"test functions checking that nothing is left behind: {leftover_checks()}")
    for what, count in damaged_bytes().items():
        print(f"{what}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
