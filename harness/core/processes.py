"""What the project starts, found again after a kill, and stopped by identity (PID + start time), never by a
name: a daemon left behind is "other processes" in every later measurement on the machine.

Two marks in the environment, which every process inherits from the one that started it (through fork,
exec, setsid, a daemon's double fork and re-parenting to init), so the whole tree carries them:

- `MPREC_OWNER=<host>:<pid>:<start ticks>`: the process whose life bounds theirs (a pytest session, a
  benchmark). Once it is gone, whatever still carries its mark is a leftover. `host` names this machine
  and PID namespace (a hash of /etc/machine-id, the PID namespace's inode): a mark from elsewhere (sbatch
  exports the submitting shell's environment to the compute node) is never judged here.
- `MPREC_DAEMONS=<token>`: a set of daemons a script started (scripts/local_cluster.sh,
  scripts/team_server.sh), recorded in the per-user state folder as `daemons/<token>.json` (what it is, its
  folder, the command that stops it, its owner). A set is a leftover once its owner is gone or its folder
  is; a set that nobody owns (started by hand) is the user's until they stop it.

`python -m harness.leftovers` lists and reaps them; pytest reaps before a session and fails one that leaves
any (tests/leftovers_plugin.py); `python -m harness.doctor` names them.

>>> identity_alive(identity())                                # this process
True
>>> identity_alive(f"{host()}:999999999:123")                 # no such process here
False
>>> identity_alive("another-host:1:123") is None               # not ours to judge
True
"""

from __future__ import annotations

import hashlib
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
RECORD_GRACE_S = 120.0  # a record this young may not have its daemons started yet: never forgotten


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


PARENT_ENV = "MPREC_PARENT_PID"  # the process a child must die with (exit_with_parent)


def _prctl():
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


def exit_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """Called first thing in a child: it gets `sig` when `parent` dies (Linux's PR_SET_PDEATHSIG; where the
    kernel has no such call the child is left as before), and exits at once if `parent` is already gone
    (it died before the call took effect)."""
    try:
        _prctl()(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)


def dies_with_parent(sig: int = signal.SIGKILL):
    """A `preexec_fn` for subprocess.Popen from a single-threaded parent (a benchmark's CPU burners): the
    same as exit_with_parent, with prctl looked up in the parent so the child only calls it."""
    parent, prctl = os.getpid(), _prctl()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
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


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the harness reads (proc(5)): the one parser of that file."""

    name: str  # the command name, between the parentheses (it may hold spaces and parentheses itself)
    state: str  # R, S, Z (a zombie: dead, its exit not yet collected), ...
    ppid: int
    cpu_ticks: int  # utime + stime, in clock ticks
    start: str  # start time in clock ticks since boot: with the PID, the process's identity


def proc_stat(pid: int | str) -> ProcStat | None:
    """A process's /proc/<pid>/stat, or None where it is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        head, _, rest = text.rpartition(")")
        fields = rest.split()
        return ProcStat(head[head.find("(") + 1:], fields[0], int(fields[1]),
                        int(fields[11]) + int(fields[12]), fields[19])
    except (OSError, ValueError, IndexError):
        return None


def start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), or None if there is no such process."""
    stat = proc_stat(pid)
    return stat.start if stat is not None else None


def machine_id() -> str:
    """A stable anonymous id of this machine: a hash of /etc/machine-id (never the hostname)."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            return hashlib.sha256(Path(path).read_bytes().strip()).hexdigest()[:12]
        except OSError:
            continue
    return "unknown"


def host() -> str:
    """This machine and PID namespace: machine_id() and the PID namespace's inode."""
    machine = machine_id()
    try:
        namespace = os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        namespace = "?"
    return f"{machine}-{namespace}"


def identity(pid: int | None = None) -> str:
    """host:pid:start ticks: a PID reused by another process never matches it, nor one elsewhere."""
    pid = pid or os.getpid()
    return f"{host()}:{pid}:{start_ticks(pid)}"


def identity_alive(ident: str) -> bool | None:
    """Whether the process `ident` names still runs; None when it is not of this host (or malformed):
    then nobody here may call it gone."""
    parts = ident.split(":")
    if len(parts) != 3 or parts[0] != host() or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return start_ticks(int(parts[1])) == parts[2]


@dataclass(frozen=True)
class Process:
    pid: int
    start: str  # its start ticks when it was found: it is signalled only while they still match
    command: str  # for the reader; never used to decide anything

    def alive(self) -> bool:
        """Still this process (PID and start time) and not a zombie (dead, its exit not yet collected)."""
        stat = proc_stat(self.pid)
        return stat is not None and stat.start == self.start and stat.state != "Z"


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


def _ancestors() -> set[int]:
    """This process and every process above it (a stop script that calls us carries the mark it stops)."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        stat = proc_stat(pid)
        if stat is None:
            break
        pid = stat.ppid
    return found


def marked(var: str, value: str | None = None) -> list[tuple[Process, str]]:
    """Every process but this one and its ancestors whose environment holds `var` (equal to `value` if
    given), with its value. The start time is read before and after the environment: a PID reused in
    between is skipped, never recorded with the newcomer's identity."""
    found = []
    mine = _ancestors()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        pid = int(entry.name)
        before = start_ticks(pid)
        mark = _environ(pid).get(var)
        if mark is not None and (value is None or mark == value) and before is not None \
                and start_ticks(pid) == before:
            found.append((Process(pid, before, _command(pid)), mark))
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
    host: str = ""  # host() where it runs: a record from another machine sharing this home is not ours

    def ours(self) -> bool:
        return self.host == host()

    def why_left(self) -> str | None:
        """Why this set is a leftover (its owner or its folder is gone), or None while it belongs."""
        if self.owner and identity_alive(self.owner) is False:
            return f"the process that owned it ({self.owner.split(':')[1]}) is gone"
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
                          time.time(), host())
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
        if not entry.ours():
            continue  # another machine's (a home folder shared over NFS): only it can judge its daemons
        processes = [p for p, _ in marked(DAEMONS_ENV, entry.token)]
        if not processes:
            if time.time() - entry.started > RECORD_GRACE_S:
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
        if process.pid not in in_sets and (mark == owner if owner else identity_alive(mark) is False):
            by_owner.setdefault(mark, []).append(process)
    for mark, processes in by_owner.items():
        why = "started by this session" if owner else \
            f"the process that started them ({mark.split(':')[1]}) is gone"
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
                # Without the set's mark: the stop command must not count itself among what it stops
                env = {k: v for k, v in os.environ.items() if k != DAEMONS_ENV}
                subprocess.run(entry.stop_command, capture_output=True, timeout=STOP_COMMAND_TIMEOUT_S,
                               check=False, env=env)
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


def _listening_inodes(pid: int) -> dict[str, str]:
    """Socket inode -> 'address:port' of every TCP socket listening in `pid`'s network namespace."""
    found = {}
    for table, width in ((f"/proc/{pid}/net/tcp", 8), (f"/proc/{pid}/net/tcp6", 32)):
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


def only_loopback(pid: int) -> bool:
    """Whether `pid`'s network namespace has no interface but loopback (a namespace of its own, as the local
    Ray cluster's): then whatever listens there is reachable from nowhere else."""
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return False
    return {line.split(":", 1)[0].strip() for line in lines} <= {"lo"}


def listeners(processes_: list[Process]) -> list[tuple[Process, str]]:
    """Every TCP socket these processes listen on, as (process, 'address:port'), each read in the process's
    own network namespace."""
    found = []
    for process in processes_:
        sockets = _listening_inodes(process.pid)
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
            if not is_loopback(where.rsplit(":", 1)[0]) and not only_loopback(p.pid)]
