# Trajectory log suites; included by tests/CMakeLists.txt.

# The log against a real RocksDB in temp dirs: keys, round trips, group commit,
# SIGKILLed writers, verify, backup/restore, a corrupted SST, a full tmpfs
# (mounted by the test; skipped without root).
if(TARGET paddock_replay)
  paddock_test(replay_log_test replay_log_test.cc)
  target_link_libraries(replay_log_test PRIVATE paddock_replay nlohmann_json::nlohmann_json)
endif()
