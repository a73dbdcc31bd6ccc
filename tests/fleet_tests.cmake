# The fleet (rollout/fleet); included by tests/CMakeLists.txt.

# Placement and node discovery, without daemons.
paddock_test(fleet_placement_test fleet_placement_test.cc)
target_link_libraries(fleet_placement_test PRIVATE paddock_fleet)

# Real paddockd nodes on loopback TCP and a front placing sandboxes on them:
# placement, node loss, leases and fencing, bad node specs and tokens.
paddock_test(fleet_test fleet_test.cc)
target_link_libraries(fleet_test PRIVATE paddock_client paddock_sandbox nlohmann_json::nlohmann_json)
add_dependencies(fleet_test paddockd paddock paddock-init)

# The real front, rollout engine and trajectory log against SIMULATED nodes
# (rollout/fleet/sim_node.h): 20 nodes, 200 episodes, 2 nodes crash midway;
# a partitioned node fenced. In process, a few seconds.
paddock_test(fleet_sim_test fleet_sim_test.cc)
target_link_libraries(fleet_sim_test PRIVATE paddock_fleet_sim paddock_rollout_engine paddock_replay
                      nlohmann_json::nlohmann_json)
