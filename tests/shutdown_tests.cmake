# paddockd's exit on SIGTERM after large responses (tests/shutdown_test.cc);
# included by tests/CMakeLists.txt.
if(TARGET paddockd AND EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/shutdown_test.cc)
  paddock_test(shutdown_test shutdown_test.cc)
  target_link_libraries(shutdown_test PRIVATE nlohmann_json::nlohmann_json paddock_sandbox)
  add_dependencies(shutdown_test paddockd paddock paddock-init)
endif()
