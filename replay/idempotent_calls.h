// Idempotent calls at the sandbox API, on the trajectory log's write-ahead
// protocol (see "Trajectory log and preemption-safe replay" in ARCHITECTURE.md).
//
// A keyed call (an exec or a file write carrying an IdempotencyKey) runs
// through IdempotentCalls::Run, which promises:
// - a key whose result is logged is answered from the log, byte for byte, and
//   nothing runs (`replayed`);
// - a key reused with a different request (another fingerprint) is refused
//   with FAILED_PRECONDITION naming the key and the fields that differ;
// - a key with an intent but no result (the daemon died while it ran) is *in
//   doubt*: it runs again only when the caller marked it idempotent, otherwise
//   FAILED_PRECONDITION says so — never silently run twice;
// - otherwise: intent (durable) → run → result (durable) → answer. A run that
//   fails with an error leaves its intent without a result (in doubt): whether
//   the command had side effects is not known.
// Concurrent calls with the same key are serialized: the second waits for the
// first and is then answered from the log.
//
// The request's identity excludes the sandbox id and the key itself, so a
// harness that resumes an episode on a rebuilt sandbox gets its logged
// answers back.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "replay/trajectory_log.h"
#include "sandbox.pb.h"
#include "sandbox/base/status.h"

namespace paddock::replay {

// What a request is, for the log: a fingerprint (sha256 hex over the
// deterministic serialization of the canonical request, RequestFingerprint) and a summary of one
// "name=value" line per field, so a mismatch can name what differs.
struct RequestIdentity {
  std::string fingerprint;
  std::string summary;  // first line: the kind ("exec", "write", "binding")
};

RequestIdentity IdentifyExec(const v1::ExecRequest& req);
RequestIdentity IdentifyWrite(const v1::WriteFileRequest& req);
RequestIdentity IdentifySandboxSpec(const v1::SandboxSpec& spec);

// The kind named on a summary's first line ("exec", "write", "binding").
std::string SummaryKind(const std::string& summary);
// "argv (logged [\"echo\",\"a\"], now [\"echo\",\"b\"]); cwd (...)" — the
// fields in which two summaries differ; "the request" when none can be named.
std::string DescribeDifference(const std::string& logged, const std::string& now);

// Makes sure `episode` has a record in the log (so `paddock log ls` lists
// episodes driven only by keyed calls); remembers the ones it has seen.
class EpisodeRegistry {
 public:
  explicit EpisodeRegistry(TrajectoryLog& log) : log_(log) {}
  Status Ensure(const std::string& episode);

 private:
  TrajectoryLog& log_;
  std::mutex mu_;
  std::set<std::string> known_;
};

struct CallOutcome {
  std::string response;   // the serialized response, as logged
  bool replayed = false;  // answered from the log; nothing ran now
  bool reran_in_doubt = false;  // an in-doubt idempotent call ran again
};

class IdempotentCalls {
 public:
  explicit IdempotentCalls(TrajectoryLog& log) : log_(log), episodes_(log) {}

  // `precheck` runs when the call must run (no result logged), before the
  // intent is written: an error from it (say, the sandbox does not exist)
  // leaves no record. `run` returns the serialized response to log and return.
  // `request` (the serialized request) is kept with the intent for idempotent
  // calls, so a sandbox rebuilt from a snapshot can run them again.
  Result<CallOutcome> Run(const CallKey& key, bool idempotent, const RequestIdentity& identity,
                          const std::function<Status()>& precheck,
                          const std::function<Result<std::string>()>& run,
                          const std::string& request = {});

 private:
  TrajectoryLog& log_;
  EpisodeRegistry episodes_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::string> in_flight_;  // encoded keys
};

// Episode → sandbox bindings (`paddock sandbox create --episode EP`), kept in
// the episode's record in the log (EpisodeRecordProto.sandbox_id), so they
// survive the daemon. The spec's identity is kept in the record's labels
// "paddock.spec_sha256" and "paddock.spec" so a create with another spec is
// refused; a rebuild is noted in rebuild_note.
struct EpisodeBinding {
  std::string sandbox_id;
  bool reused = false;   // the bound sandbox was live and is returned
  bool rebuilt = false;  // an earlier bound sandbox is gone; this one replaces it
  std::string previous_sandbox_id;
  std::string rebuild_note;  // with rebuilt: how (also kept in the episode record)
};

// How a replacement sandbox was made, reported by Bind's `create` callback.
struct RebuildReport {
  std::string from_snapshot;  // the snapshot image it started from ("" = the spec's image)
  uint64_t snapshot_step = 0;
  std::vector<std::string> rerun;  // "EP:S:C" of the idempotent calls run again on it
};

// A sandbox is gone and the episode's record is what is left: the snapshot to
// start from (snapshot_id / snapshot_step) and the calls logged after it.
struct RebuildPlan {
  std::string snapshot_image;  // "" when the episode has no snapshot
  uint64_t snapshot_step = 0;
  // Calls after the snapshot to run again on the new sandbox, in key order:
  // each is idempotent and its request was kept.
  std::vector<std::pair<CallKey, CallRecord>> rerun;
};

// Builds the plan for `episode`, or FAILED_PRECONDITION naming the call that
// makes a rebuild impossible: a call after the snapshot that is not marked
// idempotent (in doubt, or completed: its effects cannot be restored without
// running it twice), or an idempotent one whose request was not kept.
Result<RebuildPlan> PlanRebuild(TrajectoryLog& log, const v1::EpisodeRecordProto& record);

class EpisodeBindings {
 public:
  explicit EpisodeBindings(TrajectoryLog& log) : log_(log) {}

  // Returns the episode's live bound sandbox (`is_live`), or `create`s one and
  // records the binding. A spec different from the bound one is refused
  // (FAILED_PRECONDITION naming what differs).
  // `create` gets the episode's record when an earlier sandbox is gone (null
  // for the first create) and fills `report` with how it rebuilt. A failed
  // rebuild marks the episode FAILED with the reason.
  Result<EpisodeBinding> Bind(const std::string& episode, const RequestIdentity& spec,
                              const std::function<bool(const std::string&)>& is_live,
                              const std::function<Result<std::string>(const v1::EpisodeRecordProto* previous,
                                                                      RebuildReport* report)>& create);
  // Records a snapshot of the episode's bound sandbox `sandbox_id`: image and
  // the last step whose calls it contains. FAILED_PRECONDITION when the
  // sandbox is not the episode's bound one.
  Status RecordSnapshot(const std::string& episode, const std::string& sandbox_id,
                        const std::string& image, uint64_t step);

 private:
  TrajectoryLog& log_;
  std::mutex mu_;  // one Bind at a time: bindings are rare and must not race
};


}  // namespace paddock::replay
