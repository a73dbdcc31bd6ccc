// `paddock node …`: a front's nodes (paddockd --nodes): `ls` and `drain`.
#pragma once

#include <functional>
#include <optional>

#include <CLI/CLI.hpp>

#include "paddock/client.h"

namespace paddock::cli {

// Adds the `node` command group to `app`, as RegisterImageCommands does.
void RegisterNodeCommands(CLI::App& app, std::function<Result<client::Client>()> connect, const bool& json,
                          std::optional<int>& rc);

}  // namespace paddock::cli
