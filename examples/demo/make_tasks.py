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
                     [--max-turns N] [--max-new-tokens N]
"""

import argparse
import json
import sys

SYSTEM = ("You are an agent in a Linux sandbox. Use the tools to look around and act; "
          "when you know the answer, call submit with it.")


def answer_is(expected):
    return {"command": 'test "$PADDOCK_ANSWER" = "%s"' % expected, "reward": "exit_code", "timeout_s": 10}


def busybox_function(i):
    kinds = [
        ("What is %d*%d? Compute it with the shell (expr) and submit just the number." % (11 + i, 7 + i % 5),
         ["bash", "submit"], answer_is((11 + i) * (7 + i % 5)),
         {"answer_command": "expr %d \\* %d" % (11 + i, 7 + i % 5)}),
        ("What login shell does root have in /etc/passwd? Submit the path.",
         ["bash", "read_file", "submit"], answer_is("/bin/sh"),
         {"answer_command": "grep ^root: /etc/passwd | cut -d: -f7"}),
        ("How many entries are in the directory /bin whose names start with 'c'? Submit the number.",
         ["bash", "submit"],
         {"command": 'test "$PADDOCK_ANSWER" = "$(ls -1 /bin | grep -c ^c)"', "reward": "exit_code"},
         {"answer_command": "ls /bin | grep -c ^c"}),
    ]
    return kinds[i % len(kinds)]


def python_function(i):
    n = 10 + i
    kinds = [
        ("Use python3 to compute the sum of the squares of 1..%d and submit just the number." % n,
         ["bash", "submit"], answer_is(sum(k * k for k in range(1, n + 1))),
         {"answer_command": "python3 -c 'print(sum(k * k for k in range(1, %d)))'" % (n + 1)}),
        ("Which Python version does python3 in this sandbox report (major.minor)? Submit it, e.g. 3.9.",
         ["bash", "submit"],
         {"command": 'test "$PADDOCK_ANSWER" = "$(python3 -c \'import sys;print(\"%d.%d\" % sys.version_info[:2])\')"',
          "reward": "exit_code"},
         {"answer_command": "python3 --version | cut -d' ' -f2 | cut -d. -f1,2"}),
        ("Use python3 to compute %d factorial modulo 1000003 and submit just the number." % (20 + i),
         ["bash", "submit"], answer_is(_fact_mod(20 + i, 1000003)),
         {"answer_command": "python3 -c 'import math; print(math.factorial(%d) %% 1000003)'" % (20 + i)}),
    ]
    return kinds[i % len(kinds)]


def _fact_mod(n, m):
    r = 1
    for k in range(2, n + 1):
        r = r * k % m
    return r


def busybox_container(i):
    limit = 5 + i % 7
    kinds = [
        # A bug to fix: count.sh should print 1..LIMIT but stops one short.
        ("/work/count.sh should print the numbers 1 to %d, one per line, but it is off by one. "
         "Fix it so that `sh /work/test.sh` passes, then submit 'done'." % limit,
         ["bash", "read_file", "write_file", "str_replace", "submit"],
         ["printf 'i=1\\nwhile [ $i -lt %d ]; do echo $i; i=$((i+1)); done\\n' > /work/count.sh" % limit,
          "printf '[ \"$(sh /work/count.sh | wc -l)\" -eq %d ] && [ \"$(sh /work/count.sh | tail -n1)\" = %d ]\\n' "
          "> /work/test.sh" % (limit, limit)],
         {"command": "sh /work/test.sh", "reward": "exit_code", "timeout_s": 10},
         {"commands": ["sed -i 's/-lt %d/-le %d/' /work/count.sh" % (limit, limit)], "answer": "done"}),
        # Files to inspect.
        ("The directory /work/logs holds log files. How many lines contain ERROR, across all of them? "
         "Submit the number.",
         ["bash", "read_file", "submit"],
         ["mkdir -p /work/logs",
          "for f in a b c; do : > /work/logs/$f.log; for n in $(seq %d); do echo \"$n INFO ok\" >> /work/logs/$f.log; "
          "done; echo 'ERROR disk' >> /work/logs/$f.log; done" % limit,
          "echo 'ERROR late' >> /work/logs/b.log"],
         answer_is(4),
         {"answer_command": "cat /work/logs/*.log | grep -c ERROR"}),
    ]
    text, tools, setup, verifier, solution = kinds[i % len(kinds)]
    return text, tools, verifier, setup, solution


def python_container(i):
    a, b = 3 + i % 9, 4 + i % 5
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
         ["printf 'name,score\\nada,%d\\nbob,%d\\ncy,%d\\n' > /work/data.csv" % (a, b, a * b)],
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


def make_tasks(episodes, busybox, python, max_turns, max_new_tokens):
    combos = [("busybox", "function"), ("busybox", "container"), ("python", "function"), ("python", "container")]
    if not python:  # no python3 image: the busybox tasks only
        combos = combos[:2]
    tasks = []
    for n in range(episodes):
        image_kind, substrate = combos[n % len(combos)]
        i = n // len(combos)
        setup = []
        if (image_kind, substrate) == ("busybox", "function"):
            text, tools, verifier, solution = busybox_function(i)
        elif (image_kind, substrate) == ("python", "function"):
            text, tools, verifier, solution = python_function(i)
        elif image_kind == "busybox":
            text, tools, verifier, setup, solution = busybox_container(i)
        else:
            text, tools, verifier, setup, solution = python_container(i)
        task = {
            "id": "%s-%s-%03d" % (image_kind, substrate, n),
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
    a = p.parse_args(argv)
    if a.episodes < 1:
        p.error("--episodes must be at least 1")
    if a.max_turns < 1 or a.max_new_tokens < 1:
        p.error("--max-turns and --max-new-tokens must be at least 1")
    lines = "".join(json.dumps(t, sort_keys=True) + "\n"
                    for t in make_tasks(a.episodes, a.busybox, a.python, a.max_turns, a.max_new_tokens))
    if a.out == "-":
        sys.stdout.write(lines)
    else:
        with open(a.out, "w") as f:
            f.write(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
