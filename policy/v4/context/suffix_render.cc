#include "policy/v4/context/suffix_render.h"

#include <algorithm>

#include "policy/v4/encode/encoder.h"

namespace paddock::v4 {

using ojson = nlohmann::ordered_json;

namespace {

// Only the tool calls of the previous assistant turn matter to the render of
// the results that answer them (their order); reasoning and content do not.
ojson Anchor(const ojson& previous) {
  ojson a = {{"role", "assistant"}, {"content", ""}};
  if (previous.is_object()) {
    auto it = previous.find("tool_calls");
    if (it != previous.end()) a["tool_calls"] = *it;
  }
  return a;
}

ojson TinyRequest(const ojson& options, ojson messages) {
  ojson r = ojson::object();
  auto mode = options.find("thinking_mode");
  r["thinking_mode"] = mode != options.end() ? *mode : ojson("chat");
  r["drop_thinking"] = false;
  r["reasoning_effort"] = nullptr;
  r["messages"] = std::move(messages);
  return r;
}

// The part of `conversation` that the render of `added` after it depends on.
ojson Base(const ojson& conversation, const ojson& added) {
  auto role = [](const ojson& m) { return m.is_object() ? m.value("role", "") : std::string(); };
  ojson base = ojson::array();
  if (!conversation.is_array() || conversation.empty()) return base;
  const ojson& last = conversation.back();
  if (role(last) == "assistant") {
    if (role(added.front()) == "tool") base.push_back(Anchor(last));
    return base;
  }
  size_t from = conversation.size();
  while (from > 0 && role(conversation[from - 1]) != "assistant") --from;
  if (from > 0) base.push_back(Anchor(conversation[from - 1]));
  for (size_t i = from; i < conversation.size(); ++i) base.push_back(conversation[i]);
  return base;
}

}  // namespace

Result<std::string> RenderAddedTurns(const ojson& conversation, const ojson& added, const ojson& options) {
  if (!added.is_array() || added.empty())
    return Error(Code::kInvalidArgument, "observation: must be a non-empty array of messages");
  ojson base = Base(conversation, added);
  ojson with = base;
  for (const ojson& m : added) with.push_back(m);
  PADDOCK_ASSIGN_OR_RETURN(std::string before, EncodePrompt(TinyRequest(options, std::move(base))));
  PADDOCK_ASSIGN_OR_RETURN(std::string after, EncodePrompt(TinyRequest(options, std::move(with))));
  if (after.size() < before.size() || after.compare(0, before.size(), before) != 0)
    return Error(Code::kFailedPrecondition, "the render of the new turn is not an extension of its anchor's");
  return after.substr(before.size());
}

Result<PrefixCheck> CheckRenderPrefix(const ojson& request_before, const ojson& request_after) {
  PrefixCheck c;
  PADDOCK_ASSIGN_OR_RETURN(c.before, EncodePrompt(request_before));
  PADDOCK_ASSIGN_OR_RETURN(c.after, EncodePrompt(request_after));
  auto [a, b] = std::mismatch(c.before.begin(), c.before.end(), c.after.begin(), c.after.end());
  c.first_difference = static_cast<size_t>(a - c.before.begin());
  c.holds = a == c.before.end();
  return c;
}

}  // namespace paddock::v4
