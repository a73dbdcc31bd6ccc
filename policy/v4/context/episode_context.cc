#include "policy/v4/context/episode_context.h"

#include "policy/v4/context/suffix_render.h"
#include "policy/v4/encode/encoder.h"

namespace paddock::v4 {

using ojson = nlohmann::ordered_json;

const char* AppendPathName(AppendReport::Path path) {
  switch (path) {
    case AppendReport::Path::kIncremental: return "incremental";
    case AppendReport::Path::kFullRender: return "full_render";
  }
  return "unknown";
}

Result<EpisodeContext> EpisodeContext::Start(std::shared_ptr<const Tokenizer> tokenizer, const ojson& request,
                                             ContextOptions options) {
  if (!tokenizer) return Error(Code::kInvalidArgument, "episode context: no tokenizer");
  auto eos = tokenizer->TokenId(kEndOfSentence);
  if (!eos) return Error(Code::kFailedPrecondition, "episode context: the tokenizer has no <｜end▁of▁sentence｜> token");
  PADDOCK_ASSIGN_OR_RETURN(std::string prompt, EncodePrompt(request));  // validates the request
  EpisodeContext c;
  c.tokenizer_ = std::move(tokenizer);
  c.options_ = options;
  c.eos_id_ = *eos;
  c.render_options_ = ojson::object();
  for (auto it = request.begin(); it != request.end(); ++it)
    if (it.key() != "messages") c.render_options_[it.key()] = it.value();
  c.messages_ = request.at("messages");
  std::vector<uint32_t> ids = c.tokenizer_->Encode(prompt);
  c.Append(SegmentKind::kPrompt, ids, prompt);
  return c;
}

ojson EpisodeContext::Request() const {
  ojson r = render_options_;
  r["messages"] = messages_;
  return r;
}

bool EpisodeContext::NextTurnHasReasoning() const {
  auto mode = render_options_.find("thinking_mode");
  return mode != render_options_.end() && *mode == "thinking" && !AnswersTask(messages_);
}

bool EpisodeContext::last_turn_ended() const {
  return !segments_.empty() && segments_.back().kind == SegmentKind::kPolicyOutput && !ids_.empty() &&
         ids_.back() == eos_id_;
}

void EpisodeContext::Reserve(size_t tokens) {
  ids_.reserve(ids_.size() + tokens);
  mask_.reserve(mask_.size() + tokens);
  segments_.reserve(segments_.size() + tokens / 100 + 8);
  text_.reserve(text_.size() + 4 * tokens);
  messages_.get_ref<ojson::array_t&>().reserve(messages_.size() + tokens / 100 + 8);
}

void EpisodeContext::Append(SegmentKind kind, std::span<const uint32_t> ids, std::string_view text) {
  Segment s{kind, ids_.size(), ids_.size() + ids.size(), text_.size(), text_.size() + text.size()};
  ids_.insert(ids_.end(), ids.begin(), ids.end());
  mask_.insert(mask_.end(), ids.size(), kind == SegmentKind::kPolicyOutput ? 1 : 0);
  text_.append(text);
  segments_.push_back(s);
}

Status EpisodeContext::AppendPolicyOutput(std::span<const uint32_t> ids, ojson message) {
  // The format goes on right after a task's answer with the next assistant
  // turn; any other policy turn needs an observation after it first.
  if (!segments_.empty() && segments_.back().kind == SegmentKind::kPolicyOutput &&
      !(last_turn_answered_task_ && last_turn_ended()))
    return Error(Code::kFailedPrecondition, "policy output: the previous policy turn has no observation after it");
  if (!message.is_object()) return Error(Code::kInvalidArgument, "policy output: message must be a JSON object");
  auto role = message.find("role");
  if (role == message.end()) {
    message["role"] = "assistant";
  } else if (*role != "assistant") {
    return Error(Code::kInvalidArgument, "policy output: message role must be \"assistant\"");
  }
  std::string text = tokenizer_->Decode(ids);
  last_turn_answered_task_ = AnswersTask(messages_);
  Append(SegmentKind::kPolicyOutput, ids, text);
  messages_.push_back(std::move(message));
  return Status::Ok();
}

Result<AppendReport> EpisodeContext::AppendObservation(const ojson& added) {
  if (!added.is_array() || added.empty())
    return Error(Code::kInvalidArgument, "observation: must be a non-empty array of messages");
  AppendReport report;
  std::string suffix;
  auto full_check = [&]() -> Result<PrefixCheck> {
    ojson after = Request();
    for (const ojson& m : added) after["messages"].push_back(m);
    return CheckRenderPrefix(Request(), after);
  };

  Result<std::string> incremental = RenderAddedTurns(messages_, added, render_options_);
  if (incremental.ok()) {
    suffix = std::move(incremental).value();
    if (options_.verify_with_full_render) {
      PADDOCK_ASSIGN_OR_RETURN(PrefixCheck c, full_check());
      report.verified = true;
      report.prefix_holds = c.holds;
      report.first_difference = c.first_difference;
      report.matches_full_render = c.holds && c.suffix() == suffix;
      ++stats_.verified;
      if (!c.holds) ++stats_.prefix_violations;
    }
  } else if (incremental.status().code() == Code::kFailedPrecondition) {
    // Safe fallback: the difference of the whole-conversation renders, only
    // when that render is append-only; otherwise refuse (the kept ids cannot
    // be rewritten, and guessing would hand training text the model never saw).
    PADDOCK_ASSIGN_OR_RETURN(PrefixCheck c, full_check());
    if (!c.holds)
      return Error(Code::kFailedPrecondition,
                   "observation: the conversation's render is not append-only (it changes at byte {}); "
                   "cannot extend the token context",
                   c.first_difference);
    suffix = c.suffix();
    report.path = AppendReport::Path::kFullRender;
    report.verified = true;
    ++stats_.full_render_fallbacks;
  } else {
    return incremental.status();
  }
  if (report.path == AppendReport::Path::kIncremental) ++stats_.incremental;
  ++stats_.observations;

  if (!segments_.empty() && segments_.back().kind == SegmentKind::kPolicyOutput && !last_turn_ended()) {
    suffix.insert(0, kEndOfSentence);
    report.closed_turn = true;
  }
  std::vector<uint32_t> ids = tokenizer_->Encode(suffix);
  report.tokens = ids.size();
  Append(SegmentKind::kObservation, ids, suffix);
  for (const ojson& m : added) messages_.push_back(m);
  return report;
}

}  // namespace paddock::v4
