"""Rollouts through the SDK against the real daemon, with its in-process scripted policy
(the daemon's own test policy: the episodes, sandboxes, tools, verifier and log are real)."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

import paddock
import paddock.aio
from conftest import SOURCE_DIR

DSML = "｜DSML｜"


def tool_call(name: str, **params: str) -> str:
    body = "".join(f'<{DSML}parameter name="{k}" string="true">{v}</{DSML}parameter>\n' for k, v in params.items())
    return (f"Calling {name}.\n\n<{DSML}tool_calls>\n<{DSML}invoke name=\"{name}\">\n{body}</{DSML}invoke>\n"
            f"</{DSML}tool_calls><｜end▁of▁sentence｜>")


SCRIPT = [
    tool_call("bash", command="echo 42 > /work/answer; echo wrote"),
    tool_call("submit", answer="42"),
]


def tasks(rootfs: str, n: int, prefix: str) -> list[dict]:
    return [{
        "id": f"{prefix}-{i}",
        "image": rootfs,
        "substrate": "container",
        "instruction": "Write 42 to /work/answer, then submit.",
        "max_turns": 4,
        "verifier": {"command": 'test "$(cat /work/answer)" = 42'},
    } for i in range(n)]


@pytest.fixture(scope="module")
def rollouts_served(client: paddock.Client) -> None:
    try:
        client.rollouts.list(limit=1)
    except paddock.Unimplemented as e:
        pytest.skip(f"this paddockd does not serve the Rollouts service yet: {e.message}")


def test_start_watch_export(client: paddock.Client, rootfs: str, rollouts_served: None) -> None:
    prefix = f"py{os.urandom(3).hex()}"
    ro = client.rollouts.start(tasks(rootfs, 3, prefix), policy=paddock.PolicySpec(kind="scripted", script=SCRIPT),
                               concurrency=3, labels={"by": "pysdk"})
    assert ro.id and ro.episodes == 3

    episodes: list[paddock.EpisodeSummary] = []
    progress: list[paddock.RolloutProgress] = []
    for ev in ro.watch(interval=0.2):
        (episodes if isinstance(ev, paddock.EpisodeSummary) else progress).append(ev)
    assert sorted(e.task_id for e in episodes) == [f"{prefix}-{i}" for i in range(3)]
    for e in episodes:
        assert (e.state, e.reward, e.stop_reason) == ("finished", 1.0, "submit"), e
        assert e.tool_calls >= 1 and e.turns >= 2 and e.timings.total_us > 0

    p = ro.progress()
    assert p.rollout_id == ro.id and p.state == "finished" and p.finished
    assert (p.episodes_total, p.done, p.failed) == (3, 3, 0) and p.mean_reward == 1.0
    assert ro.id in [r.rollout_id for r in client.rollouts.list()]

    detail = ro.episode(episodes[0].episode_id)
    assert detail.summary.episode_id == episodes[0].episode_id and len(detail.steps) >= 2

    records = list(ro.export_records())
    assert len(records) == 3
    assert all(r.get("reward") == 1.0 for r in records)

    with pytest.raises(paddock.NotFound):
        client.rollouts.get_episode(f"{ro.id}/no-such-task#0")


def test_bad_tasks_are_refused_naming_the_line(client: paddock.Client, rootfs: str, rollouts_served: None) -> None:
    good = json.dumps(tasks(rootfs, 1, "ok")[0])
    with pytest.raises(paddock.InvalidArgument, match="line 2"):
        client.rollouts.start(good + "\n" + '{"id": "x", "image": 5}\n', policy=paddock.PolicySpec(
            kind="scripted", script=SCRIPT))
    with pytest.raises(paddock.InvalidArgument, match="tasks file"):
        client.rollouts.start("/nonexistent/tasks.jsonl", policy="http://127.0.0.1:1")
    with pytest.raises(paddock.NotFound):
        client.rollouts.get("r-000000000000").progress()


def test_aio_rollout(daemon, rootfs: str, rollouts_served: None) -> None:
    async def main() -> None:
        async with paddock.aio.Client(daemon.socket_path) as c:
            ro = await c.rollouts.start(tasks(rootfs, 2, f"pa{os.urandom(3).hex()}"),
                                        policy={"kind": "scripted", "script": SCRIPT}, concurrency=2)
            finished = [ev async for ev in ro.watch(interval=0.2) if isinstance(ev, paddock.EpisodeSummary)]
            assert len(finished) == 2 and all(e.reward == 1.0 for e in finished)
            assert (await ro.progress()).state == "finished"
            lines = b"".join([ch async for ch in ro.export()]).splitlines()
            assert len(lines) == 2

    asyncio.run(main())


def test_rollout_example(daemon, rootfs: str, tmp_path, rollouts_served: None) -> None:
    import subprocess
    import sys
    tf = tmp_path / "tasks.jsonl"
    tf.write_text("".join(json.dumps(t) + "\n" for t in tasks(rootfs, 2, f"ex{os.urandom(3).hex()}")))
    sf = tmp_path / "script.json"
    sf.write_text(json.dumps(SCRIPT))
    out = tmp_path / "out.jsonl"
    p = subprocess.run([sys.executable, os.path.join(SOURCE_DIR, "examples", "python", "rollout.py"), str(tf),
                        "--scripted", str(sf), "--socket", daemon.socket_path, "--out", str(out),
                        "--interval", "0.2"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2/2 done, 0 failed, mean reward 1.000" in p.stdout and "stop reasons: submit 2" in p.stdout
    assert len(out.read_text().splitlines()) == 2


def test_cancel_then_resume(client: paddock.Client, rootfs: str, rollouts_served: None) -> None:
    slow = [tool_call("bash", command="sleep 2; echo 42 > /work/answer"), tool_call("submit", answer="42")]
    ro = client.rollouts.start(tasks(rootfs, 2, f"pc{os.urandom(3).hex()}"),
                               policy=paddock.PolicySpec(kind="scripted", script=slow), concurrency=2)
    for ev in ro.watch(interval=0.1):
        if isinstance(ev, paddock.RolloutProgress) and ev.running > 0:
            break
    assert ro.cancel() >= 1
    p = ro.wait(interval=0.1)
    assert p.state == "cancelled" and p.done < 2

    r = ro.resume()
    assert r.rollout_id == ro.id and r.episodes_total == 2 and r.already_done + r.to_run == 2 and r.to_run >= 1
    p = ro.wait(interval=0.1)
    assert p.state == "finished" and p.done == 2 and p.mean_reward == 1.0
    assert {rec.get("reward") for rec in ro.export_records()} == {1.0}


def test_trainer_loop_groups_acknowledged_and_policy_updated(daemon, client: paddock.Client, rootfs: str,
                                                             rollouts_served: None) -> None:
    """The loop of docs/training.md: start with G samples per task, update the policy version,
    consume groups as they complete and acknowledge them; a second pass of the same consumer
    gets nothing, and every turn after the update carries the new version."""
    slow = [tool_call("bash", command="sleep 0.3; echo 42 > /work/answer; echo wrote"), tool_call("submit", answer="42")]
    prefix = f"tr{os.urandom(3).hex()}"

    async def main() -> str:
        async with paddock.aio.Client(daemon.socket_path) as c:
            ro = await c.rollouts.start(tasks(rootfs, 3, prefix), policy={"kind": "scripted", "script": slow},
                                        samples_per_task=2, concurrency=2, retry_infra=1, max_policy_lag=4)
            up = await ro.update_policy(version="step-1")
            assert (up.previous_version, up.version, up.epoch) == ("v0", "step-1", 1)
            got = []
            async for g in ro.groups(consumer="trainer"):
                assert len(g.episodes) == 2 and len(g.samples) == 2, g
                assert g.trainable == 2 and g.reward_mean == 1.0 and g.reward_std == 0.0
                assert all(s["group_id"] == g.group_id and s["train"] for s in g.samples)
                assert all(e.outcome_class == "agent" and e.train for e in g.episodes)
                assert await ro.ack("trainer", g.group_id) == 1
                got.append(g.group_id)
            assert sorted(got) == sorted(f"{ro.id}/{prefix}-{i}" for i in range(3))
            assert [g async for g in ro.groups(consumer="trainer")] == []
            p = await ro.progress()
            assert (p.groups_done, p.groups_total, p.policy_version, p.policy_epoch) == (3, 3, "step-1", 1)
            return ro.id

    # The same groups through the blocking client, by a consumer of its own; turns after the
    # update carry its version.
    ro = client.rollouts.get(asyncio.run(main()))
    groups = list(ro.groups(consumer="evaluator", follow=False))
    assert len(groups) == 3 and [g.sequence for g in groups] == [1, 2, 3]
    versions = {s["policy_version"] for g in groups for rec in g.samples for s in rec["steps"]}
    assert "step-1" in versions, versions
    with pytest.raises(paddock.InvalidArgument):
        ro.ack("evaluator", f"{ro.id}/no-such-task")
    with pytest.raises(paddock.InvalidArgument):
        ro.update_policy()

    # Forks of one sample at its first turn: each replays that turn and goes on by itself.
    forks = client.rollouts.fork(f"{ro.id}/{prefix}-0#0", at_step=1, samples=3)
    assert forks.episodes == 3 and forks.wait(interval=0.2).done == 3
    recs = list(forks.export_records())
    assert len(recs) == 3 and all(r["fork"] == {"parent": f"{ro.id}/{prefix}-0#0", "at_step": 1} for r in recs)
    with pytest.raises(paddock.FailedPrecondition):
        client.rollouts.fork(f"{ro.id}/{prefix}-0#0", at_step=9)
