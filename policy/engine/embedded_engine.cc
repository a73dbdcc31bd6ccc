#include "policy/engine/embedded_engine.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <list>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "policy/engine/sampler.h"

namespace paddock::policy::engine {

const char* FinishName(Finish finish) {
  switch (finish) {
    case Finish::kEos: return "eos";
    case Finish::kLength: return "length";
    case Finish::kStopToken: return "stop_token";
    case Finish::kConstraintComplete: return "constraint_complete";
    case Finish::kCancelled: return "cancelled";
  }
  return "unknown";
}

namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

struct Request {
  GenerateJob job;
  std::promise<Result<GenerateOutput>> promise;
};

struct Active {
  std::unique_ptr<Request> req;
  std::shared_ptr<Model> model;  // the weights this request runs on, start to end
  uint64_t generation = 0;       // of `model`
  SequenceState state;
  std::vector<int32_t> fed;  // tokens fed into `state`, in order
  size_t prompt_fed = 0;     // prompt tokens in `fed`
  int32_t next = -1;         // sampled, not yet fed
  GenerateOutput out;
  SequenceRng rng{0};
  std::vector<uint8_t> allowed;
  Clock::time_point admitted, first_token;
  bool done = false;
};

struct CachedPrefix {
  std::vector<int32_t> tokens;
  SequenceState state;
  size_t bytes;
};

}  // namespace

struct EmbeddedEngine::Impl {
  Config config;  // the same for every model this engine loads
  EngineOptions options;
  mutable std::mutex mu;
  std::condition_variable cv;
  // The weights new requests are admitted on; replaced by UpdateWeightsFromDisk.
  std::shared_ptr<Model> model;
  uint64_t generation = 1;      // bumped by each update
  uint64_t abort_below = 0;     // cancel running requests of generations below this
  std::string version;
  std::string description;
  std::deque<std::unique_ptr<Request>> queue;
  bool stop = false;
  EngineStats stats;
  std::mutex update_mu;  // one update at a time, so versions apply in call order
  // Worker-only state.
  std::list<CachedPrefix> prefixes;  // most recent first, all of generation `cache_generation`
  uint64_t cache_generation = 1;
  size_t prefix_bytes = 0;
  std::thread worker;

  static std::string Describe(const Model& m) {
    return fmt::format("{}; weights {}; threads {}{}", m.config().Describe(), m.weights().source, m.threads(),
                       m.exact_kv() ? "; exact KV (float32 entries and indexer keys)" : "");
  }
  void Run();
  void Admit(std::unique_ptr<Request> req, std::vector<Active>& active, const std::shared_ptr<Model>& model,
             uint64_t gen, const std::string& version);
  // One decoding step of the active requests that run on `model`.
  void Step(Model& model, std::vector<Active>& active, std::vector<float>& logits);
  void Finish(Active& a, engine::Finish how);
  void Remember(std::vector<int32_t> tokens, SequenceState state, uint64_t gen);
};

EmbeddedEngine::EmbeddedEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
  impl_->worker = std::thread([this] { impl_->Run(); });
}

Result<std::unique_ptr<EmbeddedEngine>> EmbeddedEngine::Create(const EngineOptions& options) {
  auto config = ConfigByName(options.config);
  if (!config.ok()) return config.status();
  Result<Weights> weights = options.weights_path.empty()
                                ? SeededWeights(config.value(), options.weight_seed)
                                : LoadSafetensors(options.weights_path, config.value());
  if (!weights.ok()) return weights.status();
  auto model = Model::Create(std::move(weights.value()), options.threads, options.exact_kv);
  if (!model.ok()) return model.status();
  return Create(std::move(model.value()), options);
}

std::unique_ptr<EmbeddedEngine> EmbeddedEngine::Create(std::unique_ptr<Model> model,
                                                       const EngineOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->description = Impl::Describe(*model);
  impl->version = options.weight_version.empty() ? DefaultWeightVersion(model->weights()) : options.weight_version;
  impl->config = model->config();
  impl->model = std::move(model);
  impl->options = options;
  if (impl->options.max_batch == 0) impl->options.max_batch = 1;
  if (impl->options.prefill_chunk == 0) impl->options.prefill_chunk = 1;
  return std::unique_ptr<EmbeddedEngine>(new EmbeddedEngine(std::move(impl)));
}

EmbeddedEngine::~EmbeddedEngine() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  impl_->worker.join();
}

int32_t EmbeddedEngine::vocab_size() const { return impl_->config.vocab_size; }
int32_t EmbeddedEngine::eos_token_id() const { return impl_->config.eos_token_id; }
size_t EmbeddedEngine::max_context() const { return impl_->config.max_context; }

std::string EmbeddedEngine::describe() const {
  std::lock_guard lock(impl_->mu);
  return impl_->description;
}

std::string EmbeddedEngine::weight_version() const {
  std::lock_guard lock(impl_->mu);
  return impl_->version;
}

std::string EmbeddedEngine::weights_source() const {
  std::lock_guard lock(impl_->mu);
  return impl_->model->weights().source;
}

std::shared_ptr<const Model> EmbeddedEngine::model() const {
  std::lock_guard lock(impl_->mu);
  return impl_->model;
}

Result<WeightUpdateResult> EmbeddedEngine::UpdateWeightsFromDisk(const WeightUpdate& update) {
  std::lock_guard serial(impl_->update_mu);
  auto started = Clock::now();
  auto fail = [&](Status st) {
    std::lock_guard lock(impl_->mu);
    ++impl_->stats.weight_update_failures;
    return st;
  };
  if (update.path.empty()) return fail(Error(Code::kInvalidArgument, "the weights path is empty"));
  // Loaded and checked here, on the caller's thread: the worker keeps
  // generating on the old weights meanwhile.
  auto weights = LoadSafetensors(update.path, impl_->config);
  if (!weights.ok()) return fail(weights.status());
  std::string version = update.version.empty() ? DefaultWeightVersion(weights.value()) : update.version;
  int threads;
  bool exact_kv;
  {
    std::lock_guard lock(impl_->mu);
    threads = impl_->model->threads();
    exact_kv = impl_->model->exact_kv();
  }
  auto model = Model::Create(std::move(weights.value()), threads, exact_kv);
  if (!model.ok()) return fail(model.status());
  std::shared_ptr<Model> next = std::move(model.value());
  WeightUpdateResult result;
  result.version = version;
  result.load_ms = Ms(Clock::now() - started);
  std::shared_ptr<Model> old;  // freed (its pool joined) after the lock, when no request holds it
  {
    std::lock_guard lock(impl_->mu);
    result.still_running = impl_->stats.active;
    old = std::move(impl_->model);
    impl_->model = next;
    impl_->description = Impl::Describe(*next);
    impl_->version = version;
    ++impl_->generation;
    if (update.abort_in_flight) {
      impl_->abort_below = impl_->generation;
      result.aborted = result.still_running;
      result.still_running = 0;
    }
    ++impl_->stats.weight_updates;
  }
  impl_->cv.notify_all();
  return result;
}

EngineStats EmbeddedEngine::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

Result<GenerateOutput> EmbeddedEngine::Generate(GenerateJob job) {
  const Config& c = impl_->config;
  const Sampling& s = job.sampling;
  if (job.prompt.empty()) return Error(Code::kInvalidArgument, "prompt is empty: at least one token id is needed");
  for (size_t i = 0; i < job.prompt.size(); ++i)
    if (job.prompt[i] < 0 || job.prompt[i] >= c.vocab_size)
      return Error(Code::kInvalidArgument, "prompt token {} at position {} is outside the vocabulary [0, {})",
                   job.prompt[i], i, c.vocab_size);
  if (job.prompt.size() >= c.max_context)
    return Error(Code::kInvalidArgument, "prompt of {} tokens leaves no room in the context of {} tokens",
                 job.prompt.size(), c.max_context);
  if (!(s.temperature >= 0) || !std::isfinite(s.temperature))
    return Error(Code::kInvalidArgument, "temperature must be >= 0, got {}", s.temperature);
  if (!(s.top_p > 0 && s.top_p <= 1)) return Error(Code::kInvalidArgument, "top_p must be in (0, 1], got {}", s.top_p);
  if (s.top_k < 0) return Error(Code::kInvalidArgument, "top_k must be >= 0 (0: no cut), got {}", s.top_k);
  if (s.max_new_tokens < 0) return Error(Code::kInvalidArgument, "max_new_tokens must be >= 0, got {}", s.max_new_tokens);
  if (s.max_new_tokens == 0) {
    GenerateOutput out;
    out.finish = Finish::kLength;
    out.prompt_tokens = job.prompt.size();
    out.weight_version = weight_version();
    return out;
  }
  auto req = std::make_unique<Request>();
  req->job = std::move(job);
  auto future = req->promise.get_future();
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->stop) return Error(Code::kCancelled, "the engine is shutting down");
    impl_->queue.push_back(std::move(req));
  }
  impl_->cv.notify_all();
  return future.get();
}

void EmbeddedEngine::Impl::Remember(std::vector<int32_t> tokens, SequenceState state, uint64_t gen) {
  // A state computed by replaced weights is of no use to later requests.
  if (options.prefix_cache_entries == 0 || tokens.empty() || gen != cache_generation) return;
  size_t bytes = state.CacheBytes() + state.WorkingBytes() + tokens.size() * sizeof(int32_t);
  if (bytes > options.prefix_cache_bytes) return;
  prefixes.push_front({std::move(tokens), std::move(state), bytes});
  prefix_bytes += bytes;
  while (prefixes.size() > options.prefix_cache_entries || prefix_bytes > options.prefix_cache_bytes) {
    prefix_bytes -= prefixes.back().bytes;
    prefixes.pop_back();
  }
}

void EmbeddedEngine::Impl::Admit(std::unique_ptr<Request> req, std::vector<Active>& active,
                                 const std::shared_ptr<Model>& current, uint64_t gen, const std::string& version) {
  Active a;
  a.admitted = Clock::now();
  a.model = current;
  a.generation = gen;
  a.out.weight_version = version;
  a.rng = SequenceRng(req->job.sampling.seed);
  const auto& prompt = req->job.prompt;
  // Longest cached sequence that is a proper prefix of the prompt (at least
  // one prompt token must still be fed to get the next token's logits).
  auto best = prefixes.end();
  for (auto it = prefixes.begin(); it != prefixes.end(); ++it) {
    if (it->tokens.size() >= prompt.size()) continue;
    if (best != prefixes.end() && it->tokens.size() <= best->tokens.size()) continue;
    if (std::equal(it->tokens.begin(), it->tokens.end(), prompt.begin())) best = it;
  }
  if (best != prefixes.end()) {
    a.state = std::move(best->state);
    a.fed = std::move(best->tokens);
    prefix_bytes -= best->bytes;
    prefixes.erase(best);
  } else {
    a.state = current->NewSequence();
  }
  a.prompt_fed = a.fed.size();
  a.out.prompt_tokens = prompt.size();
  a.out.cached_prompt_tokens = a.fed.size();
  if (req->job.constraint) a.allowed.assign(config.vocab_size, 0);
  a.req = std::move(req);
  {
    std::lock_guard lock(mu);
    ++stats.requests;
    stats.prompt_tokens += prompt.size();
    stats.cached_prompt_tokens += a.out.cached_prompt_tokens;
  }
  active.push_back(std::move(a));
}

void EmbeddedEngine::Impl::Finish(Active& a, engine::Finish how) {
  a.done = true;
  a.out.finish = how;
  auto now = Clock::now();
  if (a.first_token == Clock::time_point{}) a.first_token = now;
  a.out.prefill_ms = Ms(a.first_token - a.admitted);
  a.out.decode_ms = Ms(now - a.first_token);
  a.req->promise.set_value(std::move(a.out));
  if (how != Finish::kCancelled || a.prompt_fed == a.req->job.prompt.size())
    Remember(std::move(a.fed), std::move(a.state), a.generation);
}

void EmbeddedEngine::Impl::Run() {
  std::vector<Active> active;
  std::vector<float> logits;
  for (;;) {
    std::shared_ptr<Model> current;
    uint64_t gen, abort_gen;
    std::string version;
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return stop || !queue.empty() || !active.empty(); });
      if (stop) {
        while (!queue.empty()) {
          GenerateOutput out;
          out.finish = Finish::kCancelled;
          out.prompt_tokens = queue.front()->job.prompt.size();
          out.weight_version = this->version;
          queue.front()->promise.set_value(std::move(out));
          queue.pop_front();
        }
        lock.unlock();
        for (auto& a : active) {
          a.done = true;
          a.out.finish = Finish::kCancelled;
          a.req->promise.set_value(std::move(a.out));
        }
        return;
      }
      current = model;
      gen = generation;
      abort_gen = abort_below;
      version = this->version;
    }
    if (gen != cache_generation) {  // new weights: the cached states are stale
      prefixes.clear();
      prefix_bytes = 0;
      cache_generation = gen;
    }
    for (auto& a : active)
      if (a.generation < abort_gen) Finish(a, Finish::kCancelled);
    std::erase_if(active, [](const Active& a) { return a.done; });
    for (;;) {
      std::unique_ptr<Request> req;
      {
        std::lock_guard lock(mu);
        if (queue.empty() || active.size() >= options.max_batch) break;
        req = std::move(queue.front());
        queue.pop_front();
      }
      Admit(std::move(req), active, current, gen, version);
    }
    // Requests on replaced weights step beside the new ones, one Forward per model.
    std::vector<Model*> models;
    for (const auto& a : active)
      if (std::find(models.begin(), models.end(), a.model.get()) == models.end()) models.push_back(a.model.get());
    for (Model* m : models) Step(*m, active, logits);
    std::erase_if(active, [](const Active& a) { return a.done; });  // may free replaced weights
    std::lock_guard lock(mu);
    stats.active = active.size();
    stats.prefix_cache_entries = prefixes.size();
    stats.prefix_cache_bytes = prefix_bytes;
  }
}

void EmbeddedEngine::Impl::Step(Model& m, std::vector<Active>& active, std::vector<float>& logits) {
  const Config& c = config;
  const size_t V = c.vocab_size;
  // One step: a prompt chunk for sequences still prefilling, the last
  // sampled token for the others.
  std::vector<Model::Chunk> chunks;
  std::vector<size_t> owner;
  for (size_t i = 0; i < active.size(); ++i) {
    Active& a = active[i];
    if (a.done || a.model.get() != &m) continue;
    const auto& prompt = a.req->job.prompt;
    if (a.prompt_fed < prompt.size()) {
      size_t n = std::min(options.prefill_chunk, prompt.size() - a.prompt_fed);
      size_t from = a.prompt_fed;
      a.fed.insert(a.fed.end(), prompt.begin() + from, prompt.begin() + from + n);
      a.prompt_fed += n;
      chunks.push_back({&a.state, std::span<const int32_t>(a.fed.data() + from, n), a.prompt_fed == prompt.size()});
    } else {
      a.fed.push_back(a.next);
      chunks.push_back({&a.state, std::span<const int32_t>(&a.fed.back(), 1), true});
    }
    owner.push_back(i);
  }
  if (chunks.empty()) return;
  m.Forward(chunks, logits);
  size_t row = 0;
  uint64_t generated = 0;
  for (size_t k = 0; k < chunks.size(); ++k) {
    if (!chunks[k].want_logits) continue;
    Active& a = active[owner[k]];
    std::span<const float> lg(logits.data() + row++ * V, V);
    if (a.first_token == Clock::time_point{}) a.first_token = Clock::now();
    const Sampling& s = a.req->job.sampling;
    TokenConstraint* constraint = a.req->job.constraint.get();
    if (constraint) {
      std::fill(a.allowed.begin(), a.allowed.end(), 0);
      constraint->AllowedNext(a.allowed);
    }
    auto sampled = SampleToken(lg, s, constraint ? &a.allowed : nullptr, a.rng);
    if (!sampled.ok()) {
      a.done = true;
      a.req->promise.set_value(sampled.status());
      continue;
    }
    int32_t tok = sampled.value().token;
    a.out.tokens.push_back(tok);
    a.out.logprobs.push_back(sampled.value().logprob);
    ++generated;
    if (constraint) constraint->Accept(tok);
    a.next = tok;
    bool stop_tok = std::find(s.stop_token_ids.begin(), s.stop_token_ids.end(), tok) != s.stop_token_ids.end();
    if (tok == c.eos_token_id && !s.ignore_eos) {
      Finish(a, Finish::kEos);
    } else if (stop_tok) {
      a.out.matched_stop_token = tok;
      Finish(a, Finish::kStopToken);
    } else if (constraint && constraint->Complete()) {
      Finish(a, Finish::kConstraintComplete);
    } else if (a.out.tokens.size() >= static_cast<size_t>(s.max_new_tokens) ||
               a.state.length + 1 >= c.max_context) {
      Finish(a, Finish::kLength);
    }
  }
  std::lock_guard lock(mu);
  ++stats.steps;
  stats.step_sequences += chunks.size();
  stats.max_step_sequences = std::max<uint64_t>(stats.max_step_sequences, chunks.size());
  stats.generated_tokens += generated;
}

}  // namespace paddock::policy::engine
