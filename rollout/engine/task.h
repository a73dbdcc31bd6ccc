// The task format of `paddock run` (docs/tasks.md, JSON schema
// docs/task.schema.json): one JSON object per line. Parsing validates every
// field and names the line and the field at fault, so a bad file is refused
// before anything runs.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "sandbox/base/status.h"
#include "sandbox/types.h"

namespace paddock::rollout {

// The built-in tools, in the order they are offered to the policy.
inline constexpr std::string_view kBuiltinTools[] = {"bash", "read_file", "write_file",
                                                     "str_replace", "submit"};

struct Verifier {
  std::string command;          // run with /bin/sh -c in the episode's sandbox
  // "exit_code": reward 1 when it exits 0, else 0.
  // "stdout": the last non-empty line of its stdout, read as a number.
  std::string reward = "exit_code";
  uint32_t timeout_s = 60;
};

struct Task {
  std::string id;               // [A-Za-z0-9._-]{1,128}
  std::string image;            // absolute rootfs path (image store names once it lands)
  std::string substrate = "container";
  std::string instruction;      // the user turn
  std::string system;           // optional system prompt, before the tool list
  std::vector<std::string> tools;  // a subset of kBuiltinTools; default all
  Limits limits;
  uint32_t exec_timeout_s = 60;       // per tool call
  uint64_t output_cap_bytes = 65536;  // per tool call, stdout and stderr each
  std::map<std::string, std::string> env;
  std::vector<std::string> network_allow;  // "network": {"allow": [...]}; empty: loopback only
  std::string workdir;                // empty: the substrate's default
  uint32_t max_turns = 16;
  uint64_t max_tokens = 32768;        // the episode's context budget
  uint32_t max_new_tokens = 2048;     // per turn
  uint32_t max_observation_tokens = 4096;
  std::vector<std::string> setup;     // shell commands run before the first turn
  bool has_verifier = false;
  Verifier verifier;
  nlohmann::json metadata = nlohmann::json::object();  // passed through to the export
  nlohmann::json source;              // the task object as given

  bool HasTool(std::string_view name) const;
};

// Parses one task object; errors are INVALID_ARGUMENT "field 'x': why".
Result<Task> ParseTask(const nlohmann::json& object);
// Parses JSON lines (blank lines and lines starting with '#' are skipped).
// Errors: INVALID_ARGUMENT "line N: field 'x': why", the first at fault;
// duplicate ids and an empty file are refused too.
Result<std::vector<Task>> ParseTasksJsonl(std::string_view text);

}  // namespace paddock::rollout
