#include "policy/v4/encode/dsml_render.h"

#include <fmt/format.h>

#include "policy/v4/encode/json_text.h"

namespace paddock::v4::internal {
namespace {

using ojson = nlohmann::ordered_json;

constexpr std::string_view kToolsPreamble =
    "## Tools\n"
    "\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools "
    "by writing a \"<｜DSML｜tool_calls>\" block like the following:\n"
    "\n"
    "<｜DSML｜tool_calls>\n"
    "<｜DSML｜invoke name=\"$TOOL_NAME\">\n"
    "<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</｜DSML｜parameter>\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "<｜DSML｜invoke name=\"$TOOL_NAME2\">\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "</｜DSML｜tool_calls>\n"
    "\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other types "
    "(numbers, booleans, arrays, objects), pass the value in JSON format and set `string=\"false\"`.\n"
    "\n"
    "If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning "
    "inside <think>...</think> BEFORE any tool calls or final response.\n"
    "\n"
    "Otherwise, output directly after </think> with tool calls or final response.\n"
    "\n"
    "### Available Tool Schemas\n"
    "\n";

constexpr std::string_view kToolsEpilogue =
    "\n"
    "You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n";

constexpr std::string_view kResponseFormatPreamble =
    "## Response Format:\n"
    "\n"
    "You MUST strictly adhere to the following schema to reply:\n";

}  // namespace

Result<std::string> RenderToolsSection(const ojson& tools, const std::string& where) {
  if (!tools.is_array()) return Error(Code::kInvalidArgument, "{}: must be an array of tools", where);
  std::string out(kToolsPreamble);
  for (size_t i = 0; i < tools.size(); ++i) {
    const ojson& tool = tools[i];
    std::string at = fmt::format("{}[{}]", where, i);
    if (!tool.is_object()) return Error(Code::kInvalidArgument, "{}: must be an object", at);
    // OpenAI's {"type":"function","function":{...}}; a bare function object is accepted too.
    const ojson* fn = &tool;
    if (tool.contains("function")) {
      fn = &tool["function"];
      if (!fn->is_object()) return Error(Code::kInvalidArgument, "{}.function: must be an object", at);
      at += ".function";
    }
    if (!fn->contains("name") || !(*fn)["name"].is_string())
      return Error(Code::kInvalidArgument, "{}.name: missing or not a string", at);
    out += PyJsonDumps(*fn);
    out += '\n';
  }
  out += kToolsEpilogue;
  return out;
}

std::string RenderResponseFormatSection(const ojson& response_format) {
  std::string out(kResponseFormatPreamble);
  out += PyJsonDumps(response_format);
  return out;
}

Result<std::string> RenderToolCalls(const ojson& tool_calls, const std::string& where) {
  if (!tool_calls.is_array()) return Error(Code::kInvalidArgument, "{}: must be an array", where);
  std::string out = "<｜DSML｜tool_calls>\n";
  for (size_t i = 0; i < tool_calls.size(); ++i) {
    const ojson& call = tool_calls[i];
    std::string at = fmt::format("{}[{}]", where, i);
    if (!call.is_object()) return Error(Code::kInvalidArgument, "{}: must be an object", at);
    const ojson* fn = &call;
    if (call.contains("function")) {
      fn = &call["function"];
      at += ".function";
      if (!fn->is_object()) return Error(Code::kInvalidArgument, "{}: must be an object", at);
    }
    if (!fn->contains("name") || !(*fn)["name"].is_string())
      return Error(Code::kInvalidArgument, "{}.name: missing or not a string", at);
    const std::string& name = (*fn)["name"].get_ref<const std::string&>();

    // Arguments: a JSON string (OpenAI) or an already-parsed value. Anything
    // that is not an object becomes a single "arguments" parameter.
    ojson args = ojson::object();
    if (fn->contains("arguments")) {
      const ojson& raw = (*fn)["arguments"];
      ojson parsed;
      if (raw.is_string()) {
        parsed = ojson::parse(raw.get_ref<const std::string&>(), nullptr, /*allow_exceptions=*/false);
        if (parsed.is_discarded()) parsed = raw;
      } else {
        parsed = raw;
      }
      if (parsed.is_object()) {
        args = std::move(parsed);
      } else if (!parsed.is_null() || !raw.is_null()) {
        args["arguments"] = std::move(parsed);
      }
    }

    out += fmt::format("<｜DSML｜invoke name=\"{}\">\n", name);
    for (auto it = args.begin(); it != args.end(); ++it) {
      bool is_string = it.value().is_string();
      out += fmt::format("<｜DSML｜parameter name=\"{}\" string=\"{}\">", it.key(), is_string ? "true" : "false");
      if (is_string) {
        out += it.value().get_ref<const std::string&>();
      } else {
        out += PyJsonDumps(it.value());
      }
      out += "</｜DSML｜parameter>\n";
    }
    out += "</｜DSML｜invoke>\n";
  }
  out += "</｜DSML｜tool_calls>";
  return out;
}

}  // namespace paddock::v4::internal
