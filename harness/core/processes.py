"""What the project starts, found again after a kill, and stopped by identity (PID + start time), never by a
name: a daemon left behind is "other processes" in every later measurement on the machine.

Two marks in the environment, which every process inherits from the one that started it (through fork,
exec, setsid, a daemon's double fork and re-parenting to init), so the whole tree carries them:

- `MPREC_OWNER=<pid>:<start ticks>`: the process whose life bounds theirs (a pytest session, a benchmark).
  Once it is gone, whatever still carries its mark is a leftover.
- `MPREC_DAEMONS=<token>`: a set of daemons a script started (scripts/local_cluster.sh,
  scripts/team_server.sh), recorded in the per-user state folder as `daemons/<token>.json` (what it is, its
  folder, the command that stops it, its owner). A set is a leftover once its owner is gone or its folder
  is; a set that nobody owns (started by hand) is the user's until they stop it.

`python -m harness.leftovers` lists and reaps them; pytest reaps before a session and fails one that leaves
any (tests/conftest.py); `python -m harness.doctor` names them.

>>> identity_alive(identity())                     # this process
True
>>> identity_alive("999999999:123")                # no such process
False
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

OWNER_ENV = "MPREC_OWNER"
DAEMONS_ENV = "MPREC_DAEMONS"
STATE_ENV = "MPREC_STATE_DIR"
STOP_COMMAND_TIMEOUT_S = 90.0


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def dies_with_parent(sig: int = signal.SIGKILL):
    """A `preexec_fn` for subprocess.Popen: the child gets `sig` when the thread that started it dies
    (Linux's PR_SET_PDEATHSIG, kept across exec), so a SIGKILLed parent leaves no child working; where the
    kernel has no such call (not Linux) the child is left as before. If the parent died before the call took
    effect, the child exits at once."""
    parent = os.getpid()

    def arm() -> None:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:
            os._exit(1)

    return arm


def state_dir() -> Path:
    """The per-user state folder ($MPREC_STATE_DIR, else $XDG_STATE_HOME/mprec-harness, else
    ~/.local/state/mprec-harness): outside any test's or cluster's temporary folder, so a record outlives
    the folder its daemons were started in."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mprec-harness"


def start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def identity(pid: int | None = None) -> str:
    """pid:start ticks: a PID reused by another process never matches it."""
    pid = pid or os.getpid()
    return f"{pid}:{start_ticks(pid)}"


def identity_alive(ident: str) -> bool:
    pid, _, start = ident.partition(":")
    return pid.isdigit() and start_ticks(int(pid)) == start


@dataclass(frozen=True)
class Process:
    pid: int
    start: str  # its start ticks when it was found: it is signalled only while they still match
    command: str  # for the reader; never used to decide anything

    def alive(self) -> bool:
        return start_ticks(self.pid) == self.start


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or another user's process (not ours to stop)
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return "?"


def marked(var: str, value: str | None = None) -> list[tuple[Process, str]]:
    """Every other process whose environment holds `var` (equal to `value` if given), with its value."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        mark = _environ(pid).get(var)
        start = start_ticks(pid)
        if mark is not None and (value is None or mark == value) and start is not None:
            found.append((Process(pid, start, _command(pid)), mark))
    return found


def stop(processes: list[Process], grace_s: float = 10.0) -> list[Process]:
    """SIGTERM each (while its identity holds), SIGKILL what is left after `grace_s`; those signalled.
    Each is signalled by itself: every process of a set carries the mark, so nothing relies on a process
    group that a daemon may have left."""
    signalled = []
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        living = [p for p in processes if p.alive()]
        for process in living:
            try:
                os.kill(process.pid, sig)
            except ProcessLookupError:
                continue
            if process not in signalled:
                signalled.append(process)
        deadline = time.monotonic() + wait_s
        while any(p.alive() for p in living) and time.monotonic() < deadline:
            time.sleep(0.1)
    return signalled


@dataclass
class DaemonSet:
    token: str
    what: str  # e.g. "slurm cluster", "team server"
    folder: str
    stop_command: list[str]
    owner: str | None  # MPREC_OWNER of the process that started it, if any
    started: float

    def why_left(self) -> str | None:
        """Why this set is a leftover (its owner or its folder is gone), or None while it belongs."""
        if self.owner and not identity_alive(self.owner):
            return f"the process that owned it ({self.owner.split(':')[0]}) is gone"
        if not Path(self.folder).is_dir():
            return f"its folder {self.folder} is gone"
        return None


def _records() -> Path:
    return state_dir() / "daemons"


def record(what: str, folder: str, stop_command: list[str], token: str | None = None) -> str:
    """Record a daemon set (idempotent per token); its token, to export as MPREC_DAEMONS before starting."""
    token = token or uuid.uuid4().hex[:16]
    path = _records() / f"{token}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = DaemonSet(token, what, str(Path(folder).resolve()), stop_command, os.environ.get(OWNER_ENV),
                          time.time())
        path.write_text(json.dumps(asdict(entry), indent=2))
    return token


def daemon_sets() -> list[DaemonSet]:
    sets = []
    for path in sorted(_records().glob("*.json")):
        try:
            sets.append(DaemonSet(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue  # a record half-written by a killed script: its processes are found by their owner
    return sets


def forget(token: str) -> None:
    (_records() / f"{token}.json").unlink(missing_ok=True)


@dataclass
class Leftover:
    what: str  # a description for the reader
    why: str
    processes: list[Process]
    daemon_set: DaemonSet | None = None


def leftovers(owner: str | None = None) -> list[Leftover]:
    """What runs that nothing will stop: daemon sets whose owner or folder is gone, and processes whose
    owner is gone (or, with `owner`, every process that owner's mark is on, alive or not)."""
    found: list[Leftover] = []
    in_sets: set[int] = set()
    for entry in daemon_sets():
        processes = [p for p, _ in marked(DAEMONS_ENV, entry.token)]
        if not processes:
            forget(entry.token)  # stopped: its record has done its work
            continue
        in_sets.update(p.pid for p in processes)
        if owner:
            why = "started by this session" if entry.owner == owner else None
        else:
            why = entry.why_left()
        if why:
            found.append(Leftover(f"{entry.what} in {entry.folder}", why, processes, entry))
    by_owner: dict[str, list[Process]] = {}
    for process, mark in marked(OWNER_ENV):
        if process.pid not in in_sets and (mark == owner if owner else not identity_alive(mark)):
            by_owner.setdefault(mark, []).append(process)
    for mark, processes in by_owner.items():
        why = "started by this session" if owner else f"the process that started them ({mark}) is gone"
        found.append(Leftover(f"{len(processes)} process(es) of owner {mark}", why, processes))
    return found


def reap(items: list[Leftover]) -> list[Process]:
    """Stop each leftover: a daemon set by its own stop command first (while its folder is there), then
    whatever still carries its mark; the processes signalled."""
    signalled: list[Process] = []
    for item in items:
        entry = item.daemon_set
        if entry and Path(entry.folder).is_dir():
            try:
                subprocess.run(entry.stop_command, capture_output=True, timeout=STOP_COMMAND_TIMEOUT_S,
                               check=False, env={**os.environ, DAEMONS_ENV: entry.token})
            except (OSError, subprocess.TimeoutExpired):
                pass  # the processes are stopped below either way
        signalled += stop(item.processes)
        if entry:
            forget(entry.token)
    return signalled


def describe(item: Leftover) -> str:
    pids = ", ".join(f"{p.pid} ({_short(p.command)})" for p in item.processes[:6])
    more = f" and {len(item.processes) - 6} more" if len(item.processes) > 6 else ""
    return f"{item.what}: {item.why}; pids {pids}{more}"


def _short(command: str) -> str:
    """A command line for the reader: the program's name and its first arguments."""
    program, _, rest = command.strip().partition(" ")
    return f"{program.rsplit('/', 1)[-1]} {rest}"[:80].strip()


def _listening_inodes() -> dict[str, str]:
    """Socket inode -> 'address:port' of every TCP socket listening in this network namespace."""
    found = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A":  # LISTEN
                address, port = fields[1].split(":")
                found[fields[9]] = f"{_address(address, width)}:{int(port, 16)}"
    return found


def _address(hexed: str, width: int) -> str:
    """/proc/net's address (32-bit words in the host's little-endian order) as text."""
    import ipaddress

    words = bytes.fromhex(hexed)
    raw = b"".join(words[i : i + 4][::-1] for i in range(0, len(words), 4))
    ip = ipaddress.IPv4Address(raw) if width == 8 else ipaddress.IPv6Address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return f"[{ip}]" if width == 32 else str(ip)


def is_loopback(address: str) -> bool:
    """Whether an address (IPv6 in brackets) is this machine's loopback.

    >>> [is_loopback(a) for a in ("127.0.0.1", "[::1]", "0.0.0.0", "[::]", "10.0.0.5")]
    [True, True, False, False, False]
    """
    import ipaddress

    return ipaddress.ip_address(address.strip("[]")).is_loopback


def listeners(processes_: list[Process]) -> list[tuple[Process, str]]:
    """Every TCP socket these processes listen on, as (process, 'address:port')."""
    sockets = _listening_inodes()
    found = []
    for process in processes_:
        try:
            fds = list(Path(f"/proc/{process.pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in sockets:
                found.append((process, sockets[target[8:-1]]))
    return found


def beyond_loopback(token: str) -> list[str]:
    """What a daemon set listens on past loopback ('pid (command) on address:port'); empty when nothing."""
    daemons = [p for p, _ in marked(DAEMONS_ENV, token)]
    return [f"{p.pid} ({_short(p.command)}) on {where}" for p, where in listeners(daemons)
            if not is_loopback(where.rsplit(":", 1)[0])]
