#!/usr/bin/env python3
"""Writes the demo's tasks file (JSON lines, docs/tasks.md) for `make demo`.

Every task is one a scripted solution can solve: files to inspect, a small bug to
fix so a test passes, arithmetic with python or the shell. The tasks cycle over
the busybox and the Debian python3 image and over the function and container
substrates, so N tasks exercise all four combinations evenly. Function sandboxes
keep nothing between calls, so their tasks need no setup: they read what the
image already holds or compute an answer; the container tasks prepare files with
`setup` and check the result with a verifier that runs in the same sandbox.

usage: make_tasks.py --episodes N --busybox IMAGE --python IMAGE [--out FILE]
                     [--max-turns N] [--max-new-tokens N] [--split demo|train|heldout --seed S]

--split: `demo` (default) numbers the instances by their index, as `make demo`
always did; `train` and `heldout` draw them with --seed from disjoint ranges,
and the held-out instances also use other file and person names (log files,
CSV rows), so a model trained on `train` tasks (examples/train/) is measured on
instances it never saw. The task families and instructions are the same.
"""

import argparse
import json
import random
import sys

SYSTEM = ("You are an agent in a Linux sandbox. Use the tools to look around and act; "
          "when you know the answer, call submit with it.")


def answer_is(expected):
    return {"command": 'test "$PADDOCK_ANSWER" = "%s"' % expected, "reward": "exit_code", "timeout_s": 10}


# Instance parameters by split: `demo` by index; `train` / `heldout` drawn from
# disjoint ranges (numbers) and pools (file and person names).
TRAIN = {"x": (11, 69), "y": (3, 12), "sq": (5, 39), "fact": (10, 59), "limit": (5, 11), "lines": (2, 9),
         "ab": (2, 20), "logs": ["a", "b", "c", "app", "web", "db", "sys", "net"],
         "names": ["ada", "bob", "cy", "dan", "eve", "fay", "gus", "hal", "ivy", "jo"]}
HELDOUT = {"x": (70, 99), "y": (3, 12), "sq": (40, 60), "fact": (60, 90), "limit": (12, 19), "lines": (10, 15),
           "ab": (21, 30), "logs": ["x", "y", "z", "api", "cron", "mail", "auth", "disk"],
           "names": ["kim", "lea", "max", "ned", "oto", "pia", "quinn", "rui", "sal", "tess"]}


class Params:
    """The numbers and names of instance i."""

    def __init__(self, split, i, rng):
        if split == "demo":
            self.x, self.y, self.sq, self.fact = 11 + i, 7 + i % 5, 10 + i, 20 + i
            self.limit = 5 + i % 7
            self.lines = self.limit
            self.a, self.b = 3 + i % 9, 4 + i % 5
            self.logs, self.names = ["a", "b", "c"], ["ada", "bob", "cy"]
            self.late = "b"
            return
        r = TRAIN if split == "train" else HELDOUT
        pick = lambda k: rng.randint(*r[k])  # noqa: E731
        self.x, self.y, self.sq, self.fact = pick("x"), pick("y"), pick("sq"), pick("fact")
        self.limit, self.lines = pick("limit"), pick("lines")
        self.a, self.b = pick("ab"), pick("ab")
        self.logs = rng.sample(r["logs"], 3)
        self.names = rng.sample(r["names"], 3)
        self.late = rng.choice(self.logs)


def busybox_function(i, q):
    kinds = [
        ("What is %d*%d? Compute it with the shell (expr) and submit just the number." % (q.x, q.y),
         ["bash", "submit"], answer_is(q.x * q.y),
         {"answer_command": "expr %d \\* %d" % (q.x, q.y)}),
        ("What login shell does root have in /etc/passwd? Submit the path.",
         ["bash", "read_file", "submit"], answer_is("/bin/sh"),
         {"answer_command": "grep ^root: /etc/passwd | cut -d: -f7"}),
        ("How many entries are in the directory /bin whose names start with 'c'? Submit the number.",
         ["bash", "submit"],
         {"command": 'test "$PADDOCK_ANSWER" = "$(ls -1 /bin | grep -c ^c)"', "reward": "exit_code"},
         {"answer_command": "ls /bin | grep -c ^c"}),
    ]
    return kinds[i % len(kinds)]


def python_function(i, q):
    n = q.sq
    kinds = [
        ("Use python3 to compute the sum of the squares of 1..%d and submit just the number." % n,
         ["bash", "submit"], answer_is(sum(k * k for k in range(1, n + 1))),
         {"answer_command": "python3 -c 'print(sum(k * k for k in range(1, %d + 1)))'" % n}),
        ("Which Python version does python3 in this sandbox report (major.minor)? Submit it, e.g. 3.9.",
         ["bash", "submit"],
         {"command": 'test "$PADDOCK_ANSWER" = "$(python3 -c \'import sys;print(\"%d.%d\" % sys.version_info[:2])\')"',
          "reward": "exit_code"},
         {"answer_command": "python3 --version | cut -d' ' -f2 | cut -d. -f1,2"}),
        ("Use python3 to compute %d factorial modulo 1000003 and submit just the number." % q.fact,
         ["bash", "submit"], answer_is(_fact_mod(q.fact, 1000003)),
         {"answer_command": "python3 -c 'import math; print(math.factorial(%d) %% 1000003)'" % q.fact}),
    ]
    return kinds[i % len(kinds)]


def _fact_mod(n, m):
    r = 1
    for k in range(2, n + 1):
        r = r * k % m
    return r


def busybox_container(i, q):
    limit = q.limit
    kinds = [
        # A bug to fix: count.sh should print 1..LIMIT but stops one short.
        ("/work/count.sh should print the numbers 1 to %d, one per line, but it is off by one. "
         "Fix it so that `sh /work/test.sh` passes, then submit 'done'." % limit,
         ["bash", "read_file", "write_file", "str_replace", "submit"],
         ["printf 'i=1\\nwhile [ $i -lt %d ]; do echo $i; i=$((i+1)); done\\n' > /work/count.sh" % limit,
          "printf '[ \"$(sh /work/count.sh | wc -l)\" -eq %d ] && [ \"$(sh /work/count.sh | tail -n1)\" = %d ]\\n' "
          "> /work/test.sh" % (limit, limit)],
         {"command": "sh /work/test.sh", "reward": "exit_code", "timeout_s": 10},
         {"commands": ["sed -i 's/-lt/-le/' /work/count.sh"], "answer": "done"}),
        # Files to inspect.
        ("The directory /work/logs holds log files. How many lines contain ERROR, across all of them? "
         "Submit the number.",
         ["bash", "read_file", "submit"],
         ["mkdir -p /work/logs",
          "for f in %s; do : > /work/logs/$f.log; for n in $(seq %d); do echo \"$n INFO ok\" >> /work/logs/$f.log; "
          "done; echo 'ERROR disk' >> /work/logs/$f.log; done" % (" ".join(q.logs), q.lines),
          "echo 'ERROR late' >> /work/logs/%s.log" % q.late],
         answer_is(4),
         {"answer_command": "cat /work/logs/*.log | grep -c ERROR"}),
    ]
    text, tools, setup, verifier, solution = kinds[i % len(kinds)]
    return text, tools, verifier, setup, solution


def python_container(i, q):
    a, b = q.a, q.b
    kinds = [
        # A bug to fix so the test passes.
        ("/work/calc.py has a bug: add(a, b) should return a + b. Fix it so that "
         "`python3 /work/test_calc.py` passes, then submit 'done'.",
         ["bash", "read_file", "write_file", "str_replace", "submit"],
         ["printf 'def add(a, b):\\n    return a - b\\n' > /work/calc.py",
          "printf 'import sys\\nsys.path.insert(0, \"/work\")\\nfrom calc import add\\n"
          "assert add(%d, %d) == %d, add(%d, %d)\\nprint(\"ok\")\\n' > /work/test_calc.py" % (a, b, a + b, a, b)],
         # Stale bytecode would hide a same-size fix made within the second
         # (a - b to a + b): none is written (task env) and any is removed first.
         {"command": "rm -rf /work/__pycache__; python3 -B /work/test_calc.py", "reward": "exit_code",
          "timeout_s": 20},
         {"commands": ["sed -i 's/a - b/a + b/' /work/calc.py"], "answer": "done"}),
        # Files to inspect, with python.
        ("/work/data.csv has columns name,score. What is the total of the score column? Submit just the number.",
         ["bash", "read_file", "submit"],
         ["printf 'name,score\\n%s,%%d\\n%s,%%d\\n%s,%%d\\n' > /work/data.csv" % tuple(q.names) % (a, b, a * b)],
         answer_is(a + b + a * b),
         {"answer_command": "python3 -c \"import csv; print(sum(int(r['score']) for r in "
                            "csv.DictReader(open('/work/data.csv'))))\""}),
    ]
    text, tools, setup, verifier, solution = kinds[i % len(kinds)]
    return text, tools, verifier, setup, solution


def kind_of(instruction):
    """A short name of the task's kind (the first words of its instruction)."""
    words = "".join(c if c.isalpha() or c == " " else " " for c in instruction.lower()).split()
    return "-".join(words[:4])


def make_tasks(episodes, busybox, python, max_turns, max_new_tokens, split="demo", seed=0):
    combos = [("busybox", "function"), ("busybox", "container"), ("python", "function"), ("python", "container")]
    if not python:  # no python3 image: the busybox tasks only
        combos = combos[:2]
    tasks = []
    rng = random.Random("%s/%d" % (split, seed))
    prefix = "" if split == "demo" else "%s%d-" % (split, seed)
    for n in range(episodes):
        image_kind, substrate = combos[n % len(combos)]
        i = n // len(combos)
        q = Params(split, i, rng)
        setup = []
        if (image_kind, substrate) == ("busybox", "function"):
            text, tools, verifier, solution = busybox_function(i, q)
        elif (image_kind, substrate) == ("python", "function"):
            text, tools, verifier, solution = python_function(i, q)
        elif image_kind == "busybox":
            text, tools, verifier, setup, solution = busybox_container(i, q)
        else:
            text, tools, verifier, setup, solution = python_container(i, q)
        task = {
            "id": "%s%s-%s-%03d" % (prefix, image_kind, substrate, n),
            "image": busybox if image_kind == "busybox" else python,
            "substrate": substrate,
            "system": SYSTEM,
            "instruction": text,
            "tools": tools,
            "limits": {"memory_mb": 256, "pids": 64, "exec_timeout_s": 10, "output_cap_bytes": 4096},
            "workdir": "/work" if substrate == "container" else "/",
            # Budgets vary a little from task to task so that episodes drift apart
            # instead of moving in lock-step waves.
            "max_turns": max_turns + n % 2,
            "max_tokens": 8192,
            "max_new_tokens": max_new_tokens + 8 * (n % 5),
            "max_observation_tokens": 512,
            "verifier": verifier,
            # A scripted solution (examples/demo/check_solutions.py runs it): shell
            # commands that fix what needs fixing, and the answer to submit, given
            # or printed by answer_command in the sandbox.
            "metadata": {"demo": True, "image_kind": image_kind, "kind": kind_of(text), "solution": solution},
        }
        if setup:
            task["setup"] = ["mkdir -p /work"] + setup
        if image_kind == "python":
            task["env"] = {"PYTHONDONTWRITEBYTECODE": "1"}
        tasks.append(task)
    return tasks


def main(argv):
    p = argparse.ArgumentParser(description="Write the demo's tasks (JSON lines, docs/tasks.md).")
    p.add_argument("--episodes", type=int, default=64, help="number of tasks (one episode each; default 64)")
    p.add_argument("--busybox", required=True, help="image reference of the busybox image")
    p.add_argument("--python", required=True,
                   help="image reference of the Debian python3 image ('' for busybox tasks only)")
    p.add_argument("--out", default="-", help="output file (default: stdout)")
    p.add_argument("--max-turns", type=int, default=3, help="policy turns per episode, +1 on every other task (default 3)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens per policy turn, +0..32 by task (default 48)")
    p.add_argument("--split", choices=["demo", "train", "heldout"], default="demo",
                   help="instance numbers: by index (demo, default) or drawn for training / held-out evaluation")
    p.add_argument("--seed", type=int, default=0, help="with --split train|heldout: the draw (default 0)")
    a = p.parse_args(argv)
    if a.episodes < 1:
        p.error("--episodes must be at least 1")
    if a.max_turns < 1 or a.max_new_tokens < 1:
        p.error("--max-turns and --max-new-tokens must be at least 1")
    lines = "".join(json.dumps(t, sort_keys=True) + "\n"
                    for t in make_tasks(a.episodes, a.busybox, a.python, a.max_turns, a.max_new_tokens,
                                         a.split, a.seed))
    if a.out == "-":
        sys.stdout.write(lines)
    else:
        with open(a.out, "w") as f:
            f.write(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
