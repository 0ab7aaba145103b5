"""``python -m bench [--quick]``: run every benchmark, print one table, write results.json."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import decoding, door, doors, idle, imports, live, pages, scale, sync
from bench.report import show, write

SUITES = {"decoding": decoding.run, "door": door.run, "sync": sync.run, "imports": imports.run,
          "pages": pages.run, "live": live.run, "idle": idle.run,
          "doors": doors.run, "scale": scale.run}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smoke run: small samples")
    args = parser.parse_args()
    rows = []
    for name, run in SUITES.items():
        print(f"running {name} benchmarks...", file=sys.stderr, flush=True)
        rows += run(args.quick)
    print(show(rows))
    out = Path(__file__).resolve().parent / "results.json"
    write(rows, out, args.quick)
    print(f"\nwritten to {out}" + (" (quick run: small samples, figures indicative only)"
                                  if args.quick else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
