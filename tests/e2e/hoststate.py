"""A snapshot of what a program can leave behind on this host, and the difference of two.

For the containment test of the local cluster (cluster/local/up.sh and down.sh): a snapshot
before up.sh must equal the one after down.sh. Each part is a set of strings, so that a
difference reads as "+ added" / "- removed" lines:

- processes     every process but the caller's own: its program, arguments, namespaces, cgroups
- mounts        the host's mount table (/proc/self/mountinfo without the mount IDs)
- interfaces    network interfaces with their kind and addresses
- iptables      ``iptables-save`` and ``ip6tables-save`` of the host's namespace, per table
- netns         the named network namespaces (``ip netns list``)
- listening     listening TCP and UDP sockets of the host's namespace, with their owners
- cgroups       the top-level cgroups of every hierarchy
- sysctls       the kernel settings that kubelet, kube-proxy and CNI plugins are known to set

Nothing here knows the cluster: which differences a test may ignore is the test's decision
(``Snapshot.without``), where it is named.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

PARTS = ("processes", "mounts", "interfaces", "iptables", "netns", "listening", "cgroups", "sysctls")
TABLES = ("filter", "nat", "mangle", "raw", "security")
# kubelet's "kernel defaults", kube-proxy's conntrack and route_localnet, the bridge plugin's
# forwarding and bridge netfilter: whole-machine settings, or the host namespace's.
SYSCTLS = (
    "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes", "net/netfilter/nf_conntrack_max", "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet", "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
)  # fmt: skip


@dataclass(frozen=True)
class Process:
    """One process, as much of it as says what it is and where it lives."""

    pid: int
    exe: str
    args: str
    netns: str
    mntns: str
    cgroups: str

    def line(self) -> str:
        return f"{self.exe} [{self.args}] net={self.netns} mnt={self.mntns} cgroups={self.cgroups}"


@dataclass(frozen=True)
class Snapshot:
    processes: frozenset[str] = frozenset()
    mounts: frozenset[str] = frozenset()
    interfaces: frozenset[str] = frozenset()
    iptables: frozenset[str] = frozenset()
    netns: frozenset[str] = frozenset()
    listening: frozenset[str] = frozenset()
    cgroups: frozenset[str] = frozenset()
    sysctls: frozenset[str] = frozenset()
    process_list: tuple[Process, ...] = field(default=(), compare=False, repr=False)

    def without(self, part: str, ignore: Callable[[str], bool]) -> Snapshot:
        """This snapshot with the lines of ``part`` that ``ignore`` accepts left out."""
        return replace(self, **{part: frozenset(x for x in getattr(self, part) if not ignore(x))})


def _run(*cmd: str) -> str:
    """A command's output; empty when the program is not installed (then it made nothing)."""
    exe = shutil.which(cmd[0]) or shutil.which(cmd[0], path="/usr/sbin:/sbin")
    if exe is None:
        return ""
    return subprocess.run([exe, *cmd[1:]], check=True, capture_output=True, text=True).stdout


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def processes(exclude: Iterable[int] = ()) -> list[Process]:
    """Every process but those in ``exclude`` (and the ones that end while being read)."""
    skip = set(exclude)
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in skip:
            continue
        try:
            args = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if not args:
                continue  # kernel threads
            exe = os.readlink(d / "exe")
            net, mnt = os.readlink(d / "ns" / "net"), os.readlink(d / "ns" / "mnt")
            cgroups = ",".join(sorted({ln.split(":", 2)[2] for ln in (d / "cgroup").read_text().splitlines()}))
        except OSError:
            continue
        out.append(Process(int(d.name), exe, args, net, mnt, cgroups))
    return out


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (by parent pid), as they are now."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            m = re.search(r"^PPid:\s+(\d+)$", _read(d / "status"), re.M)
            if m:
                children.setdefault(int(m.group(1)), []).append(int(d.name))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo.extend(children.get(p, []))
    return found


def mounts() -> frozenset[str]:
    """mountinfo lines without mount and parent IDs (which a remount changes)."""
    return frozenset(" ".join(ln.split()[2:]) for ln in _read(Path("/proc/self/mountinfo")).splitlines())


def interfaces() -> frozenset[str]:
    out = _run("ip", "-j", "address", "show")
    lines = set()
    for link in json.loads(out or "[]"):
        addrs = sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []))
        lines.add(f"{link['ifname']} {link.get('link_type', '')} {' '.join(addrs)}".strip())
    return frozenset(lines)


def iptables() -> frozenset[str]:
    """Every rule, every chain of one's own and every built-in chain that drops by default, of
    every table. An empty table (built-in chains that accept, no rule) is left out: it is what
    no table at all is, and what a machine without the iptables tools shows."""
    lines = set()
    for tool in ("iptables-save", "ip6tables-save"):
        for table in TABLES:
            try:
                out = _run(tool, "-t", table)
            except subprocess.CalledProcessError:
                continue  # the table does not exist in this kernel
            for ln in out.splitlines():
                if ln.startswith(("#", "*")) or ln in ("COMMIT", "") or re.fullmatch(r":[A-Z]+ ACCEPT.*", ln):
                    continue
                rule = re.sub(r" \[\d+:\d+\]$", "", ln)  # a chain's packet and byte counters
                lines.add(f"{tool} {table}: {rule}")
    return frozenset(lines)


def netns() -> frozenset[str]:
    return frozenset(ln.split()[0] for ln in _run("ip", "netns", "list").splitlines() if ln.strip())


def listening() -> frozenset[str]:
    """``proto address:port owner`` of each listening socket of the host's namespace."""
    lines = set()
    for ln in _run("ss", "-H", "-tuln", "-p").splitlines():
        cols = ln.split()
        if len(cols) < 5:
            continue
        owner = re.findall(r'\("([^"]+)",pid=(\d+)', ln)
        lines.add(f"{cols[0]} {cols[4]} {' '.join(f'{n}:{p}' for n, p in owner)}".strip())
    return frozenset(lines)


def cgroups() -> frozenset[str]:
    root = Path("/sys/fs/cgroup")
    found = set()
    for hierarchy in root.iterdir() if root.is_dir() else []:
        if hierarchy.is_dir():
            found.update(f"{hierarchy.name}/{c.name}" for c in hierarchy.iterdir() if c.is_dir())
    return frozenset(found)


def sysctls() -> frozenset[str]:
    """``key = value`` of each of SYSCTLS this kernel has."""
    root = Path("/proc/sys")
    return frozenset(f"{k} = {_read(root / k).strip()}" for k in SYSCTLS if (root / k).exists())


def snapshot(exclude_pids: Iterable[int] = ()) -> Snapshot:
    """The host as it is now, leaving out the processes ``exclude_pids`` (the caller's own)."""
    procs = processes(exclude_pids)
    return Snapshot(
        processes=frozenset(p.line() for p in procs),
        mounts=mounts(),
        interfaces=interfaces(),
        iptables=iptables(),
        netns=netns(),
        listening=listening(),
        cgroups=cgroups(),
        sysctls=sysctls(),
        process_list=tuple(procs),
    )


def difference(before: Snapshot, after: Snapshot) -> str:
    """What changed, one ``part: + line`` / ``part: - line`` a line; empty when nothing did."""
    out = []
    for f in fields(Snapshot):
        if f.name not in PARTS:
            continue
        b, a = getattr(before, f.name), getattr(after, f.name)
        out += [f"{f.name}: + {x}" for x in sorted(a - b)] + [f"{f.name}: - {x}" for x in sorted(b - a)]
    return "\n".join(out)
