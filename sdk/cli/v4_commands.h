// `paddock v4 …`: the DeepSeek-V4 chat codec and tokenizer from the command
// line (encode, decode, tokenize). They run locally; no daemon is needed.
#pragma once

#include <optional>

#include <CLI/CLI.hpp>

namespace paddock::cli {

// Adds the `v4` command group to `app`. The chosen command's callback stores
// its exit status in `rc`: 0 success, 1 an error, 2 a rejected completion
// (`v4 decode`).
void RegisterV4Commands(CLI::App& app, std::optional<int>& rc);

}  // namespace paddock::cli
