#include "policy/backends/openai_chat_backend.h"

#include <fmt/format.h>

#include "policy/backends/json_fields.h"
#include "policy/backends/openai_common.h"

namespace paddock::policy {

Result<std::unique_ptr<OpenAiChatBackend>> OpenAiChatBackend::Create(BackendOptions options) {
  PADDOCK_ASSIGN_OR_RETURN(Endpoint ep, PrepareBackendOptions(options));
  return std::unique_ptr<OpenAiChatBackend>(new OpenAiChatBackend(std::move(ep), std::move(options)));
}

Result<nlohmann::json> OpenAiChatBackend::BuildBody(const GenerateRequest& request) const {
  if (request.messages.empty()) {
    return Error(Code::kInvalidArgument, "/v1/chat/completions needs messages (got none)");
  }
  nlohmann::json messages = nlohmann::json::array();
  for (const ChatMessage& m : request.messages) {
    if (m.role.empty()) return Error(Code::kInvalidArgument, "chat message without a role");
    nlohmann::json jm = {{"role", m.role}, {"content", m.content}};
    if (m.reasoning_content) jm["reasoning_content"] = *m.reasoning_content;
    if (!m.tool_calls.is_null()) jm["tool_calls"] = m.tool_calls;
    if (m.tool_call_id) jm["tool_call_id"] = *m.tool_call_id;
    if (m.name) jm["name"] = *m.name;
    messages.push_back(std::move(jm));
  }
  nlohmann::json body = {{"messages", std::move(messages)}, {"stream", false}};
  AddOpenAiSampling(request.sampling, options().model, /*vllm_extensions=*/false, body);
  if (!request.tools.is_null()) body["tools"] = request.tools;
  // Some APIs (deepseek-reasoner) reject "logprobs"; set return_logprobs=false for them.
  if (request.return_logprobs) body["logprobs"] = true;
  return body;
}

Result<GenerateResult> OpenAiChatBackend::ParseBody(const nlohmann::json& body,
                                                    const GenerateRequest& request) const {
  GenerateResult out;
  out.token_exact = false;
  PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* choices, Field(body, "", "choices"));
  if (!choices->is_array() || choices->empty()) {
    return TypeError("choices", "a non-empty array", *choices);
  }
  const nlohmann::json& choice = (*choices)[0];
  if (!choice.is_object()) return TypeError("choices[0]", "an object", choice);
  PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* msg, Field(choice, "choices[0]", "message"));
  if (!msg->is_object()) return TypeError("choices[0].message", "an object", *msg);
  if (const nlohmann::json* c = OptionalField(*msg, "content")) {
    PADDOCK_ASSIGN_OR_RETURN(out.text, AsString(*c, "choices[0].message.content"));
  }
  // DeepSeek's API and vLLM's reasoning parsers use reasoning_content; some
  // servers call it "reasoning".
  for (const char* key : {"reasoning_content", "reasoning"}) {
    if (const nlohmann::json* r = OptionalField(*msg, key)) {
      PADDOCK_ASSIGN_OR_RETURN(out.reasoning_content,
                               AsString(*r, fmt::format("choices[0].message.{}", key)));
      break;
    }
  }
  if (const nlohmann::json* tc = OptionalField(*msg, "tool_calls")) {
    if (!tc->is_array()) return TypeError("choices[0].message.tool_calls", "an array", *tc);
    for (size_t i = 0; i < tc->size(); ++i) {
      std::string path = fmt::format("choices[0].message.tool_calls[{}]", i);
      PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* fn, Field((*tc)[i], path, "function"));
      PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* name, Field(*fn, path + ".function", "name"));
      PADDOCK_RETURN_IF_ERROR(AsString(*name, path + ".function.name").status());
      PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* args, Field(*fn, path + ".function", "arguments"));
      PADDOCK_RETURN_IF_ERROR(AsString(*args, path + ".function.arguments").status());
    }
    if (!tc->empty()) out.tool_calls = *tc;
  }
  PADDOCK_ASSIGN_OR_RETURN(out.finish_reason,
                           MapOpenAiFinish(choice, "choices[0]", &out.matched_stop_token));

  // logprobs: {"content": [{"token", "logprob", …}, …]} — content tokens only.
  if (const nlohmann::json* lp = OptionalField(choice, "logprobs")) {
    if (const nlohmann::json* content = OptionalField(*lp, "content")) {
      if (!content->is_array()) return TypeError("choices[0].logprobs.content", "an array", *content);
      for (size_t i = 0; i < content->size(); ++i) {
        std::string path = fmt::format("choices[0].logprobs.content[{}]", i);
        PADDOCK_ASSIGN_OR_RETURN(const nlohmann::json* v, Field((*content)[i], path, "logprob"));
        PADDOCK_ASSIGN_OR_RETURN(float f, AsLogprob(*v, path + ".logprob"));
        out.logprobs.push_back(f);
      }
    }
  }
  return out;
}

}  // namespace paddock::policy
