# Request fingerprints of keyed calls (the fast-forward read path); included by tests/CMakeLists.txt.
if(TARGET paddock_replay)
  paddock_test(request_fingerprint_test request_fingerprint_test.cc)
  target_link_libraries(request_fingerprint_test PRIVATE paddock_replay)
endif()
