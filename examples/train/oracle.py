#!/usr/bin/env python3
"""The "oracle" policy script for supervised training data: for a tasks file of
examples/demo/make_tasks.py, a `paddock run --policy scripted --policy-script
FILE` script (rollout/engine/scripted_policy.h, "by_prompt") that answers each
task with its own scripted solution from the task's metadata:

  turn 1: bash with the fixing command (metadata.solution.commands[0]) or the
          command that prints the answer (answer_command);
  turn 2: submit the given answer, or the first line of that command's output
          ({last_output}, filled in by the scripted policy from the prompt).

A task is recognised by its instruction (the by_prompt match). The rollout's
export (token ids, loss mask, rewards) is then the SFT data (sft.py
--min-reward 1): the trajectories are Paddock's, run in real sandboxes and
judged by the tasks' verifiers.

  oracle.py TASKS.jsonl > script.json
"""
import json
import sys


def dsml_call(tool, args):
    s = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"%s\">\n" % tool
    for k, v in args:
        s += "<｜DSML｜parameter name=\"%s\" string=\"true\">%s</｜DSML｜parameter>\n" % (k, v)
    return s + "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>"


def solution_turns(task):
    sol = task["metadata"]["solution"]
    if sol.get("commands"):
        return [dsml_call("bash", [("command", sol["commands"][0])]), dsml_call("submit", [("answer", sol["answer"])])]
    return [dsml_call("bash", [("command", sol["answer_command"])]), dsml_call("submit", [("answer", "{last_output}")])]


def script(tasks):
    seen, entries = set(), []
    for t in tasks:
        if t["instruction"] in seen:
            continue
        seen.add(t["instruction"])
        entries.append({"match": t["instruction"], "completions": solution_turns(t)})
    return {"by_prompt": entries}


def main(argv):
    if len(argv) != 1:
        sys.exit(__doc__)
    with open(argv[0]) as f:
        tasks = [json.loads(l) for l in f if l.strip()]
    json.dump(script(tasks), sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
