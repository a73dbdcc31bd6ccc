// Rendering only what a new turn adds to a conversation, with the codec.
//
// The V4 format is append-only when reasoning is kept (drop_thinking off, or
// tools present): the render of a conversation is a text prefix of the render
// of any longer conversation cut at a turn boundary. A new turn's text is then
// the codec's render of a tiny conversation — the previous assistant turn's
// tool calls (tool results are ordered by them) plus the new messages — minus
// the render of that anchor alone. Its cost depends on the new turn, not on
// the conversation before it.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "sandbox/base/status.h"

namespace paddock::v4 {

// The text EncodePrompt appends for `added` (an array of messages: tool
// results, user/developer turns, reminders) after `conversation` (the messages
// so far). Only the tail the new turns' render depends on is rendered: after an
// assistant turn, nothing (or only its tool calls, which order the results that
// answer them); after a user-side message (an observation with no policy turn
// since), the messages back to the last assistant turn, as a new message may
// join that turn or change how it closes.
// `options` carries the request's thinking_mode; the render keeps reasoning
// (drop_thinking false), and reasoning_effort is irrelevant after the first turn.
// Bad messages are INVALID_ARGUMENT (as EncodePrompt says); FAILED_PRECONDITION
// when the tiny render is not append-only, so the caller must fall back.
Result<std::string> RenderAddedTurns(const nlohmann::ordered_json& conversation,
                                     const nlohmann::ordered_json& added,
                                     const nlohmann::ordered_json& options);

// Whether EncodePrompt(before) is a text prefix of EncodePrompt(after).
struct PrefixCheck {
  bool holds = false;
  size_t first_difference = 0;  // byte offset where the renders part (when !holds)
  std::string before;           // the two renders
  std::string after;
  std::string suffix() const { return holds ? after.substr(before.size()) : std::string(); }
};
Result<PrefixCheck> CheckRenderPrefix(const nlohmann::ordered_json& request_before,
                                      const nlohmann::ordered_json& request_after);

}  // namespace paddock::v4
