#include "rollout/engine/task.h"

#include <algorithm>
#include <set>

namespace paddock::rollout {
namespace {

using nlohmann::json;

bool ValidId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
}

const char* TypeName(const json& v) { return v.type_name(); }

Status FieldError(std::string_view field, std::string_view why) {
  return Error(Code::kInvalidArgument, "field '{}': {}", field, why);
}

Result<std::string> GetString(const json& o, const char* field, bool required, bool non_empty) {
  auto it = o.find(field);
  if (it == o.end()) {
    if (required) return FieldError(field, "is required");
    return std::string();
  }
  if (!it->is_string()) return FieldError(field, fmt::format("must be a string, not {}", TypeName(*it)));
  std::string s = it->get<std::string>();
  if (non_empty && s.empty()) return FieldError(field, "must not be empty");
  return s;
}

// An unsigned integer in [lo, hi].
Result<uint64_t> GetUint(const json& o, const std::string& field, uint64_t def, uint64_t lo, uint64_t hi) {
  auto it = o.find(field);
  if (it == o.end()) return def;
  if (!it->is_number_integer() || (it->is_number_integer() && it->get<int64_t>() < 0 && !it->is_number_unsigned()))
    return FieldError(field, fmt::format("must be a non-negative integer, not {}", it->dump()));
  uint64_t v = it->get<uint64_t>();
  if (v < lo || v > hi) return FieldError(field, fmt::format("{} is out of range [{}, {}]", v, lo, hi));
  return v;
}

Status CheckKeys(const json& o, std::string_view where, std::initializer_list<std::string_view> known) {
  for (auto& [k, v] : o.items()) {
    if (std::find(known.begin(), known.end(), k) == known.end()) {
      std::string list;
      for (auto n : known) list += (list.empty() ? "" : ", ") + std::string(n);
      return Error(Code::kInvalidArgument, "field '{}{}': unknown field (known: {})", where, k, list);
    }
  }
  return Status::Ok();
}

}  // namespace

bool Task::HasTool(std::string_view name) const {
  return std::find(tools.begin(), tools.end(), name) != tools.end();
}

Result<Task> ParseTask(const json& o) {
  if (!o.is_object()) return Error(Code::kInvalidArgument, "a task must be a JSON object, not {}", TypeName(o));
  PADDOCK_RETURN_IF_ERROR(CheckKeys(o, "",
                                    {"id", "image", "substrate", "instruction", "system", "tools", "limits",
                                     "env", "workdir", "max_turns", "max_tokens", "max_new_tokens",
                                     "max_observation_tokens", "setup", "verifier", "metadata", "network"}));
  Task t;
  t.source = o;
  PADDOCK_ASSIGN_OR_RETURN(t.id, GetString(o, "id", true, true));
  if (!ValidId(t.id))
    return FieldError("id", fmt::format("'{}' must be 1-128 characters of A-Z a-z 0-9 . _ -", t.id));
  PADDOCK_ASSIGN_OR_RETURN(t.image, GetString(o, "image", true, true));
  PADDOCK_ASSIGN_OR_RETURN(std::string substrate, GetString(o, "substrate", false, false));
  if (!substrate.empty()) t.substrate = substrate;
  if (t.substrate != "container" && t.substrate != "function" && t.substrate != "microvm")
    return FieldError("substrate", fmt::format("'{}' is not one of container, function, microvm", t.substrate));
  PADDOCK_ASSIGN_OR_RETURN(t.instruction, GetString(o, "instruction", true, true));
  PADDOCK_ASSIGN_OR_RETURN(t.system, GetString(o, "system", false, false));
  PADDOCK_ASSIGN_OR_RETURN(t.workdir, GetString(o, "workdir", false, false));
  if (!t.workdir.empty() && t.workdir[0] != '/') return FieldError("workdir", "must be an absolute path");

  if (auto it = o.find("tools"); it != o.end()) {
    if (!it->is_array()) return FieldError("tools", fmt::format("must be an array of tool names, not {}", TypeName(*it)));
    std::set<std::string> seen;
    for (size_t i = 0; i < it->size(); ++i) {
      const json& n = (*it)[i];
      std::string field = fmt::format("tools[{}]", i);
      if (!n.is_string()) return FieldError(field, "must be a string");
      std::string name = n.get<std::string>();
      if (std::find(std::begin(kBuiltinTools), std::end(kBuiltinTools), name) == std::end(kBuiltinTools))
        return FieldError(field, fmt::format("unknown tool '{}' (built-in: bash, read_file, write_file, str_replace, submit)", name));
      if (!seen.insert(name).second) return FieldError(field, fmt::format("tool '{}' is listed twice", name));
    }
    // Keep the built-in order so the prompt does not depend on the listing order.
    for (auto n : kBuiltinTools)
      if (seen.count(std::string(n))) t.tools.emplace_back(n);
    if (t.tools.empty()) return FieldError("tools", "must name at least one tool");
  } else {
    for (auto n : kBuiltinTools) t.tools.emplace_back(n);
  }

  if (auto it = o.find("limits"); it != o.end()) {
    if (!it->is_object()) return FieldError("limits", "must be an object");
    PADDOCK_RETURN_IF_ERROR(CheckKeys(*it, "limits.",
                                      {"cpu_millicores", "memory_mb", "pids", "disk_mb", "exec_timeout_s",
                                       "output_cap_bytes"}));
    auto u = [&](const char* f, uint64_t def, uint64_t lo, uint64_t hi) -> Result<uint64_t> {
      return GetUint(*it, f, def, lo, hi);
    };
    auto fix = [](Status s) {  // "field 'x'" → "field 'limits.x'"
      std::string m = s.message();
      auto p = m.find("field '");
      if (p != std::string::npos) m.insert(p + 7, "limits.");
      return Status(s.code(), m);
    };
    auto cpu = u("cpu_millicores", 0, 0, 1'000'000);
    if (!cpu.ok()) return fix(cpu.status());
    auto mem = u("memory_mb", 0, 0, 1 << 20);
    if (!mem.ok()) return fix(mem.status());
    auto pids = u("pids", 0, 0, 1 << 22);
    if (!pids.ok()) return fix(pids.status());
    auto disk = u("disk_mb", 0, 0, 1 << 24);
    if (!disk.ok()) return fix(disk.status());
    auto tmo = u("exec_timeout_s", 60, 1, 86400);
    if (!tmo.ok()) return fix(tmo.status());
    auto cap = u("output_cap_bytes", 65536, 1, 16 << 20);
    if (!cap.ok()) return fix(cap.status());
    t.limits.cpu_millicores = static_cast<uint32_t>(*cpu);
    t.limits.memory_bytes = *mem << 20;
    t.limits.pids = static_cast<uint32_t>(*pids);
    t.limits.disk_bytes = *disk << 20;
    t.exec_timeout_s = static_cast<uint32_t>(*tmo);
    t.output_cap_bytes = *cap;
  }

  if (auto it = o.find("env"); it != o.end()) {
    if (!it->is_object()) return FieldError("env", "must be an object of strings");
    for (auto& [k, v] : it->items()) {
      if (k.empty() || k.find('=') != std::string::npos || k.find('\0') != std::string::npos)
        return FieldError("env", fmt::format("invalid variable name '{}'", k));
      if (!v.is_string()) return FieldError("env." + k, "must be a string");
      t.env[k] = v.get<std::string>();
    }
  }

  if (auto it = o.find("network"); it != o.end()) {
    if (!it->is_object()) return FieldError("network", "must be an object like {\"allow\": [\"host:443\"]}");
    PADDOCK_RETURN_IF_ERROR(CheckKeys(*it, "network.", {"allow"}));
    if (auto allow = it->find("allow"); allow != it->end()) {
      if (!allow->is_array()) return FieldError("network.allow", "must be an array of strings");
      for (size_t i = 0; i < allow->size(); ++i) {
        if (!(*allow)[i].is_string() || (*allow)[i].get<std::string>().empty())
          return FieldError(fmt::format("network.allow[{}]", i), "must be a non-empty string");
        t.network_allow.push_back((*allow)[i].get<std::string>());
      }
    }
  }

  PADDOCK_ASSIGN_OR_RETURN(uint64_t turns, GetUint(o, "max_turns", 16, 1, 10000));
  PADDOCK_ASSIGN_OR_RETURN(t.max_tokens, GetUint(o, "max_tokens", 32768, 256, 1 << 22));
  PADDOCK_ASSIGN_OR_RETURN(uint64_t mnt, GetUint(o, "max_new_tokens", 2048, 1, 1 << 20));
  PADDOCK_ASSIGN_OR_RETURN(uint64_t mot, GetUint(o, "max_observation_tokens", 4096, 16, 1 << 20));
  t.max_turns = static_cast<uint32_t>(turns);
  t.max_new_tokens = static_cast<uint32_t>(mnt);
  t.max_observation_tokens = static_cast<uint32_t>(mot);

  if (auto it = o.find("setup"); it != o.end()) {
    if (!it->is_array()) return FieldError("setup", "must be an array of shell commands");
    for (size_t i = 0; i < it->size(); ++i) {
      if (!(*it)[i].is_string() || (*it)[i].get<std::string>().empty())
        return FieldError(fmt::format("setup[{}]", i), "must be a non-empty string");
      t.setup.push_back((*it)[i].get<std::string>());
    }
  }

  if (auto it = o.find("verifier"); it != o.end()) {
    const json& v = *it;
    if (v.is_string()) {
      t.verifier.command = v.get<std::string>();
    } else if (v.is_object()) {
      PADDOCK_RETURN_IF_ERROR(CheckKeys(v, "verifier.", {"command", "reward", "timeout_s"}));
      auto cmd = GetString(v, "command", true, true);
      if (!cmd.ok()) return FieldError("verifier.command", cmd.status().message().find("required") != std::string::npos ? "is required" : "must be a non-empty string");
      t.verifier.command = *cmd;
      auto rw = GetString(v, "reward", false, false);
      if (!rw.ok()) return FieldError("verifier.reward", "must be \"exit_code\" or \"stdout\"");
      if (!rw->empty()) t.verifier.reward = *rw;
      if (t.verifier.reward != "exit_code" && t.verifier.reward != "stdout")
        return FieldError("verifier.reward", fmt::format("'{}' is not \"exit_code\" or \"stdout\"", t.verifier.reward));
      auto tmo = GetUint(v, "timeout_s", 60, 1, 86400);
      if (!tmo.ok()) return FieldError("verifier.timeout_s", "must be an integer in [1, 86400]");
      t.verifier.timeout_s = static_cast<uint32_t>(*tmo);
    } else {
      return FieldError("verifier", "must be a command string or an object {command, reward, timeout_s}");
    }
    if (t.verifier.command.empty()) return FieldError("verifier", "the command must not be empty");
    t.has_verifier = true;
  }

  if (auto it = o.find("metadata"); it != o.end()) {
    if (!it->is_object()) return FieldError("metadata", "must be an object");
    t.metadata = *it;
  }
  return t;
}

Result<std::vector<Task>> ParseTasksJsonl(std::string_view text) {
  std::vector<Task> tasks;
  std::set<std::string> ids;
  size_t line_no = 0, pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() + 1 : nl + 1;
    ++line_no;
    size_t b = line.find_first_not_of(" \t\r");
    if (b == std::string_view::npos || line[b] == '#') continue;
    json o;
    try {
      o = json::parse(line);
    } catch (const json::parse_error& e) {
      std::string why = e.what();
      auto p = why.find("parse error");
      return Error(Code::kInvalidArgument, "line {}: not valid JSON: {}", line_no,
                   p == std::string::npos ? why : why.substr(p));
    }
    auto t = ParseTask(o);
    if (!t.ok()) return Error(Code::kInvalidArgument, "line {}: {}", line_no, t.status().message());
    if (!ids.insert(t->id).second)
      return Error(Code::kInvalidArgument, "line {}: field 'id': '{}' is used by an earlier task", line_no, t->id);
    tasks.push_back(std::move(*t));
  }
  if (tasks.empty()) return Error(Code::kInvalidArgument, "no tasks: the file has no task lines");
  return tasks;
}

}  // namespace paddock::rollout
