# The fleet (rollout/fleet); included by tests/CMakeLists.txt.

# Placement and node discovery, without daemons.
paddock_test(fleet_placement_test fleet_placement_test.cc)
target_link_libraries(fleet_placement_test PRIVATE paddock_fleet)

# Real paddockd nodes on loopback TCP and a front placing sandboxes on them:
# placement, node loss, leases and fencing, bad node specs and tokens.
paddock_test(fleet_test fleet_test.cc)
target_link_libraries(fleet_test PRIVATE paddock_client paddock_sandbox nlohmann_json::nlohmann_json)
add_dependencies(fleet_test paddockd paddock paddock-init)

# The fleet over a real network: four nodes in network namespaces of their own
# on a bridge the test makes, a front, a 200-episode rollout through a node
# SIGKILLed, one partitioned and healed, one drained and one joining; outside
# counts of every tool call and a reference run (tests/fleet_netns_test.py).
# Exit 77 (skipped) where network namespaces or bridges cannot be made.
# python3 is a dependency of the project (scripts/install-deps.sh); the
# binaries it runs are built by fleet_script_test_binaries (deploy_tests.cmake).
add_test(NAME fleet_netns_test COMMAND python3 ${PROJECT_SOURCE_DIR}/tests/fleet_netns_test.py ${CMAKE_BINARY_DIR})
set_tests_properties(fleet_netns_test PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77 RUN_SERIAL TRUE)

# The real front, rollout engine and trajectory log against SIMULATED nodes
# (rollout/fleet/sim_node.h): 20 nodes, 200 episodes, 2 nodes crash midway;
# a partitioned node fenced. In process, a few seconds.
paddock_test(fleet_sim_test fleet_sim_test.cc)
target_link_libraries(fleet_sim_test PRIVATE paddock_fleet_sim paddock_rollout_engine paddock_replay
                      nlohmann_json::nlohmann_json)
