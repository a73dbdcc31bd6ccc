#include "replay/idempotent_calls.h"

#include <chrono>
#include <ctime>
#include <map>

#include <fmt/format.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

namespace paddock::replay {

namespace {

// A JSON-style quoted string: one line, whatever bytes it holds.
std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) out += fmt::format("\\u{:04x}", c);
        else out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

template <typename Range>
std::string QuoteList(const Range& items) {
  std::string out = "[";
  for (const auto& s : items) out += (out.size() > 1 ? "," : "") + Quote(s);
  return out + "]";
}

std::string QuoteMap(const google::protobuf::Map<std::string, std::string>& m) {
  std::map<std::string, std::string> sorted(m.begin(), m.end());
  std::string out = "{";
  for (const auto& [k, v] : sorted) out += (out.size() > 1 ? "," : "") + Quote(k) + ":" + Quote(v);
  return out + "}";
}

// Large payloads are summarized by size and digest prefix.
std::string Blob(std::string_view data) {
  return fmt::format("{} bytes sha256:{}", data.size(), RequestFingerprint(data).substr(0, 16));
}

std::string DeterministicBytes(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::io::StringOutputStream sos(&out);
  google::protobuf::io::CodedOutputStream cos(&sos);
  cos.SetSerializationDeterministic(true);
  m.SerializeToCodedStream(&cos);
  cos.Trim();
  return out;
}

RequestIdentity Identify(const google::protobuf::Message& canonical, std::string summary) {
  // The kind is hashed too: an exec and a write can never share a fingerprint.
  std::string kind = SummaryKind(summary);
  return {RequestFingerprint(kind + '\0' + DeterministicBytes(canonical)), std::move(summary)};
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string FormatUnixMs(int64_t ms) {
  time_t t = ms / 1000;
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:03d}Z", buf, static_cast<int>(ms % 1000));
}

// "name=value" lines after the first (the kind) line.
std::vector<std::pair<std::string, std::string>> Fields(const std::string& summary) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t pos = summary.find('\n');
  while (pos != std::string::npos) {
    size_t start = pos + 1;
    pos = summary.find('\n', start);
    std::string line = summary.substr(start, pos == std::string::npos ? std::string::npos : pos - start);
    size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    out.emplace_back(line.substr(0, eq), line.substr(eq + 1));
  }
  return out;
}

std::string Shorten(const std::string& s) {
  constexpr size_t kMax = 160;
  return s.size() <= kMax ? s : s.substr(0, kMax) + "…";
}

}  // namespace


std::string SummaryKind(const std::string& summary) { return summary.substr(0, summary.find('\n')); }

RequestIdentity IdentifyExec(const v1::ExecRequest& req) {
  v1::ExecRequest canonical = req;
  canonical.clear_sandbox_id();
  canonical.clear_idempotency_key();
  std::string summary = "exec";
  summary += "\nargv=" + QuoteList(req.argv());
  summary += "\nshell=" + Quote(req.shell());
  summary += "\nstdin=" + Blob(req.stdin());
  summary += "\nenv=" + QuoteMap(req.env());
  summary += "\ncwd=" + Quote(req.cwd());
  summary += fmt::format("\ntimeout_ms={}", req.timeout_ms());
  summary += fmt::format("\noutput_cap_bytes={}", req.output_cap_bytes());
  return Identify(canonical, std::move(summary));
}

RequestIdentity IdentifyWrite(const v1::WriteFileRequest& req) {
  v1::WriteFileRequest canonical = req;
  canonical.clear_sandbox_id();
  canonical.clear_idempotency_key();
  std::string summary = "write";
  summary += "\npath=" + Quote(req.path());
  summary += "\ncontent=" + Blob(req.content());
  summary += fmt::format("\nmode={:o}", req.mode());
  summary += fmt::format("\nmake_parents={}", req.make_parents());
  return Identify(canonical, std::move(summary));
}

RequestIdentity IdentifySandboxSpec(const v1::SandboxSpec& spec) {
  std::string summary = "binding";
  summary += "\nsubstrate=" + Quote(spec.substrate());
  summary += "\nimage=" + Quote(spec.image());
  summary += "\nlimits=" + Quote(spec.limits().ShortDebugString());
  summary += "\nenv=" + QuoteMap(spec.env());
  summary += "\nworkdir=" + Quote(spec.workdir());
  summary += fmt::format("\nnetwork={}", static_cast<int>(spec.network()));
  for (const auto& a : spec.network_allow()) summary += "\nallow=" + a;
  summary += fmt::format("\nttl_seconds={}", spec.ttl_seconds());
  summary += "\nlabels=" + QuoteMap(spec.labels());
  return Identify(spec, std::move(summary));
}

std::string DescribeDifference(const std::string& logged, const std::string& now) {
  if (SummaryKind(logged) != SummaryKind(now))
    return fmt::format("the kind of call (logged {}, now {})", SummaryKind(logged), SummaryKind(now));
  std::map<std::string, std::string> then;
  for (auto& [k, v] : Fields(logged)) then[k] = v;
  std::string out;
  for (const auto& [k, v] : Fields(now)) {
    auto it = then.find(k);
    std::string old = it == then.end() ? "(absent)" : it->second;
    if (old == v) continue;
    if (!out.empty()) out += "; ";
    out += fmt::format("{} (logged {}, now {})", k, Shorten(old), Shorten(v));
  }
  return out.empty() ? "the request" : out;
}

Result<CallOutcome> IdempotentCalls::Run(const CallKey& key, bool idempotent,
                                         const RequestIdentity& identity,
                                         const std::function<Status()>& precheck,
                                         const std::function<Result<std::string>()>& run,
                          const std::string& request) {
  PADDOCK_RETURN_IF_ERROR(key.Validate().Prefix("idempotency key"));
  // One call per key at a time in this daemon; a second one waits, then
  // finds the first one's result.
  const std::string encoded = key.Encode();
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return !in_flight_.contains(encoded); });
  in_flight_.insert(encoded);
  lock.unlock();
  struct Release {
    IdempotentCalls* self;
    const std::string& k;
    ~Release() {
      std::lock_guard g(self->mu_);
      self->in_flight_.erase(k);
      self->cv_.notify_all();
    }
  } release{this, encoded};

  auto record = log_.GetCall(key);
  if (!record.ok()) return record.status().Prefix(fmt::format("reading call {} from the log", key.ToString()));
  bool in_doubt = false;
  if (record->has_value()) {
    const CallRecord& r = **record;
    if (r.request_fingerprint != identity.fingerprint)
      return Error(Code::kFailedPrecondition,
                   "idempotency key {} was already used for a different request; differs in: {}. "
                   "Use a new key (e.g. the next call index) for a new request",
                   key.ToString(), DescribeDifference(r.request_summary, identity.summary));
    if (r.has_result) return CallOutcome{r.result, /*replayed=*/true, false};
    if (!idempotent)
      return Error(Code::kFailedPrecondition,
                   "call {} is in doubt: it started (intent logged at {}) but its result was not "
                   "recorded; pass idempotent=true (`--idempotent`) if it is safe to run again. "
                   "It is never run twice otherwise: rebuilding the episode's sandbox from a "
                   "snapshot in the image store taken before it is refused for the same reason",
                   key.ToString(), FormatUnixMs(r.intent_unix_ms));
    in_doubt = true;
  }
  if (precheck) PADDOCK_RETURN_IF_ERROR(precheck());
  PADDOCK_RETURN_IF_ERROR(episodes_.Ensure(key.episode).Prefix(
      fmt::format("recording episode {} in the log", key.episode)));
  if (!in_doubt)
    PADDOCK_RETURN_IF_ERROR(log_.PutIntent(key, identity.fingerprint, identity.summary, idempotent,
                                           idempotent ? request : std::string())
                                .Prefix(fmt::format("logging the intent of call {}", key.ToString())));
  auto response = run();
  if (!response.ok()) return response.status();
  PADDOCK_RETURN_IF_ERROR(log_.PutResult(key, *response)
                              .Prefix(fmt::format("logging the result of call {} (it ran; a retry "
                                                  "will find it in doubt)",
                                                  key.ToString())));
  return CallOutcome{std::move(response).value(), false, in_doubt};
}

Status EpisodeRegistry::Ensure(const std::string& episode) {
  {
    std::lock_guard lock(mu_);
    if (known_.contains(episode)) return Status::Ok();
  }
  auto rec = log_.GetEpisode(episode);
  if (!rec.ok()) return rec.status();
  if (!rec->has_value()) {
    v1::EpisodeRecordProto e;
    e.set_episode_id(episode);
    e.set_state(v1::EpisodeRecordProto::RUNNING);
    PADDOCK_RETURN_IF_ERROR(log_.PutEpisode(e));
  }
  std::lock_guard lock(mu_);
  known_.insert(episode);
  return Status::Ok();
}

Result<EpisodeBinding> EpisodeBindings::Bind(const std::string& episode, const RequestIdentity& spec,
                                             const std::function<bool(const std::string&)>& is_live,
                                             const std::function<Result<std::string>(const v1::EpisodeRecordProto*,
                                                                      RebuildReport*)>& create) {
  PADDOCK_RETURN_IF_ERROR((CallKey{episode, 0, 0}.Validate()));
  std::lock_guard lock(mu_);
  auto existing = log_.GetEpisode(episode);
  if (!existing.ok())
    return existing.status().Prefix(fmt::format("reading the record of episode {}", episode));
  v1::EpisodeRecordProto rec;
  EpisodeBinding out;
  if (existing->has_value()) {
    rec = **existing;
    auto fp = rec.labels().find("paddock.spec_sha256");
    if (fp != rec.labels().end() && fp->second != spec.fingerprint) {
      auto summary = rec.labels().find("paddock.spec");
      return Error(Code::kFailedPrecondition,
                   "episode {} is bound to a sandbox created from a different spec; differs in: "
                   "{}. Use a new episode id",
                   episode,
                   DescribeDifference(summary == rec.labels().end() ? "binding" : summary->second,
                                      spec.summary));
    }
    if (!rec.sandbox_id().empty()) {
      if (is_live(rec.sandbox_id())) {
        out.sandbox_id = rec.sandbox_id();
        out.reused = true;
        return out;
      }
      out.rebuilt = true;
      out.previous_sandbox_id = rec.sandbox_id();
    }
  } else {
    rec.set_episode_id(episode);
    rec.set_state(v1::EpisodeRecordProto::RUNNING);
  }
  RebuildReport report;
  v1::EpisodeRecordProto previous = rec;
  auto id = create(out.rebuilt ? &previous : nullptr, &report);
  if (!id.ok()) {
    if (out.rebuilt && id.status().code() == Code::kFailedPrecondition) {
      // The episode cannot go on: say why in its record.
      rec.set_state(v1::EpisodeRecordProto::FAILED);
      rec.set_failure_reason(fmt::format("rebuilding its sandbox (sandbox {} was gone) failed: {}",
                                         out.previous_sandbox_id, id.status().message()));
      rec.set_updated_unix_ms(NowUnixMs());
      Status ignored = log_.PutEpisode(rec);
      (void)ignored;
    }
    return id.status();
  }
  rec.set_sandbox_id(*id);
  (*rec.mutable_labels())["paddock.spec_sha256"] = spec.fingerprint;
  (*rec.mutable_labels())["paddock.spec"] = spec.summary;
  if (out.rebuilt) {
    std::string how = report.from_snapshot.empty()
                          ? std::string("from the image (the episode has no snapshot)")
                          : fmt::format("from snapshot {} (step {})", report.from_snapshot,
                                        report.snapshot_step);
    std::string rerun;
    for (const auto& k : report.rerun) rerun += (rerun.empty() ? "" : ", ") + k;
    rec.set_rebuild_note(fmt::format(
        "sandbox {} was gone (the daemon restarted, or it was destroyed); rebuilt as {} {} at {}; "
        "{} idempotent call(s) after it run again{}{}",
        out.previous_sandbox_id, *id, how, FormatUnixMs(NowUnixMs()), report.rerun.size(),
        rerun.empty() ? "" : ": ", rerun));
    out.rebuild_note = rec.rebuild_note();
  }
  rec.set_updated_unix_ms(NowUnixMs());
  PADDOCK_RETURN_IF_ERROR(log_.PutEpisode(rec).Prefix(
      fmt::format("recording the binding of episode {} to sandbox {}", episode, *id)));
  out.sandbox_id = *id;
  return out;
}

Status EpisodeBindings::RecordSnapshot(const std::string& episode, const std::string& sandbox_id,
                                       const std::string& image, uint64_t step) {
  std::lock_guard lock(mu_);
  auto existing = log_.GetEpisode(episode);
  if (!existing.ok()) return existing.status();
  if (!existing->has_value() || (*existing)->sandbox_id() != sandbox_id)
    return Error(Code::kFailedPrecondition, "sandbox {} is not the bound sandbox of episode {}",
                 sandbox_id, episode);
  v1::EpisodeRecordProto rec = **existing;
  rec.set_snapshot_id(image);
  rec.set_snapshot_step(step);
  rec.set_updated_unix_ms(NowUnixMs());
  return log_.PutEpisode(rec).Prefix(fmt::format("recording the snapshot of episode {}", episode));
}

Result<RebuildPlan> PlanRebuild(TrajectoryLog& log, const v1::EpisodeRecordProto& record) {
  RebuildPlan plan;
  plan.snapshot_image = record.snapshot_id();
  plan.snapshot_step = record.snapshot_step();
  // Without a snapshot the new sandbox starts from the image and the logged
  // calls are answered from the log, as before snapshots existed.
  if (plan.snapshot_image.empty()) return plan;
  PADDOCK_ASSIGN_OR_RETURN(auto calls, log.ListCalls(record.episode_id()));
  for (auto& [key, call] : calls) {
    if (key.step <= plan.snapshot_step) continue;
    std::string kind = SummaryKind(call.request_summary);
    if (kind != "exec" && kind != "write") continue;  // not a sandbox call
    if (!call.idempotent) {
      if (!call.has_result)
        return Error(Code::kFailedPrecondition,
                     "call {} ({}) started after the episode's latest snapshot (step {}) and is in "
                     "doubt: its result was not recorded and it is not marked idempotent, so it "
                     "cannot be run again on a rebuilt sandbox",
                     key.ToString(), kind, plan.snapshot_step);
      return Error(Code::kFailedPrecondition,
                   "call {} ({}) ran after the episode's latest snapshot (step {}) and is not marked "
                   "idempotent: its effects cannot be restored without running it twice. Snapshot "
                   "after non-idempotent calls, or mark such calls idempotent",
                   key.ToString(), kind, plan.snapshot_step);
    }
    if (call.request.empty())
      return Error(Code::kFailedPrecondition,
                   "call {} is idempotent but its request was not kept in the log (logged by an "
                   "older paddockd), so it cannot be run again",
                   key.ToString());
    plan.rerun.emplace_back(std::move(key), std::move(call));
  }
  return plan;
}

}  // namespace paddock::replay
