#!/usr/bin/env bash
# Regenerates the Python SDK's committed gRPC stubs (sdk/python/paddock/_api/) from
# proto/*.proto. Run it after changing a .proto and commit the result; ctest
# python_sdk_stubs fails while they are stale. `--check` only compares.
# Needs Debian 12's protoc 3.21 and grpc_python_plugin (protobuf-compiler,
# protobuf-compiler-grpc); $PROTOC and $GRPC_PYTHON_PLUGIN point elsewhere.
# See sdk/python/gen_stubs.py.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's interpreter when there is one (any python3 >= 3.9 will do: stdlib only).
py=/usr/bin/python3
[ -x "$py" ] || py=python3
exec "$py" sdk/python/gen_stubs.py "$@"
