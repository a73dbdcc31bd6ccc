#!/usr/bin/env python3
"""Shows that the demo tasks are solvable: for one task of every kind in a tasks
file (examples/demo/make_tasks.py), in a real sandbox of the task's image and
substrate, runs the setup, checks that the verifier refuses the task unsolved (a
wrong answer, the bug not fixed), runs the scripted solution from the task's
metadata, and checks that the verifier then rewards it.

usage: check_solutions.py --paddock BIN --tasks FILE   (PADDOCK_SOCKET names the daemon)
Exits 1, naming the task, when a verifier rewards an unsolved task or refuses a
solved one.
"""

import argparse
import json
import subprocess
import sys


class Failure(Exception):
    pass


def cli(paddock, args, check=True):
    p = subprocess.run([paddock] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        raise Failure("`paddock %s` exited %d: %s" % (" ".join(args[:4]), p.returncode, p.stderr.strip()))
    return p


def verifier_of(task):
    v = task.get("verifier")
    if isinstance(v, str):
        return v, "exit_code"
    return v["command"], v.get("reward", "exit_code")


def rewarded(paddock, sid, task, answer):
    command, kind = verifier_of(task)
    if kind != "exit_code":
        raise Failure("%s: only exit_code verifiers are checked here" % task["id"])
    p = cli(paddock, ["sandbox", "exec", sid, "--env", "PADDOCK_ANSWER=" + answer,
                      "--env", "PADDOCK_STOP_REASON=submit", "--shell", command], check=False)
    return p.returncode == 0


def check_task(paddock, task):
    sol = task["metadata"]["solution"]
    args = ["sandbox", "create", "--substrate", task["substrate"], "--image", task["image"],
            "--memory", "256M", "--pids", "64"]
    if task.get("workdir"):
        args += ["--workdir", task["workdir"]]
    for k, v in sorted(task.get("env", {}).items()):
        args += ["--env", "%s=%s" % (k, v)]
    sid = cli(paddock, args).stdout.strip()
    try:
        for cmd in task.get("setup", []):
            cli(paddock, ["sandbox", "exec", sid, "--shell", cmd])
        if rewarded(paddock, sid, task, "wrong"):
            raise Failure("%s: the verifier rewards the task unsolved" % task["id"])
        for cmd in sol.get("commands", []):
            cli(paddock, ["sandbox", "exec", sid, "--shell", cmd])
        if "answer_command" in sol:
            answer = cli(paddock, ["sandbox", "exec", sid, "--shell", sol["answer_command"]]).stdout.strip()
        else:
            answer = sol["answer"]
        if not rewarded(paddock, sid, task, answer):
            raise Failure("%s: the verifier refuses the scripted solution (answer %r)" % (task["id"], answer))
        return answer
    finally:
        cli(paddock, ["sandbox", "destroy", sid], check=False)


def main(argv):
    p = argparse.ArgumentParser(description="Check that the demo tasks' verifiers reward their scripted solutions.")
    p.add_argument("--paddock", required=True, help="the paddock CLI")
    p.add_argument("--tasks", required=True, help="tasks file written by make_tasks.py")
    a = p.parse_args(argv)
    seen = set()
    checked = 0
    try:
        with open(a.tasks) as f:
            for line in f:
                task = json.loads(line)
                group = (task["image"], task["substrate"], task["metadata"]["kind"])
                if group in seen:
                    continue
                seen.add(group)
                answer = check_task(a.paddock, task)
                checked += 1
                print("%-24s %-10s %-24s unsolved: 0, solved: 1 (answer %s)"
                      % (task["id"], task["substrate"], task["metadata"]["kind"], answer))
    except Failure as e:
        print("check_solutions: %s" % e, file=sys.stderr)
        return 1
    print("%d kinds of task checked: each verifier refuses the task unsolved and rewards its solution" % checked)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
