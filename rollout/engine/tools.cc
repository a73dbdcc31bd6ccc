#include "rollout/engine/tools.h"

#include <fmt/format.h>

#include "sandbox/manager.h"

namespace paddock::rollout {
namespace {

using ojson = nlohmann::ordered_json;
using json = nlohmann::json;

ojson Fn(const char* name, const char* description, ojson properties, std::vector<std::string> required) {
  ojson params = ojson::object();
  params["type"] = "object";
  params["properties"] = std::move(properties);
  params["required"] = required;
  ojson fn = ojson::object();
  fn["name"] = name;
  fn["description"] = description;
  fn["parameters"] = std::move(params);
  ojson t = ojson::object();
  t["type"] = "function";
  t["function"] = std::move(fn);
  return t;
}

ojson Prop(const char* type, const char* description) {
  ojson p = ojson::object();
  p["type"] = type;
  p["description"] = description;
  return p;
}

ToolOutcome Err(std::string message) {
  ToolOutcome o;
  o.content = "error: " + std::move(message);
  o.exit_code = 1;
  return o;
}

Result<std::string> StringArg(const json& args, const char* name) {
  auto it = args.find(name);
  if (it == args.end()) return Error(Code::kInvalidArgument, "missing argument '{}'", name);
  if (!it->is_string()) return Error(Code::kInvalidArgument, "argument '{}' must be a string", name);
  return it->get<std::string>();
}

std::string ResolvePath(const Task& task, const std::string& path) {
  if (path.empty() || path[0] == '/' || task.workdir.empty()) return path;
  return task.workdir + "/" + path;
}

}  // namespace

ojson ToolSchemas(const Task& task) {
  ojson tools = ojson::array();
  for (const std::string& name : task.tools) {
    if (name == "bash") {
      ojson p = ojson::object();
      p["command"] = Prop("string", "The shell command to run (/bin/sh -c).");
      tools.push_back(Fn("bash", "Run a shell command in the sandbox and return its output and exit code.", p,
                         {"command"}));
    } else if (name == "read_file") {
      ojson p = ojson::object();
      p["path"] = Prop("string", "Path of the file, absolute or relative to the working directory.");
      tools.push_back(Fn("read_file", "Read a text file from the sandbox.", p, {"path"}));
    } else if (name == "write_file") {
      ojson p = ojson::object();
      p["path"] = Prop("string", "Path of the file, absolute or relative to the working directory.");
      p["content"] = Prop("string", "The whole new content of the file.");
      tools.push_back(Fn("write_file", "Create or overwrite a file in the sandbox.", p, {"path", "content"}));
    } else if (name == "str_replace") {
      ojson p = ojson::object();
      p["path"] = Prop("string", "Path of the file to edit.");
      p["old_str"] = Prop("string", "Text that occurs exactly once in the file.");
      p["new_str"] = Prop("string", "The replacement text.");
      tools.push_back(Fn("str_replace", "Replace the one occurrence of old_str in a file with new_str.", p,
                         {"path", "old_str", "new_str"}));
    } else if (name == "submit") {
      ojson p = ojson::object();
      p["answer"] = Prop("string", "The final answer, or a short note that the task is done.");
      tools.push_back(Fn("submit", "Finish the task. Call this once you are done.", p, {"answer"}));
    }
  }
  return tools;
}

bool ToolMutates(const std::string& name) { return name == "bash" || name == "write_file" || name == "str_replace"; }

ToolOutcome RunTool(Sandbox* sandbox, const Task& task, const std::string& name, const std::string& arguments_json,
                    uint32_t timeout_ms) {
  if (!task.HasTool(name)) return Err(fmt::format("tool '{}' is not available in this task", name));
  json args;
  try {
    args = json::parse(arguments_json);
  } catch (const json::parse_error&) {
    return Err(fmt::format("the arguments of '{}' are not a JSON object", name));
  }
  if (!args.is_object()) return Err(fmt::format("the arguments of '{}' are not a JSON object", name));

  if (name == "submit") {
    ToolOutcome o;
    auto it = args.find("answer");
    o.answer = it == args.end() ? "" : (it->is_string() ? it->get<std::string>() : it->dump());
    o.content = "submitted";
    o.submitted = true;
    return o;
  }
  if (!sandbox) return Err("no sandbox");

  if (name == "bash") {
    auto cmd = StringArg(args, "command");
    if (!cmd.ok()) return Err(cmd.status().message());
    ExecRequest req;
    req.argv = {"/bin/sh", "-c", *cmd};
    req.cwd = task.workdir;
    req.env = task.env;
    req.timeout_ms = timeout_ms;
    req.output_cap = task.output_cap_bytes;
    auto r = sandbox->Exec(req, nullptr);
    if (!r.ok()) return Err(r.status().message());
    ToolOutcome o;
    o.content = r->stdout_data;
    if (r->stdout_truncated) o.content += "\n[stdout truncated]";
    if (!r->stderr_data.empty()) {
      if (!o.content.empty() && o.content.back() != '\n') o.content += "\n";
      o.content += "[stderr]\n" + r->stderr_data;
      if (r->stderr_truncated) o.content += "\n[stderr truncated]";
    }
    if (!o.content.empty() && o.content.back() != '\n') o.content += "\n";
    if (r->timed_out)
      o.content += fmt::format("[timed out after {} s]", timeout_ms / 1000.0);
    else if (r->signal)
      o.content += fmt::format("[killed by signal {}]", r->signal);
    else
      o.content += fmt::format("[exit code {}]", r->exit_code);
    o.exit_code = r->timed_out ? 124 : (r->signal ? 128 + r->signal : r->exit_code);
    return o;
  }
  if (name == "read_file") {
    auto path = StringArg(args, "path");
    if (!path.ok()) return Err(path.status().message());
    std::string p = ResolvePath(task, *path);
    if (Status st = ValidateSandboxPath(p); !st.ok()) return Err(st.message());
    auto data = sandbox->ReadFile(p, task.output_cap_bytes);
    if (!data.ok()) return Err(data.status().message());
    ToolOutcome o;
    o.content = *data;
    return o;
  }
  if (name == "write_file") {
    auto path = StringArg(args, "path");
    if (!path.ok()) return Err(path.status().message());
    auto content = StringArg(args, "content");
    if (!content.ok()) return Err(content.status().message());
    std::string p = ResolvePath(task, *path);
    if (Status st = ValidateSandboxPath(p); !st.ok()) return Err(st.message());
    if (Status st = sandbox->WriteFile(p, *content, 0644, true); !st.ok()) return Err(st.message());
    ToolOutcome o;
    o.content = fmt::format("wrote {} bytes to {}", content->size(), *path);
    return o;
  }
  if (name == "str_replace") {
    auto path = StringArg(args, "path");
    if (!path.ok()) return Err(path.status().message());
    auto old_str = StringArg(args, "old_str");
    if (!old_str.ok()) return Err(old_str.status().message());
    auto new_str = StringArg(args, "new_str");
    if (!new_str.ok()) return Err(new_str.status().message());
    if (old_str->empty()) return Err("old_str must not be empty");
    std::string p = ResolvePath(task, *path);
    if (Status st = ValidateSandboxPath(p); !st.ok()) return Err(st.message());
    auto data = sandbox->ReadFile(p, 64ull << 20);
    if (!data.ok()) return Err(data.status().message());
    size_t first = data->find(*old_str);
    if (first == std::string::npos) return Err(fmt::format("old_str does not occur in {}", *path));
    if (data->find(*old_str, first + 1) != std::string::npos)
      return Err(fmt::format("old_str occurs more than once in {}; give more context", *path));
    std::string updated = data->substr(0, first) + *new_str + data->substr(first + old_str->size());
    if (Status st = sandbox->WriteFile(p, updated, 0644, false); !st.ok()) return Err(st.message());
    ToolOutcome o;
    o.content = fmt::format("replaced 1 occurrence in {}", *path);
    return o;
  }
  return Err(fmt::format("unknown tool '{}'", name));
}

}  // namespace paddock::rollout
