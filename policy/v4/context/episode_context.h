// Token-in-token-out context of one episode: the token ids the policy saw and
// produced, with segment kinds and a loss mask.
//
//  - The opening prompt is rendered with the codec and tokenized once.
//  - The policy's output ids are appended exactly as generated, never
//    retokenized (loss mask 1 on them, 0 everywhere else).
//  - A new observation (tool results, a user turn) is rendered with the codec
//    and only the text it adds is tokenized and appended (suffix_render.h): the
//    whole conversation is never re-rendered or re-tokenized, so an append
//    costs time proportional to the observation, not to the context.
//
// What goes to the backend is ids() — nothing else is ever sent. The kept ids
// decode to text() exactly; they can differ from tokenizing text() in one go
// where BPE would merge across a seam between segments (tests/v4_context_test.cc
// counts such cases on the conformance vectors).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "policy/v4/context/segment.h"
#include "policy/v4/tokenizer/tokenizer.h"
#include "sandbox/base/status.h"

namespace paddock::v4 {

struct ContextOptions {
  // Also render the whole conversation before and after every observation and
  // check the appended text against it (prefix property and equality). Costs
  // time proportional to the conversation: for tests and audits.
  bool verify_with_full_render = false;
};

// How one observation was appended.
struct AppendReport {
  enum class Path {
    kIncremental,  // rendered from the new turn alone (the normal case)
    kFullRender,   // the incremental render was not append-only; whole-conversation renders used
  };
  Path path = Path::kIncremental;
  size_t tokens = 0;            // ids appended
  bool closed_turn = false;     // an <｜end▁of▁sentence｜> was added to close an unterminated policy turn
  // With verify_with_full_render:
  bool verified = false;
  bool prefix_holds = true;        // render(old conversation) is a prefix of render(new conversation)
  bool matches_full_render = true; // the appended text equals the difference of those renders
  size_t first_difference = 0;     // where render(old) and render(new) part, when !prefix_holds
};
const char* AppendPathName(AppendReport::Path path);  // "incremental", "full_render"

struct ContextStats {
  size_t observations = 0;
  size_t incremental = 0;
  size_t full_render_fallbacks = 0;
  size_t verified = 0;
  size_t prefix_violations = 0;  // verified appends whose full renders were not append-only
};

class EpisodeContext {
 public:
  using ojson = nlohmann::ordered_json;

  // `request` as for EncodePrompt: {messages, thinking_mode, drop_thinking,
  // reasoning_effort}; its render (normally ending with <｜Assistant｜> and
  // <think> or </think>, or a task's token) becomes the prompt segment.
  static Result<EpisodeContext> Start(std::shared_ptr<const Tokenizer> tokenizer, const ojson& request,
                                      ContextOptions options = {});

  // Appends the policy's output ids exactly as generated (loss mask 1). A
  // policy turn follows an observation (or the prompt), or directly the turn
  // that answered a task message, once that ended with <｜end▁of▁sentence｜>.
  // `message` is the assistant message decoded from them (with tool call
  // ids), kept so that later tool results can be ordered by its calls; when
  // the completion could not be decoded pass {"role":"assistant","content":…}.
  Status AppendPolicyOutput(std::span<const uint32_t> ids, ojson message);

  // Appends an observation: a non-empty array of messages (role tool, user,
  // developer, latest_reminder or system). If the last policy turn did not
  // end with <｜end▁of▁sentence｜> (cut by a length limit) one is added first,
  // as the format closes every assistant turn. INVALID_ARGUMENT for messages
  // the codec rejects (the context is then unchanged).
  Result<AppendReport> AppendObservation(const ojson& messages);

  // The ids sent to the backend: exactly the kept ids.
  std::span<const uint32_t> BackendInput() const { return ids_; }
  const std::vector<uint32_t>& ids() const { return ids_; }
  const std::vector<uint8_t>& loss_mask() const { return mask_; }
  const std::vector<Segment>& segments() const { return segments_; }
  // The text the kept ids decode to.
  const std::string& text() const { return text_; }
  // The conversation so far, in the codec's message format.
  const ojson& messages() const { return messages_; }
  // The request for EncodePrompt over messages() (thinking_mode etc. as started).
  ojson Request() const;
  size_t size() const { return ids_.size(); }
  const ContextStats& stats() const { return stats_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  std::shared_ptr<const Tokenizer> shared_tokenizer() const { return tokenizer_; }
  // Whether the policy's next turn begins with reasoning closed by </think>:
  // thinking mode, unless it answers a task message (no thinking block then).
  // Decode that turn with DecodeCompletion(text, NextTurnHasReasoning()).
  bool NextTurnHasReasoning() const;
  // Whether the last segment is a policy turn that ended with <｜end▁of▁sentence｜>.
  bool last_turn_ended() const;
  // Room for `tokens` more ids (and about 4 bytes of text, a segment and a message per
  // hundred tokens), e.g. the episode's budget, so appends never reallocate.
  void Reserve(size_t tokens);

 private:
  EpisodeContext() = default;
  void Append(SegmentKind kind, std::span<const uint32_t> ids, std::string_view text);

  std::shared_ptr<const Tokenizer> tokenizer_;
  ContextOptions options_;
  ojson render_options_;  // thinking_mode, drop_thinking, reasoning_effort
  ojson messages_ = ojson::array();
  std::vector<uint32_t> ids_;
  std::vector<uint8_t> mask_;
  std::vector<Segment> segments_;
  std::string text_;
  uint32_t eos_id_ = 0;
  bool last_turn_answered_task_ = false;  // the last policy turn answered a task message
  ContextStats stats_;
};

}  // namespace paddock::v4
