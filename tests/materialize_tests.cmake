# Start-up reaping of v1 freezer cgroups (sandbox/container/freezer.h) and the
# image store's space reservation for concurrent imports; included by
# tests/CMakeLists.txt.
paddock_test(reaper_freezer_test reaper_freezer_test.cc)
target_link_libraries(reaper_freezer_test PRIVATE paddock_sandbox)
add_dependencies(reaper_freezer_test paddockd)

if(TARGET paddock_storage)
  paddock_test(store_room_test store_room_test.cc)
  target_link_libraries(store_room_test PRIVATE paddock_storage)
endif()
