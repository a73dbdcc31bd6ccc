#include "rollout/engine/rollout_engine.h"

#include <elf.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <spdlog/spdlog.h>

#include "policy/backends/openai_completions_backend.h"
#include "policy/backends/sglang_backend.h"
#include "policy/v4/context/observation_cut.h"
#include "policy/v4/decode/decoder.h"
#include "rollout/engine/engine_internal.h"
#include "rollout/engine/scripted_policy.h"
#include "rollout/engine/tools.h"
#include "rollout/engine/verifier_verdict.h"

namespace paddock::rollout {

namespace asio = boost::asio;
using ojson = nlohmann::ordered_json;
using json = nlohmann::json;

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string SummaryJson(const v1::EpisodeSummary& s) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(s, &out, o);
  return out;
}

bool ParseSummaryJson(const std::string& text, v1::EpisodeSummary* s) {
  return google::protobuf::util::JsonStringToMessage(text, s).ok();
}

namespace {

constexpr const char* kRolloutPrefix = "rollout/";
// Labels of a fork's definition (ForkEpisode).
constexpr const char* kForkOfLabel = "paddock.fork_of";
constexpr const char* kForkStepLabel = "paddock.fork_step";
constexpr const char* kForkSeedLabel = "paddock.fork_seed_index";

int64_t Us(Clock::duration d) { return std::chrono::duration_cast<std::chrono::microseconds>(d).count(); }

bool ValidRolloutId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

std::string NewRolloutId() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("r-{:012x}", rng() & 0xffffffffffffull);
}

std::string DefinitionJson(const v1::StartRolloutRequest& req, const std::string& id) {
  v1::RolloutDefinitionProto def;
  def.set_format_version(1);
  def.set_rollout_id(id);
  *def.mutable_request() = req;
  def.set_created_unix_ms(NowUnixMs());
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(def, &out);
  return out;
}

// The policy a resumed rollout runs with: the stored one, with each field
// the ResumeRolloutRequest sets replacing the stored value. A new URL alone
// keeps the kind, model, limits and the tool constraint; constrain_tools is
// optional in the proto so that false can turn the constraint off. A URL
// without a kind over a scripted policy means an sglang server.
v1::PolicySpec ResumePolicy(const v1::PolicySpec& stored, const v1::PolicySpec& in) {
  v1::PolicySpec p = stored;
  if (!in.url().empty()) p.set_url(in.url());
  if (!in.kind().empty()) p.set_kind(in.kind());
  else if (!in.url().empty() && stored.kind() == "scripted") p.clear_kind();
  if (p.kind() != "scripted") p.clear_script();
  if (!in.script().empty()) p.set_script(in.script());
  if (!in.model().empty()) p.set_model(in.model());
  if (!in.api_key_env().empty()) p.set_api_key_env(in.api_key_env());
  if (in.max_in_flight()) p.set_max_in_flight(in.max_in_flight());
  if (in.request_timeout_ms()) p.set_request_timeout_ms(in.request_timeout_ms());
  if (in.unavailable_wait_s()) p.set_unavailable_wait_s(in.unavailable_wait_s());
  if (in.has_constrain_tools()) p.set_constrain_tools(in.constrain_tools());
  if (!in.tool_choice().empty()) p.set_tool_choice(in.tool_choice());
  return p;
}

// Why a sandbox could not be had: the image's pull on first use failed
// (storage/registry/on_demand_pull says so in its message), or anything else.
InfraReason CreateFailureReason(const Status& st) {
  return st.message().find("pulling it failed") != std::string::npos ? InfraReason::kImagePull
                                                                     : InfraReason::kSandboxCreate;
}

// The SandboxManager's cap on live sandboxes (sandbox/manager.cc) was reached,
// by sandboxes the engine does not run (the API's, another front's): the
// episode waits for room, as it waits for a node, instead of failing.
bool DaemonFull(const Status& st) {
  return st.code() == Code::kResourceExhausted && st.message().find("sandbox cap reached") != std::string::npos;
}

// Defaults of the request's fields, in one place.
uint32_t SamplesPerTask(const v1::StartRolloutRequest& req) { return req.samples_per_task() ? req.samples_per_task() : 1; }
std::chrono::milliseconds PolicyRequestTimeout(const v1::PolicySpec& p) {
  return std::chrono::milliseconds(p.request_timeout_ms() ? p.request_timeout_ms() : 120000);
}

bool Transient(Code c) {
  return c == Code::kUnavailable || c == Code::kResourceExhausted || c == Code::kDeadlineExceeded;
}

std::string PolicyFingerprint(const policy::GenerateRequest& r) {
  std::string canon = "policy\n";
  canon += fmt::format("max_new_tokens={}\n", r.sampling.max_new_tokens);
  if (r.sampling.temperature) canon += fmt::format("temperature={}\n", *r.sampling.temperature);
  if (r.sampling.top_p) canon += fmt::format("top_p={}\n", *r.sampling.top_p);
  if (r.sampling.top_k) canon += fmt::format("top_k={}\n", *r.sampling.top_k);
  if (r.sampling.seed) canon += fmt::format("seed={}\n", *r.sampling.seed);
  canon.append(reinterpret_cast<const char*>(r.input_ids.data()), r.input_ids.size() * sizeof(int32_t));
  return replay::RequestFingerprint(canon);
}

// The exec of the task's setup command `i`: part of building a sandbox, run
// on every build (first, rebuild or move), never keyed.
ExecRequest SetupRequest(const Task& task, size_t i) {
  ExecRequest req;
  req.argv = {"/bin/sh", "-c", task.setup[i]};
  req.cwd = task.workdir;
  req.env = task.env;
  req.timeout_ms = task.exec_timeout_s * 1000;
  req.output_cap = task.output_cap_bytes;
  return req;
}

}  // namespace

// A 64-bit ELF executable without a PT_INTERP program header: it loads no
// dynamic loader, and so nothing of the sandbox it runs in.
bool IsStaticElf64(const std::string& b) {
  Elf64_Ehdr eh;
  if (b.size() < sizeof eh) return false;
  std::memcpy(&eh, b.data(), sizeof eh);
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64 ||
      eh.e_ident[EI_DATA] != ELFDATA2LSB)
    return false;
  if (eh.e_phentsize < sizeof(Elf64_Phdr) || eh.e_phnum == 0) return false;
  for (uint16_t i = 0; i < eh.e_phnum; ++i) {
    uint64_t at = eh.e_phoff + uint64_t{i} * eh.e_phentsize + offsetof(Elf64_Phdr, p_type);
    Elf64_Word type;
    if (at + sizeof type > b.size()) return false;
    std::memcpy(&type, b.data() + at, sizeof type);
    if (type == PT_INTERP) return false;
  }
  return true;
}

class RolloutEngine::Impl {
 public:
  Impl(SandboxManager& manager, replay::TrajectoryLog& log, EngineOptions options)
      : manager_(manager), log_(log), options_(std::move(options)),
        scheduler_(options_.max_running_episodes ? options_.max_running_episodes : manager.max_sandboxes()),
        pool_(options_.blocking_threads), reloc_pool_(std::max<size_t>(1, options_.relocation_threads)),
        work_(asio::make_work_guard(io_)) {
    io_thread_ = std::thread([this] { io_.run(); });
  }
  ~Impl() {
    Drain(std::chrono::milliseconds(0));
    log_writes_.WaitIdle();  // their turns are posted before the pool is joined
    work_.reset();
    io_.stop();
    if (io_thread_.joinable()) io_thread_.join();
    reloc_pool_.join();
    pool_.join();
    // No gone report may reach an engine that is going away; sandboxes built
    // for episodes that never took them are destroyed.
    std::lock_guard lock(mu_);
    for (auto& [_, r] : rollouts_)
      for (auto& ep : r->episodes) {
        if (ep->sandbox) ep->sandbox->WatchGone(nullptr);
        if (ep->rebuilt) (void)manager_.Destroy(ep->rebuilt->id());
      }
  }

  // ---- public operations ------------------------------------------------
  Result<v1::StartRolloutResponse> Start(v1::StartRolloutRequest req, bool local_client) {
    if (draining_) return Error(Code::kUnavailable, "the daemon is shutting down; start the rollout again later");
    if (req.rollout_id().empty()) req.set_rollout_id(NewRolloutId());
    if (!ValidRolloutId(req.rollout_id()))
      return Error(Code::kInvalidArgument, "rollout id '{}' must be 1-64 characters of A-Z a-z 0-9 . _ -",
                   req.rollout_id());
    auto ro = Build(req);
    if (!ro.ok()) return ro.status();
    {
      auto existing = log_.GetEpisode(kRolloutPrefix + req.rollout_id());
      if (!existing.ok()) return existing.status();
      if (existing->has_value())
        return Error(Code::kAlreadyExists, "rollout '{}' exists already; `paddock resume {}` continues it",
                     req.rollout_id(), req.rollout_id());
    }
    std::shared_ptr<Rollout> r = std::move(*ro);
    PADDOCK_RETURN_IF_ERROR(RecordNewRollout(*r).Prefix("storing the rollout's definition"));
    r->local_client = local_client;
    v1::StartRolloutResponse resp;
    resp.set_rollout_id(r->id);
    resp.set_episodes(static_cast<uint32_t>(r->episodes.size()));
    Launch(std::move(r), {});
    return resp;
  }

  Result<v1::ResumeRolloutResponse> Resume(const v1::ResumeRolloutRequest& in, bool local_client) {
    if (draining_) return Error(Code::kUnavailable, "the daemon is shutting down");
    {
      std::lock_guard lock(mu_);
      auto it = rollouts_.find(in.rollout_id());
      if (it != rollouts_.end()) {
        std::lock_guard rl(it->second->mu);
        if (it->second->active > 0 || !it->second->pending.empty())
          return Error(Code::kFailedPrecondition, "rollout '{}' is running; cancel it first or watch it",
                       in.rollout_id());
      }
    }
    auto rec = log_.GetEpisode(kRolloutPrefix + in.rollout_id());
    if (!rec.ok()) return rec.status();
    if (!rec->has_value())
      return Error(Code::kNotFound, "rollout '{}' is not in the trajectory log; `paddock log ls --prefix rollout/` lists rollouts",
                   in.rollout_id());
    v1::RolloutDefinitionProto def;
    if (!google::protobuf::util::JsonStringToMessage((*rec)->task(), &def).ok())
      return Error(Code::kDataLoss, "the stored definition of rollout '{}' does not parse", in.rollout_id());
    v1::StartRolloutRequest req = def.request();
    if (in.has_policy()) *req.mutable_policy() = ResumePolicy(req.policy(), in.policy());
    if (in.concurrency()) req.set_concurrency(in.concurrency());
    if (in.weight()) req.set_weight(in.weight());
    if (in.has_priority()) req.set_priority(in.priority());
    auto ro = Build(req);
    if (!ro.ok()) return ro.status();
    std::shared_ptr<Rollout> r = std::move(*ro);
    r->local_client = local_client;
    r->resumed_at = Clock::now();
    {
      const auto& labels = (*rec)->labels();
      auto v = labels.find("paddock.policy_version");
      auto e = labels.find("paddock.policy_epoch");
      r->policy_version = v != labels.end() ? v->second : InitialPolicyVersion(req, *r->backend);
      if (e != labels.end()) r->policy_epoch = std::strtoull(e->second.c_str(), nullptr, 10);
    }
    r->resume_pending_live = true;
    // Which episodes finished already?
    auto eps = log_.ListEpisodes({.prefix = r->id + "/"});
    if (!eps.ok()) return eps.status();
    std::map<std::string, v1::EpisodeRecordProto> by_id;
    for (auto& e : *eps) by_id[e.episode_id()] = e;
    std::vector<size_t> done_idx;
    for (auto& ep : r->episodes) {
      auto it = by_id.find(ep->id);
      if (it != by_id.end() && it->second.state() == v1::EpisodeRecordProto::FINISHED) {
        auto lit = it->second.labels().find("paddock.summary");
        if (lit != it->second.labels().end()) ParseSummaryJson(lit->second, &ep->summary);
        done_idx.push_back(ep->index);
      }
    }
    v1::ResumeRolloutResponse resp;
    resp.set_rollout_id(r->id);
    resp.set_episodes_total(static_cast<uint32_t>(r->episodes.size()));
    resp.set_already_done(static_cast<uint32_t>(done_idx.size()));
    resp.set_to_run(static_cast<uint32_t>(r->episodes.size() - done_idx.size()));
    v1::EpisodeRecordProto updated = **rec;
    // A later resume starts from what this one runs with.
    if (in.has_policy() || in.concurrency() || in.weight() || in.has_priority()) {
      *def.mutable_request() = req;
      std::string def_json;
      if (google::protobuf::util::MessageToJsonString(def, &def_json).ok()) updated.set_task(def_json);
      updated.set_model(req.policy().kind() + " " + req.policy().url());
    }
    (*updated.mutable_labels())["paddock.state"] = "running";
    updated.set_state(v1::EpisodeRecordProto::RUNNING);
    PADDOCK_RETURN_IF_ERROR(log_.PutEpisode(updated));
    Launch(std::move(r), done_idx);
    return resp;
  }

  Result<uint32_t> Cancel(const std::string& rid, const std::string& episode_id) {
    auto r = Find(rid);
    if (!r) return Error(Code::kNotFound, "rollout '{}' is not running in this daemon", rid);
    uint32_t n = 0;
    std::vector<std::shared_ptr<policy::CancelToken>> tokens;
    {
      std::lock_guard lock(r->mu);
      if (episode_id.empty()) {
        r->stopping = true;
        r->cancelled = true;
        n = static_cast<uint32_t>(r->pending.size() + r->active);
        for (size_t i : r->pending) {
          r->episodes[i]->summary.set_state("cancelled");
          r->cancelled_count++;
        }
        r->pending.clear();
        scheduler_.SetPending(r->flow, 0);
        for (auto& ep : r->episodes)
          if (ep->cancel) tokens.push_back(ep->cancel);
      } else {
        bool found = false;
        for (auto& ep : r->episodes) {
          if (ep->id != episode_id) continue;
          found = true;
          auto pit = std::find(r->pending.begin(), r->pending.end(), ep->index);
          if (pit != r->pending.end()) {
            r->pending.erase(pit);
            scheduler_.SetPending(r->flow, r->pending.size());
            ep->summary.set_state("cancelled");
            r->cancelled_count++;
            n = 1;
          } else if (ep->summary.state() == "running") {
            ep->summary.set_state("cancelling");
            if (ep->cancel) tokens.push_back(ep->cancel);
            n = 1;
          }
        }
        if (!found) return Error(Code::kNotFound, "episode '{}' is not part of rollout '{}'", episode_id, rid);
      }
      r->generation++;
    }
    for (auto& t : tokens) t->Cancel();
    MaybeFinishRollout(r);
    return n;
  }

  Result<v1::RolloutProgress> Progress(const std::string& rid) {
    if (auto r = Find(rid)) return Snapshot(*r);
    auto rec = log_.GetEpisode(kRolloutPrefix + rid);
    if (!rec.ok()) return rec.status();
    if (!rec->has_value()) return Error(Code::kNotFound, "rollout '{}' is not in the trajectory log", rid);
    return FromLog(**rec);
  }

  Result<std::vector<v1::RolloutProgress>> List(size_t limit) {
    auto recs = log_.ListEpisodes({.prefix = kRolloutPrefix});
    if (!recs.ok()) return recs.status();
    std::sort(recs->begin(), recs->end(),
              [](auto& a, auto& b) { return a.created_unix_ms() > b.created_unix_ms(); });
    std::vector<v1::RolloutProgress> out;
    for (auto& rec : *recs) {
      if (limit && out.size() >= limit) break;
      std::string rid = rec.episode_id().substr(std::string(kRolloutPrefix).size());
      if (auto r = Find(rid))
        out.push_back(Snapshot(*r));
      else if (auto p = FromLog(rec); p.ok())
        out.push_back(*p);
    }
    return out;
  }

  Result<v1::EpisodeDetail> GetEpisode(const std::string& episode_id) {
    v1::EpisodeDetail d;
    bool found = false;
    size_t slash = episode_id.find('/');
    if (slash != std::string::npos) {
      if (auto r = Find(episode_id.substr(0, slash))) {
        std::lock_guard lock(r->mu);
        for (auto& ep : r->episodes)
          if (ep->id == episode_id) {
            *d.mutable_summary() = ep->summary;
            found = true;
          }
      }
    }
    auto rec = log_.GetEpisode(episode_id);
    if (!rec.ok()) return rec.status();
    if (!found && rec->has_value()) {
      auto it = (*rec)->labels().find("paddock.summary");
      if (it != (*rec)->labels().end()) ParseSummaryJson(it->second, d.mutable_summary());
      d.mutable_summary()->set_episode_id(episode_id);
      found = true;
    }
    auto steps = log_.ReadSteps(episode_id);
    if (!steps.ok()) return steps.status();
    if (!found && steps->empty()) return Error(Code::kNotFound, "episode '{}' is not in the trajectory log", episode_id);
    for (auto& s : *steps) *d.add_steps() = std::move(s);
    return d;
  }

  Status Watch(const v1::WatchRequest& req, const std::function<bool(const v1::RolloutEvent&)>& send,
               const std::function<bool()>& stop) {
    auto r = Find(req.rollout_id());
    if (!r) {
      auto p = Progress(req.rollout_id());
      if (!p.ok()) return p.status();
      v1::RolloutEvent ev;
      *ev.mutable_progress() = *p;
      send(ev);
      return Status::Ok();
    }
    auto interval = std::chrono::milliseconds(req.interval_ms() ? req.interval_ms() : 1000);
    size_t sent = 0;
    {
      std::lock_guard lock(r->mu);
      if (!req.include_finished()) sent = r->finished.size();
    }
    auto next_progress = Clock::now();
    while (true) {
      std::vector<v1::EpisodeSummary> fresh;
      bool running;
      {
        std::unique_lock lock(r->mu);
        r->cv.wait_until(lock, std::min(next_progress, Clock::now() + std::chrono::milliseconds(200)), [&] {
          return r->finished.size() > sent || r->state != "running";
        });
        for (; sent < r->finished.size(); ++sent) fresh.push_back(r->finished[sent]);
        running = r->state == "running";
      }
      for (auto& s : fresh) {
        v1::RolloutEvent ev;
        *ev.mutable_episode() = s;
        if (!send(ev)) return Status::Ok();
      }
      if (!running || Clock::now() >= next_progress) {
        v1::RolloutEvent ev;
        *ev.mutable_progress() = Snapshot(*r);
        if (!send(ev)) return Status::Ok();
        next_progress = Clock::now() + interval;
      }
      if (!running || stop()) return Status::Ok();
    }
  }

  Status Export(const std::string& rid, bool include_unfinished, const std::function<bool(const std::string&)>& sink) {
    auto rec = log_.GetEpisode(kRolloutPrefix + rid);
    if (!rec.ok()) return rec.status();
    if (!rec->has_value()) return Error(Code::kNotFound, "rollout '{}' is not in the trajectory log", rid);
    v1::RolloutDefinitionProto def;
    if (!google::protobuf::util::JsonStringToMessage((*rec)->task(), &def).ok())
      return Error(Code::kDataLoss, "the stored definition of rollout '{}' does not parse", rid);
    auto tasks = ParseTasksJsonl(def.request().tasks_jsonl());
    if (!tasks.ok()) return tasks.status();
    std::map<std::string, const Task*> by_id;
    for (auto& t : *tasks) by_id[t.id] = &t;
    auto tok = Tokenizer();
    auto eps = log_.ListEpisodes({.prefix = rid + "/"});
    if (!eps.ok()) return eps.status();
    for (auto& e : *eps) {
      v1::EpisodeSummary s;
      auto it = e.labels().find("paddock.summary");
      if (it != e.labels().end()) ParseSummaryJson(it->second, &s);
      s.set_episode_id(e.episode_id());
      bool finished = e.state() == v1::EpisodeRecordProto::FINISHED || e.state() == v1::EpisodeRecordProto::FAILED;
      if (!finished && !include_unfinished) continue;
      if (!finished) s.set_state("running");
      auto tl = e.labels().find("paddock.task");
      const Task* task = tl == e.labels().end() || !by_id.count(tl->second) ? nullptr : by_id[tl->second];
      auto line = ExportEpisodeLine(log_, tok.ok() ? tok->get() : nullptr, def.request(), task, s);
      if (!line.ok()) return line.status();
      if (!sink(*line)) return Status::Ok();
    }
    return Status::Ok();
  }

  Status StreamGroups(const v1::StreamGroupsRequest& req, const std::function<bool(const v1::EpisodeGroup&)>& send,
                      const std::function<bool()>& stop) {
    const std::string& rid = req.rollout_id();
    std::set<std::string> acked;
    if (!req.consumer().empty()) {
      PADDOCK_RETURN_IF_ERROR(ValidConsumer(req.consumer()));
      PADDOCK_ASSIGN_OR_RETURN(acked, LoadAcks(log_, rid, req.consumer()));
    }
    auto tok = Tokenizer();
    const v4::Tokenizer* tokenizer = tok.ok() ? tok->get() : nullptr;
    uint64_t sequence = 0;
    // Fills in the samples' export lines and the stream's sequence, then sends.
    auto deliver = [&](v1::EpisodeGroup& g, const v1::StartRolloutRequest& def, const Task* task) -> Result<bool> {
      g.set_sequence(++sequence);
      if (!req.summaries_only())
        for (const auto& s : g.episodes()) {
          PADDOCK_ASSIGN_OR_RETURN(auto line, ExportEpisodeLine(log_, tokenizer, def, task, s));
          if (!line.empty() && line.back() == '\n') line.pop_back();
          g.add_samples_jsonl(std::move(line));
        }
      return send(g);
    };

    auto r = Find(rid);
    if (!r) {
      // Not running here: the groups the log holds complete.
      PADDOCK_ASSIGN_OR_RETURN(auto def, LoadDefinition(rid));
      PADDOCK_ASSIGN_OR_RETURN(auto groups, CompleteGroupsFromLog(rid, def.first, def.second));
      for (auto& [g, task] : groups) {
        if (acked.count(g.group_id())) continue;
        PADDOCK_ASSIGN_OR_RETURN(bool more, deliver(g, def.first, task));
        if (!more) return Status::Ok();
      }
      return Status::Ok();
    }
    size_t next = 0;
    const uint32_t samples = SamplesPerTask(r->req);
    while (true) {
      std::vector<std::pair<v1::EpisodeGroup, const Task*>> ready;
      bool running;
      {
        std::unique_lock lock(r->mu);
        if (req.follow() && next == r->groups.done())
          r->cv.wait_for(lock, std::chrono::milliseconds(200),
                         [&] { return r->groups.done() > next || r->state != "running"; });
        for (; next < r->groups.done(); ++next) {
          auto [ti, when] = r->groups.completed()[next];
          const Task& task = r->tasks[ti];
          if (acked.count(GroupId(r->id, task.id))) continue;
          std::vector<v1::EpisodeSummary> members;
          for (size_t i = ti * samples; i < (ti + 1) * samples && i < r->episodes.size(); ++i)
            members.push_back(r->episodes[i]->summary);
          ready.emplace_back(MakeGroup(r->id, task.id, std::move(members), when), &task);
        }
        running = r->state == "running";
      }
      for (auto& [g, task] : ready) {
        PADDOCK_ASSIGN_OR_RETURN(bool more, deliver(g, r->req, task));
        if (!more) return Status::Ok();
      }
      if (!req.follow() || !running || stop()) return Status::Ok();
    }
  }

  Result<v1::UpdatePolicyResponse> UpdatePolicy(const v1::UpdatePolicyRequest& req) {
    auto r = Find(req.rollout_id());
    if (!r)
      return Error(Code::kNotFound, "rollout '{}' is not running in this daemon; resume it first", req.rollout_id());
    auto t0 = Clock::now();
    v1::UpdatePolicyResponse resp;
    resp.set_rollout_id(r->id);
    std::vector<std::shared_ptr<policy::CancelToken>> abort;
    const bool abort_in_flight = req.has_abort_in_flight() ? req.abort_in_flight() : r->req.abort_on_update();
    {
      std::lock_guard lock(r->mu);
      if (r->state != "running")
        return Error(Code::kFailedPrecondition, "rollout '{}' is {}, not running", r->id, r->state);
      if (r->policy_paused)
        return Error(Code::kFailedPrecondition, "rollout '{}': another policy update is in progress", r->id);
      r->policy_paused = true;
      r->generation++;
      resp.set_previous_version(r->policy_version);
      if (abort_in_flight)
        for (Episode* ep : r->in_policy) {
          ep->aborted_for_update = true;
          if (ep->cancel) abort.push_back(ep->cancel);
        }
    }
    resp.set_aborted(static_cast<uint32_t>(abort.size()));
    for (auto& t : abort) t->Cancel();
    // Generations in flight finish (or return aborted) under the old weights.
    auto unpause = [&] {
      {
        std::lock_guard lock(r->mu);
        r->policy_paused = false;
        r->generation++;
      }
      ResumePolicyWaiters(r);
    };
    {
      std::unique_lock lock(r->mu);
      auto req_timeout = PolicyRequestTimeout(r->req.policy());
      if (!r->cv.wait_for(lock, req_timeout + std::chrono::seconds(5), [&] { return r->policy_in_flight == 0; })) {
        lock.unlock();
        unpause();
        return Error(Code::kDeadlineExceeded, "rollout '{}': generations in flight did not end within {} ms; "
                     "the policy was not updated", r->id, req_timeout.count());
      }
    }
    auto t1 = Clock::now();
    resp.set_drain_ms(std::chrono::duration_cast<std::chrono::milliseconds>(t1 - t0).count());
    std::string version = req.version();
    uint64_t epoch;
    {
      std::lock_guard lock(r->mu);
      epoch = r->policy_epoch + 1;
    }
    if (version.empty()) version = fmt::format("v{}", epoch);
    if (!req.weights_path().empty()) {
      auto timeout = std::chrono::milliseconds(req.timeout_ms() ? req.timeout_ms() : 600000);
      Status st = r->backend->UpdateWeightsFromDisk(req.weights_path(), version, timeout);
      if (!st.ok()) {
        unpause();
        return st.Prefix(fmt::format("rollout '{}': the policy server did not load {} (still {})", r->id,
                                     req.weights_path(), resp.previous_version()));
      }
    }
    resp.set_load_ms(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t1).count());
    {
      std::lock_guard lock(r->mu);
      r->policy_version = version;
      r->policy_epoch = epoch;
    }
    RecordPolicyVersion(*r, version, epoch);
    unpause();
    resp.set_version(version);
    resp.set_epoch(epoch);
    resp.set_paused_ms(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count());
    spdlog::info("rollout {}: policy {} -> {} (epoch {}) in {} ms ({} aborted, drain {} ms, load {} ms)", r->id,
                 resp.previous_version(), version, epoch, resp.paused_ms(), resp.aborted(), resp.drain_ms(),
                 resp.load_ms());
    return resp;
  }

  Result<v1::ForkEpisodeResponse> Fork(const v1::ForkEpisodeRequest& in, bool local_client) {
    if (draining_) return Error(Code::kUnavailable, "the daemon is shutting down; fork again later");
    const std::string& id = in.episode_id();
    size_t slash = id.find('/'), hash = id.rfind('#');
    if (slash == std::string::npos || hash == std::string::npos || hash < slash)
      return Error(Code::kInvalidArgument, "episode id '{}' is not ROLLOUT/TASK#SAMPLE", id.substr(0, 200));
    const std::string parent_rid = id.substr(0, slash), task_id = id.substr(slash + 1, hash - slash - 1);
    uint32_t sample = static_cast<uint32_t>(std::strtoul(id.c_str() + hash + 1, nullptr, 10));
    const uint32_t forks = in.samples() ? in.samples() : 1;
    if (forks > 1024) return Error(Code::kInvalidArgument, "{} forks asked; at most 1024", forks);
    if (in.at_step() == 0) return Error(Code::kInvalidArgument, "at_step must be 1 or more (a turn of the episode)");
    PADDOCK_ASSIGN_OR_RETURN(auto def, LoadDefinition(parent_rid));
    auto task = std::find_if(def.second.begin(), def.second.end(), [&](const Task& t) { return t.id == task_id; });
    if (task == def.second.end())
      return Error(Code::kNotFound, "rollout '{}' has no task '{}'", parent_rid, task_id.substr(0, 200));
    PADDOCK_ASSIGN_OR_RETURN(auto steps, log_.ReadSteps(id));
    const uint64_t k = in.at_step();
    if (steps.size() < k)
      return Error(Code::kFailedPrecondition, "episode '{}' has {} logged turns; fork at one of 1..{}", id,
                   steps.size(), steps.size());
    if (!steps[k - 1].stop_reason().empty())
      return Error(Code::kFailedPrecondition, "turn {} of '{}' ended the episode ({}); fork at an earlier turn", k, id,
                   steps[k - 1].stop_reason());
    PADDOCK_ASSIGN_OR_RETURN(auto calls, log_.ListCalls(id));
    std::vector<std::pair<replay::CallKey, replay::CallRecord>> prefix;
    for (auto& [key, rec] : calls) {
      if (key.step > k) continue;
      if (!rec.has_result)
        return Error(Code::kFailedPrecondition, "call {} of the prefix is in doubt (no result logged); fork at an "
                     "earlier turn", key.ToString());
      prefix.emplace_back(key, rec);
    }

    v1::StartRolloutRequest req = def.first;
    const uint32_t parent_samples = SamplesPerTask(req);
    const size_t parent_index = static_cast<size_t>(task - def.second.begin()) * parent_samples + sample;
    req.set_tasks_jsonl(task->source.dump() + "\n");
    req.set_samples_per_task(forks);
    req.set_rollout_id(in.rollout_id().empty() ? NewRolloutId() : in.rollout_id());
    req.set_concurrency(in.concurrency() ? in.concurrency() : forks);
    req.set_source(fmt::format("fork of {} at turn {}", id, k));
    (*req.mutable_labels())[kForkOfLabel] = id;
    (*req.mutable_labels())[kForkStepLabel] = std::to_string(k);
    (*req.mutable_labels())[kForkSeedLabel] = std::to_string(parent_index);
    if (!ValidRolloutId(req.rollout_id()))
      return Error(Code::kInvalidArgument, "rollout id '{}' must be 1-64 characters of A-Z a-z 0-9 . _ -",
                   req.rollout_id());
    PADDOCK_ASSIGN_OR_RETURN(auto existing, log_.GetEpisode(kRolloutPrefix + req.rollout_id()));
    if (existing) return Error(Code::kAlreadyExists, "rollout '{}' exists already", req.rollout_id());
    PADDOCK_ASSIGN_OR_RETURN(std::shared_ptr<Rollout> r, Build(req));

    // Each fork's log starts with the parent's first k turns: its calls and
    // steps under the fork's episode id, so the fork fast-forwards through them.
    for (auto& ep : r->episodes) {
      for (auto& [key, rec] : prefix) {
        replay::CallKey nk{ep->id, key.step, key.call};
        PADDOCK_RETURN_IF_ERROR(log_.PutIntent(nk, rec.request_fingerprint, rec.request_summary, rec.idempotent,
                                               rec.request, replay::Durability::kDeferred));
        PADDOCK_RETURN_IF_ERROR(log_.PutResult(nk, rec.result, replay::Durability::kDeferred));
      }
      for (uint64_t i = 0; i < k; ++i) {
        v1::StepRecordProto st = steps[i];
        st.set_episode_id(ep->id);
        PADDOCK_RETURN_IF_ERROR(log_.AppendStep(st).Prefix("copying the forked prefix"));  // synced: the calls too
      }
    }
    PADDOCK_RETURN_IF_ERROR(RecordNewRollout(*r).Prefix("storing the fork's definition"));
    r->local_client = local_client;
    v1::ForkEpisodeResponse resp;
    resp.set_rollout_id(r->id);
    resp.set_episodes(static_cast<uint32_t>(r->episodes.size()));
    spdlog::info("rollout {}: {} forks of {} at turn {}", r->id, forks, id, k);
    Launch(std::move(r), {});
    return resp;
  }

  Result<v1::AckGroupsResponse> AckGroups(const v1::AckGroupsRequest& req) {
    PADDOCK_RETURN_IF_ERROR(ValidConsumer(req.consumer()));
    if (req.group_ids_size() > 100000)
      return Error(Code::kInvalidArgument, "{} group ids in one call; acknowledge at most 100000 at a time",
                   req.group_ids_size());
    std::set<std::string> known;
    if (auto r = Find(req.rollout_id())) {
      for (const auto& t : r->tasks) known.insert(GroupId(r->id, t.id));
    } else {
      PADDOCK_ASSIGN_OR_RETURN(auto def, LoadDefinition(req.rollout_id()));
      for (const auto& t : def.second) known.insert(GroupId(req.rollout_id(), t.id));
    }
    std::vector<std::string> ids(req.group_ids().begin(), req.group_ids().end());
    for (const auto& id : ids)
      if (!known.count(id))
        return Error(Code::kInvalidArgument, "group '{}' is not a group of rollout '{}' (group ids are ROLLOUT/TASK)",
                     id.substr(0, 200), req.rollout_id());
    std::lock_guard lock(acks_mu_);
    PADDOCK_ASSIGN_OR_RETURN(auto counts, StoreAcks(log_, req.rollout_id(), req.consumer(), ids));
    v1::AckGroupsResponse resp;
    resp.set_acknowledged(counts.first);
    resp.set_total(counts.second);
    return resp;
  }

  void Drain(std::chrono::milliseconds grace) {
    draining_ = true;
    std::vector<std::shared_ptr<Rollout>> all;
    {
      std::lock_guard lock(mu_);
      for (auto& [k, r] : rollouts_) all.push_back(r);
    }
    for (auto& r : all) {
      std::vector<std::shared_ptr<policy::CancelToken>> tokens;
      {
        std::lock_guard lock(r->mu);
        if (r->state != "running") continue;
        r->stopping = true;
        r->pending.clear();
        scheduler_.SetPending(r->flow, 0);
        for (auto& ep : r->episodes)
          if (ep->cancel) tokens.push_back(ep->cancel);
        r->generation++;
      }
      for (auto& t : tokens) t->Cancel();
    }
    auto until = Clock::now() + grace;
    for (auto& r : all) {
      std::unique_lock lock(r->mu);
      r->cv.wait_until(lock, until, [&] { return r->active == 0; });
    }
    for (auto& r : all) MaybeFinishRollout(r);
  }

  EngineStats stats() {
    EngineStats s;
    s.turns = turns_;
    s.live_policy_calls = live_policy_;
    s.replayed_policy_calls = replayed_policy_;
    s.live_tool_calls = live_tools_;
    s.replayed_tool_calls = replayed_tools_;
    s.reapplied_tool_calls = reapplied_;
    s.relocated_episodes = relocated_;
    s.eager_relocations = eager_relocations_;
    s.last_resume_to_live_us = resume_to_live_us_;
    s.running_episodes = scheduler_.running();
    s.queued_episodes = scheduler_.queued();
    s.max_running_episodes = scheduler_.capacity();
    return s;
  }

 private:
  // The record of a new rollout (its definition, under "rollout/ID"), with the
  // policy version it starts under.
  Status RecordNewRollout(Rollout& r) {
    const v1::StartRolloutRequest& req = r.req;
    v1::EpisodeRecordProto rec;
    rec.set_episode_id(kRolloutPrefix + req.rollout_id());
    rec.set_state(v1::EpisodeRecordProto::RUNNING);
    rec.set_task(DefinitionJson(req, req.rollout_id()));
    rec.set_model(req.policy().kind() + " " + req.policy().url());
    auto& labels = *rec.mutable_labels();
    labels["paddock.kind"] = "rollout";
    labels["paddock.state"] = "running";
    if (auto it = req.labels().find(kForkOfLabel); it != req.labels().end()) labels[kForkOfLabel] = it->second;
    r.policy_version = InitialPolicyVersion(req, *r.backend);
    labels["paddock.policy_version"] = r.policy_version;
    labels["paddock.policy_epoch"] = "0";
    return log_.PutEpisode(rec);
  }

  // The rollout's policy version, kept in its record so that a resume goes on
  // with it (labels paddock.policy_version, paddock.policy_epoch).
  void RecordPolicyVersion(const Rollout& r, const std::string& version, uint64_t epoch) {
    auto rec = log_.GetEpisode(kRolloutPrefix + r.id);
    if (!rec.ok() || !rec->has_value()) return;
    v1::EpisodeRecordProto u = **rec;
    (*u.mutable_labels())["paddock.policy_version"] = version;
    (*u.mutable_labels())["paddock.policy_epoch"] = std::to_string(epoch);
    u.set_updated_unix_ms(0);
    if (Status st = log_.PutEpisode(u); !st.ok())
      spdlog::warn("rollout {}: cannot record its policy version {}: {}", r.id, version, st.message());
  }

  // The version a rollout starts under: the request's, else the server's
  // reported weight version, else "v0".
  std::string InitialPolicyVersion(const v1::StartRolloutRequest& req, policy::PolicyBackend& backend) {
    if (!req.policy_version().empty()) return req.policy_version();
    auto v = backend.WeightVersion();
    return v.ok() && !v->empty() ? *v : "v0";
  }

  // The seed offset of an episode's policy call: a fork's replayed turns were
  // asked with its parent's; after the fork point each fork gets its own,
  // never the parent's.
  static size_t SeedIndex(const Rollout& r, const Episode& ep) {
    if (r.fork_step == 0) return ep.index;
    return ep.step <= r.fork_step ? r.fork_seed_index : r.fork_seed_index + 1 + ep.index;
  }

  // The stored request of a rollout and its parsed tasks.
  Result<std::pair<v1::StartRolloutRequest, std::vector<Task>>> LoadDefinition(const std::string& rid) {
    PADDOCK_ASSIGN_OR_RETURN(auto rec, log_.GetEpisode(kRolloutPrefix + rid));
    if (!rec) return Error(Code::kNotFound, "rollout '{}' is not in the trajectory log", rid);
    v1::RolloutDefinitionProto def;
    if (!google::protobuf::util::JsonStringToMessage(rec->task(), &def).ok())
      return Error(Code::kDataLoss, "the stored definition of rollout '{}' does not parse", rid);
    PADDOCK_ASSIGN_OR_RETURN(auto tasks, ParseTasksJsonl(def.request().tasks_jsonl()));
    return std::make_pair(def.request(), std::move(tasks));
  }

  // The groups of a rollout whose samples have all ended, by the log, in the
  // order they completed (their last sample's final record). The Task
  // pointers point into `tasks`.
  Result<std::vector<std::pair<v1::EpisodeGroup, const Task*>>> CompleteGroupsFromLog(
      const std::string& rid, const v1::StartRolloutRequest& req, const std::vector<Task>& tasks) {
    const uint32_t samples = SamplesPerTask(req);
    PADDOCK_ASSIGN_OR_RETURN(auto eps, log_.ListEpisodes({.prefix = rid + "/"}));
    struct Members {
      std::vector<v1::EpisodeSummary> ended;
      int64_t last_ms = 0;
    };
    std::map<std::string, Members> by_task;
    for (auto& e : eps) {
      if (e.state() != v1::EpisodeRecordProto::FINISHED && e.state() != v1::EpisodeRecordProto::FAILED) continue;
      auto t = e.labels().find("paddock.task");
      if (t == e.labels().end()) continue;
      v1::EpisodeSummary s;
      if (auto it = e.labels().find("paddock.summary"); it != e.labels().end()) ParseSummaryJson(it->second, &s);
      s.set_episode_id(e.episode_id());
      if (s.outcome_class().empty()) SetAgentOutcome(s);  // logged before outcome classes
      Members& m = by_task[t->second];
      m.ended.push_back(std::move(s));
      m.last_ms = std::max(m.last_ms, e.updated_unix_ms());
    }
    std::vector<std::pair<v1::EpisodeGroup, const Task*>> out;
    for (const Task& task : tasks) {
      auto it = by_task.find(task.id);
      if (it == by_task.end() || it->second.ended.size() < samples) continue;
      out.emplace_back(MakeGroup(rid, task.id, std::move(it->second.ended), it->second.last_ms), &task);
    }
    std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
      return a.first.completed_unix_ms() < b.first.completed_unix_ms();
    });
    return out;
  }

  // ---- building a rollout ----------------------------------------------
  Result<std::shared_ptr<const v4::Tokenizer>> Tokenizer() {
    std::lock_guard lock(tok_mu_);
    if (tokenizer_) return tokenizer_;
    std::string path = options_.tokenizer_path.empty() ? v4::Tokenizer::DefaultPath() : options_.tokenizer_path;
    auto t = v4::Tokenizer::Load(path);
    if (!t.ok())
      return Error(Code::kFailedPrecondition, "the rollout engine needs the V4 tokenizer at {} ({}); "
                   "scripts/install-deps.sh installs it, or set $PADDOCK_TOKENIZER", path, t.status().message());
    tokenizer_ = *t;
    return tokenizer_;
  }

  Result<std::shared_ptr<policy::PolicyBackend>> MakeBackend(const v1::PolicySpec& spec,
                                                            std::shared_ptr<const v4::Tokenizer> tok) {
    std::string kind = spec.kind().empty() ? "sglang" : spec.kind();
    if (!spec.tool_choice().empty() && spec.tool_choice() != "auto" && spec.tool_choice() != "required")
      return Error(Code::kInvalidArgument, "policy.tool_choice '{}': expected auto or required", spec.tool_choice());
    if (kind == "scripted") {
      auto p = ScriptedPolicy::Create(tok, spec.script());
      if (!p.ok()) return p.status();
      return std::shared_ptr<policy::PolicyBackend>(std::move(*p));
    }
    policy::BackendOptions o;
    o.url = spec.url();
    o.model = spec.model();
    o.api_key_env = spec.api_key_env();
    if (o.url.empty()) return Error(Code::kInvalidArgument, "policy: url is required for kind '{}'", kind);
    if (kind == "sglang") {
      auto b = policy::SglangBackend::Create(o);
      if (!b.ok()) return b.status().Prefix("policy");
      return std::shared_ptr<policy::PolicyBackend>(std::move(*b));
    }
    if (kind == "openai-completions" || kind == "openai") {
      auto b = policy::OpenAiCompletionsBackend::Create(o);
      if (!b.ok()) return b.status().Prefix("policy");
      return std::shared_ptr<policy::PolicyBackend>(std::move(*b));
    }
    if (kind == "openai-chat")
      return Error(Code::kInvalidArgument,
                   "policy kind 'openai-chat' gives no token ids, and the episode engine keeps token-exact "
                   "contexts; use 'sglang' or 'openai-completions' (vLLM) instead");
    return Error(Code::kInvalidArgument, "policy kind '{}' is not one of sglang, openai-completions, openai-chat, scripted",
                 kind);
  }

  Result<std::shared_ptr<Rollout>> Build(const v1::StartRolloutRequest& req) {
    auto tasks = ParseTasksJsonl(req.tasks_jsonl());
    if (!tasks.ok()) return tasks.status();
    auto tok = Tokenizer();
    if (!tok.ok()) return tok.status();
    auto backend = MakeBackend(req.policy(), *tok);
    if (!backend.ok()) return backend.status();
    auto r = std::make_shared<Rollout>();
    r->id = req.rollout_id();
    r->req = req;
    r->tasks = std::move(*tasks);
    r->backend = std::move(*backend);
    r->policy_label = (req.policy().kind().empty() ? "sglang" : req.policy().kind()) +
                      (req.policy().url().empty() ? "" : " " + req.policy().url());
    r->concurrency = req.concurrency() ? req.concurrency() : 64;
    r->max_in_flight = req.policy().max_in_flight() ? req.policy().max_in_flight() : r->concurrency;
    for (const Task& t : r->tasks) {
      TaskPrompt p;
      p.tools = ToolSchemas(t);
      p.tools_plain = json::parse(p.tools.dump());
      ojson sys = ojson::object();
      sys["role"] = "system";
      sys["content"] = t.system.empty() ? kDefaultSystem : t.system;
      sys["tools"] = p.tools;
      ojson user = ojson::object();
      user["role"] = "user";
      user["content"] = t.instruction;
      ojson request = ojson::object();
      request["messages"] = ojson::array({sys, user});
      request["thinking_mode"] = req.thinking() ? "thinking" : "chat";
      request["drop_thinking"] = false;
      p.start_request = std::move(request);
      r->prompts.push_back(std::move(p));
    }
    uint32_t samples = SamplesPerTask(req);
    for (size_t ti = 0; ti < r->tasks.size(); ++ti)
      for (uint32_t s = 0; s < samples; ++s) {
        auto ep = std::make_unique<Episode>();
        ep->ro = r.get();
        ep->index = r->episodes.size();
        ep->task = &r->tasks[ti];
        ep->task_index = ti;
        ep->sample = s;
        ep->id = fmt::format("{}/{}#{}", r->id, r->tasks[ti].id, s);
        ep->summary.set_episode_id(ep->id);
        ep->summary.set_task_id(r->tasks[ti].id);
        ep->summary.set_sample(s);
        ep->summary.set_state("pending");
        ep->summary.set_group_id(GroupId(r->id, r->tasks[ti].id));
        r->episodes.push_back(std::move(ep));
      }
    r->groups.Reset(r->tasks.size(), samples);
    if (auto it = req.labels().find(kForkStepLabel); it != req.labels().end()) {
      r->fork_step = std::strtoull(it->second.c_str(), nullptr, 10);
      auto si = req.labels().find(kForkSeedLabel);
      r->fork_seed_index = si == req.labels().end() ? 0 : std::strtoull(si->second.c_str(), nullptr, 10);
    }
    return r;
  }

  void Launch(std::shared_ptr<Rollout> r, const std::vector<size_t>& already_done) {
    r->started = Clock::now();
    r->started_unix_ms = NowUnixMs();
    r->rate_t = r->started;
    std::set<size_t> done(already_done.begin(), already_done.end());
    {
      std::lock_guard lock(r->mu);
      for (auto& ep : r->episodes) {
        if (done.count(ep->index)) {
          ep->summary.set_state(ep->summary.state().empty() ? "finished" : ep->summary.state());
          if (ep->summary.state() == "failed") r->failed++; else r->done++;
          // Episodes logged before outcome classes existed count as the agent's.
          if (ep->summary.outcome_class().empty()) SetAgentOutcome(ep->summary);
          if (!ep->summary.train()) r->infra++;
          r->reward_sum += ep->summary.reward();
          r->finished.push_back(ep->summary);
          r->groups.Ended(ep->task_index, NowUnixMs());
        } else {
          r->pending.push_back(ep->index);
        }
      }
    }
    {
      std::lock_guard lock(mu_);
      r->flow = ++last_flow_;
      rollouts_[r->id] = r;
      flows_[r->flow] = r;
    }
    {
      std::lock_guard lock(r->mu);
      scheduler_.Add(r->flow,
                     {.weight = r->req.weight() ? r->req.weight() : 1,
                      .priority = r->req.priority(),
                      .concurrency = r->concurrency},
                     r->pending.size());
    }
    StartMore();
    MaybeFinishRollout(r);
  }

  std::shared_ptr<Rollout> Find(const std::string& id) {
    std::lock_guard lock(mu_);
    auto it = rollouts_.find(id);
    return it == rollouts_.end() ? nullptr : it->second;
  }

  // Starts episodes while the scheduler grants slots (the engine's bound on
  // running episodes, each rollout's concurrency, priority, then weight);
  // the others stay queued. Called whenever a rollout starts or an episode
  // ends, from any thread.
  void StartMore() {
    while (auto slot = scheduler_.Next()) {
      std::shared_ptr<Rollout> r;
      {
        std::lock_guard lock(mu_);
        auto it = flows_.find(slot->flow);
        if (it != flows_.end()) r = it->second;
      }
      if (!r) {  // ended between the grant and now
        scheduler_.Remove(slot->flow);
        continue;
      }
      Episode* ep = nullptr;
      {
        std::lock_guard lock(r->mu);
        if (!r->stopping && !r->pending.empty()) {
          ep = r->episodes[r->pending.front()].get();
          r->pending.pop_front();
          r->active++;
          r->generation++;
          ep->summary.set_state("running");
          ep->slot = *slot;
          if (ep->queue_us < 0) ep->queue_us = Us(Clock::now() - r->started);
        } else {
          scheduler_.Unused(*slot);
        }
        scheduler_.SetPending(r->flow, r->stopping ? 0 : r->pending.size());
      }
      if (ep) Post(r, [this, r, ep] { Begin(r, ep); });
    }
  }

  // Gives the episode's slot back (under r->mu, where `active` drops).
  void ReleaseSlot(Episode* ep) {
    if (!ep->slot) return;
    scheduler_.Release(*ep->slot);
    ep->slot.reset();
  }

  template <typename F>
  void Post(const std::shared_ptr<Rollout>& r, F&& f) {
    asio::post(pool_, std::forward<F>(f));
  }

  v1::RolloutProgress Snapshot(Rollout& r) {
    v1::RolloutProgress p;
    std::lock_guard lock(r.mu);
    p.set_rollout_id(r.id);
    p.set_state(r.state);
    p.set_episodes_total(static_cast<uint32_t>(r.episodes.size()));
    p.set_done(r.done);
    p.set_failed(r.failed);
    p.set_running(static_cast<uint32_t>(r.active));
    p.set_pending(static_cast<uint32_t>(r.pending.size()));
    p.set_cancelled(r.cancelled_count);
    p.set_tool_calls(r.tool_calls);
    p.set_policy_calls(r.policy_calls);
    p.set_generated_tokens(r.generated_tokens);
    p.set_replayed_policy_calls(r.replayed_policy);
    p.set_replayed_tool_calls(r.replayed_tools);
    auto now = Clock::now();
    double dt = std::chrono::duration<double>(now - r.rate_t).count();
    if (dt >= 1.0) {
      r.tools_per_s = (r.tool_calls - r.rate_tools) / dt;
      r.tokens_per_s = (r.generated_tokens - r.rate_tokens) / dt;
      r.rate_t = now;
      r.rate_tools = r.tool_calls;
      r.rate_tokens = r.generated_tokens;
    }
    p.set_tool_calls_per_s(r.tools_per_s);
    p.set_tokens_per_s(r.tokens_per_s);
    if (!r.sandbox_start_ms.empty()) {
      std::vector<double> v = r.sandbox_start_ms;
      std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
      p.set_sandbox_start_ms_median(v[v.size() / 2]);
    }
    p.set_started_unix_ms(r.started_unix_ms);
    p.set_elapsed_ms(std::chrono::duration_cast<std::chrono::milliseconds>(now - r.started).count());
    uint32_t finished = r.done + r.failed;
    p.set_mean_reward(finished ? r.reward_sum / finished : 0);
    p.set_policy(r.policy_label);
    p.set_source(r.req.source());
    p.set_concurrency(static_cast<uint32_t>(r.concurrency));
    p.set_policy_in_flight(static_cast<uint32_t>(r.policy_in_flight));
    p.set_waiting_for_sandbox(static_cast<uint32_t>(r.waiting_for_sandbox));
    p.set_groups_total(static_cast<uint32_t>(r.groups.total()));
    p.set_groups_done(static_cast<uint32_t>(r.groups.done()));
    p.set_infra(r.infra);
    p.set_infra_retries(r.infra_retries);
    p.set_policy_version(r.policy_version);
    p.set_policy_epoch(r.policy_epoch);
    p.set_policy_paused(r.policy_paused);
    p.set_queued(static_cast<uint32_t>(scheduler_.queued(r.flow)));
    if (r.state == "running" && r.active > 0 && r.waiting_for_sandbox == r.active) p.set_state("waiting_for_nodes");
    return p;
  }

  Result<v1::RolloutProgress> FromLog(const v1::EpisodeRecordProto& rec) {
    v1::RolloutProgress p;
    std::string rid = rec.episode_id().substr(std::string(kRolloutPrefix).size());
    v1::RolloutDefinitionProto def;
    (void)google::protobuf::util::JsonStringToMessage(rec.task(), &def);
    p.set_rollout_id(rid);
    auto st = rec.labels().find("paddock.state");
    std::string state = st == rec.labels().end() ? "running" : st->second;
    // A rollout the log says is running but no engine runs was interrupted
    // (the daemon stopped or died under it).
    p.set_state(state == "running" ? "interrupted" : state);
    p.set_policy(rec.model());
    p.set_source(def.request().source());
    p.set_started_unix_ms(rec.created_unix_ms());
    p.set_concurrency(def.request().concurrency());
    auto tasks = ParseTasksJsonl(def.request().tasks_jsonl());
    uint32_t samples = SamplesPerTask(def.request());
    p.set_episodes_total(tasks.ok() ? static_cast<uint32_t>(tasks->size() * samples) : 0);
    auto eps = log_.ListEpisodes({.prefix = rid + "/"});
    if (!eps.ok()) return eps.status();
    double reward = 0;
    std::map<std::string, uint32_t> ended_per_task;
    for (auto& e : *eps) {
      v1::EpisodeSummary s;
      auto it = e.labels().find("paddock.summary");
      if (it != e.labels().end()) ParseSummaryJson(it->second, &s);
      bool ended = e.state() == v1::EpisodeRecordProto::FINISHED || e.state() == v1::EpisodeRecordProto::FAILED;
      if (e.state() == v1::EpisodeRecordProto::FINISHED) {
        p.set_done(p.done() + 1);
        reward += s.reward();
      } else if (e.state() == v1::EpisodeRecordProto::FAILED) {
        p.set_failed(p.failed() + 1);
      }
      if (ended && s.outcome_class() == "infra") p.set_infra(p.infra() + 1);
      p.set_infra_retries(p.infra_retries() + (s.infra_retries() ? 1 : 0));
      if (auto t = e.labels().find("paddock.task"); ended && t != e.labels().end()) ended_per_task[t->second]++;
      p.set_tool_calls(p.tool_calls() + s.tool_calls());
      p.set_policy_calls(p.policy_calls() + s.turns());
      p.set_generated_tokens(p.generated_tokens() + s.generated_tokens());
    }
    p.set_pending(p.episodes_total() - std::min(p.episodes_total(), p.done() + p.failed()));
    p.set_groups_total(tasks.ok() ? static_cast<uint32_t>(tasks->size()) : 0);
    for (auto& [task, n] : ended_per_task) p.set_groups_done(p.groups_done() + (n >= samples ? 1 : 0));
    p.set_mean_reward(p.done() + p.failed() ? reward / (p.done() + p.failed()) : 0);
    return p;
  }

  void MaybeFinishRollout(const std::shared_ptr<Rollout>& r) {
    std::string state;
    {
      std::lock_guard lock(r->mu);
      if (r->state != "running" || r->active > 0 || !r->pending.empty()) return;
      bool all_done = r->done + r->failed == r->episodes.size();
      r->state = all_done ? "finished" : (r->cancelled ? "cancelled" : "interrupted");
      state = r->state;
      r->generation++;
    }
    scheduler_.Remove(r->flow);
    {
      std::lock_guard lock(mu_);
      flows_.erase(r->flow);
    }
    r->cv.notify_all();
    auto rec = log_.GetEpisode(kRolloutPrefix + r->id);
    if (rec.ok() && rec->has_value()) {
      v1::EpisodeRecordProto u = **rec;
      (*u.mutable_labels())["paddock.state"] = state;
      u.set_state(state == "finished" ? v1::EpisodeRecordProto::FINISHED : v1::EpisodeRecordProto::RUNNING);
      u.set_updated_unix_ms(0);
      if (Status st = log_.PutEpisode(u); !st.ok())
        spdlog::warn("rollout {}: cannot record its state '{}': {}", r->id, state, st.message());
    }
    spdlog::info("rollout {} {}", r->id, state);
  }

  // ---- one episode --------------------------------------------------------
  void Begin(std::shared_ptr<Rollout> r, Episode* ep) {
    const uint32_t deadline_s = r->req.episode_deadline_s() ? r->req.episode_deadline_s() : 3600;
    if (!ep->waiting_for_sandbox) {  // a retry keeps the first try's clock
      ep->started = Clock::now();
      ep->deadline = ep->started + std::chrono::seconds(deadline_s);
    }
    ep->cancel = std::make_shared<policy::CancelToken>();
    const Task& task = *ep->task;

    // Steps logged before (a resumed episode).
    auto steps = log_.ReadSteps(ep->id);
    if (!steps.ok()) return Fail(r, ep, "error", steps.status().message(), InfraReason::kLog);
    for (auto& s : *steps) ep->logged_steps.insert(s.step());

    v1::EpisodeRecordProto rec;
    rec.set_episode_id(ep->id);
    rec.set_state(v1::EpisodeRecordProto::RUNNING);
    rec.set_task(task.instruction.substr(0, 4096));
    rec.set_model(r->policy_label);
    (*rec.mutable_labels())["paddock.rollout"] = r->id;
    (*rec.mutable_labels())["paddock.task"] = task.id;

    // The sandbox.
    auto t0 = Clock::now();
    auto info = manager_.Create(EpisodeSpec(*r, *ep));
    if (!info.ok() && (info.status().code() == Code::kUnavailable || DaemonFull(info.status())) &&
        Clock::now() < ep->deadline)
      return WaitForSandbox(r, ep, info.status());
    SetWaiting(r, ep, false);
    if (!info.ok()) return Fail(r, ep, "error", "creating the sandbox: " + info.status().message(), CreateFailureReason(info.status()));
    auto sb = manager_.Get(info->id);
    if (!sb.ok()) return Fail(r, ep, "error", "creating the sandbox: " + sb.status().message(), InfraReason::kSandboxCreate);
    ep->sandbox = *sb;
    WatchSandbox(r, ep);
    if (ep->relocating) {
      ep->relocating = false;
      relocated_++;
    }
    ep->summary.set_sandbox_id(info->id);
    double start_ms = Us(Clock::now() - t0) / 1000.0;
    ep->summary.mutable_timings()->set_sandbox_start_us(Us(Clock::now() - t0));
    {
      std::lock_guard lock(r->mu);
      r->sandbox_start_ms.push_back(start_ms);
    }
    rec.set_sandbox_id(info->id);
    // A front's placement decision, kept with the episode (rollout/fleet).
    if (std::string where = ep->sandbox->placement(); !where.empty()) (*rec.mutable_labels())["paddock.node"] = where;
    if (!ep->logged_steps.empty()) rec.set_rebuild_note("resumed: a new sandbox was built for the episode");
    if (Status st = log_.PutEpisode(rec); !st.ok()) return Fail(r, ep, "error", st.message(), InfraReason::kLog);

    // Setup commands: part of building the sandbox, run on every build (not keyed).
    auto t1 = Clock::now();
    for (size_t i = 0; i < task.setup.size(); ++i) {
      auto res = ep->sandbox->Exec(SetupRequest(task, i), nullptr);
      if (!res.ok() && !ep->sandbox->Alive()) return Relocate(r, ep, res.status().message());
      if (!res.ok()) return Fail(r, ep, "error", fmt::format("setup[{}]: {}", i, res.status().message()), InfraReason::kSetupFailed);
      if (res->exit_code != 0 || res->signal || res->timed_out)
        return Fail(r, ep, "error",
                    fmt::format("setup[{}] `{}` failed (exit {}{}): {}", i, task.setup[i], res->exit_code,
                                res->timed_out ? ", timed out" : "", res->stderr_data.substr(0, 400)), InfraReason::kSetupFailed);
    }
    ep->summary.mutable_timings()->set_setup_us(Us(Clock::now() - t1));

    auto tok = Tokenizer();
    if (!tok.ok()) return Fail(r, ep, "error", tok.status().message(), InfraReason::kEngine);
    auto ctx = v4::EpisodeContext::Start(*tok, r->prompts[ep->task_index].start_request);
    if (!ctx.ok()) return Fail(r, ep, "error", "rendering the prompt: " + ctx.status().message(), InfraReason::kEngine);
    ep->ctx.emplace(std::move(*ctx));
    // Room for the first turns only; later appends grow the context by
    // doubling. Reserving the whole budget (up to 65,536 tokens: ~600 KiB of
    // ids, mask and text) per episode is what kept 100,000 episodes in flight
    // from fitting in memory (bench/README.md, fleet_sim_bench).
    ep->ctx->Reserve(std::min<size_t>(task.max_tokens, 1024));
    ep->step = 0;
    NextTurn(r, ep);
  }

  // What the episode's sandbox is made of (Begin, and an eager rebuild).
  SandboxSpec EpisodeSpec(const Rollout& r, const Episode& ep) const {
    const Task& task = *ep.task;
    const uint32_t deadline_s = r.req.episode_deadline_s() ? r.req.episode_deadline_s() : 3600;
    SandboxSpec spec;
    spec.substrate = task.substrate;
    spec.image = task.image;
    spec.limits = task.limits;
    spec.env = task.env;
    spec.workdir = task.workdir;
    spec.network_allow = task.network_allow;
    spec.local_client = r.local_client;
    spec.ttl_seconds = deadline_s + 600;
    spec.labels = {{"episode", ep.id}, {"task", task.id}, {"rollout", r.id}};
    return spec;
  }

  // Whether the episode must stop before another step; sets the stop.
  bool StopBeforeStep(const std::shared_ptr<Rollout>& r, Episode* ep) {
    bool stopping, cancelled_ep;
    {
      std::lock_guard lock(r->mu);
      stopping = r->stopping;
      cancelled_ep = ep->summary.state() == "cancelling";
    }
    if (stopping || cancelled_ep) {
      Interrupt(r, ep, cancelled_ep || r->cancelled);
      return true;
    }
    if (Clock::now() >= ep->deadline) {
      Fail(r, ep, "deadline", fmt::format("the episode deadline ({} s) passed", r->req.episode_deadline_s() ? r->req.episode_deadline_s() : 3600), InfraReason::kDeadline);
      return true;
    }
    return false;
  }

  void NextTurn(std::shared_ptr<Rollout> r, Episode* ep) {
    // Posted with the sandbox idle: one rebuilt meanwhile is adopted first.
    if (!LeaveIdle(r, ep, [&] { return std::function<void()>([this, r, ep] { NextTurn(r, ep); }); })) return;
    if (StopBeforeStep(r, ep)) return;
    const Task& task = *ep->task;
    if (ep->step >= task.max_turns) return Verify(r, ep, "max_turns");
    size_t used = ep->ctx->size();
    if (used + 64 > task.max_tokens) return Verify(r, ep, "budget");
    ep->step++;
    policy::GenerateRequest req;
    req.input_ids.assign(ep->ctx->ids().begin(), ep->ctx->ids().end());
    const auto& sp = r->req.sampling();
    req.sampling.max_new_tokens = static_cast<int>(
        std::min<uint64_t>(sp.max_new_tokens() ? sp.max_new_tokens() : task.max_new_tokens, task.max_tokens - used));
    if (sp.has_temperature()) req.sampling.temperature = sp.temperature();
    if (sp.has_top_p()) req.sampling.top_p = sp.top_p();
    if (sp.has_top_k()) req.sampling.top_k = sp.top_k();
    if (sp.has_seed()) req.sampling.seed = sp.seed() + SeedIndex(*r, *ep);
    req.return_logprobs = true;
    // A Paddock policy server constrains /generate to the task's tools when
    // asked (PolicySpec.constrain_tools). Not in PolicyFingerprint: like the
    // URL it says how to decode, not what was asked, so a resume may change it.
    const auto& pol = r->req.policy();
    if (pol.constrain_tools() && (pol.kind().empty() || pol.kind() == "sglang"))
      req.extra_body = {{"tools", r->prompts[ep->task_index].tools_plain},
                        {"tool_choice", pol.tool_choice().empty() ? "auto" : pol.tool_choice()},
                        {"thinking", r->req.thinking()}};

    replay::CallKey key{ep->id, ep->step, 0};
    std::string fp = PolicyFingerprint(req);
    auto logged = log_.GetCall(key);
    if (!logged.ok()) return Fail(r, ep, "error", logged.status().message(), InfraReason::kLog);
    if (logged->has_value()) {
      const auto& call = **logged;
      if (call.request_fingerprint != fp)
        return Fail(r, ep, "error",
                    fmt::format("policy call {} was logged for another prompt ({}); the resumed context "
                                "differs from the logged one, so the episode cannot be continued",
                                key.ToString(), call.request_summary), InfraReason::kReplayMismatch);
      if (call.has_result) {
        v1::PolicyResponseProto resp;
        if (!resp.ParseFromString(call.result))
          return Fail(r, ep, "error", fmt::format("the logged result of {} does not parse", key.ToString()), InfraReason::kLog);
        ep->summary.set_replayed_policy_calls(ep->summary.replayed_policy_calls() + 1);
        r->replayed_policy++;
        replayed_policy_++;
        return OnPolicyResponse(r, ep, std::move(req), std::move(resp), true, 0);
      }
      // In doubt: a policy call may be re-sent (it changes nothing).
    }
    if (ep->replaying) {
      ep->replaying = false;
      std::lock_guard lock(r->mu);
      if (r->resume_pending_live) {
        r->resume_pending_live = false;
        resume_to_live_us_ = Us(Clock::now() - r->resumed_at);
      }
    }
    // Deferred, like the policy result: a policy call changes nothing, so one
    // lost in a crash is asked again; the turn's next synced write (the tool
    // intent, or the step) makes both durable (docs/trajectory-log.md).
    if (Status st = log_.PutIntent(key, fp, fmt::format("policy\nturn={}\nprompt_tokens={}", ep->step, req.input_ids.size()),
                                   true, {}, replay::Durability::kDeferred);
        !st.ok())
      return Fail(r, ep, "error", st.message(), InfraReason::kLog);
    ep->pending_request = std::move(req);
    ep->pending_fingerprint = fp;
    ep->policy_wait_start = Clock::now();
    ep->step_policy_wait_us = 0;
    EnterIdle(r, ep, ep->step - 1);
    AcquirePolicy(r, ep);
  }

  void AcquirePolicy(const std::shared_ptr<Rollout>& r, Episode* ep) {
    {
      std::lock_guard lock(r->mu);
      if (r->policy_paused || r->policy_in_flight >= r->max_in_flight) {
        r->policy_waiters.push_back([this, r, ep] { SendPolicy(r, ep); });
        return;
      }
      r->policy_in_flight++;
    }
    SendPolicy(r, ep);
  }

  // A slot freed: handed to the next waiter unless a policy update pauses
  // generations (the update then waits for the slots to drain).
  void ReleasePolicy(const std::shared_ptr<Rollout>& r) {
    std::function<void()> next;
    {
      std::lock_guard lock(r->mu);
      if (!r->policy_paused && !r->policy_waiters.empty()) {
        next = std::move(r->policy_waiters.front());
        r->policy_waiters.pop_front();
      } else {
        r->policy_in_flight--;
      }
    }
    if (next) asio::post(pool_, std::move(next));
    else r->cv.notify_all();
  }

  // After a policy update: waiters take the free slots.
  void ResumePolicyWaiters(const std::shared_ptr<Rollout>& r) {
    std::vector<std::function<void()>> run;
    {
      std::lock_guard lock(r->mu);
      while (!r->policy_paused && r->policy_in_flight < r->max_in_flight && !r->policy_waiters.empty()) {
        r->policy_in_flight++;
        run.push_back(std::move(r->policy_waiters.front()));
        r->policy_waiters.pop_front();
      }
    }
    for (auto& f : run) asio::post(pool_, std::move(f));
  }

  void SendPolicy(std::shared_ptr<Rollout> r, Episode* ep) {
    auto waited = Clock::now() - ep->policy_wait_start;
    ep->summary.mutable_timings()->set_policy_wait_us(ep->summary.timings().policy_wait_us() + Us(waited));
    ep->step_policy_wait_us += Us(waited);
    auto now = Clock::now();
    policy::CallOptions opts;
    auto req_timeout = PolicyRequestTimeout(r->req.policy());
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(ep->deadline - now);
    opts.timeout = std::max(std::chrono::milliseconds(1), std::min(req_timeout, left));
    opts.cancel = ep->cancel;
    {
      std::lock_guard lock(r->mu);
      ep->asked_version = r->policy_version;
      ep->asked_epoch = r->policy_epoch;
      r->in_policy.insert(ep);
    }
    auto t0 = Clock::now();
    r->backend->GenerateAsync(ep->pending_request, opts, [this, r, ep, t0](Result<policy::GenerateResult> res) {
      {
        std::lock_guard lock(r->mu);
        r->in_policy.erase(ep);
      }
      ReleasePolicy(r);
      auto took = Us(Clock::now() - t0);
      asio::post(pool_, [this, r, ep, took, res = std::move(res)]() mutable { OnPolicyDone(r, ep, std::move(res), took); });
    });
  }

  void OnPolicyDone(std::shared_ptr<Rollout> r, Episode* ep, Result<policy::GenerateResult> res, int64_t took_us) {
    // A sandbox being rebuilt meanwhile (eager relocation): the answer waits for it.
    if (!LeaveIdle(r, ep, [&] {
          auto held = std::make_shared<Result<policy::GenerateResult>>(std::move(res));
          return std::function<void()>(
              [this, r, ep, held, took_us] { OnPolicyDone(r, ep, std::move(*held), took_us); });
        }))
      return;
    ep->summary.mutable_timings()->set_policy_us(ep->summary.timings().policy_us() + took_us);
    if (!res.ok()) {
      Code c = res.status().code();
      if (ep->aborted_for_update) {
        // Aborted by a policy update: asked again under the new version (the
        // intent is logged; a policy call may be re-sent).
        ep->aborted_for_update = false;
        bool stop;
        {
          std::lock_guard lock(r->mu);
          stop = r->stopping || ep->summary.state() == "cancelling";
        }
        if (!stop) {
          ep->cancel = std::make_shared<policy::CancelToken>();
          ep->policy_wait_start = Clock::now();
          EnterIdle(r, ep, ep->step - 1);
          return AcquirePolicy(r, ep);
        }
      }
      if (c == Code::kCancelled || ep->cancel->cancelled()) {
        bool cancelled;
        {
          std::lock_guard lock(r->mu);
          cancelled = r->cancelled || ep->summary.state() == "cancelling";
        }
        return Interrupt(r, ep, cancelled);
      }
      auto now = Clock::now();
      if (Transient(c) && now < ep->deadline) {
        if (!ep->unavailable_since) ep->unavailable_since = now;
        auto wait_s = r->req.policy().unavailable_wait_s() ? r->req.policy().unavailable_wait_s() : 600;
        if (now - *ep->unavailable_since < std::chrono::seconds(wait_s)) {
          ep->backoff_ms = ep->backoff_ms ? std::min(ep->backoff_ms * 2, 5000) : 200;
          ep->summary.set_policy_retries(ep->summary.policy_retries() + 1);
          if (ep->summary.policy_retries() == 1 || ep->summary.policy_retries() % 10 == 0)
            spdlog::warn("episode {}: policy unavailable ({}); retrying in {} ms", ep->id, res.status().message(),
                         ep->backoff_ms);
          auto timer = std::make_shared<asio::steady_timer>(io_, std::chrono::milliseconds(ep->backoff_ms));
          timer->async_wait([this, r, ep, timer](const boost::system::error_code&) {
            asio::post(pool_, [this, r, ep] {
              if (StopBeforeStep(r, ep)) return;
              ep->policy_wait_start = Clock::now();
              EnterIdle(r, ep, ep->step - 1);
              AcquirePolicy(r, ep);
            });
          });
          return;
        }
      }
      return Fail(r, ep, "policy_error", res.status().ToString(), Transient(c) ? InfraReason::kPolicyUnavailable : InfraReason::kPolicyError);
    }
    ep->unavailable_since.reset();
    ep->backoff_ms = 0;
    // An abort that lost the race with the answer: nothing to ask again, and
    // the episode's next failure must not be taken for an abort.
    ep->aborted_for_update = false;
    policy::GenerateResult& g = *res;
    if (!g.token_exact || (g.output_ids.empty() && !g.text.empty()))
      return Fail(r, ep, "policy_error", "the policy server did not return the sampled token ids", InfraReason::kPolicyError);
    v1::PolicyResponseProto resp;
    for (int32_t id : g.output_ids) resp.add_token_ids(static_cast<uint32_t>(id));
    for (float lp : g.logprobs) resp.add_logprobs(lp);
    resp.set_text(g.text);
    resp.set_finish_reason(policy::FinishReasonName(g.finish_reason));
    resp.set_policy_version(g.weight_version.empty() ? ep->asked_version : g.weight_version);
    resp.set_policy_epoch(ep->asked_epoch);
    replay::CallKey key{ep->id, ep->step, 0};
    if (Status st = log_.PutResult(key, resp.SerializeAsString(), replay::Durability::kDeferred); !st.ok())
      return Fail(r, ep, "error", st.message(), InfraReason::kLog);
    live_policy_++;
    OnPolicyResponse(r, ep, std::move(ep->pending_request), std::move(resp), false, took_us);
  }

  void OnPolicyResponse(std::shared_ptr<Rollout> r, Episode* ep, policy::GenerateRequest req,
                        v1::PolicyResponseProto resp, bool replayed, int64_t policy_us) {
    const Task& task = *ep->task;
    const TaskPrompt& prompt = r->prompts[ep->task_index];
    auto step_t0 = Clock::now();
    ep->min_epoch = std::min(ep->min_epoch.value_or(resp.policy_epoch()), resp.policy_epoch());
    ep->max_epoch = std::max(ep->max_epoch.value_or(resp.policy_epoch()), resp.policy_epoch());
    ep->last_version = resp.policy_version();
    turns_++;
    r->policy_calls++;
    r->generated_tokens += resp.token_ids_size();
    ep->summary.set_turns(static_cast<uint32_t>(ep->step));
    ep->summary.set_generated_tokens(ep->summary.generated_tokens() + resp.token_ids_size());

    v1::StepRecordProto step;
    step.set_episode_id(ep->id);
    step.set_step(ep->step);
    auto* preq = step.mutable_policy_request();
    size_t from = ep->step == 1 ? 0 : ep->last_request_size;
    for (size_t i = from; i < req.input_ids.size(); ++i) preq->add_prompt_token_ids(req.input_ids[i]);
    preq->set_prompt_is_delta(ep->step > 1);
    preq->set_delta_after_output(true);
    preq->set_model(r->req.policy().model());
    if (req.sampling.temperature) preq->set_temperature(*req.sampling.temperature);
    if (req.sampling.top_p) preq->set_top_p(*req.sampling.top_p);
    preq->set_max_tokens(req.sampling.max_new_tokens);
    if (req.sampling.seed) preq->set_seed(*req.sampling.seed);
    *step.mutable_policy_response() = resp;
    step.mutable_timings()->set_started_unix_ms(NowUnixMs());
    step.mutable_timings()->set_policy_us(policy_us);
    step.mutable_timings()->set_policy_wait_us(replayed ? 0 : ep->step_policy_wait_us);

    std::vector<uint32_t> ids(resp.token_ids().begin(), resp.token_ids().end());
    std::string text = ep->ctx->tokenizer().Decode(ids);
    auto decoded = v4::DecodeCompletion(text, r->req.thinking(), &prompt.tools_plain);
    ojson message;
    std::string decode_error;
    if (auto* m = std::get_if<json>(&decoded)) {
      message = ojson::parse(m->dump());
      if (message.contains("tool_calls") && message["tool_calls"].is_array()) {
        size_t i = 0;
        for (auto& tc : message["tool_calls"]) tc["id"] = fmt::format("call_{}_{}", ep->step, i++);
      }
    } else {
      const auto& e = std::get<v4::DecodeError>(decoded);
      decode_error = fmt::format("{}: {}", v4::DecodeErrorKindName(e.kind), e.message);
      message = ojson::object();
      message["role"] = "assistant";
      message["content"] = text;
    }
    // The next step's delta starts after this output: the context is append-only,
    // so its prompt is this one, this output, then what the step appends.
    ep->last_request_size = req.input_ids.size() + ids.size();
    if (Status st = ep->ctx->AppendPolicyOutput(ids, message); !st.ok())
      return Fail(r, ep, "error", "appending the policy output: " + st.message(), InfraReason::kEngine);

    std::optional<std::string> stop;
    ojson observation = ojson::array();
    // A live tool call's result not logged yet (RunToolCall leaves it here).
    std::optional<std::pair<replay::CallKey, std::string>> held;
    if (!decode_error.empty()) {
      ep->summary.set_malformed_tool_calls(ep->summary.malformed_tool_calls() + 1);
      if (++ep->consecutive_malformed >= 3) {
        stop = "format_error";
        ep->summary.set_failure_reason("three malformed turns in a row; last: " + decode_error);
      } else {
        ojson m = ojson::object();
        m["role"] = "user";
        m["content"] = "Your last message could not be read as a tool call (" + decode_error +
                       "). Call one of the tools with the DSML format shown in the system prompt.";
        observation.push_back(m);
        step.add_observations()->set_content(m["content"].get<std::string>());  // no tool_call_id: a user turn
      }
    } else {
      ep->consecutive_malformed = 0;
      const ojson* calls = message.contains("tool_calls") && message["tool_calls"].is_array() &&
                                   !message["tool_calls"].empty()
                               ? &message["tool_calls"]
                               : nullptr;
      if (!calls) {
        stop = resp.finish_reason() == "length" ? (ids.size() >= static_cast<size_t>(req.sampling.max_new_tokens) &&
                                                           ep->ctx->size() + 64 > task.max_tokens
                                                       ? "budget"
                                                       : "no_tool_call")
                                                : "eos";
      } else {
        int64_t tools_us = 0;  // running the tools; their log writes are the engine's overhead
        uint32_t call_index = 0;
        for (const auto& tc : *calls) {
          // The previous call's result, deferred: this call's synced intent
          // (or the step) carries it.
          if (Status st = LogHeldResult(held, replay::Durability::kDeferred); !st.ok())
            return Fail(r, ep, "error", st.message(), InfraReason::kLog);
          ++call_index;
          std::string name = tc["function"]["name"].get<std::string>();
          std::string args = tc["function"]["arguments"].is_string() ? tc["function"]["arguments"].get<std::string>()
                                                                      : tc["function"]["arguments"].dump();
          auto* tcp = step.add_tool_calls();
          tcp->set_id(tc["id"].get<std::string>());
          tcp->set_name(name);
          tcp->set_arguments_json(args);
          replay::CallKey key{ep->id, ep->step, call_index};
          tcp->set_call_key(key.ToString());
          auto obs = RunToolCall(r, ep, key, name, args, &held, &tools_us);
          if (!obs.ok()) return Fail(r, ep, "error", obs.status().message(), obs.status().code() == Code::kFailedPrecondition ? InfraReason::kReplayMismatch : InfraReason::kLog);
          if (!ep->sandbox->Alive()) {
            // Lost under the call (its node): the result is not the tool's. Its
            // intent stays in doubt; the episode goes on from the log in a new
            // sandbox, where the call runs again.
            held.reset();
            return Relocate(r, ep, fmt::format("sandbox {} was lost during tool call {}", ep->sandbox->id(),
                                               key.ToString()));
          }
          auto cut = v4::CutHeadTail(ep->ctx->tokenizer(), obs->content(), task.max_observation_tokens);
          v1::ObservationProto* op = step.add_observations();
          *op = *obs;
          op->set_tool_call_id(tc["id"].get<std::string>());
          op->set_truncated(cut.cut);
          ojson m = ojson::object();
          m["role"] = "tool";
          m["tool_call_id"] = tc["id"];
          m["content"] = cut.text;
          observation.push_back(m);
          if (name == "submit" && task.HasTool("submit")) {
            ep->submitted = true;
            try {
              auto a = json::parse(args);
              ep->submission = a.contains("answer") && a["answer"].is_string() ? a["answer"].get<std::string>() : "";
            } catch (...) {
            }
            stop = "submit";
            break;  // calls after submit do not run
          }
        }
        step.mutable_timings()->set_tools_us(tools_us);
        ep->summary.mutable_timings()->set_tools_us(ep->summary.timings().tools_us() + tools_us);
      }
    }
    if (!stop && ep->step >= task.max_turns) stop = "max_turns";
    if (!stop && !observation.empty()) {
      auto rep = ep->ctx->AppendObservation(observation);
      if (!rep.ok()) {
        (void)LogHeldResult(held, replay::Durability::kDeferred);  // the failed episode's record syncs it
        return Fail(r, ep, "error", "appending the observation: " + rep.status().message(), InfraReason::kEngine);
      }
      if (ep->ctx->size() + 64 > task.max_tokens) stop = "budget";
    }
    if (stop) step.set_stop_reason(*stop);
    step.mutable_timings()->set_total_us(policy_us + Us(Clock::now() - step_t0));
    if (!ep->logged_steps.count(ep->step)) {
      // The last tool result and the step in one synced write. No pool thread
      // waits for its sync: the turn goes on, posted, once it is durable.
      uint64_t n = ep->step;
      auto then = [this, r, ep, n, stop](Status st) {
        Post(r, [this, r, ep, n, stop, st = std::move(st)] {
          if (!st.ok()) return Fail(r, ep, "error", "logging the step: " + st.message(), InfraReason::kLog);
          ep->logged_steps.insert(n);
          EndTurn(r, ep, stop, /*posted=*/true);
        });
        log_writes_.Leave();
      };
      log_writes_.Enter();
      if (held) {
        log_.PutResultAndStepAsync(held->first, std::move(held->second), std::move(step), std::move(then));
      } else {
        log_.AppendStepAsync(std::move(step), std::move(then));
      }
      return;
    }
    if (Status st = LogHeldResult(held, replay::Durability::kSynced); !st.ok())
      return Fail(r, ep, "error", st.message(), InfraReason::kLog);
    EndTurn(r, ep, stop);
  }

  // After a turn's step is logged: verify when it stopped, else the next turn.
  // `posted`: this already runs as a task of its own, queued behind the
  // others, so the next turn starts here.
  void EndTurn(const std::shared_ptr<Rollout>& r, Episode* ep, const std::optional<std::string>& stop,
               bool posted = false) {
    if (stop) return Verify(r, ep, *stop);
    // Post rather than loop so that episodes sharing the pool progress fairly.
    // Until NextTurn runs, the sandbox is idle (a rebuild may replace it).
    EnterIdle(r, ep, ep->step);
    if (posted) return NextTurn(r, ep);
    Post(r, [this, r, ep] { NextTurn(r, ep); });
  }

  // Logs a result RunToolCall held back, if any.
  Status LogHeldResult(std::optional<std::pair<replay::CallKey, std::string>>& held, replay::Durability durability) {
    if (!held) return Status::Ok();
    Status st = log_.PutResult(held->first, held->second, durability);
    held.reset();
    return st;
  }

  // One tool call through the log: replayed when its result is logged.
  // The intent is durable before the tool runs; the result of a live call is
  // left in `held` (key, serialized observation) for the caller to log, with
  // the step record or deferred before the next call. The time the tool
  // itself runs (live or re-applied) is added to `exec_us`.
  Result<v1::ObservationProto> RunToolCall(const std::shared_ptr<Rollout>& r, Episode* ep, const replay::CallKey& key,
                                           const std::string& name, const std::string& args,
                                           std::optional<std::pair<replay::CallKey, std::string>>* held,
                                           int64_t* exec_us) {
    std::string fp = replay::RequestFingerprint("tool\n" + name + "\n" + args);
    PADDOCK_ASSIGN_OR_RETURN(auto logged, log_.GetCall(key));
    uint32_t timeout_ms = ep->task->exec_timeout_s * 1000;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(ep->deadline - Clock::now()).count();
    timeout_ms = static_cast<uint32_t>(std::max<int64_t>(1000, std::min<int64_t>(timeout_ms, left)));
    if (logged && logged->request_fingerprint != fp)
      return Error(Code::kFailedPrecondition, "tool call {} was logged as another call ({}); not running '{}'",
                   key.ToString(), logged->request_summary, name);
    if (logged && logged->has_result) {
      v1::ObservationProto obs;
      if (!obs.ParseFromString(logged->result))
        return Error(Code::kDataLoss, "the logged result of {} does not parse", key.ToString());
      ep->summary.set_replayed_tool_calls(ep->summary.replayed_tool_calls() + 1);
      ep->summary.set_tool_calls(ep->summary.tool_calls() + 1);
      r->replayed_tools++;
      replayed_tools_++;
      if (ToolMutates(name) && ep->task->substrate != "function") {
        // Rebuild: the call's effect lived in a sandbox that is gone. (A
        // function sandbox keeps no state between calls: nothing to rebuild.)
        auto t0 = Clock::now();
        ToolOutcome again = RunTool(ep->sandbox.get(), *ep->task, name, args, timeout_ms);
        *exec_us += Us(Clock::now() - t0);
        ep->reapplied++;
        reapplied_++;
        if (again.content != obs.content()) ep->reapply_diffs++;
        ep->summary.set_rebuilt(true);
      }
      return obs;
    }
    if (logged) ep->in_doubt_reruns++;  // intent without result: ran, if at all, in a sandbox that is gone
    PADDOCK_RETURN_IF_ERROR(log_.PutIntent(key, fp, fmt::format("tool\nname={}\narguments={}", name, args.substr(0, 512)),
                                           !ToolMutates(name)));
    auto t0 = Clock::now();
    ToolOutcome out = RunTool(ep->sandbox.get(), *ep->task, name, args, timeout_ms);
    *exec_us += Us(Clock::now() - t0);
    v1::ObservationProto obs;
    obs.set_content(out.content);
    obs.set_exit_code(out.exit_code);
    held->emplace(key, obs.SerializeAsString());
    ep->summary.set_tool_calls(ep->summary.tool_calls() + 1);
    r->tool_calls++;
    live_tools_++;
    return obs;
  }

  void Verify(std::shared_ptr<Rollout> r, Episode* ep, const std::string& stop) {
    const Task& task = *ep->task;
    ep->summary.set_stop_reason(stop);
    double reward = 0;
    if (task.has_verifier && ep->sandbox) {
      auto t0 = Clock::now();
      replay::CallKey key{ep->id, kVerifierStep, 0};
      std::string fp = replay::RequestFingerprint("verifier\n" + task.verifier.command + "\n" + ep->submission);
      auto logged = log_.GetCall(key);
      if (!logged.ok()) return Fail(r, ep, "error", logged.status().message(), InfraReason::kLog);
      // A logged result is replayed unless the verifier failed in it (a crash,
      // a timeout): the verifier is idempotent, so a retry runs it again.
      json result;
      bool replay = false;
      if (logged->has_value() && (*logged)->has_result) {
        result = json::parse((*logged)->result, nullptr, false);
        replay = !JudgeVerifier(result, task.verifier).infra;
      }
      if (!replay) {
        // Deferred, intent and result: the verifier is idempotent (run again
        // if both are lost), and the episode's final record, written next
        // with a sync, makes them durable.
        if (!logged->has_value())
          if (Status st = log_.PutIntent(key, fp, "verifier\ncommand=" + task.verifier.command, true, {},
                                         replay::Durability::kDeferred);
              !st.ok())
            return Fail(r, ep, stop, st.message(), InfraReason::kLog);
        ExecRequest req;
        req.argv = {"/bin/sh", "-c", task.verifier.command};
        // Sealed from the agent: its processes are killed first and the shell
        // and every tool named without a path are the trusted busybox's, not
        // the sandbox's (which the agent may have replaced). A function
        // sandbox is sealed by construction (read-only root, nothing left of
        // earlier execs).
        if (task.substrate != "function") {
          if (auto toolset = VerifierToolset()) {
            req.argv = {"sh", "-c", task.verifier.command};
            req.trusted_program = *toolset;
          }
        }
        req.cwd = task.workdir;
        req.env = task.env;
        req.env["PADDOCK_ANSWER"] = ep->submission;
        req.env["PADDOCK_STOP_REASON"] = stop;
        req.timeout_ms = task.verifier.timeout_s * 1000;
        req.output_cap = 65536;
        auto res = ep->sandbox->Exec(req, nullptr);
        if (!res.ok() && !ep->sandbox->Alive()) return Relocate(r, ep, res.status().message());
        if (!res.ok()) return Fail(r, ep, stop, "running the verifier: " + res.status().message(), InfraReason::kVerifierError);
        result = {{"exit_code", res->timed_out ? 124 : res->exit_code},
                  {"signal", res->signal},
                  {"timed_out", res->timed_out},
                  {"stdout", res->stdout_data},
                  {"stderr", res->stderr_data.substr(0, 4096)}};
        if (Status st = log_.PutResult(key, result.dump(-1, ' ', false, json::error_handler_t::replace),
                                       replay::Durability::kDeferred);
            !st.ok())
          return Fail(r, ep, stop, st.message(), InfraReason::kLog);
      }
      std::string out = result.value("stdout", "");
      ep->summary.set_verifier_output(out.substr(0, 2000));
      ep->summary.mutable_timings()->set_verifier_us(Us(Clock::now() - t0));
      VerifierVerdict verdict = JudgeVerifier(result, task.verifier);
      if (verdict.infra) return Fail(r, ep, stop, verdict.why, *verdict.infra);
      reward = verdict.reward;
    }
    ep->summary.set_reward(reward);
    Complete(r, ep, "finished");
  }

  // An infra end (outcome class "infra", masked from training): run again
  // from the log when the rollout's retry_infra allows, else the final record.
  void Fail(std::shared_ptr<Rollout> r, Episode* ep, const std::string& stop, const std::string& why,
            InfraReason reason) {
    spdlog::warn("episode {} failed ({}, {}): {}", ep->id, stop, InfraReasonName(reason), why);
    if (RetryInfra(r, ep, reason, why)) return;
    ep->summary.set_stop_reason(stop);
    ep->summary.set_failure_reason(why);
    ep->summary.set_reward(0);
    SetInfraOutcome(ep->summary, reason);
    Complete(r, ep, "failed");
  }

  // Whether the episode runs again (from the log, in a new sandbox) after an
  // infra end: up to the rollout's retry_infra times, never while it stops.
  bool RetryInfra(const std::shared_ptr<Rollout>& r, Episode* ep, InfraReason reason, const std::string& why) {
    if (!InfraRetryable(reason) || ep->infra_retries >= r->req.retry_infra()) return false;
    {
      std::lock_guard lock(r->mu);
      if (r->stopping || ep->summary.state() == "cancelling") return false;
      r->infra_retries++;
      r->generation++;
    }
    ++ep->infra_retries;
    ep->retry_note += fmt::format("{}retry {}: {}: {}", ep->retry_note.empty() ? "" : "; ", ep->infra_retries,
                                  InfraReasonName(reason), why.substr(0, 300));
    spdlog::warn("episode {}: ended infra ({}); running it again from the log (retry {} of {})", ep->id,
                 InfraReasonName(reason), ep->infra_retries, r->req.retry_infra());
    Restart(r, ep, std::chrono::milliseconds(100 << std::min<uint32_t>(ep->infra_retries, 5)));
    return true;
  }

  // The end of an episode with a final record (finished or failed).
  void Complete(std::shared_ptr<Rollout> r, Episode* ep, const std::string& state) {
    ep->summary.set_state(state);
    if (ep->summary.outcome_class().empty()) SetAgentOutcome(ep->summary);
    ep->summary.set_group_id(GroupId(r->id, ep->task->id));
    ep->summary.set_infra_retries(ep->infra_retries);
    ep->summary.set_retry_note(ep->retry_note);
    ep->summary.mutable_timings()->set_queue_us(std::max<int64_t>(0, ep->queue_us));
    if (ep->min_epoch) {
      uint32_t lag = static_cast<uint32_t>(*ep->max_epoch - *ep->min_epoch);
      ep->summary.set_policy_lag(lag);
      ep->summary.set_stale(r->req.max_policy_lag() && lag > r->req.max_policy_lag());
      ep->summary.set_policy_version(ep->last_version);
    }
    ep->summary.set_prompt_tokens(ep->ctx ? ep->ctx->size() - ep->summary.generated_tokens() : 0);
    ep->summary.mutable_timings()->set_total_us(Us(Clock::now() - ep->started));
    if (ep->reapplied || ep->in_doubt_reruns) {
      ep->summary.set_rebuilt(true);
      ep->summary.set_rebuild_note(fmt::format(
          "sandbox rebuilt on resume: setup re-run, {} logged calls re-applied ({} with different output), "
          "{} in-doubt calls re-run",
          ep->reapplied, ep->reapply_diffs, ep->in_doubt_reruns));
    }
    v1::EpisodeRecordProto rec;
    auto old = log_.GetEpisode(ep->id);
    if (old.ok() && old->has_value()) rec = **old;
    rec.set_episode_id(ep->id);
    rec.set_state(state == "finished" ? v1::EpisodeRecordProto::FINISHED : v1::EpisodeRecordProto::FAILED);
    rec.set_total_reward(ep->summary.reward());
    rec.set_stop_reason(ep->summary.stop_reason());
    rec.set_failure_reason(ep->summary.failure_reason());
    if (!ep->relocation_note.empty()) {
      ep->summary.set_rebuilt(true);
      ep->summary.set_rebuild_note(ep->summary.rebuild_note().empty()
                                       ? ep->relocation_note
                                       : ep->relocation_note + "; " + ep->summary.rebuild_note());
    }
    if (!ep->summary.rebuild_note().empty()) rec.set_rebuild_note(ep->summary.rebuild_note());
    rec.set_model(r->policy_label);
    (*rec.mutable_labels())["paddock.rollout"] = r->id;
    (*rec.mutable_labels())["paddock.task"] = ep->task->id;
    (*rec.mutable_labels())["paddock.summary"] = SummaryJson(ep->summary);
    rec.set_updated_unix_ms(0);
    if (Status st = log_.PutEpisode(rec); !st.ok()) spdlog::error("episode {}: cannot log its end: {}", ep->id, st.message());
    ReleaseSandbox(ep);
    {
      std::lock_guard lock(r->mu);
      if (state == "finished") r->done++; else r->failed++;
      if (!ep->summary.train()) r->infra++;
      r->reward_sum += ep->summary.reward();
      r->finished.push_back(ep->summary);
      r->groups.Ended(ep->task_index, NowUnixMs());
      r->active--;
      ReleaseSlot(ep);
      r->generation++;
    }
    r->cv.notify_all();
    StartMore();
    MaybeFinishRollout(r);
  }

  // No sandbox could be had for now (a front with no node that can take it, a
  // draining daemon, a daemon full of sandboxes the engine does not run): the
  // episode waits, keeping its slot, retrying with backoff up to its
  // deadline, instead of failing; the rollout shows waiting_for_nodes.
  void WaitForSandbox(std::shared_ptr<Rollout> r, Episode* ep, const Status& why) {
    SetWaiting(r, ep, true);
    ep->create_backoff_ms = ep->create_backoff_ms ? std::min(ep->create_backoff_ms * 2, 5000) : 250;
    spdlog::warn("episode {}: no sandbox yet ({}); trying again in {} ms", ep->id, why.message(), ep->create_backoff_ms);
    auto timer = std::make_shared<asio::steady_timer>(io_, std::chrono::milliseconds(ep->create_backoff_ms));
    timer->async_wait([this, r, ep, timer](const boost::system::error_code&) {
      asio::post(pool_, [this, r, ep] {
        bool stop;
        {
          std::lock_guard lock(r->mu);
          stop = r->stopping || ep->summary.state() == "cancelling" || Clock::now() >= ep->deadline;
        }
        if (stop) {
          SetWaiting(r, ep, false);  // before StopBeforeStep ends the episode
          StopBeforeStep(r, ep);
          return;
        }
        Begin(r, ep);  // still counted as waiting while it tries
      });
    });
  }

  void SetWaiting(const std::shared_ptr<Rollout>& r, Episode* ep, bool waiting) {
    std::lock_guard lock(r->mu);
    if (ep->waiting_for_sandbox == waiting) return;
    ep->waiting_for_sandbox = waiting;
    if (waiting) {
      r->waiting_for_sandbox++;
    } else {
      r->waiting_for_sandbox--;
      ep->create_backoff_ms = 0;
    }
  }

  // The episode's sandbox is gone (its node was lost: rollout/fleet): the
  // episode starts again from the log in a new sandbox, placed elsewhere, as a
  // resume does: logged policy outputs and tool results are replayed, calls
  // that changed the sandbox are re-applied, a call in doubt runs again (its
  // sandbox was destroyed under the node's lease, so it ran, if at all, there).
  // A local sandbox that died (killed from outside, out of memory) is an infra
  // end, retried only as retry_infra allows.
  static constexpr uint32_t kMaxRelocations = 3;
  void Relocate(std::shared_ptr<Rollout> r, Episode* ep, const std::string& why) {
    bool on_node = ep->sandbox && !ep->sandbox->placement().empty();
    if (!on_node) return Fail(r, ep, "error", why, InfraReason::kSandboxLost);
    if (ep->relocations >= kMaxRelocations)
      return Fail(r, ep, "error", fmt::format("{} (the episode already moved {} times)", why, ep->relocations),
                  InfraReason::kSandboxLost);
    ++ep->relocations;
    ep->relocating = true;
    spdlog::warn("episode {}: {}; starting it again from the log in a new sandbox", ep->id, why);
    ep->relocation_note += fmt::format("{}moved to a new sandbox: {}", ep->relocation_note.empty() ? "" : "; ", why);
    // Built on the relocation threads, as an eager move is: on a saturated
    // front the blocking pool's queue holds turns for tens of seconds.
    Restart(r, ep, std::chrono::milliseconds(0), /*relocation=*/true);
  }

  // Starts the episode again from the log in a new sandbox, as a resume does:
  // logged policy outputs and tool results are replayed, calls that changed
  // the sandbox are re-applied, a call in doubt runs again.
  void Restart(const std::shared_ptr<Rollout>& r, Episode* ep, std::chrono::milliseconds delay,
               bool relocation = false) {
    if (ep->sandbox) {
      // Gone or unusable; destroying it releases what is left of it.
      ep->sandbox->WatchGone(nullptr);
      std::string id = ep->sandbox->id();
      ep->sandbox.reset();
      (void)manager_.Destroy(id);
    }
    ep->ctx.reset();
    v1::EpisodeSummary fresh;
    fresh.set_episode_id(ep->summary.episode_id());
    fresh.set_task_id(ep->summary.task_id());
    fresh.set_sample(ep->summary.sample());
    fresh.set_group_id(ep->summary.group_id());
    fresh.set_state("running");
    ep->summary = fresh;
    ep->logged_steps.clear();
    ep->step = 0;
    ep->last_request_size = 0;
    ep->unavailable_since.reset();
    ep->backoff_ms = 0;
    ep->consecutive_malformed = 0;
    ep->submission.clear();
    ep->submitted = false;
    ep->replaying = true;
    ep->reapplied = ep->reapply_diffs = ep->in_doubt_reruns = 0;
    ep->min_epoch.reset();
    ep->max_epoch.reset();
    ep->last_version.clear();
    if (relocation) return asio::post(reloc_pool_, [this, r, ep] { Begin(r, ep); });
    if (delay.count() == 0) return Post(r, [this, r, ep] { Begin(r, ep); });
    auto timer = std::make_shared<asio::steady_timer>(io_, delay);
    timer->async_wait([this, r, ep, timer](const boost::system::error_code&) {
      Post(r, [this, r, ep] { Begin(r, ep); });
    });
  }

  // ---- eager relocation ----------------------------------------------------
  // A sandbox on a front's node reports itself gone when the node is declared
  // lost (Sandbox::WatchGone), i.e. after the node's lease fenced it: nothing
  // of it runs anywhere. An episode whose sandbox is idle (it waits on the
  // policy, or its next turn is queued) then gets a new sandbox at once, built on relocation threads of its own (at most
  // relocation_threads at a time, so that a thousand rebuilds neither starve
  // the turns on the blocking pool nor wait behind them): created (placed on
  // another node), setup re-run, the logged calls that changed the old one
  // re-applied in order — what a resume does, without replaying the turns.
  // The policy's answer, if it comes first, waits for the rebuild, then its
  // calls run in the new sandbox. An episode whose step is running (a call, a
  // setup, the verifier) sees the loss in that call and starts again from the
  // log (Relocate). A rebuild that fails leaves the gone sandbox in place: the
  // next call meets it, and Relocate takes over. The episode keeps its slot
  // and its turn: the move is its work, not a new episode's.

  // After ep->sandbox is set (by the step in flight).
  void WatchSandbox(const std::shared_ptr<Rollout>& r, Episode* ep) {
    uint64_t serial;
    {
      std::lock_guard l(ep->reloc_mu);
      serial = ++ep->sandbox_serial;
      ep->gone_reported = false;
    }
    std::weak_ptr<Rollout> wr = r;
    // On the node's heartbeat thread: only notes it and queues the rebuild.
    ep->sandbox->WatchGone([this, wr, ep, serial] {
      if (auto r = wr.lock()) OnSandboxGone(r, ep, serial);
    });
  }

  void OnSandboxGone(const std::shared_ptr<Rollout>& r, Episode* ep, uint64_t serial) {
    bool start = false;
    {
      std::lock_guard l(ep->reloc_mu);
      if (serial != ep->sandbox_serial) return;  // a sandbox it no longer uses
      ep->gone_reported = true;
      if (ep->idle && !ep->rebuilding) start = ep->rebuilding = true;
    }
    if (start) asio::post(reloc_pool_, [this, r, ep, serial] { Rebuild(r, ep, serial); });
  }

  // The step lets go of the sandbox (its turn goes to the policy, or its next
  // turn is queued) with `through` turns finished: until LeaveIdle a rebuild
  // may replace the sandbox, re-applying those turns' calls.
  void EnterIdle(const std::shared_ptr<Rollout>& r, Episode* ep, uint64_t through) {
    bool start = false;
    uint64_t serial;
    {
      std::lock_guard l(ep->reloc_mu);
      ep->idle = true;
      ep->idle_through = through;
      if (ep->gone_reported && ep->sandbox && !ep->rebuilding) start = ep->rebuilding = true;
      serial = ep->sandbox_serial;
    }
    if (start) asio::post(reloc_pool_, [this, r, ep, serial] { Rebuild(r, ep, serial); });
  }

  // The step takes the sandbox back (the policy answered, the next turn
  // starts): false while a rebuild runs, the step then parked (`park()` makes
  // its continuation) until it ends; true otherwise, with a sandbox rebuilt
  // meanwhile adopted.
  template <typename Park>
  bool LeaveIdle(const std::shared_ptr<Rollout>& r, Episode* ep, Park&& park) {
    std::shared_ptr<Sandbox> fresh;
    std::string note;
    uint32_t reapplied = 0, diffs = 0;
    {
      std::lock_guard l(ep->reloc_mu);
      ep->idle = false;
      if (ep->rebuilding) {
        ep->after_rebuild = park();
        return false;
      }
      if (!ep->rebuilt) return true;
      fresh = std::move(ep->rebuilt);
      note = std::move(ep->rebuilt_note);
      reapplied = std::exchange(ep->rebuilt_reapplied, 0);
      diffs = std::exchange(ep->rebuilt_diffs, 0);
    }
    if (ep->sandbox) {
      ep->sandbox->WatchGone(nullptr);
      std::string id = ep->sandbox->id();
      ep->sandbox.reset();
      (void)manager_.Destroy(id);  // gone with its node: this releases the front's record of it
    }
    ep->sandbox = std::move(fresh);
    WatchSandbox(r, ep);
    ++ep->relocations;
    ep->relocation_note += fmt::format("{}moved to a new sandbox: {}", ep->relocation_note.empty() ? "" : "; ", note);
    ep->reapplied += reapplied;
    ep->reapply_diffs += diffs;
    ep->summary.set_sandbox_id(ep->sandbox->id());
    ep->summary.set_rebuilt(true);
    return true;
  }

  // On a relocation thread, while the episode's sandbox is idle (its step
  // does not touch what is read here until the rebuild ends).
  void Rebuild(std::shared_ptr<Rollout> r, Episode* ep, uint64_t serial) {
    bool stop;
    {
      std::lock_guard lock(r->mu);
      stop = r->stopping || ep->summary.state() == "cancelling";
    }
    std::shared_ptr<Sandbox> fresh;
    std::string note;
    uint32_t reapplied = 0, diffs = 0;
    if (!stop && !draining_ && ep->relocations < kMaxRelocations && Clock::now() < ep->deadline && ep->sandbox) {
      const std::string old_id = ep->sandbox->id(), old_where = ep->sandbox->placement();
      auto t0 = Clock::now();
      uint64_t through;
      {
        std::lock_guard l(ep->reloc_mu);
        through = ep->idle_through;
      }
      auto built = BuildElsewhere(*r, *ep, through, &reapplied, &diffs);
      if (built.ok()) {
        fresh = std::move(*built);
        note = fmt::format("sandbox {} on node {} was lost; rebuilt as {} on node {} in {} ms, before its next call",
                           old_id, old_where, fresh->id(), fresh->placement(), Us(Clock::now() - t0) / 1000);
        spdlog::info("episode {}: {}", ep->id, note);
      } else {
        spdlog::warn("episode {}: sandbox {} on node {} was lost; rebuilding it ahead of its next call failed ({}): "
                     "its next call moves it",
                     ep->id, old_id, old_where, built.status().message());
      }
    }
    std::function<void()> resume;
    bool stale = false;
    {
      std::lock_guard l(ep->reloc_mu);
      ep->rebuilding = false;
      if (fresh && serial == ep->sandbox_serial) {
        ep->rebuilt = fresh;
        ep->rebuilt_note = std::move(note);
        ep->rebuilt_reapplied = reapplied;
        ep->rebuilt_diffs = diffs;
        ep->gone_reported = false;
      } else {
        stale = fresh != nullptr;
      }
      resume = std::move(ep->after_rebuild);
    }
    if (stale) (void)manager_.Destroy(fresh->id());
    else if (fresh) {
      relocated_++;
      eager_relocations_++;
    }
    if (resume) Post(r, std::move(resume));
  }

  // A new sandbox for the episode, ready for its next call: created (placed
  // anew), its record updated, setup re-run, and (but for function sandboxes,
  // which keep nothing between calls) the logged calls of its finished turns
  // that changed the old sandbox re-applied in order, as a resume does.
  Result<std::shared_ptr<Sandbox>> BuildElsewhere(const Rollout& r, const Episode& ep, uint64_t through,
                                                  uint32_t* reapplied, uint32_t* diffs) {
    const Task& task = *ep.task;
    PADDOCK_ASSIGN_OR_RETURN(auto info, manager_.Create(EpisodeSpec(r, ep)));
    auto got = manager_.Get(info.id);
    if (!got.ok()) return got.status();
    std::shared_ptr<Sandbox> sb = *got;
    auto undo = [&](Status st) {
      (void)manager_.Destroy(info.id);
      return st;
    };
    v1::EpisodeRecordProto rec;
    rec.set_episode_id(ep.id);
    rec.set_state(v1::EpisodeRecordProto::RUNNING);
    rec.set_task(task.instruction.substr(0, 4096));
    rec.set_model(r.policy_label);
    rec.set_sandbox_id(info.id);
    (*rec.mutable_labels())["paddock.rollout"] = r.id;
    (*rec.mutable_labels())["paddock.task"] = task.id;
    if (std::string where = sb->placement(); !where.empty()) (*rec.mutable_labels())["paddock.node"] = where;
    rec.set_rebuild_note("moved: a new sandbox was built for the episode after its node was lost");
    if (Status st = log_.PutEpisode(rec); !st.ok()) return undo(st);
    for (size_t i = 0; i < task.setup.size(); ++i) {
      auto res = sb->Exec(SetupRequest(task, i), nullptr);
      if (!res.ok()) return undo(res.status().Prefix(fmt::format("setup[{}]", i)));
      if (res->exit_code != 0 || res->signal || res->timed_out)
        return undo(Error(Code::kFailedPrecondition, "setup[{}] failed (exit {})", i, res->exit_code));
    }
    if (task.substrate == "function") return sb;
    PADDOCK_ASSIGN_OR_RETURN(auto steps, log_.ReadSteps(ep.id));
    uint32_t timeout_ms = task.exec_timeout_s * 1000;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(ep.deadline - Clock::now()).count();
    timeout_ms = static_cast<uint32_t>(std::max<int64_t>(1000, std::min<int64_t>(timeout_ms, left)));
    for (const auto& s : steps) {
      if (s.step() > through) continue;  // a turn not finished yet (or, replaying, not replayed yet)
      uint32_t index = 0;
      for (const auto& tc : s.tool_calls()) {
        replay::CallKey key{ep.id, s.step(), ++index};
        if (!ToolMutates(tc.name())) continue;
        auto logged = log_.GetCall(key);
        if (!logged.ok()) return undo(logged.status());
        if (!logged->has_value() || !(*logged)->has_result)
          return undo(Error(Code::kFailedPrecondition, "call {} is in doubt", key.ToString()));
        v1::ObservationProto obs;
        if (!obs.ParseFromString((*logged)->result))
          return undo(Error(Code::kDataLoss, "the logged result of {} does not parse", key.ToString()));
        ToolOutcome again = RunTool(sb.get(), task, tc.name(), tc.arguments_json(), timeout_ms);
        if (!sb->Alive()) return undo(Error(Code::kUnavailable, "the new sandbox was lost while {} was re-applied", key.ToString()));
        ++*reapplied;
        reapplied_++;
        if (again.content != obs.content()) ++*diffs;
      }
    }
    return sb;
  }

  // The end of an episode without a final record (cancel, drain): resumable.
  void Interrupt(std::shared_ptr<Rollout> r, Episode* ep, bool cancelled) {
    ReleaseSandbox(ep);
    {
      std::lock_guard lock(r->mu);
      ep->summary.set_state(cancelled ? "cancelled" : "pending");
      if (cancelled) r->cancelled_count++;
      r->active--;
      ReleaseSlot(ep);
      r->generation++;
    }
    r->cv.notify_all();
    StartMore();
    MaybeFinishRollout(r);
  }

  void ReleaseSandbox(Episode* ep) {
    if (ep->sandbox) {
      ep->sandbox->WatchGone(nullptr);
      std::string id = ep->sandbox->id();
      ep->sandbox.reset();
      if (Status st = manager_.Destroy(id); !st.ok())
        spdlog::warn("episode {}: destroying sandbox {}: {}", ep->id, id, st.message());
    }
    ep->ctx.reset();
  }

  // The verifier's trusted program, read once; null (with one warning) when
  // it cannot be read.
  std::shared_ptr<const std::string> VerifierToolset() {
    std::call_once(toolset_once_, [this] {
      std::ifstream in(options_.verifier_toolset, std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (!in.good() && !in.eof()) bytes.clear();
      if (!IsStaticElf64(bytes)) {
        spdlog::warn("verifier toolset {} is not a readable static x86-64 program (install busybox-static): "
                     "verifiers run the sandbox's own /bin/sh, which the agent can replace",
                     options_.verifier_toolset);
        return;
      }
      toolset_ = std::make_shared<const std::string>(std::move(bytes));
    });
    return toolset_;
  }

  SandboxManager& manager_;
  replay::TrajectoryLog& log_;
  EngineOptions options_;
  FairScheduler scheduler_;  // which rollout's episode starts next
  std::once_flag toolset_once_;
  std::shared_ptr<const std::string> toolset_;
  // Asynchronous step writes whose completion has not yet posted its turn.
  class InFlight {
   public:
    void Enter() {
      std::lock_guard lock(mu_);
      ++count_;
    }
    void Leave() {
      std::lock_guard lock(mu_);
      if (--count_ == 0) cv_.notify_all();
    }
    void WaitIdle() {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return count_ == 0; });
    }

   private:
    std::mutex mu_;
    std::condition_variable cv_;
    uint64_t count_ = 0;
  };
  InFlight log_writes_;
  asio::thread_pool pool_;
  asio::thread_pool reloc_pool_;  // eager rebuilds (EngineOptions::relocation_threads)
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::thread io_thread_;
  std::atomic<bool> draining_{false};

  std::mutex tok_mu_;
  std::shared_ptr<const v4::Tokenizer> tokenizer_;

  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Rollout>> rollouts_;
  std::map<uint64_t, std::shared_ptr<Rollout>> flows_;  // running rollouts by scheduler flow
  uint64_t last_flow_ = 0;
  std::mutex acks_mu_;  // consumers' acknowledgements: read, add, write as one step

  std::atomic<uint64_t> turns_{0}, live_policy_{0}, replayed_policy_{0}, live_tools_{0}, replayed_tools_{0},
      reapplied_{0}, relocated_{0}, eager_relocations_{0};
  std::atomic<int64_t> resume_to_live_us_{-1};
};

RolloutEngine::RolloutEngine(SandboxManager& manager, replay::TrajectoryLog& log, EngineOptions options)
    : impl_(std::make_unique<Impl>(manager, log, std::move(options))) {}
RolloutEngine::~RolloutEngine() = default;
Result<v1::StartRolloutResponse> RolloutEngine::Start(v1::StartRolloutRequest r, bool local_client) {
  return impl_->Start(std::move(r), local_client);
}
Result<v1::ResumeRolloutResponse> RolloutEngine::Resume(const v1::ResumeRolloutRequest& r, bool local_client) {
  return impl_->Resume(r, local_client);
}
Result<uint32_t> RolloutEngine::Cancel(const std::string& r, const std::string& e) { return impl_->Cancel(r, e); }
Result<v1::RolloutProgress> RolloutEngine::Progress(const std::string& r) { return impl_->Progress(r); }
Result<std::vector<v1::RolloutProgress>> RolloutEngine::List(size_t limit) { return impl_->List(limit); }
Result<v1::EpisodeDetail> RolloutEngine::GetEpisode(const std::string& e) { return impl_->GetEpisode(e); }
Status RolloutEngine::Watch(const v1::WatchRequest& r, const std::function<bool(const v1::RolloutEvent&)>& send,
                            const std::function<bool()>& stop) {
  return impl_->Watch(r, send, stop);
}
Status RolloutEngine::Export(const std::string& r, bool u, const std::function<bool(const std::string&)>& sink) {
  return impl_->Export(r, u, sink);
}
Status RolloutEngine::StreamGroups(const v1::StreamGroupsRequest& r,
                                   const std::function<bool(const v1::EpisodeGroup&)>& send,
                                   const std::function<bool()>& stop) {
  return impl_->StreamGroups(r, send, stop);
}
Result<v1::AckGroupsResponse> RolloutEngine::AckGroups(const v1::AckGroupsRequest& r) { return impl_->AckGroups(r); }
Result<v1::ForkEpisodeResponse> RolloutEngine::Fork(const v1::ForkEpisodeRequest& r, bool local_client) {
  return impl_->Fork(r, local_client);
}
Result<v1::UpdatePolicyResponse> RolloutEngine::UpdatePolicy(const v1::UpdatePolicyRequest& r) {
  return impl_->UpdatePolicy(r);
}
void RolloutEngine::Drain(std::chrono::milliseconds grace) { impl_->Drain(grace); }
EngineStats RolloutEngine::stats() const { return impl_->stats(); }

}  // namespace paddock::rollout
