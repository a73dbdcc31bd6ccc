"""The processes a training run talks to, started and stopped from Python:
paddockd (its own state dir and socket), the demo images, paddock-policy
(embedded engine) on a weights file, and `paddock run` rollouts read back from
their export. Used by train_demo.py and grpo.py; nothing here is needed to
train (sft.py and grpo.py's update only need export lines).
"""
from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(msg):
    print(msg, flush=True)


class Stack:
    def __init__(self, build, work):
        self.build = os.path.abspath(build)
        self.work = os.path.abspath(work)
        self.paddockd = os.path.join(self.build, "rollout/paddockd")
        self.paddock = os.path.join(self.build, "sdk/paddock")
        self.policy_bin = os.path.join(self.build, "policy/paddock-policy")
        self.init_bin = os.path.join(self.build, "sandbox/paddock-init")
        for b in (self.paddockd, self.paddock, self.policy_bin, self.init_bin):
            if not os.access(b, os.X_OK):
                raise SystemExit(f"{b} is missing: build first (make build)")
        os.makedirs(self.work, exist_ok=True)
        self.socket = os.path.join(self.work, "paddockd.sock")
        os.environ["PADDOCK_SOCKET"] = self.socket
        self.daemon = None
        self.policy = None
        self.policy_url = None

    # -- paddockd ---------------------------------------------------------
    def cli(self, args, check=True, **kw):
        p = subprocess.run([self.paddock] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        if check and p.returncode != 0:
            raise RuntimeError(f"paddock {' '.join(args[:3])} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
        return p

    def start_daemon(self, fresh_log=True):
        state = os.path.join(self.work, "state")
        if fresh_log:
            subprocess.run(["rm", "-rf", os.path.join(state, "log")])
        os.makedirs(state, exist_ok=True)
        logf = open(os.path.join(self.work, "paddockd.log"), "a")
        self.daemon = subprocess.Popen([self.paddockd, "--state-dir", state, "--socket", self.socket,
                                        "--init-path", self.init_bin, "--log-level", "warn"],
                                       stdout=logf, stderr=logf)
        for _ in range(300):
            if self.cli(["sandbox", "ls"], check=False).returncode == 0:
                return
            if self.daemon.poll() is not None:
                raise RuntimeError(f"paddockd exited during start-up; see {self.work}/paddockd.log")
            time.sleep(0.1)
        raise RuntimeError("paddockd did not answer within 30 s")

    def import_images(self, debian=True):
        """busybox:demo and (unless debian=False) debian-python3:demo, as scripts/demo.sh does."""
        rootfs = os.path.join(self.work, "busybox-rootfs")
        subprocess.run(["bash", os.path.join(ROOT, "scripts/make-busybox-rootfs.sh"), rootfs], check=True,
                       stdout=subprocess.DEVNULL)
        self.cli(["image", "import-dir", rootfs, "--name", "busybox:demo"])
        if not debian:
            return "busybox:demo", ""
        archive = subprocess.run(["bash", os.path.join(ROOT, "scripts/make-debian-image.sh"), "--out",
                                  os.path.join(self.build, "test-images/debian-python3.oci.tar")],
                                 check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
        self.cli(["image", "import", archive, "--name", "debian-python3:demo"])
        return "busybox:demo", "debian-python3:demo"

    # -- paddock-policy ---------------------------------------------------
    def start_policy(self, weights=None, config="tiny", threads=2, extra=()):
        self.stop_policy()
        cmd = [self.policy_bin, "--listen", "127.0.0.1:0", "--config", config, "--threads", str(threads)]
        if weights:
            cmd += ["--weights", weights]
        cmd += list(extra)
        logf = open(os.path.join(self.work, "paddock-policy.log"), "a")
        self.policy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, text=True)
        line = self.policy.stdout.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if not m:
            self.policy.kill()
            raise RuntimeError(f"paddock-policy did not start: {line!r}; see {self.work}/paddock-policy.log")
        self.policy_url = m.group(1)
        # Keep draining its stdout so it never blocks on a full pipe.
        import threading
        threading.Thread(target=lambda s=self.policy.stdout: [None for _ in s], daemon=True).start()
        return self.policy_url

    def stop_policy(self):
        if self.policy and self.policy.poll() is None:
            self.policy.terminate()
            try:
                self.policy.wait(10)
            except subprocess.TimeoutExpired:
                self.policy.kill()
        self.policy = None

    def save_seeded_weights(self, path, seed=1, config="tiny"):
        subprocess.run([self.policy_bin, "--save-weights", path, "--config", config, "--seed", str(seed)],
                       check=True, stdout=subprocess.DEVNULL)

    # -- rollouts ---------------------------------------------------------
    def run(self, tasks, rollout_id, policy=None, script=None, samples=1, concurrency=8, extra=(), quiet=True):
        """`paddock run` to the end; returns the export's lines."""
        out = os.path.join(self.work, "runs")
        args = ["run", tasks, "--id", rollout_id, "--out", out, "--concurrency", str(concurrency),
                "--samples", str(samples)]
        if script:
            args += ["--policy", "scripted", "--policy-script", script]
        else:
            args += ["--policy", policy or self.policy_url, "--policy-kind", "sglang", "--constrain-tools",
                     "--tool-choice", "required"]
        args += list(extra)
        p = subprocess.run([self.paddock] + args, stdout=subprocess.PIPE if quiet else None,
                           stderr=subprocess.PIPE, text=True)
        path = os.path.join(out, rollout_id, "episodes.jsonl")
        if not os.path.exists(path):
            raise RuntimeError(f"paddock run {rollout_id} exited {p.returncode} with no export: {p.stderr[-2000:]}")
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]

    def close(self):
        self.stop_policy()
        if self.daemon and self.daemon.poll() is None:
            ids = []
            p = self.cli(["--json", "sandbox", "ls"], check=False)
            try:
                ids = [s["id"] for s in json.loads(p.stdout)["sandboxes"]]
            except Exception:
                pass
            if ids:
                self.cli(["sandbox", "destroy"] + ids, check=False)
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
        self.daemon = None


def kind_of(sample):
    """The task family of an export line (its task id without the index, plus the instruction's kind)."""
    return sample.get("task_id", "?").rsplit("-", 1)[0].split("-", 1)[-1]


def rewards(lines):
    """Mean reward over all episodes (an infra end counts 0 here: the model did not solve it) and by family."""
    by = collections.defaultdict(list)
    for s in lines:
        by[(s.get("metadata") or {}).get("kind") or kind_of(s)].append(float(s.get("reward") or 0.0))
    mean = sum(sum(v) for v in by.values()) / max(1, sum(len(v) for v in by.values()))
    infra = sum(1 for s in lines if not s.get("train", True))
    return mean, {k: sum(v) / len(v) for k, v in sorted(by.items())}, infra
