# The Python SDK's tests; included by tests/CMakeLists.txt. PADDOCK_PYTHON3 and
# PADDOCK_PY_GEN_STUBS come from sdk/python/CMakeLists.txt.
#   python_sdk         the pytest suite (sdk/python/tests) against a real paddockd it starts
#                      itself; Debian's python3-grpcio/-protobuf/-pytest
#   python_sdk_stubs   the committed stubs (sdk/python/paddock/_api) match proto/*.proto;
#                      fails naming the refresh command, scripts/gen-python-stubs.sh
#   python_sdk_py39    the SDK's files fit Python 3.9, requires-python (sdk/python/check_py39.py)
#   python_sdk_venv    `pip install ./sdk/python` into a fresh venv, offline, then the
#                      installed SDK alone drives a real paddockd (tests/pysdk_venv_test.sh)
if(NOT PADDOCK_PYTHON3)
  return()
endif()
set(PADDOCK_PY_TEST_ENV
    "PYTHONDONTWRITEBYTECODE=1;PADDOCKD=$<TARGET_FILE:paddockd>;PADDOCK_INIT=$<TARGET_FILE:paddock-init>;PADDOCK_CLI=$<TARGET_FILE:paddock>;PADDOCK_SOURCE_DIR=${PROJECT_SOURCE_DIR};PADDOCK_TEST_ROOTFS=/var/tmp/paddock-test-rootfs/busybox")

add_test(NAME python_sdk
         COMMAND ${PADDOCK_PYTHON3} -m pytest -q -p no:cacheprovider ${PROJECT_SOURCE_DIR}/sdk/python/tests)
set_tests_properties(python_sdk PROPERTIES
  TIMEOUT 300
  ENVIRONMENT "PYTHONPATH=${PROJECT_SOURCE_DIR}/sdk/python;${PADDOCK_PY_TEST_ENV}")

if(PADDOCK_PY_GEN_STUBS)
  add_test(NAME python_sdk_stubs COMMAND ${PADDOCK_PY_GEN_STUBS} --check)
  set_tests_properties(python_sdk_stubs PROPERTIES TIMEOUT 60)
endif()

add_test(NAME python_sdk_py39 COMMAND ${PADDOCK_PYTHON3} ${PROJECT_SOURCE_DIR}/sdk/python/check_py39.py)
set_tests_properties(python_sdk_py39 PROPERTIES TIMEOUT 60)

add_test(NAME python_sdk_venv COMMAND ${PROJECT_SOURCE_DIR}/tests/pysdk_venv_test.sh)
set_tests_properties(python_sdk_venv PROPERTIES
  TIMEOUT 300
  ENVIRONMENT "PYTHON3=${PADDOCK_PYTHON3};${PADDOCK_PY_TEST_ENV}")
