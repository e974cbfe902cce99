"""Hostfiles for the deepspeed launcher: `HOST slots=N` per line, checked before a job starts.

    python -m megastride.launch.hostfile HOSTFILE     # prints the nodes and slots, or one error line

Every file accepted here, DeepSpeed's own parser (deepspeed.launcher.runner._parse_hostfile) reads the
same way: no spaces around the '=' of `slots=` (DeepSpeed refuses the line), N of ASCII digits. The check
is stricter where DeepSpeed is lax (a host name of other characters, slots 0, text after N).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

MAX_SLOTS = 1024  # processes (GPUs) on one host: far above any machine's count
_LINE = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+)\s+slots(?P<eq>\s*=\s*)(?P<slots>\S+)$")


class HostfileError(ValueError):
    """A malformed hostfile; the message names the file and line."""


def parse_hostfile(path: str | Path) -> dict[str, int]:
    """{host: slots} in file order; '#' comments and blank lines are skipped."""
    path = Path(path)
    if path.is_dir():
        raise HostfileError(f"hostfile {path} is a folder, not a file")
    if not path.is_file():
        raise HostfileError(f"hostfile {path} does not exist")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise HostfileError(f"hostfile {path}: not UTF-8 text") from None
    hosts: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):  # lines as DeepSpeed reads them (not at \f, \x1c)
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.match(line)
        if not m:
            raise HostfileError(f"{path}:{number}: expected 'HOST slots=N', got {line!r}")
        host, slots = m.group("host"), m.group("slots")
        if m.group("eq") != "=":
            raise HostfileError(f"{path}:{number}: write 'slots={slots}' with no spaces around '=' "
                                f"(DeepSpeed's launcher refuses {line!r})")
        if not re.fullmatch(r"[0-9]+", slots) or not 1 <= int(slots) <= MAX_SLOTS:  # ASCII: '²'.isdigit() too
            raise HostfileError(f"{path}:{number}: slots must be an integer from 1 to {MAX_SLOTS:,}, got {slots!r}")
        if host in hosts:
            raise HostfileError(f"{path}:{number}: host {host} is listed twice")
        hosts[host] = int(slots)
    if not hosts:
        raise HostfileError(f"hostfile {path} lists no hosts")
    return hosts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m megastride.launch.hostfile HOSTFILE", file=sys.stderr)
        return 2
    try:
        hosts = parse_hostfile(argv[0])
    except HostfileError as err:
        print(f"hostfile: error: {err}", file=sys.stderr)
        return 2
    print(f"{len(hosts)} node(s), {sum(hosts.values())} rank(s): " + ", ".join(f"{h}={s}" for h, s in hosts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
