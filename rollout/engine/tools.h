// The built-in tools of an episode: their OpenAI-style schemas (rendered into
// the prompt by the V4 encoder) and how each call runs in the sandbox. A tool
// never fails the episode: bad arguments, a missing file or a sandbox error
// become the observation the policy reads.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "rollout/engine/task.h"
#include "sandbox/sandbox.h"

namespace paddock::rollout {

// [{"type":"function","function":{name, description, parameters}}] for the
// task's tools, in built-in order (ordered_json keeps the schema key order).
nlohmann::ordered_json ToolSchemas(const Task& task);

struct ToolOutcome {
  std::string content;   // what the policy reads
  int32_t exit_code = 0; // bash: the command's; others: 0 ok, 1 error
  bool submitted = false;
  std::string answer;    // submit's answer
};

// Whether a call changes the sandbox (re-applied when a resumed episode's
// sandbox is rebuilt). read_file and submit do not.
bool ToolMutates(const std::string& name);

// Runs one call. `arguments_json` is the decoded arguments object as JSON
// text. `sandbox` may be null for submit.
ToolOutcome RunTool(Sandbox* sandbox, const Task& task, const std::string& name,
                    const std::string& arguments_json, uint32_t timeout_ms);

}  // namespace paddock::rollout
