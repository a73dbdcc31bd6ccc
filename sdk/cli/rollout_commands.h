// `paddock run`, `paddock resume`, `paddock export` and `paddock rollout …`:
// rollouts through paddockd's Rollouts API (docs/tasks.md).
#pragma once

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

namespace paddock::cli {

// Adds the rollout commands to `app`. The connection flags are read when a
// command runs (they are filled by parsing). The chosen command's callback
// stores its exit status in `rc`: 0 success, 1 an error, 3 a rollout that
// ended with failed episodes or was interrupted.
void RegisterRolloutCommands(CLI::App& app, const std::string& socket, const std::string& tcp,
                             const std::string& token_file, const bool& json, std::optional<int>& rc);

}  // namespace paddock::cli
