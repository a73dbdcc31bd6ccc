#!/usr/bin/env python3
"""A fleet over a real network (issue 15's fleet test).

Four paddockd nodes, each in a network namespace of its own, joined by a
bridge this test creates (10.213.X.0/24, X picked per run, only addresses on
that bridge and loopback are ever used); a front (paddockd --nodes file:PATH)
in the root namespace with an address on the bridge. A rollout of EPISODES
(default 200) episodes, half container and half function tasks, driven by a
scripted policy; while it runs:

  * node 1 is SIGKILLed;
  * node 2 is partitioned (its veth set down inside its namespace) and healed
    after the front declared it lost; it must have destroyed ("fenced") every
    sandbox of the front while unreachable;
  * node 3 is given notice: SIGTERM with --drain-grace-s 5, while a long task
    (3 s per call) runs there, so that a call is cut off at the end of the
    grace and its episode must move;
  * node 5 joins: its address is appended to the front's nodes file.

Then: every episode finished (reward 1); no acknowledged tool call ran twice,
counted outside the sandboxes (below); the exports of the episodes no fault
touched equal those of a reference run of the same tasks and script on a
fault-free single-node fleet (a second front and node in a namespace of their
own on the same bridge, run at the same time).

Counting outside the sandboxes. Every tool call of the script does an HTTP GET
to a counter this test serves on the bridge (the task's network allow list
names only it; the request leaves through the node's egress proxy, so the
counter sees the node's address as the source, and the sandbox's hostname is
in the query). So each run of a call is recorded with its episode, turn, node
and sandbox (container sandboxes are named sandbox-ID; function sandboxes all
say "function", so for them the node stands for the sandbox) by a process no
sandbox can touch. A call "ran twice" when:
  * one sandbox ran it twice (a container sandbox runs turns in strictly
    increasing order; a retried exec shows up as a repeat), or
  * two sandboxes of one episode ran calls at overlapping times (the episode
    moved while its old sandbox still ran: the fencing failed), or
  * a function episode ran a turn again after a later turn had run (an
    acknowledged result was not replayed from the log).
A container episode that moves is rebuilt by design: its new sandbox re-applies
the logged calls 0..k-1 in order (its old sandbox is gone), then runs the call
in doubt k (its result never acknowledged) and goes on; a function episode
re-applies nothing. Those runs are expected and checked to be exactly that.

Usage: tests/fleet_netns_test.py BUILD_DIR      (root; exit 77 = skipped)
Env: PADDOCK_NETNS_EPISODES (default 200), PADDOCK_NETNS_KEEP=1 keeps the
work dir (logs) after a failure. A run records what it makes in
/run/paddock-fleet-netns/TAG; the next run removes what a killed run left.
"""
import http.server
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

SKIP = 77
T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def sh(*args, check=True, env=None, timeout=120):
    cmd = list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class Failed(Exception):
    pass


class Checks:
    def __init__(self):
        self.failures = []

    def expect(self, cond, what):
        if cond:
            log(f"ok    {what}")
        else:
            log(f"FAIL  {what}")
            self.failures.append(what)
        return cond


class Counter:
    """Records every GET /hit?task=..&turn=..&host=.. with its source address."""

    def __init__(self, address):
        self.hits = []  # (monotonic time, source ip, task, turn, host)
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                u = urllib.parse.urlparse(self.path)
                q = urllib.parse.parse_qs(u.query)
                if u.path == "/hit" and "task" in q and "turn" in q:
                    with outer.lock:
                        outer.hits.append((time.monotonic(), self.client_address[0], q["task"][0],
                                           int(q["turn"][0]), q.get("host", [""])[0]))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self):
        with self.lock:
            return list(self.hits)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


RUNS = "/run/paddock-fleet-netns"  # one file per live run: what it made, for sweep_dead_runs()


def sweep_dead_runs():
    """Removes what runs killed before their cleanup (SIGKILL, a ctest timeout) left."""
    try:
        names = os.listdir(RUNS)
    except OSError:
        return
    for name in names:
        path = os.path.join(RUNS, name)
        try:
            with open(path) as f:
                run = json.load(f)
        except (OSError, ValueError):
            continue
        try:
            with open(f"/proc/{run['pid']}/cmdline", "rb") as f:
                if b"fleet_netns_test" in f.read():
                    continue  # still running
        except OSError:
            pass
        log(f"removing what an earlier run (pid {run['pid']}) left: {run.get('dir')}")
        for pid in run.get("daemons", []):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"paddockd" in f.read():
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.5)
        for ns in run.get("netns", []):
            sh("ip", "netns", "del", ns, check=False)
        for l in run.get("links", []):
            sh("ip", "link", "del", l, check=False)
        d = run.get("dir", "")
        if d.startswith("/tmp/paddock-fleet-netns-"):
            try:
                with open("/proc/self/mounts") as f:
                    mounts = [l.split()[1] for l in f if l.split()[1].startswith(d + "/")]
                for m in sorted(mounts, key=len, reverse=True):
                    sh("umount", "-l", m, check=False)
            except OSError:
                pass
            shutil.rmtree(d, ignore_errors=True)
        try:
            os.unlink(path)
        except OSError:
            pass


class Fleet:
    """The namespaces, bridge, daemons and files of one run; cleanup() undoes all of it."""

    def __init__(self, build):
        self.build = build
        self.paddockd = os.path.join(build, "rollout", "paddockd")
        self.paddock = os.path.join(build, "sdk", "paddock")
        self.tag = f"{os.getpid() % 100000:05d}{random.randrange(16 ** 2):02x}"[-6:]
        self.bridge = f"pfb{self.tag}"
        self.netns = []  # names made
        self.links = []  # host-side links made
        self.procs = {}  # name -> Popen
        self.args = {}  # name -> paddockd flags it was started with
        self.killed = {}  # SIGKILLed node -> its flags (restarted at cleanup to reap)
        self.dir = tempfile.mkdtemp(prefix="paddock-fleet-netns-")
        os.chmod(self.dir, 0o711)  # node state dirs are below; sandbox users must search it
        self.subnet = None
        self.counter = None
        os.makedirs(RUNS, exist_ok=True)
        self.record_path = os.path.join(RUNS, self.tag)
        self.record()

    def record(self):
        """What this run made so far, for sweep_dead_runs() if it dies before cleanup()."""
        run = {"pid": os.getpid(), "dir": self.dir, "netns": self.netns, "links": self.links,
               "daemons": [p.pid for p in self.procs.values()]}
        with open(self.record_path + ".tmp", "w") as f:
            json.dump(run, f)
        os.replace(self.record_path + ".tmp", self.record_path)

    # --- network -----------------------------------------------------------
    def pick_subnet(self):
        used = sh("ip", "-4", "-o", "addr", "show").stdout + sh("ip", "-4", "route", "show").stdout
        choices = [x for x in range(1, 255) if f"10.213.{x}." not in used]
        if not choices:
            raise RuntimeError("no free 10.213.X.0/24 subnet")
        self.subnet = f"10.213.{random.choice(choices)}"

    def host_ip(self):
        return f"{self.subnet}.1"

    def node_ip(self, k):
        return f"{self.subnet}.{10 + k}"

    def make_bridge(self):
        self.pick_subnet()
        self.links.append(self.bridge)
        self.record()
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.host_ip()}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")

    def make_netns(self, k):
        ns = f"pfn{self.tag}n{k}"
        host_side = f"pfv{self.tag}n{k}"
        self.netns.append(ns)
        self.links.append(host_side)
        self.record()
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", host_side, "master", self.bridge)
        sh("ip", "link", "set", host_side, "up")
        sh("ip", "-n", ns, "addr", "add", f"{self.node_ip(k)}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def ns_of(self, k):
        return f"pfn{self.tag}n{k}"

    def link(self, k, up):
        sh("ip", "-n", self.ns_of(k), "link", "set", "eth0", "up" if up else "down")

    # --- TLS: one CA, one certificate naming every node address ------------
    def make_tls(self):
        d = self.dir
        sans = ",".join(f"IP:{self.node_ip(k)}" for k in range(1, 20))
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fleet-test-ca",
           "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem")
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=fleet-node", "-keyout",
           f"{d}/node.key", "-out", f"{d}/node.csr")
        with open(f"{d}/ext.cnf", "w") as f:
            f.write(f"subjectAltName={sans}\n")
        sh("openssl", "x509", "-req", "-in", f"{d}/node.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
           "-CAcreateserial", "-days", "2", "-extfile", f"{d}/ext.cnf", "-out", f"{d}/node.pem")
        for f in ("ca.key", "node.key"):
            os.chmod(f"{d}/{f}", 0o600)
        with open(f"{d}/token", "w") as f:
            f.write(os.urandom(16).hex() + "\n")
        os.chmod(f"{d}/token", 0o600)

    # --- daemons -------------------------------------------------------------
    def sock(self, name):
        return f"{self.dir}/{name}/paddockd.sock"

    def daemon_log(self, name):
        try:
            with open(f"{self.dir}/{name}/log", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def spawn(self, name, args, ns=None):
        os.makedirs(f"{self.dir}/{name}", exist_ok=True)
        cmd = [self.paddockd, "--state-dir", f"{self.dir}/{name}/state", "--socket", self.sock(name)] + args
        if ns:
            # nsenter, not `ip netns exec`: that remounts /sys for the namespace,
            # hiding the cgroup hierarchy the node's sandboxes need. nsenter
            # joins the network namespace only, then execs: the pid is paddockd's.
            cmd = ["nsenter", f"--net=/run/netns/{ns}", "--"] + cmd
        out = open(f"{self.dir}/{name}/log", "a")  # a restart appends
        self.args[name] = args
        self.procs[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.record()

    def cli(self, name, *args, check=True, timeout=60):
        env = dict(os.environ, PADDOCK_SOCKET=self.sock(name))
        return sh(self.paddock, *args, env=env, check=check, timeout=timeout)

    def wait_socket(self, name, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited while starting:\n{self.daemon_log(name)[-3000:]}")
            if self.cli(name, "sandbox", "stats", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not answer within {timeout}s:\n{self.daemon_log(name)[-3000:]}")

    def start_node(self, k, rootfs, lease_ms):
        name = f"node-{k}"
        self.spawn(name, ["--listen-tcp", f"{self.node_ip(k)}:7443", "--allow-remote", "--tls-cert",
                          f"{self.dir}/node.pem", "--tls-key", f"{self.dir}/node.key", "--token-file",
                          f"{self.dir}/token", "--front-lease-ms", str(lease_ms), "--drain-grace-s", "5",
                          "--warm-pool", "0"], ns=self.ns_of(k))
        return name

    def import_image(self, name, rootfs):
        self.cli(name, "image", "import-dir", rootfs, "--name", "busybox:1", timeout=300)

    def stop(self, name, sig=signal.SIGTERM, wait=30):
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return
        if sig == signal.SIGKILL:
            self.killed[name] = self.args[name]
        try:
            p.send_signal(sig)
            p.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=30)

    def front_sandboxes_on(self, name):
        """The front's sandboxes a node holds (asked over its unix socket: works while partitioned)."""
        r = self.cli(name, "--json", "sandbox", "ls", check=False)
        if r.returncode != 0:
            return None
        j = json.loads(r.stdout or "[]")
        rows = j.get("sandboxes", []) if isinstance(j, dict) else j
        return [s for s in rows if "paddock.front_sandbox" in (s.get("labels") or {})]

    def cleanup(self, keep_dir):
        for name in list(self.procs):  # fronts first: they would re-place otherwise
            if name.startswith("front"):
                self.stop(name, wait=20)
        for name in list(self.procs):
            self.stop(name, wait=30)
        # A SIGKILLed node left its sandboxes and mounts: started again on its
        # state dir it reaps them ("leftovers of an earlier daemon"), then stops.
        for name, args in self.killed.items():
            try:
                self.spawn(name, args, ns=self.ns_of(int(name.split("-")[1])))
                self.wait_socket(name, timeout=60)
            except (RuntimeError, OSError) as e:
                log(f"restarting {name} to reap its leftovers: {e}")
            self.stop(name, wait=30)
        # Whatever is still mounted below the work dir (a daemon that could not
        # reap) is detached, so that removing the dir cannot reach into it.
        try:
            with open("/proc/self/mounts") as f:
                mounts = [l.split()[1] for l in f if l.split()[1].startswith(self.dir + "/")]
            for m in sorted(mounts, key=len, reverse=True):
                sh("umount", "-l", m, check=False)
        except OSError:
            pass
        if self.counter:
            self.counter.close()
        for ns in self.netns:
            sh("ip", "netns", "del", ns, check=False)
        for l in self.links:
            sh("ip", "link", "del", l, check=False)
        if keep_dir:
            log(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        try:
            os.unlink(self.record_path)
        except OSError:
            pass


def can_make_netns():
    if os.geteuid() != 0:
        return "needs root (network namespaces, bridges, sandboxes)"
    if not shutil.which("ip") or not shutil.which("openssl") or not shutil.which("nsenter"):
        return "needs iproute2's ip, util-linux's nsenter and openssl"
    probe = f"pfprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    br = f"pfbp{os.getpid() % 100000}"
    r = subprocess.run(["ip", "link", "add", br, "type", "bridge"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a bridge: {r.stderr.strip()}"
    subprocess.run(["ip", "link", "del", br], capture_output=True)
    return ""


def ensure_rootfs():
    here = os.path.dirname(os.path.abspath(__file__))
    rootfs = "/var/tmp/paddock-test-rootfs/busybox"
    sh(os.path.join(here, "..", "scripts", "make-busybox-rootfs.sh"), rootfs)
    return rootfs


def dsml_call(tool, args):
    s = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"" + tool + "\">\n"
    for k, v in args:
        s += "<｜DSML｜parameter name=\"" + k + "\" string=\"true\">" + v + "</｜DSML｜parameter>\n"
    return s + "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>"


TURNS = 4


def script(counter_url):
    # Each call: a short wait (so episodes overlap the faults), the counted
    # side effect outside the sandbox, then the effect inside (for the verifier).
    calls = []
    for _ in range(TURNS):
        cmd = (f"sleep $PAUSE; wget -q -O /dev/null \"{counter_url}/hit?task=$TASK&turn={{turn}}&host=$(hostname)\""
               f" && echo S{{turn}} >> /tmp/ran; echo ok {{turn}}")
        calls.append(dsml_call("bash", [("command", cmd)]))
    calls.append(dsml_call("submit", [("answer", "done")]))
    return json.dumps(calls)


def long_task(i):
    """Every tenth task (a container one) waits 3 s per call: outlives the drain's 5 s grace."""
    return i % 10 == 0


def tasks(n, allow):
    lines = []
    want = "".join(f"S{i}\\n" for i in range(TURNS))
    for i in range(n):
        sub = "container" if i % 2 == 0 else "function"
        tid = f"t{i:03d}"
        # A function sandbox keeps nothing between execs: its verifier checks
        # nothing in it; a container's checks that each call's line is there once.
        verifier = f"test \"$(cat /tmp/ran)\" = \"$(printf '{want}')\"" if sub == "container" else "true"
        lines.append(json.dumps({"id": tid, "image": "busybox:1", "substrate": sub,
                                 "instruction": "Count, then submit.", "tools": ["bash", "submit"],
                                 "max_turns": TURNS + 3, "setup": ["rm -f /tmp/ran"], "verifier": verifier,
                                 "env": {"TASK": tid, "PAUSE": "3" if long_task(i) else "0.3"}, "network": {"allow": [allow]}, "metadata": {"n": i}}))
    return "\n".join(lines) + "\n"


def long_task_early_on(fleet, ip):
    last = {}
    for h in fleet.counter.snapshot():
        last[h[2]] = h
    now = time.monotonic()
    # Its first call just ran there: calls 1-3 take 9 s more, the grace ends
    # in at most 7.5 s.
    return any(h[1] == ip and long_task(int(t[1:])) and h[3] == 0 and now - h[0] < 2.5 for t, h in last.items())


def rollout_state(fleet, front, rid):
    r = fleet.cli(front, "--json", "rollout", "ls", check=False)
    if r.returncode != 0:
        return None
    try:
        for ro in json.loads(r.stdout):
            if isinstance(ro, dict) and ro.get("rollout_id") == rid:
                return ro
    except ValueError:
        pass
    return None


def ended(st):
    return st.get("done", 0) + st.get("failed", 0)


def node_states(fleet, front):
    r = fleet.cli(front, "--json", "node", "ls", check=False)
    if r.returncode != 0:
        return {}
    return {n["address"]: n["state"] for n in json.loads(r.stdout).get("nodes", [])}


def export(fleet, front, rid):
    out = fleet.cli(front, "export", rid, timeout=120).stdout
    return {json.loads(l)["episode_id"]: json.loads(l) for l in out.splitlines() if l.strip()}


# Fields that differ between two runs of the same episode for reasons other
# than what the episode did: wall-clock times and durations, and how the
# episode was run (replayed/rebuilt/retries, which an untouched episode of
# either run has none of, but they are not part of what it did).
VOLATILE = {"timings_us", "replayed", "rebuilt", "rebuild_note", "infra_retries", "retry_note"}


def comparable(line):
    c = {k: v for k, v in line.items() if k not in VOLATILE}
    c["steps"] = [{k: v for k, v in s.items() if k not in ("started_unix_ms", "timings_us")} for s in line["steps"]]
    return c


def check_counts(hits, exported, check, n):
    """The outside counts (see the module comment); returns the episodes a fault touched."""
    by_task = {}
    for h in sorted(hits):
        by_task.setdefault(h[2], []).append(h)
    touched = set()
    problems = []
    for i in range(n):
        tid = f"t{i:03d}"
        hs = by_task.get(tid, [])
        function = i % 2 == 1
        # A sandbox: (node, hostname); function sandboxes all say "function".
        inst = {}
        for h in hs:
            inst.setdefault((h[1], h[4]), []).append(h)
        turns = [h[3] for h in hs]
        if set(turns) != set(range(TURNS)):
            problems.append(f"{tid}: counted turns {turns}, want each of 0..{TURNS - 1}")
        if len(hs) != TURNS or len(inst) != 1:
            touched.add(tid)
        # No sandbox ran a call twice.
        for key, ih in inst.items():
            t = [h[3] for h in ih]
            if not function and t != sorted(set(t)):
                problems.append(f"{tid}: sandbox {key} ran turns {t} (a repeat: a call ran twice)")
        # No two sandboxes of the episode ran at overlapping times.
        spans = sorted((ih[0][0], ih[-1][0], key) for key, ih in inst.items())
        for a, b in zip(spans, spans[1:]):
            if b[0] < a[1]:
                problems.append(f"{tid}: sandboxes {a[2]} and {b[2]} ran at the same time (turns {turns})")
        if function:
            # Nothing re-applied: turns never go back; a turn runs again only
            # right after itself (the call in doubt when the episode moved).
            for x, y in zip(turns, turns[1:]):
                if y < x:
                    problems.append(f"{tid}: function episode ran turn {y} after turn {x} (turns {turns})")
            if len(turns) - len(set(turns)) > len(inst) - 1:
                problems.append(f"{tid}: function episode ran {len(turns)} calls in {len(inst)} sandbox(es): {turns}")
        else:
            # A sandbox runs consecutive turns (a later one re-applies from
            # turn 0; a partitioned one may miss its last: the counter was cut off).
            for key, ih in list(inst.items()):
                t = [h[3] for h in ih]
                if t and t != list(range(t[0], t[0] + len(t))):
                    problems.append(f"{tid}: sandbox {key} ran turns {t}, not consecutive")
        ep = exported.get(f"netns/{tid}#0")
        if ep and (ep.get("rebuild_note") or ep.get("rebuilt") or ep.get("replayed", {}).get("tool_calls")):
            touched.add(tid)
    for p in problems[:20]:
        log("      " + p)
    check.expect(not problems, f"no acknowledged tool call ran twice, counted outside the sandboxes "
                               f"({len(hits)} runs counted, {len(problems)} problem(s))")
    return touched


def main():
    if len(sys.argv) != 2:
        print("usage: fleet_netns_test.py BUILD_DIR", file=sys.stderr)
        return 2
    build = os.path.abspath(sys.argv[1])
    why = can_make_netns()
    if why:
        print(f"fleet_netns_test: SKIPPED: {why}")
        return SKIP
    tok = "/usr/local/share/paddock/deepseek-v3-tokenizer.json"
    if not os.path.exists(tok) and not os.environ.get("PADDOCK_TOKENIZER"):
        print("fleet_netns_test: SKIPPED: no V4 tokenizer installed (scripts/install-deps.sh)")
        return SKIP
    n = int(os.environ.get("PADDOCK_NETNS_EPISODES", "200"))
    lease_ms = 3000
    sweep_dead_runs()
    fleet = Fleet(build)
    check = Checks()
    ok = False

    def on_signal(sig, _):
        raise KeyboardInterrupt(f"signal {sig}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        rootfs = ensure_rootfs()
        fleet.make_bridge()
        log(f"bridge {fleet.bridge} {fleet.host_ip()}/24, work dir {fleet.dir}")
        fleet.make_tls()
        fleet.counter = Counter(fleet.host_ip())
        counter_url = f"http://{fleet.host_ip()}:{fleet.counter.port}"
        allow = f"{fleet.host_ip()}:{fleet.counter.port}"
        # Nodes 1-4 (the fleet), 5 (joins later), 9 (the reference run's).
        nodes = [1, 2, 3, 4, 5, 9]
        for k in nodes:
            fleet.make_netns(k)
            fleet.start_node(k, rootfs, lease_ms)
        for k in nodes:
            fleet.wait_socket(f"node-{k}")
            fleet.import_image(f"node-{k}", rootfs)
        addr = {k: f"{fleet.node_ip(k)}:7443" for k in nodes}
        nodes_file = f"{fleet.dir}/nodes"
        with open(nodes_file, "w") as f:
            f.write("# the fleet's nodes; node 5 is appended to join\n")
            f.write("".join(addr[k] + "\n" for k in (1, 2, 3, 4)))
        common = ["--node-token-file", f"{fleet.dir}/token", "--node-tls-ca", f"{fleet.dir}/ca.pem",
                  "--node-heartbeat-ms", "500"]
        fleet.spawn("front", ["--nodes", f"file:{nodes_file}"] + common)
        fleet.spawn("front-ref", ["--nodes", addr[9]] + common)
        fleet.wait_socket("front")
        fleet.wait_socket("front-ref")
        end = time.monotonic() + 60
        while time.monotonic() < end:
            st, ref_st = node_states(fleet, "front"), node_states(fleet, "front-ref")
            if sum(s == "ready" for s in st.values()) == 4 and ref_st.get(addr[9]) == "ready":
                break
            time.sleep(0.5)
        if not check.expect(sum(s == "ready" for s in st.values()) == 4 and ref_st.get(addr[9]) == "ready",
                            f"4 nodes ready on the front, 1 on the reference front over TLS ({st}, {ref_st})"):
            raise Failed("nodes not ready")

        with open(f"{fleet.dir}/tasks.jsonl", "w") as f:
            f.write(tasks(n, allow))
        with open(f"{fleet.dir}/script.json", "w") as f:
            f.write(script(counter_url))
        rid = "netns"  # the same id for both runs: the same episode ids, so exports compare as they are
        for front, conc in (("front", 32), ("front-ref", 16)):
            fleet.cli(front, "run", f"{fleet.dir}/tasks.jsonl", "--policy", "scripted", "--policy-script",
                      f"{fleet.dir}/script.json", "--concurrency", str(conc), "--id", rid, "--detach")
        log(f"rollouts started: {n} episodes on the fleet and on the reference")

        # The faults, each when the rollout is far enough along.
        fenced = {}
        done_faults = set()
        partitioned_at = healed_at = None
        # Bounded so that the test ends (and cleans up) before ctest's TIMEOUT (600 s).
        deadline = time.monotonic() + 330
        st = {}
        while time.monotonic() < deadline:
            st = rollout_state(fleet, "front", rid) or {}
            e = ended(st) if st else 0
            # Each fault waits until the node holds sandboxes of the front.
            if "kill" not in done_faults and e >= n * 0.08 and fleet.front_sandboxes_on("node-1"):
                on1 = fleet.front_sandboxes_on("node-1") or []
                fleet.stop("node-1", signal.SIGKILL)
                done_faults.add("kill")
                log(f"SIGKILLed node 1 ({len(on1)} sandbox(es) of the front there) at {e}/{n} ended")
            if "partition" not in done_faults and e >= n * 0.15 and fleet.front_sandboxes_on("node-2"):
                fenced["before"] = fleet.front_sandboxes_on("node-2") or []
                fleet.link(2, up=False)
                partitioned_at = time.monotonic()
                done_faults.add("partition")
                log(f"partitioned node 2 ({len(fenced['before'])} sandbox(es) of the front there) at {e}/{n} ended")
            if partitioned_at and "fenced" not in done_faults:
                left = fleet.front_sandboxes_on("node-2")
                if left == []:
                    fenced["after_s"] = time.monotonic() - partitioned_at
                    done_faults.add("fenced")
                    log(f"node 2 holds none of the front's sandboxes {fenced['after_s']:.1f}s after the partition")
            if (partitioned_at and "heal" not in done_faults and "fenced" in done_faults and
                    node_states(fleet, "front").get(addr[2]) == "lost" and time.monotonic() - partitioned_at > 8):
                fleet.link(2, up=True)
                healed_at = time.monotonic()
                done_faults.add("heal")
                log(f"healed node 2 ({healed_at - partitioned_at:.1f}s after the partition) at {e}/{n} ended")
            # The drain waits for a long task that has just run its first call
            # on node 3 (seen by the counter): its last calls are still running
            # when the grace ends, so a call is cut off in flight and the
            # episode must move.
            if "drain" not in done_faults and e >= n * 0.25 and long_task_early_on(fleet, fleet.node_ip(3)):
                fleet.procs["node-3"].send_signal(signal.SIGTERM)  # notice: drains, exits after the grace
                done_faults.add("drain")
                log(f"SIGTERM (5 s grace) to node 3 at {e}/{n} ended")
            if "join" not in done_faults and e >= n * 0.3:
                with open(nodes_file, "a") as f:
                    f.write(addr[5] + "\n")
                done_faults.add("join")
                log(f"node 5 appended to the nodes file at {e}/{n} ended")
            if st and ended(st) >= n:
                break  # the checks below say which faults did not happen in time
            time.sleep(0.3)
        log(f"fleet rollout: {st}")
        check.expect(st.get("done") == n and st.get("failed") == 0, f"every episode finished ({st.get('done')}/{n})")
        check.expect({"kill", "partition", "fenced", "heal", "drain", "join"} <= done_faults,
                     f"every fault happened during the rollout ({sorted(done_faults)})")
        end = max(time.monotonic() + 30, T0 + 480)
        while time.monotonic() < end:
            ref = rollout_state(fleet, "front-ref", rid) or {}
            if ref and ended(ref) >= n:
                break
            time.sleep(0.5)
        check.expect(ref.get("done") == n, f"the reference run finished ({ref})")

        # The partitioned node destroyed the front's sandboxes while cut off.
        check.expect(bool(fenced.get("before")), "the partitioned node held sandboxes of the front")
        check.expect("fenced" in done_faults and fenced.get("after_s", 99) < lease_ms / 1000 + 4,
                     f"the partitioned node destroyed them within its lease ({fenced.get('after_s')}s)")
        check.expect("fenced " in fleet.daemon_log("node-2"), "its log says it fenced them")
        check.expect("drain grace over: destroying" in fleet.daemon_log("node-3"),
                     "the drained node destroyed what was left at the end of its grace")

        d3 = fleet.daemon_log("node-3")
        log("the drained node: " + ("; ".join(l.split("] ", 2)[-1] for l in d3.splitlines()
                                              if "drain" in l) or "no drain logged"))
        got = export(fleet, "front", rid)
        want = export(fleet, "front-ref", rid)
        check.expect(len(got) == n and len(want) == n, f"both exports hold {n} episodes ({len(got)}, {len(want)})")
        rewards = [e["reward"] for e in got.values()]
        check.expect(all(r == 1.0 for r in rewards),
                     f"every episode earned reward 1 ({sum(r == 1.0 for r in rewards)}/{len(rewards)})")
        hits = fleet.counter.snapshot()
        joined_hits = sum(h[1] == fleet.node_ip(5) for h in hits)
        check.expect(joined_hits > 0, f"the node that joined ran calls ({joined_hits})")
        fleet_hits = [h for h in hits if h[1] != fleet.node_ip(9)]
        touched = check_counts(fleet_hits, got, check, n)
        moved = sum("moved to a new sandbox" in e.get("rebuild_note", "") for e in got.values())
        log(f"{moved} episode(s) moved to a new sandbox; {len(touched)} touched by a fault")
        check.expect(moved > 0, "episodes moved off the nodes the faults took")
        same = differ = 0
        for eid, line in got.items():
            tid = line["task_id"]
            if tid in touched:
                continue
            if comparable(line) == comparable(want.get(eid, {"steps": []})):
                same += 1
            else:
                differ += 1
                if differ <= 3:
                    a, b = comparable(line), comparable(want.get(eid, {"steps": []}))
                    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                    log(f"      {eid} differs from the reference in {keys}")
        # A touched episode ran differently (moved, rebuilt, replayed) but must
        # have done the same: its conversation, tokens and reward equal the
        # reference's (a call cut off by a fault and acknowledged with an error
        # as its result would show here).
        bad = [eid for eid, line in got.items() if line["task_id"] in touched and
               any(line.get(k) != want.get(eid, {}).get(k) for k in ("messages", "token_ids", "reward"))]
        for eid in bad[:3]:
            a = [m.get("content") for m in got[eid]["messages"] if m.get("role") == "tool"]
            b = [m.get("content") for m in want.get(eid, {}).get("messages", []) if m.get("role") == "tool"]
            log(f"      {eid}: tool results {a} vs the reference's {b}")
        check.expect(not bad, f"the {len(touched)} episodes a fault touched hold the reference's conversation, "
                              f"tokens and reward ({len(bad)} differ)")
        check.expect(differ == 0 and same > n // 3,
                     f"the exports of the {same + differ} episodes no fault touched equal the reference's "
                     f"({differ} differ; {len(touched)} touched)")
        ok = not check.failures
    except (Failed, RuntimeError, KeyboardInterrupt, subprocess.TimeoutExpired) as e:
        log(f"FAIL  {e}")
        check.failures.append(str(e))
    finally:
        if check.failures:
            for name in ("front", "node-1", "node-2", "node-3", "node-5"):
                tail = fleet.daemon_log(name)[-1500:]
                if tail:
                    log(f"--- {name} log tail\n{tail}")
        fleet.cleanup(keep_dir=bool(check.failures) and os.environ.get("PADDOCK_NETNS_KEEP") == "1")
    log(f"{'PASS' if ok else 'FAIL'} ({time.monotonic() - T0:.0f}s; {len(check.failures)} failure(s))")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
