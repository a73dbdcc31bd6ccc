"""The Images service through the SDK against the real daemon (skipped while it lacks the service)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time

import pytest

import paddock
import paddock.aio


@pytest.fixture(scope="module")
def images_served(client: paddock.Client) -> None:
    try:
        client.images.ls()
    except paddock.Unimplemented as e:
        pytest.skip(f"this paddockd does not serve the Images service yet: {e.message}")


def test_import_dir_run_export_reimport_remove(client: paddock.Client, rootfs_dir: str, tmp_path,
                                               images_served: None) -> None:
    name = f"pysdk-busybox-{os.urandom(3).hex()}:t"
    r = client.images.import_dir(rootfs_dir, name=name, env={"FROM_IMAGE": "yes"}, workdir="/work")
    assert r.image.startswith("sha256:") and name in r.names

    listed = {i.digest: i for i in client.images.ls()}
    assert r.image in listed and name in listed[r.image].names and listed[r.image].layers >= 1

    d = client.images.inspect(name)
    assert d.digest == r.image and len(d.layers) >= 1 and "FROM_IMAGE=yes" in d.env
    assert all(isinstance(layer, paddock.LayerInfo) and layer.size > 0 for layer in d.layers)

    with client.sandbox("container", name) as sb:
        assert sb.exec(["cat", "/etc/passwd"]).stdout.startswith(b"root:")

    out = tmp_path / "oci"
    assert client.images.export(name, str(out)) == r.image
    assert (out / "index.json").exists()
    name2 = f"pysdk-reimported-{os.urandom(3).hex()}:t"
    phases: list[str] = []
    imp = client.images.import_(str(out), name=name2, on_progress=lambda ph, msg: phases.append(ph))
    assert imp.images == [r.image] and name2 in imp.names and imp.layers_new == 0

    assert client.images.rm(name2) == r.image
    assert client.images.rm(name) == r.image
    with pytest.raises(paddock.NotFound):
        client.images.inspect(name)
    with pytest.raises((paddock.NotFound, paddock.InvalidArgument)):
        client.images.import_(str(tmp_path / "missing.tar"))
    assert client.images.gc(grace=0).blobs_removed >= 0


def test_aio_images(daemon, rootfs_dir: str, images_served: None) -> None:
    async def main() -> None:
        async with paddock.aio.Client(daemon.socket_path) as c:
            name = f"pysdk-aio-{os.urandom(3).hex()}:t"
            r = await c.images.import_dir(rootfs_dir, name=name)
            assert (await c.images.inspect(name)).digest == r.image
            assert r.image in {i.digest for i in await c.images.ls()}
            await c.images.rm(name)
            with pytest.raises(paddock.NotFound):
                await c.images.inspect(name)

    asyncio.run(main())


def _registry(tmp_path) -> tuple[subprocess.Popen, int]:
    """Debian's docker-registry on a free loopback port (skips when it or skopeo is absent)."""
    for tool in ("/usr/bin/docker-registry", "/usr/bin/skopeo"):
        if not os.access(tool, os.X_OK):
            pytest.skip(f"{tool} is not installed (scripts/install-deps.sh installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "registry.yml"
    cfg.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/data\n"
                   f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail("docker-registry did not start")


def test_pull_from_a_registry(client: paddock.Client, daemon, rootfs_dir: str, tmp_path,
                              images_served: None) -> None:
    proc, port = _registry(tmp_path)
    try:
        name = f"pysdk-pull-src-{os.urandom(3).hex()}:t"
        src = client.images.import_dir(rootfs_dir, name=name)
        out = tmp_path / "oci"
        client.images.export(name, str(out))
        ref = f"127.0.0.1:{port}/pysdk/busybox:1"
        # The layout holds one manifest, named after the image's first name (the
        # same tree may already be stored under another name): no ref needed.
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{out}", f"docker://{ref}"],
                       check=True)
        phases: list[str] = []
        r = client.images.pull(ref, on_progress=lambda ph, msg: phases.append(ph))
        # Export kept the config and layers byte for byte: the pull is the same image,
        # and its layer was already stored.
        assert isinstance(r, paddock.PullResult) and r.image == src.image and ref in r.names
        assert r.layers_total == 1 and r.layers_new == 0 and r.bytes_fetched == 0
        assert r.manifest_digest.startswith("sha256:") and "committed" in phases
        with client.sandbox("container", ref) as sb:
            assert sb.exec(["echo", "ok"]).stdout == b"ok\n"
        with pytest.raises(paddock.NotFound):
            client.images.pull(f"127.0.0.1:{port}/pysdk/busybox:missing")
        with pytest.raises(paddock.InvalidArgument):
            client.images.pull("Not/A/Reference")

        async def main() -> None:
            async with paddock.aio.Client(daemon.socket_path) as c:
                a = await c.images.pull(ref, name="pysdk-pulled:aio")
                assert a.image == src.image and "pysdk-pulled:aio" in a.names

        asyncio.run(main())
        # By name: the same tree is also other tests' image under another name.
        for n in (name, ref, "pysdk-pulled:aio"):
            client.images.rm(n)
    finally:
        proc.terminate()
        proc.wait()


def test_push_in_chunks(client: paddock.Client, daemon, rootfs_dir: str, tmp_path,
                        images_served: None) -> None:
    """chunk_size reaches the daemon: the layer (over 64 KiB) goes as PATCH chunks and reads back whole."""
    (tmp_path / "reg").mkdir()
    proc, port = _registry(tmp_path / "reg")
    try:
        name = f"pysdk-chunked-src-{os.urandom(3).hex()}:t"
        src = client.images.import_dir(rootfs_dir, name=name)
        ref = f"127.0.0.1:{port}/pysdk/chunked:1"
        r = client.images.push(name, ref, chunk_size=64 << 10)
        # A fresh registry: both blobs uploaded; the config is small (one PUT), the layer chunked.
        assert r.blobs_uploaded == 2 and r.blobs_chunked == 1 and r.bytes_uploaded > 64 << 10
        client.images.rm(name)
        pulled = client.images.pull(ref)
        assert pulled.image == src.image and pulled.manifest_digest == r.manifest_digest
        with client.sandbox("container", ref) as sb:
            assert sb.exec(["echo", "ok"]).stdout == b"ok\n"
        client.images.rm(ref)
    finally:
        proc.terminate()
        proc.wait()


def test_push_to_a_registry(client: paddock.Client, daemon, rootfs_dir: str, tmp_path,
                            images_served: None) -> None:
    proc, port = _registry(tmp_path)
    try:
        name = f"pysdk-push-src-{os.urandom(3).hex()}:t"
        src = client.images.import_dir(rootfs_dir, name=name)
        ref = f"127.0.0.1:{port}/pysdk/pushed:1"
        phases: list[str] = []
        r = client.images.push(name, ref, on_progress=lambda ph, msg: phases.append(ph))
        assert isinstance(r, paddock.PushResult) and r.image == src.image and r.ref == ref
        assert r.blobs_total == 2 and r.blobs_uploaded == 2 and r.bytes_uploaded > 0 and "pushed" in phases
        again = client.images.push(name, ref)
        assert again.blobs_present == 2 and again.blobs_uploaded == 0 and again.blobs_chunked == 0
        with pytest.raises(paddock.InvalidArgument, match="chunk_size"):
            client.images.push(name, ref, chunk_size=1000)
        assert again.manifest_digest == r.manifest_digest
        pulled = client.images.pull(ref)
        assert pulled.image == src.image and pulled.manifest_digest == r.manifest_digest
        with pytest.raises(paddock.NotFound):
            client.images.push("pysdk-no-such-image:1", ref)
        with pytest.raises(paddock.InvalidArgument):
            client.images.push(name, ref, credentials=("only-a-user",))  # type: ignore[arg-type]

        async def main() -> None:
            async with paddock.aio.Client(daemon.socket_path) as c:
                a = await c.images.push(name, f"127.0.0.1:{port}/pysdk/other:1")
                assert a.blobs_mounted == 2 and a.blobs_uploaded == 0

        asyncio.run(main())
        for n in (name, ref):
            client.images.rm(n)
    finally:
        proc.terminate()
        proc.wait()
