// The conversation walk of the V4 encoder: validates the request, groups the
// messages into turns, then renders turn by turn. Tool sections and tool calls
// are in dsml_render.cc.
#include "policy/v4/encode/encoder.h"

#include <algorithm>
#include <array>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "policy/v4/encode/dsml_render.h"
#include "policy/v4/encode/json_text.h"

namespace paddock::v4 {
namespace {

using ojson = nlohmann::ordered_json;

constexpr std::string_view kMaxEffortPreamble =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n"
    "\n";

constexpr std::array<std::string_view, 6> kTasks = {"action", "query", "authority",
                                                    "domain", "title", "read_url"};

enum class Role { kSystem, kDeveloper, kUser, kAssistant, kTool, kLatestReminder };

std::optional<Role> ParseRole(std::string_view r) {
  if (r == "system") return Role::kSystem;
  if (r == "developer") return Role::kDeveloper;
  if (r == "user") return Role::kUser;
  if (r == "assistant") return Role::kAssistant;
  if (r == "tool") return Role::kTool;
  if (r == "latest_reminder") return Role::kLatestReminder;
  return std::nullopt;
}

// One validated message; the JSON members point into the request.
struct Message {
  Role role;
  std::string content;
  std::string reasoning;
  const ojson* tools = nullptr;            // system/developer
  const ojson* response_format = nullptr;  // system/developer
  const ojson* tool_calls = nullptr;       // assistant
  std::string tool_call_id;                // tool
  std::string task;                        // user
};

Status Invalid(size_t i, std::string_view field, std::string_view what) {
  return Error(Code::kInvalidArgument, "messages[{}].{}: {}", i, field, what);
}

// A string field that may be absent or null (→ "").
Status OptionalString(const ojson& m, size_t i, const char* field, std::string* out) {
  auto it = m.find(field);
  if (it == m.end() || it->is_null()) return Status::Ok();
  if (!it->is_string()) return Invalid(i, field, fmt::format("must be a string, not {}", it->type_name()));
  *out = it->get<std::string>();
  return Status::Ok();
}

Result<Message> ParseMessage(const ojson& m, size_t i) {
  if (!m.is_object())
    return Error(Code::kInvalidArgument, "messages[{}]: must be an object, not {}", i, m.type_name());
  std::string bad = internal::FindInvalidUtf8(m, fmt::format("messages[{}]", i));
  if (!bad.empty()) return Error(Code::kInvalidArgument, "{}: invalid UTF-8", bad);

  auto role_it = m.find("role");
  if (role_it == m.end()) return Invalid(i, "role", "missing");
  if (!role_it->is_string()) return Invalid(i, "role", "must be a string");
  auto role = ParseRole(role_it->get_ref<const std::string&>());
  if (!role)
    return Invalid(i, "role",
                   fmt::format("unknown role \"{}\" (expected system, developer, user, assistant, "
                               "tool or latest_reminder)",
                               role_it->get_ref<const std::string&>()));
  Message msg;
  msg.role = *role;
  PADDOCK_RETURN_IF_ERROR(OptionalString(m, i, "content", &msg.content));

  auto field = [&](const char* name) -> const ojson* {
    auto it = m.find(name);
    return (it == m.end() || it->is_null()) ? nullptr : &*it;
  };
  if (msg.role == Role::kSystem || msg.role == Role::kDeveloper) {
    msg.tools = field("tools");
    if (msg.tools && !msg.tools->is_array()) return Invalid(i, "tools", "must be an array");
    msg.response_format = field("response_format");
    if (msg.response_format && !msg.response_format->is_object())
      return Invalid(i, "response_format", "must be an object");
  }
  if (msg.role == Role::kAssistant) {
    PADDOCK_RETURN_IF_ERROR(OptionalString(m, i, "reasoning_content", &msg.reasoning));
    msg.tool_calls = field("tool_calls");
    if (msg.tool_calls && !msg.tool_calls->is_array()) return Invalid(i, "tool_calls", "must be an array");
    if (msg.tool_calls && msg.tool_calls->empty()) msg.tool_calls = nullptr;
  }
  if (msg.role == Role::kTool) {
    PADDOCK_RETURN_IF_ERROR(OptionalString(m, i, "tool_call_id", &msg.tool_call_id));
  }
  if (msg.role == Role::kUser) {
    PADDOCK_RETURN_IF_ERROR(OptionalString(m, i, "task", &msg.task));
    if (!msg.task.empty() && std::find(kTasks.begin(), kTasks.end(), msg.task) == kTasks.end())
      return Invalid(i, "task",
                     fmt::format("unknown task \"{}\" (expected action, query, authority, domain, "
                                 "title or read_url)",
                                 msg.task));
  }
  return msg;
}

// The id of each call of an assistant message, in call order ("" when absent).
std::vector<std::string> CallIds(const Message& assistant) {
  std::vector<std::string> ids;
  if (!assistant.tool_calls) return ids;
  for (const ojson& call : *assistant.tool_calls) {
    auto it = call.is_object() ? call.find("id") : call.end();
    ids.push_back(it != call.end() && it->is_string() ? it->get<std::string>() : "");
  }
  return ids;
}

struct Options {
  bool thinking = false;
  bool drop_thinking = true;
  std::string reasoning_effort;
};

Result<Options> ParseOptions(const ojson& request) {
  Options o;
  auto mode = request.find("thinking_mode");
  if (mode != request.end() && !mode->is_null()) {
    if (!mode->is_string() || (*mode != "chat" && *mode != "thinking"))
      return Error(Code::kInvalidArgument, "thinking_mode: must be \"chat\" or \"thinking\"");
    o.thinking = *mode == "thinking";
  }
  auto drop = request.find("drop_thinking");
  if (drop != request.end() && !drop->is_null()) {
    if (!drop->is_boolean()) return Error(Code::kInvalidArgument, "drop_thinking: must be a boolean");
    o.drop_thinking = drop->get<bool>();
  }
  auto effort = request.find("reasoning_effort");
  if (effort != request.end() && !effort->is_null()) {
    if (!effort->is_string() || (*effort != "high" && *effort != "max"))
      return Error(Code::kInvalidArgument, "reasoning_effort: must be null, \"high\" or \"max\"");
    o.reasoning_effort = effort->get<std::string>();
  }
  return o;
}

// One turn as the format renders it. Tool results become a user turn, and a
// user message right after a user turn without a task (tool results or text)
// joins it, its text after a blank line; a user message with a task, and the
// messages of every other role, are turns of their own. (The joining rule, and
// dropping developer messages before the last user turn under drop_thinking
// below, follow the reference encoder; no public vector exercises them yet.)
struct Turn {
  Role role;              // kUser for tool results; never kTool
  const Message* msg;     // the turn's first message
  std::string user_text;  // kUser: the body, blocks joined by blank lines
  std::string task;       // kUser: the task of the turn's first message
};

// Whether a user message joins the turn before it: a user turn (tool results
// or user text) without a task.
bool UserJoins(bool previous_is_user_turn, std::string_view previous_task) {
  return previous_is_user_turn && previous_task.empty();
}

// Groups the messages into turns: tool results are checked against the calls
// of the assistant message before their run and ordered by them.
Result<std::vector<Turn>> BuildTurns(const std::vector<Message>& msgs) {
  std::vector<Turn> turns;
  turns.reserve(msgs.size());
  for (size_t i = 0; i < msgs.size(); ++i) {
    const Message& m = msgs[i];
    if (m.role == Role::kTool) {
      // A run of tool messages answers the calls of the assistant message
      // before it; the results go into one user turn, in call order.
      size_t first = i, end = i;
      while (end < msgs.size() && msgs[end].role == Role::kTool) ++end;
      if (first == 0 || msgs[first - 1].role != Role::kAssistant || !msgs[first - 1].tool_calls)
        return Invalid(i, "role", "a tool message must follow an assistant message with tool_calls");
      std::vector<std::string> ids = CallIds(msgs[first - 1]);
      std::vector<std::pair<size_t, size_t>> order;  // (call index, message index)
      for (size_t k = first; k < end; ++k) {
        auto pos = std::find(ids.begin(), ids.end(), msgs[k].tool_call_id);
        if (pos == ids.end())
          return Invalid(k, "tool_call_id",
                         fmt::format("\"{}\" matches no call of messages[{}].tool_calls", msgs[k].tool_call_id,
                                     first - 1));
        order.emplace_back(pos - ids.begin(), k);
      }
      std::stable_sort(order.begin(), order.end());
      Turn t{Role::kUser, &m, "", ""};
      for (size_t k = 0; k < order.size(); ++k) {
        if (k) t.user_text += "\n\n";
        t.user_text += "<tool_result>";
        t.user_text += msgs[order[k].second].content;
        t.user_text += "</tool_result>";
      }
      turns.push_back(std::move(t));
      i = end - 1;
    } else if (m.role == Role::kUser) {
      if (!turns.empty() && UserJoins(turns.back().role == Role::kUser, turns.back().task)) {
        turns.back().user_text += "\n\n";
        turns.back().user_text += m.content;
      } else {
        turns.push_back(Turn{Role::kUser, &m, m.content, m.task});
      }
    } else {
      turns.push_back(Turn{m.role, &m, "", ""});
    }
  }
  return turns;
}

}  // namespace

Result<std::string> EncodePrompt(const ojson& request) {
  if (!request.is_object())
    return Error(Code::kInvalidArgument, "request: must be a JSON object, not {}", request.type_name());
  PADDOCK_ASSIGN_OR_RETURN(Options opts, ParseOptions(request));
  auto msgs_it = request.find("messages");
  if (msgs_it == request.end()) return Error(Code::kInvalidArgument, "messages: missing");
  if (!msgs_it->is_array()) return Error(Code::kInvalidArgument, "messages: must be an array");
  const ojson& raw = *msgs_it;

  std::vector<Message> msgs;
  msgs.reserve(raw.size());
  bool has_tools = false;
  for (size_t i = 0; i < raw.size(); ++i) {
    PADDOCK_ASSIGN_OR_RETURN(Message m, ParseMessage(raw[i], i));
    if (m.tools) has_tools = true;
    msgs.push_back(std::move(m));
  }
  // Reasoning is kept across user turns whenever tools are in play.
  const bool drop = opts.drop_thinking && !has_tools;
  PADDOCK_ASSIGN_OR_RETURN(std::vector<Turn> turns, BuildTurns(msgs));

  // The last turn the user side speaks in (a user turn, tool results included,
  // or a developer message). In thinking mode with drop_thinking, the turns
  // before it open with </think>, their assistant replies lose reasoning, and
  // the developer messages before it are left out.
  auto last_user_turn = [&]() -> std::optional<size_t> {
    for (size_t i = turns.size(); i-- > 0;)
      if (turns[i].role == Role::kUser || turns[i].role == Role::kDeveloper) return i;
    return std::nullopt;
  };
  if (opts.thinking && drop) {
    if (auto last = last_user_turn()) {
      std::vector<Turn> kept;
      kept.reserve(turns.size());
      for (size_t i = 0; i < turns.size(); ++i)
        if (turns[i].role != Role::kDeveloper || i >= *last) kept.push_back(std::move(turns[i]));
      turns = std::move(kept);
    }
  }
  const std::optional<size_t> last_user = last_user_turn();
  auto at_or_after_last_user = [&](size_t i) { return !last_user || i >= *last_user; };

  std::string out(kBeginOfSentence);
  if (opts.thinking && opts.reasoning_effort == "max") out += kMaxEffortPreamble;

  for (size_t i = 0; i < turns.size(); ++i) {
    const Turn& t = turns[i];
    const Message& m = *t.msg;
    switch (t.role) {
      case Role::kSystem:
      case Role::kDeveloper: {
        if (t.role == Role::kDeveloper) out += kUserToken;
        out += m.content;
        if (m.tools) {
          size_t index = static_cast<size_t>(&m - msgs.data());
          PADDOCK_ASSIGN_OR_RETURN(std::string tools,
                                   internal::RenderToolsSection(*m.tools, fmt::format("messages[{}].tools", index)));
          out += "\n\n";
          out += tools;
        }
        if (m.response_format) {
          out += "\n\n";
          out += internal::RenderResponseFormatSection(*m.response_format);
        }
        break;
      }
      case Role::kUser:
        out += kUserToken;
        out += t.user_text;
        break;
      case Role::kLatestReminder:
        out += kLatestReminderToken;
        out += m.content;
        break;
      case Role::kAssistant: {
        // The answer to a task message carries no thinking block.
        const bool answers_task = i > 0 && !turns[i - 1].task.empty();
        if (opts.thinking && !answers_task && (!drop || !last_user || i > *last_user)) {
          out += m.reasoning;
          out += kThinkEnd;
        }
        out += m.content;
        if (m.tool_calls) {
          size_t index = static_cast<size_t>(&m - msgs.data());
          PADDOCK_ASSIGN_OR_RETURN(std::string calls, internal::RenderToolCalls(
                                                          *m.tool_calls, fmt::format("messages[{}].tool_calls", index)));
          out += "\n\n";
          out += calls;
        }
        out += kEndOfSentence;
        break;
      }
      case Role::kTool:
        break;  // grouped into user turns by BuildTurns
    }

    // A turn is closed (the model's turn opened) only when the conversation
    // ends with it or an assistant message or latest reminder follows it.
    if (i + 1 < turns.size() && turns[i + 1].role != Role::kAssistant &&
        turns[i + 1].role != Role::kLatestReminder)
      continue;
    if (!t.task.empty()) {
      if (t.task == "action") {
        out += kAssistantToken;
        out += opts.thinking ? kThinkStart : kThinkEnd;
        out += "<｜action｜>";
      } else {
        out += fmt::format("<｜{}｜>", t.task);
      }
    } else if (t.role == Role::kUser || t.role == Role::kDeveloper) {
      out += kAssistantToken;
      out += opts.thinking && (!drop || at_or_after_last_user(i)) ? kThinkStart : kThinkEnd;
    }
  }
  return out;
}

bool AnswersTask(const ojson& messages) {
  if (!messages.is_array()) return false;
  auto role_of = [](const ojson& m) {
    auto it = m.is_object() ? m.find("role") : m.end();
    return it != m.end() && it->is_string() ? ParseRole(it->get_ref<const std::string&>()) : std::nullopt;
  };
  // Only the trailing run of user and tool messages decides how its last
  // message is grouped (the message before the run is not a user turn).
  size_t start = messages.size();
  while (start > 0) {
    auto role = role_of(messages[start - 1]);
    if (role != Role::kUser && role != Role::kTool) break;
    --start;
  }
  bool user_turn = false;  // the turn so far is a user turn ...
  std::string task;        // ... with this task
  for (size_t i = start; i < messages.size(); ++i) {
    if (role_of(messages[i]) == Role::kTool) {
      if (!user_turn) task.clear();  // tool results: a user turn without a task
      user_turn = true;
      continue;
    }
    if (UserJoins(user_turn, task)) continue;
    user_turn = true;
    auto it = messages[i].find("task");
    task = it != messages[i].end() && it->is_string() ? it->get<std::string>() : "";
  }
  return user_turn && !task.empty();
}

bool NextTurnHasReasoning(const ojson& request) {
  if (!request.is_object()) return false;
  auto mode = request.find("thinking_mode");
  if (mode == request.end() || *mode != "thinking") return false;
  auto msgs = request.find("messages");
  return msgs == request.end() || !AnswersTask(*msgs);
}

Result<std::string> EncodePrompt(const nlohmann::json& request) {
  return EncodePrompt(ojson(request));
}

Result<std::string> EncodePromptText(std::string_view json_text) {
  if (!internal::IsValidUtf8(json_text)) return Error(Code::kInvalidArgument, "request: invalid UTF-8");
  ojson request;
  try {
    request = ojson::parse(json_text);
  } catch (const ojson::exception& e) {
    return Error(Code::kInvalidArgument, "request: not valid JSON: {}", e.what());
  }
  return EncodePrompt(request);
}

}  // namespace paddock::v4
