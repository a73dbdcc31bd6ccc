# Service, daemon and CLI tests; included by tests/CMakeLists.txt.

# The gRPC edge end to end: a real server on a temp unix socket (and TCP), the
# real manager and substrates, driven through the C++ client.
paddock_test(service_test service_test.cc)
target_link_libraries(service_test PRIVATE paddock_service paddock_client)
add_dependencies(service_test paddock-init)

# The real paddockd and paddock binaries, spawned as a user would run them.
paddock_test(cli_test cli_test.cc)
target_link_libraries(cli_test PRIVATE nlohmann_json::nlohmann_json)
add_dependencies(cli_test paddockd paddock paddock-init)
