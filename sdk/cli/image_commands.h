// `paddock image …`: the daemon's image store (import, import-dir, ls, inspect,
// rm, gc, export). Paths are read and written by the daemon on its host; the
// CLI makes them absolute against its own working directory first.
#pragma once

#include <functional>
#include <optional>

#include <CLI/CLI.hpp>

#include "paddock/client.h"

namespace paddock::cli {

// Adds the `image` command group to `app`. `connect` makes a client from the
// global flags; `json` is the global --json flag (read when a command runs).
// The chosen command's callback stores its exit status in `rc`.
void RegisterImageCommands(CLI::App& app, std::function<Result<client::Client>()> connect,
                           const bool& json, std::optional<int>& rc);

}  // namespace paddock::cli
