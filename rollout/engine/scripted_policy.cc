#include "rollout/engine/scripted_policy.h"

#include <algorithm>
#include <condition_variable>
#include <queue>
#include <random>
#include <thread>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "policy/v4/encode/encoder.h"

namespace paddock::rollout {

Result<std::unique_ptr<ScriptedPolicy>> ScriptedPolicy::Create(std::shared_ptr<const v4::Tokenizer> tokenizer,
                                                              const std::string& script_json) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(script_json);
  } catch (const nlohmann::json::parse_error& e) {
    return Error(Code::kInvalidArgument, "policy script: not valid JSON: {}", e.what());
  }
  std::unique_ptr<ScriptedPolicy> p(new ScriptedPolicy());
  if (j.is_object()) {
    if (j.contains("latency_ms")) {
      const auto& l = j["latency_ms"];
      if (!l.is_array() || l.size() != 2 || !l[0].is_number_unsigned() || !l[1].is_number_unsigned() ||
          l[0].get<uint64_t>() > l[1].get<uint64_t>() || l[1].get<uint64_t>() > 3'600'000)
        return Error(Code::kInvalidArgument, "policy script: latency_ms must be [MIN, MAX] in ms, MIN <= MAX <= 3600000");
      p->latency_min_ = std::chrono::milliseconds(l[0].get<uint64_t>());
      p->latency_max_ = std::chrono::milliseconds(l[1].get<uint64_t>());
    }
    if (j.contains("by_prompt")) {
      const auto& b = j["by_prompt"];
      if (!b.is_array() || b.empty())
        return Error(Code::kInvalidArgument, "policy script: by_prompt must be a non-empty array");
      for (size_t i = 0; i < b.size(); ++i) {
        const auto& e = b[i];
        if (!e.is_object() || !e.contains("match") || !e["match"].is_string() || e["match"].get<std::string>().empty() ||
            !e.contains("completions") || !e["completions"].is_array() || e["completions"].empty())
          return Error(Code::kInvalidArgument,
                       "policy script: by_prompt[{}] must be {{\"match\": TEXT, \"completions\": [...]}}", i);
        ByPrompt bp{e["match"].get<std::string>(), {}};
        for (const auto& c : e["completions"]) {
          if (!c.is_string())
            return Error(Code::kInvalidArgument, "policy script: by_prompt[{}] has a completion that is not a string", i);
          bp.completions.push_back(c.get<std::string>());
        }
        p->by_prompt_.push_back(std::move(bp));
      }
      if (!j.contains("completions")) j["completions"] = nlohmann::json::array({""});
    }
    nlohmann::json c = j.contains("completions") ? j["completions"] : nlohmann::json();
    j = std::move(c);
  }
  if (!j.is_array() || j.empty())
    return Error(Code::kInvalidArgument,
                 "policy script: must be a non-empty JSON array of completions (or an object with \"completions\")");
  for (size_t i = 0; i < j.size(); ++i) {
    if (!j[i].is_string()) return Error(Code::kInvalidArgument, "policy script: element {} is not a string", i);
    p->script_.push_back(j[i].get<std::string>());
  }
  auto id = tokenizer->TokenId(v4::kAssistantToken);
  if (!id) return Error(Code::kFailedPrecondition, "the tokenizer has no <｜Assistant｜> token");
  p->assistant_id_ = *id;
  p->tokenizer_ = std::move(tokenizer);
  p->cache_.resize(0);
  return p;
}

const std::vector<int32_t>& ScriptedPolicy::Ids(size_t turn) {
  std::lock_guard lock(mu_);
  if (cache_.size() <= turn) cache_.resize(turn + 1);
  auto& ids = cache_[turn];
  if (ids.empty()) {
    std::string text = script_[std::min(turn, script_.size() - 1)];
    for (size_t p; (p = text.find("{turn}")) != std::string::npos;) text.replace(p, 6, std::to_string(turn));
    for (uint32_t id : tokenizer_->Encode(text)) ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

Result<policy::GenerateResult> ScriptedPolicy::Generate(const policy::GenerateRequest& request,
                                                        const policy::CallOptions& options) {
  if (options.cancel && options.cancel->cancelled()) return Error(Code::kCancelled, "scripted policy: cancelled");
  if (request.input_ids.empty()) return Error(Code::kInvalidArgument, "scripted policy: no input_ids");
  size_t assistants = std::count(request.input_ids.begin(), request.input_ids.end(),
                                 static_cast<int32_t>(assistant_id_));
  size_t turn = assistants == 0 ? 0 : assistants - 1;
  policy::GenerateResult r;
  if (!by_prompt_.empty()) {
    std::vector<uint32_t> in(request.input_ids.begin(), request.input_ids.end());
    std::string prompt = tokenizer_->Decode(in);
    const ByPrompt* hit = nullptr;
    for (const auto& e : by_prompt_)
      if (prompt.find(e.match) != std::string::npos) {
        hit = &e;
        break;
      }
    if (!hit && script_.size() == 1 && script_[0].empty())
      return Error(Code::kInvalidArgument, "scripted policy: no by_prompt entry matches the prompt");
    if (hit) {
      std::string text = hit->completions[std::min(turn, hit->completions.size() - 1)];
      std::string last;
      size_t open = prompt.rfind("<tool_result>");
      if (open != std::string::npos) {
        open += std::string_view("<tool_result>").size();
        size_t end = prompt.find("</tool_result>", open);
        last = prompt.substr(open, end == std::string::npos ? std::string::npos : end - open);
        if (size_t nl = last.find('\n'); nl != std::string::npos) last.resize(nl);
      }
      for (size_t p; (p = text.find("{turn}")) != std::string::npos;) text.replace(p, 6, std::to_string(turn));
      for (size_t p = 0; (p = text.find("{last_output}", p)) != std::string::npos; p += last.size())
        text.replace(p, 13, last);
      for (uint32_t id : tokenizer_->Encode(text)) r.output_ids.push_back(static_cast<int32_t>(id));
    } else {
      r.output_ids = Ids(turn);
    }
  } else {
    r.output_ids = Ids(turn);
  }
  if (r.output_ids.size() > static_cast<size_t>(request.sampling.max_new_tokens)) {
    r.output_ids.resize(request.sampling.max_new_tokens);
    r.finish_reason = policy::FinishReason::kLength;
  } else {
    r.finish_reason = policy::FinishReason::kEos;
  }
  r.logprobs.assign(r.output_ids.size(), 0.0f);
  std::vector<uint32_t> u(r.output_ids.begin(), r.output_ids.end());
  r.text = tokenizer_->Decode(u);
  r.token_exact = true;
  r.attempts = 1;
  return r;
}

// Delayed answers: a min-heap of deadlines over the pending answers, one thread.
// Shared with the thread, so that a policy destroyed from one of its own
// callbacks (the last reference to a rollout dropped there) leaves it safely.
struct ScriptedPolicy::Timer {
  using Clock = std::chrono::steady_clock;
  struct Pending {
    Callback done;
    Result<policy::GenerateResult> result;
    std::shared_ptr<policy::CancelToken> cancel;
    uint64_t registration = 0;
  };
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  uint64_t next = 1;
  std::unordered_map<uint64_t, Pending> pending;
  std::priority_queue<std::pair<Clock::time_point, uint64_t>, std::vector<std::pair<Clock::time_point, uint64_t>>,
                      std::greater<>>
      heap;
  std::thread thread;

  static void Add(const std::shared_ptr<Timer>& self, Clock::time_point at, Pending p) {
    self->AddImpl(self, at, std::move(p));
  }
  void AddImpl(const std::weak_ptr<Timer>& weak, Clock::time_point at, Pending p) {
    std::shared_ptr<policy::CancelToken> cancel = p.cancel;
    uint64_t id;
    {
      std::lock_guard l(mu);
      id = next++;
      pending.emplace(id, std::move(p));
      heap.emplace(at, id);
    }
    cv.notify_one();
    if (cancel) {
      // Cancelled: answered at once (the deadline moves to now).
      uint64_t reg = cancel->Register([weak, id] {
        auto self = weak.lock();
        if (!self) return;
        auto& mu = self->mu;
        auto& pending = self->pending;
        auto& heap = self->heap;
        {
          std::lock_guard l(mu);
          auto it = pending.find(id);
          if (it == pending.end()) return;
          it->second.result = Error(Code::kCancelled, "scripted policy: cancelled");
          heap.emplace(Clock::now(), id);
        }
        self->cv.notify_one();
      });
      std::lock_guard l(mu);
      if (auto it = pending.find(id); it != pending.end()) it->second.registration = reg;
      else if (reg) cancel->Unregister(reg);
    }
  }

  void Loop() {
    std::unique_lock l(mu);
    while (!stop) {
      if (heap.empty()) {
        cv.wait(l);
        continue;
      }
      auto [at, id] = heap.top();
      if (Clock::now() < at) {
        cv.wait_until(l, at);
        continue;
      }
      heap.pop();
      auto it = pending.find(id);
      if (it == pending.end()) continue;  // answered already (cancelled earlier)
      Pending p = std::move(it->second);
      pending.erase(it);
      l.unlock();
      if (p.cancel && p.registration) p.cancel->Unregister(p.registration);
      p.done(std::move(p.result));
      l.lock();
    }
  }
};

ScriptedPolicy::~ScriptedPolicy() {
  if (!timer_) return;
  {
    std::lock_guard l(timer_->mu);
    timer_->stop = true;
  }
  timer_->cv.notify_all();
  if (timer_->thread.get_id() == std::this_thread::get_id()) {
    // Destroyed from one of its own answers: the thread ends by itself and
    // keeps the state alive until then.
    timer_->thread.detach();
  } else if (timer_->thread.joinable()) {
    timer_->thread.join();
  }
}

void ScriptedPolicy::GenerateAsync(policy::GenerateRequest request, policy::CallOptions options, Callback done) {
  if (latency_max_.count() == 0) return done(Generate(request, options));
  // Answered now, delivered later: the request (the whole context) is not kept.
  auto result = Generate(request, options);
  std::chrono::milliseconds delay = latency_min_;
  if (latency_max_ > latency_min_) {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    delay = std::chrono::milliseconds(
        std::uniform_int_distribution<int64_t>(latency_min_.count(), latency_max_.count())(rng));
  }
  {
    std::lock_guard l(mu_);
    if (!timer_) {
      timer_ = std::make_shared<Timer>();
      timer_->thread = std::thread([t = timer_] { t->Loop(); });
    }
  }
  Timer::Add(timer_, Timer::Clock::now() + delay, Timer::Pending{std::move(done), std::move(result), options.cancel, 0});
}

}  // namespace paddock::rollout
