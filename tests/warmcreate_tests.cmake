# Warm container creation (issue 3): sandboxes the warm pool built ahead run at
# normal priority once handed over (tests/warm_priority_test.cc); included by
# tests/CMakeLists.txt.
paddock_test(warm_priority_test warm_priority_test.cc)
target_link_libraries(warm_priority_test PRIVATE paddock_sandbox)
