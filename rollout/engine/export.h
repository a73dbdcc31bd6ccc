// Export of a rollout's episodes as JSON lines, one object per episode, for
// training (docs/export.schema.json): task id, messages, token ids with a
// loss mask and logprobs, reward, stop reason, turns, timings, replay and
// rebuild flags, the policy backend. Built from the trajectory log alone, so
// it works for a rollout of an earlier daemon.
#pragma once

// The entry points are RolloutEngine::Export and `paddock export`; the line
// builder lives in engine_internal.h (ExportEpisodeLine).
