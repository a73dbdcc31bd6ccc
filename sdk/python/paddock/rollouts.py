"""Rollouts: the daemon runs whole agent episodes for a set of tasks (service ``paddock.v1.Rollouts``).

::

    ro = c.rollouts.start("tasks.jsonl", policy="http://127.0.0.1:30000", concurrency=256)
    for ev in ro.watch():
        if isinstance(ev, paddock.RolloutProgress):
            print(f"{ev.done}/{ev.episodes_total} done, {ev.tool_calls_per_s:.0f} tool calls/s")
        else:                                   # paddock.EpisodeSummary: one episode finished
            print(ev.episode_id, ev.reward, ev.stop_reason)
    with open("out.jsonl", "wb") as f:
        for chunk in ro.export():
            f.write(chunk)

The task format is docs/tasks.md; the export format docs/export.schema.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence, Union

import grpc

from . import _convert as cv
from . import _stubs
from ._msg import from_msg
from .errors import InvalidArgument, Unimplemented
from .types import StepRecord

if TYPE_CHECKING:
    from .client import Client

__all__ = [
    "PolicySpec",
    "Sampling",
    "EpisodeTimings",
    "EpisodeSummary",
    "RolloutProgress",
    "RolloutEpisode",
    "ResumeResult",
    "Rollouts",
    "Rollout",
]


@dataclass(frozen=True)
class PolicySpec:
    """Which inference server answers a rollout's policy calls.

    Attributes:
        url: ``http://HOST:PORT[/prefix]`` or ``https://...`` (unused for ``"scripted"``).
        kind: ``"sglang"`` (the daemon's default), ``"openai-completions"``, ``"openai-chat"``,
            or ``"scripted"`` (an in-process policy replaying ``script``; tests and benchmarks).
        model: the model name to send.
        api_key_env: name of an environment variable of the daemon that holds the API key.
        max_in_flight: bound on concurrent policy requests (0: the concurrency).
        request_timeout_ms: per-request deadline (0: 120000).
        unavailable_wait_s: how long an episode retries an unavailable server (0: 600).
        script: for ``"scripted"``: the assistant completions, turn N gets element N
            (the last repeats); a list of str (or its JSON text).
        constrain_tools: for ``"sglang"`` against a paddock-policy server: send each task's tools
            so decoding is constrained to valid tool calls. None: off at start; on resume, the
            stored setting.
        tool_choice: with the constraint, ``"auto"`` or ``"required"`` ("": the default, or on
            resume the stored choice).

    On :meth:`Rollout.resume`, fields left at their defaults keep the stored policy's values.
    """

    url: str = ""
    kind: str = ""
    model: str = ""
    api_key_env: str = ""
    max_in_flight: int = 0
    request_timeout_ms: int = 0
    unavailable_wait_s: int = 0
    script: Union[Sequence[str], str] = ()
    constrain_tools: Optional[bool] = None
    tool_choice: str = ""


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of a rollout (None: the backend's default).

    Attributes:
        temperature / top_p / top_k: as the backend defines them.
        max_new_tokens: per turn (0: the task's, or 2048).
        seed: each episode uses seed + its index.
    """

    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    max_new_tokens: int = 0
    seed: Optional[int] = None


@dataclass(frozen=True)
class EpisodeTimings:
    """Per-phase wall time of an episode, in microseconds."""

    sandbox_start_us: int = 0
    setup_us: int = 0
    policy_us: int = 0
    tools_us: int = 0
    verifier_us: int = 0
    total_us: int = 0
    policy_wait_us: int = 0
    queue_us: int = 0


@dataclass(frozen=True)
class EpisodeSummary:
    """One episode of a rollout (a :meth:`Rollout.watch` event when it finishes).

    Attributes:
        episode_id: ``ROLLOUT/TASK#SAMPLE``.
        state: ``pending``, ``running``, ``finished``, ``failed`` or ``cancelled``.
        reward: the verifier's reward.
        stop_reason: ``submit``, ``eos``, ``no_tool_call``, ``budget``, ``max_turns``,
            ``policy_error``, ``format_error``, ``deadline``, ``error`` or ``cancelled``.
        replayed_policy_calls / replayed_tool_calls: answered from the log on resume.
        timings: :class:`EpisodeTimings`.
        group_id: ``ROLLOUT/TASK``, the samples of one task.
        outcome_class: ``agent`` (the reward is the agent's) or ``infra`` (the platform failed;
            masked from training); outcome_reason: the stop reason, or the infra reason.
        train: fit to train on (False for infra outcomes).
        policy_version / policy_lag / stale: the last turn's policy version, the versions its
            turns span minus one, and whether that is over the rollout's max_policy_lag.
        (the other fields are counters and notes as named in proto/rollout.proto)
    """

    episode_id: str = ""
    task_id: str = ""
    sample: int = 0
    state: str = ""
    reward: float = 0.0
    stop_reason: str = ""
    turns: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    tool_calls: int = 0
    replayed_policy_calls: int = 0
    replayed_tool_calls: int = 0
    failure_reason: str = ""
    timings: EpisodeTimings = field(default_factory=EpisodeTimings)
    sandbox_id: str = ""
    rebuilt: bool = False
    rebuild_note: str = ""
    verifier_output: str = ""
    malformed_tool_calls: int = 0
    policy_retries: int = 0
    group_id: str = ""
    outcome_class: str = ""
    outcome_reason: str = ""
    train: bool = False
    infra_retries: int = 0
    retry_note: str = ""
    policy_lag: int = 0
    stale: bool = False
    policy_version: str = ""


@dataclass(frozen=True)
class RolloutProgress:
    """A rollout's counters (a :meth:`Rollout.watch` event every interval, and :meth:`Rollout.progress`).

    Attributes:
        rollout_id: its id.
        state: ``running``, ``finished``, ``cancelled`` or ``interrupted``.
        episodes_total / done / running / failed / pending / cancelled: episode counts.
        tool_calls_per_s / tokens_per_s: over the last interval.
        queued: episodes ready to start that wait for a slot of the daemon (it is full).
        (the other fields as named in proto/rollout.proto)
    """

    rollout_id: str = ""
    state: str = ""
    episodes_total: int = 0
    done: int = 0
    running: int = 0
    failed: int = 0
    pending: int = 0
    cancelled: int = 0
    tool_calls: int = 0
    policy_calls: int = 0
    generated_tokens: int = 0
    replayed_policy_calls: int = 0
    replayed_tool_calls: int = 0
    tool_calls_per_s: float = 0.0
    tokens_per_s: float = 0.0
    sandbox_start_ms_median: float = 0.0
    started_unix_ms: int = 0
    elapsed_ms: int = 0
    mean_reward: float = 0.0
    policy: str = ""
    source: str = ""
    concurrency: int = 0
    policy_in_flight: int = 0
    waiting_for_sandbox: int = 0
    groups_total: int = 0
    groups_done: int = 0
    infra: int = 0
    infra_retries: int = 0
    policy_version: str = ""
    policy_epoch: int = 0
    policy_paused: bool = False
    queued: int = 0

    @property
    def finished(self) -> bool:
        """True once the rollout no longer runs (finished, cancelled or interrupted)."""
        return self.state in ("finished", "cancelled", "interrupted")


@dataclass(frozen=True)
class EpisodeGroup:
    """The samples of one task, all ended (:meth:`Rollout.groups`).

    Attributes:
        group_id: ``ROLLOUT/TASK``.
        episodes: the samples' summaries, by sample.
        samples: their export records (docs/export.schema.json: ``token_ids``, ``loss_mask``,
            ``logprobs``, ``reward``, ``train``, ...); empty with ``summaries_only``.
        reward_mean / reward_std: over the samples with ``train`` true (population std).
        trainable: how many samples have ``train`` true.
        sequence: 1, 2, ... in this stream.
    """

    group_id: str
    rollout_id: str
    task_id: str
    episodes: list[EpisodeSummary]
    samples: list[dict[str, Any]]
    reward_mean: float
    reward_std: float
    trainable: int
    completed_unix_ms: int
    sequence: int


@dataclass(frozen=True)
class PolicyUpdate:
    """What :meth:`Rollout.update_policy` did; times in milliseconds."""

    rollout_id: str
    previous_version: str
    version: str
    epoch: int
    paused_ms: int
    drain_ms: int
    load_ms: int
    aborted: int


def group(g: Any) -> EpisodeGroup:
    return EpisodeGroup(group_id=g.group_id, rollout_id=g.rollout_id, task_id=g.task_id,
                        episodes=[from_msg(EpisodeSummary, e) for e in g.episodes],
                        samples=[json.loads(line) for line in g.samples_jsonl],
                        reward_mean=g.reward_mean, reward_std=g.reward_std, trainable=g.trainable,
                        completed_unix_ms=g.completed_unix_ms, sequence=g.sequence)


def policy_update(r: Any) -> PolicyUpdate:
    return PolicyUpdate(r.rollout_id, r.previous_version, r.version, r.epoch, r.paused_ms, r.drain_ms,
                        r.load_ms, r.aborted)


def update_policy_request(rollout_id: str, weights: Optional[str], version: Optional[str],
                          abort_in_flight: Optional[bool], timeout: float) -> Any:
    if not weights and not version:
        raise InvalidArgument("update_policy: give weights, a version, or both")
    req = _pb().UpdatePolicyRequest(rollout_id=rollout_id, weights_path=weights or "", version=version or "",
                                    timeout_ms=int(timeout * 1000))
    if abort_in_flight is not None:
        req.abort_in_flight = abort_in_flight
    return req


@dataclass(frozen=True)
class RolloutEpisode:
    """One episode of a rollout with its logged steps."""

    summary: EpisodeSummary
    steps: list[StepRecord]


@dataclass(frozen=True)
class ResumeResult:
    """What :meth:`Rollout.resume` did: episodes in all, already done, and to run now."""

    rollout_id: str
    episodes_total: int
    already_done: int
    to_run: int


def _pb() -> Any:
    m = _stubs.module("rollout_pb2")
    if m is None:
        raise Unimplemented("this SDK was built without proto/rollout.proto (the Rollouts service)")
    return m


def _grpc_mod() -> Any:
    _pb()
    return _stubs.module("rollout_pb2_grpc")


def tasks_jsonl(tasks: Union[str, os.PathLike, Sequence[Mapping[str, Any]]]) -> tuple[str, str]:
    """(JSON lines, source) from a path, JSONL text, or a list of task dicts."""
    if isinstance(tasks, os.PathLike) or (isinstance(tasks, str) and "\n" not in tasks
                                          and not tasks.lstrip().startswith("{")):
        path = os.fspath(tasks)
        try:
            with open(path, encoding="utf-8") as f:
                return f.read(), os.path.abspath(path)
        except OSError as e:
            raise InvalidArgument(f"tasks file {path}: {e.strerror}") from None
    if isinstance(tasks, str):
        return tasks, ""
    if isinstance(tasks, Sequence):
        lines = []
        for i, t in enumerate(tasks):
            if not isinstance(t, Mapping):
                raise InvalidArgument(f"tasks[{i}] is a {type(t).__name__}, not a dict")
            lines.append(json.dumps(t))
        return "\n".join(lines) + "\n", ""
    raise InvalidArgument(f"tasks must be a path, JSONL text or a list of dicts, not {type(tasks).__name__}")


def policy_pb(policy: Union[str, PolicySpec, Mapping[str, Any], None]) -> Any:
    pb = _pb()
    if policy is None:
        return None
    if isinstance(policy, str):
        policy = PolicySpec(url=policy)
    elif isinstance(policy, Mapping):
        try:
            policy = PolicySpec(**policy)
        except TypeError as e:
            raise InvalidArgument(f"policy: {e}") from None
    script = policy.script
    if not isinstance(script, str):
        script = json.dumps(list(script)) if script else ""
    msg = pb.PolicySpec(url=policy.url, kind=policy.kind, model=policy.model, api_key_env=policy.api_key_env,
                        max_in_flight=policy.max_in_flight, request_timeout_ms=policy.request_timeout_ms,
                        unavailable_wait_s=policy.unavailable_wait_s, script=script, tool_choice=policy.tool_choice)
    if policy.constrain_tools is not None:
        msg.constrain_tools = policy.constrain_tools
    return msg


def start_request(tasks: Any, policy: Any, concurrency: int, sampling: Sampling | Mapping[str, Any] | None,
                  samples_per_task: int, rollout_id: str | None, labels: Mapping[str, str] | None,
                  episode_deadline: float | None, thinking: bool, source: str | None, retry_infra: int = 0,
                  policy_version: str | None = None, max_policy_lag: int = 0,
                  abort_on_update: bool = False, weight: int = 0, priority: int = 0) -> Any:
    pb = _pb()
    text, src = tasks_jsonl(tasks)
    req = pb.StartRolloutRequest(tasks_jsonl=text, concurrency=concurrency, samples_per_task=samples_per_task,
                                 rollout_id=rollout_id or "", labels=dict(labels or {}),
                                 episode_deadline_s=int(episode_deadline or 0), thinking=thinking,
                                 source=source or src, retry_infra=retry_infra,
                                 policy_version=policy_version or "", max_policy_lag=max_policy_lag,
                                 abort_on_update=abort_on_update, weight=weight, priority=priority)
    p = policy_pb(policy)
    if p is not None:
        req.policy.CopyFrom(p)
    if sampling is not None:
        if isinstance(sampling, Mapping):
            try:
                sampling = Sampling(**sampling)
            except TypeError as e:
                raise InvalidArgument(f"sampling: {e}") from None
        s = req.sampling
        s.max_new_tokens = sampling.max_new_tokens
        if sampling.temperature is not None:
            s.temperature = sampling.temperature
        if sampling.top_p is not None:
            s.top_p = sampling.top_p
        if sampling.top_k is not None:
            s.top_k = sampling.top_k
        if sampling.seed is not None:
            s.seed = sampling.seed
    return req


def event(ev: Any) -> Union[RolloutProgress, EpisodeSummary, None]:
    kind = ev.WhichOneof("event")
    if kind == "progress":
        return from_msg(RolloutProgress, ev.progress)
    if kind == "episode":
        return from_msg(EpisodeSummary, ev.episode)
    return None


def episode_detail(p: Any) -> RolloutEpisode:
    return RolloutEpisode(summary=from_msg(EpisodeSummary, p.summary), steps=[cv.step_record(s) for s in p.steps])


class Rollouts:
    """The Rollouts service of one daemon; reached as ``client.rollouts``."""

    def __init__(self, client: "Client") -> None:
        self._client = client
        self._stub_obj: Any = None

    @property
    def _stub(self) -> Any:
        if self._stub_obj is None:
            self._stub_obj = _grpc_mod().RolloutsStub(self._client._channel)
        return self._stub_obj

    def start(self, tasks: Union[str, os.PathLike, Sequence[Mapping[str, Any]]],
              policy: Union[str, PolicySpec, Mapping[str, Any]], *, concurrency: int = 0,
              sampling: Sampling | Mapping[str, Any] | None = None, samples_per_task: int = 0,
              rollout_id: str | None = None, labels: Mapping[str, str] | None = None,
              episode_deadline: float | None = None, thinking: bool = False,
              source: str | None = None, retry_infra: int = 0, policy_version: str | None = None,
              max_policy_lag: int = 0, abort_on_update: bool = False, weight: int = 0,
              priority: int = 0) -> "Rollout":
        """Starts a rollout and returns its handle at once (episodes run in the daemon).

        Args:
            tasks: a path to a JSONL file (read here and sent), JSONL text, or a list of task dicts
                (docs/tasks.md).
            policy: a URL (``"http://127.0.0.1:30000"``, an SGLang server), a :class:`PolicySpec`
                or a dict of its fields.
            concurrency: episodes running at once (0: 64).
            sampling: :class:`Sampling` or a dict of its fields.
            samples_per_task: episodes per task (0: 1).
            rollout_id: the id to use (default generated, ``r-`` + 12 hex).
            labels: free-form labels.
            episode_deadline: wall-clock bound per episode in seconds (0/None: 3600).
            thinking: V4 thinking mode.
            source: where the tasks came from, for display (default: the path).
            retry_infra: run an episode that ended for an infra reason again from the log, up to
                this many times (docs/training.md).
            policy_version: the version the rollout starts under (default: the server's, else v0).
            max_policy_lag: mark samples whose turns span more versions than this stale (0: none).
            abort_on_update: on :meth:`Rollout.update_policy`, abort generations in flight and
                ask them again (default: they finish under the old weights).
            weight: its share of the daemon's episode slots among rollouts of equal priority,
                by sandbox-time, while the daemon is full (0: 1).
            priority: rollouts of a higher priority start their episodes first while the daemon
                is full (default 0; lower ones wait while higher ones have episodes to start).

        Raises:
            paddock.InvalidArgument: a bad task (the message names the line and field), a bad policy.
        """
        req = start_request(tasks, policy, concurrency, sampling, samples_per_task, rollout_id, labels,
                            episode_deadline, thinking, source, retry_infra, policy_version, max_policy_lag,
                            abort_on_update, weight, priority)
        resp = self._client._call(self._stub.StartRollout, req)
        return Rollout(self, resp.rollout_id, episodes=resp.episodes)

    def fork(self, episode_id: str, at_step: int, samples: int = 1, *, rollout_id: Optional[str] = None,
             concurrency: int = 0) -> "Rollout":
        """A new rollout of ``samples`` episodes sharing ``episode_id``'s first ``at_step`` turns (replayed
        from the log, the sandbox rebuilt as after them), each sampling on its own afterwards; the export
        ties each to its parent and turn (``fork``)."""
        req = _pb().ForkEpisodeRequest(episode_id=episode_id, at_step=at_step, samples=samples,
                                       rollout_id=rollout_id or "", concurrency=concurrency)
        resp = self._client._call(self._stub.ForkEpisode, req)
        return Rollout(self, resp.rollout_id, episodes=resp.episodes)

    def get(self, rollout_id: str) -> "Rollout":
        """A handle on an existing rollout (e.g. to resume it after a daemon restart)."""
        return Rollout(self, rollout_id)

    def list(self, limit: int = 0) -> list[RolloutProgress]:
        """Rollouts known to the log, newest first (at most ``limit``; 0: all)."""
        resp = self._client._call(self._stub.ListRollouts, _pb().ListRolloutsRequest(limit=limit))
        return [from_msg(RolloutProgress, r) for r in resp.rollouts]

    def get_episode(self, episode_id: str) -> RolloutEpisode:
        """One episode (``ROLLOUT/TASK#SAMPLE``): its summary and logged steps."""
        return episode_detail(self._client._call(self._stub.GetEpisode,
                                                 _pb().GetEpisodeRequest(episode_id=episode_id)))


class Rollout:
    """One rollout. Made by :meth:`Rollouts.start` or :meth:`Rollouts.get`.

    Attributes:
        id: the rollout id.
        episodes: episodes it started with (0 for a handle from :meth:`Rollouts.get`).
    """

    def __init__(self, rollouts: Rollouts, rollout_id: str, episodes: int = 0) -> None:
        self._r = rollouts
        self.id = rollout_id
        self.episodes = episodes

    def watch(self, interval: float = 1.0, include_finished: bool = False
              ) -> Iterator[Union[RolloutProgress, EpisodeSummary]]:
        """Events until the rollout is finished, cancelled or interrupted: a :class:`RolloutProgress`
        every ``interval`` seconds and an :class:`EpisodeSummary` for each episode as it finishes
        (with ``include_finished``, first those finished before the call)."""
        c = self._r._client
        req = _pb().WatchRequest(rollout_id=self.id, interval_ms=int(interval * 1000),
                                 include_finished=include_finished)
        call = self._r._stub.Watch(req, metadata=c._metadata)
        try:
            for ev in call:
                e = event(ev)
                if e is not None:
                    yield e
        except grpc.RpcError as err:
            raise c._error(err) from None
        finally:
            call.cancel()

    def wait(self, interval: float = 1.0) -> RolloutProgress:
        """Blocks until the rollout stops running; returns its final counters."""
        for _ in self.watch(interval=interval):
            pass
        return self.progress()

    def progress(self) -> RolloutProgress:
        """The rollout's counters now."""
        return from_msg(RolloutProgress, self._r._client._call(self._r._stub.GetRollout,
                                                               _pb().GetRolloutRequest(rollout_id=self.id)))

    def episode(self, episode_id: str) -> RolloutEpisode:
        """One of its episodes with its logged steps."""
        return self._r.get_episode(episode_id)

    def resume(self, policy: Union[str, PolicySpec, Mapping[str, Any], None] = None,
               concurrency: int = 0, weight: int = 0, priority: Optional[int] = None) -> ResumeResult:
        """Continues the rollout from its definition in the log: finished episodes are kept, the
        others fast-forward through their logged calls and go on live. ``policy`` overrides the
        stored one field by field (a new URL keeps the stored kind, model and tool constraint);
        ``concurrency`` and ``weight`` 0, ``priority`` None keep the stored ones."""
        req = _pb().ResumeRolloutRequest(rollout_id=self.id, concurrency=concurrency, weight=weight)
        if priority is not None:
            req.priority = priority
        p = policy_pb(policy)
        if p is not None:
            req.policy.CopyFrom(p)
        r = self._r._client._call(self._r._stub.ResumeRollout, req)
        return ResumeResult(r.rollout_id, r.episodes_total, r.already_done, r.to_run)

    def cancel(self, episode_id: str | None = None) -> int:
        """Cancels the rollout (or one episode of it); logged steps are kept. Returns how many
        episodes were cancelled."""
        req = _pb().CancelRolloutRequest(rollout_id=self.id, episode_id=episode_id or "")
        return self._r._client._call(self._r._stub.Cancel, req).cancelled

    def export(self, include_unfinished: bool = False) -> Iterator[bytes]:
        """One JSON line per episode (docs/export.schema.json), in chunks of whole lines."""
        c = self._r._client
        req = _pb().ExportRolloutRequest(rollout_id=self.id, format="jsonl", include_unfinished=include_unfinished)
        try:
            for chunk in c._stream(self._r._stub.Export, req):
                yield chunk.data
        except grpc.RpcError as err:
            raise c._error(err) from None

    def export_records(self, include_unfinished: bool = False) -> Iterator[dict[str, Any]]:
        """Like :meth:`export`, one parsed JSON object per episode."""
        for chunk in self.export(include_unfinished):
            for line in chunk.splitlines():
                if line.strip():
                    yield json.loads(line)

    def groups(self, consumer: Optional[str] = None, *, follow: bool = True,
               summaries_only: bool = False) -> Iterator[EpisodeGroup]:
        """Each group (the samples of one task) once all its samples have ended, in completion
        order; with ``follow`` until the rollout stops running. A named ``consumer`` gets only the
        groups it has not acknowledged with :meth:`ack`, so a restarted trainer resumes where it
        left off (docs/training.md)."""
        c = self._r._client
        req = _pb().StreamGroupsRequest(rollout_id=self.id, consumer=consumer or "", follow=follow,
                                        summaries_only=summaries_only)
        call = self._r._stub.StreamGroups(req, metadata=c._metadata)
        try:
            for g in call:
                yield group(g)
        except grpc.RpcError as err:
            raise c._error(err) from None
        finally:
            call.cancel()

    def ack(self, consumer: str, group_ids: Union[str, Sequence[str]]) -> int:
        """Records in the trajectory log that ``consumer`` took these groups; returns how many
        were newly acknowledged."""
        ids = [group_ids] if isinstance(group_ids, str) else list(group_ids)
        req = _pb().AckGroupsRequest(rollout_id=self.id, consumer=consumer, group_ids=ids)
        return self._r._client._call(self._r._stub.AckGroups, req).acknowledged

    def update_policy(self, weights: Optional[str] = None, version: Optional[str] = None, *,
                      abort_in_flight: Optional[bool] = None, timeout: float = 600.0) -> PolicyUpdate:
        """A new policy version: new generations pause, those in flight finish (or, with
        ``abort_in_flight``, are aborted and asked again), the inference server loads ``weights``
        (a path on its machine; SGLang's /update_weights_from_disk), generations resume under
        ``version`` (default ``v<epoch>``). With only ``version``, the weights were loaded by other
        means and only the label changes."""
        req = update_policy_request(self.id, weights, version, abort_in_flight, timeout)
        c = self._r._client
        try:
            return policy_update(self._r._stub.UpdatePolicy(req, metadata=c._metadata, timeout=timeout + 300))
        except grpc.RpcError as err:
            raise c._error(err) from None

    def __repr__(self) -> str:
        return f"paddock.Rollout({self.id!r})"
