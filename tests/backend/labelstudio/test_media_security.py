"""Task media downloads: the address rule (after DNS, on every redirect hop, on the connected peer), the
token rule across redirects, and one deadline for a whole download.

Fake host names resolve through a patched ``socket.getaddrinfo``; every connection is checked to go to
127.0.0.1 only (a refused address is never dialled)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Callable

import pytest

from backend.labelstudio.media import LabelStudioAccess, MediaError, MediaPolicy, address_refusal, fetch_media

BODY = b"\x89PNG fake image bytes"
ALLOW = MediaPolicy(timeout_s=10.0, allow_private=True)
DENY = MediaPolicy(timeout_s=10.0, allow_private=False)


class RawHost:
    """A loopback HTTP/1.0 server: ``routes[path](send)`` writes the whole answer; requests are recorded."""

    def __init__(self, routes: dict[str, Callable[[Callable[[bytes], None]], None]]):
        self.routes = routes
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.stop = threading.Event()
        host = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(4096).decode("latin-1")
                if not line:  # connected, nothing sent
                    return
                headers = {}
                for _ in range(100):
                    h = self.rfile.readline(4096).decode("latin-1").strip()
                    if not h:
                        break
                    k, _, v = h.partition(":")
                    headers[k.strip().lower()] = v.strip()
                path = line.split(" ")[1] if line.count(" ") >= 2 else "/"
                host.requests.append((path, headers))
                route = host.routes.get(path.split("?")[0])
                try:
                    if route is None:
                        self.wfile.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    else:
                        route(self.wfile.write)
                except OSError:  # the client went away
                    pass

        socketserver.ThreadingTCPServer.daemon_threads = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def ok(send) -> None:
    send(b"HTTP/1.0 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


def redirect(location: str):
    return lambda send: send(f"HTTP/1.0 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode())


@pytest.fixture
def names(monkeypatch):
    """Fake DNS: ``names[host] = [ip, ...]`` (a list of answers is returned one call after another, the last
    one repeated); every connect() is recorded and must be to 127.0.0.1."""
    table: dict[str, list[str]] = {}
    dialled: list[str] = []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, port, *args, **kwargs):
        answers = table.get(str(host).lower())
        if answers is None:
            return real_getaddrinfo(host, port, *args, **kwargs)
        ip = answers.pop(0) if len(answers) > 1 else answers[0]
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        addr = (ip, int(port or 0), 0, 0) if family == socket.AF_INET6 else (ip, int(port or 0))
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", addr)]

    def connect(sock, address):
        dialled.append(address[0])
        if address[0] != "127.0.0.1":
            raise ConnectionRefusedError(f"test guard: no traffic off loopback ({address[0]})")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield table
    assert all(ip == "127.0.0.1" for ip in dialled), dialled


@pytest.fixture
def hosts():
    made: list[RawHost] = []

    def make(routes) -> RawHost:
        made.append(RawHost(routes))
        return made[-1]

    yield make
    for h in made:
        h.close()


def fetch(url: str, policy: MediaPolicy, access: LabelStudioAccess | None = None) -> bytes:
    return fetch_media(url, 1, access=access, max_bytes=1 << 20, local_files_root=None, policy=policy)


class LegacyTokenAccess(LabelStudioAccess):
    """Label Studio access with a legacy token (no SDK client, no Label Studio call for the token)."""

    def token(self) -> str:
        return "secret-token"


# -- the address rule ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ip",
    [
        "169.254.169.254",  # AWS, GCP, Azure, OCI metadata
        "169.254.170.2",  # ECS task credentials
        "100.100.100.200",  # Alibaba Cloud metadata
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fe80::1",
        "fe80::1%eth0",
        "::ffff:169.254.169.254",  # IPv4-mapped
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "0.0.0.0",
        "224.0.0.1",
    ],
)
def test_link_local_metadata_and_non_host_addresses_are_refused_even_with_private_allowed(ip):
    assert address_refusal(ip, allow_private=True) is not None


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "10.1.2.3", "172.16.0.9", "192.168.1.20", "fc00::5", "100.64.0.1"])
def test_private_and_loopback_addresses_follow_the_setting(ip):
    assert address_refusal(ip, allow_private=True) is None
    assert "DCSAM_MEDIA_ALLOW_PRIVATE" in address_refusal(ip, allow_private=False)


@pytest.mark.parametrize("ip", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"])
def test_public_addresses_are_allowed(ip):
    assert address_refusal(ip, allow_private=False) is None


def test_a_name_resolving_to_the_metadata_service_is_refused_before_any_connection(names):
    names["metadata.test"] = ["169.254.169.254"]
    with pytest.raises(MediaError, match="169.254.169.254, a link-local or cloud-metadata address"):
        fetch("http://metadata.test/latest/meta-data/iam/security-credentials/", ALLOW)


def test_a_name_with_any_refused_address_is_refused(names, monkeypatch):
    real = socket.getaddrinfo

    def two_answers(host, port, *args, **kwargs):
        if host == "mixed.test":
            return real("127.0.0.1", port, *args, **kwargs) + [
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("169.254.169.254", port))
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", two_answers)
    with pytest.raises(MediaError, match="169.254.169.254"):
        fetch("http://mixed.test:9/x.png", ALLOW)


def test_a_private_host_is_fetched_only_when_private_addresses_are_allowed(names, hosts):
    h = hosts({"/img.png": ok})
    names["intranet.test"] = ["127.0.0.1"]
    url = f"http://intranet.test:{h.port}/img.png"
    assert fetch(url, ALLOW) == BODY
    with pytest.raises(MediaError, match=r"intranet.test is 127.0.0.1, a private or loopback address"):
        fetch(url, DENY)
    assert h.paths() == ["/img.png"]  # the refused fetch never reached it


def test_the_label_studio_host_is_always_allowed(names, hosts):
    ls = hosts({"/data/upload/1/img.png": ok})
    names["ls.test"] = ["127.0.0.1"]
    access = LegacyTokenAccess(f"http://ls.test:{ls.port}", "secret-token", max_download_bytes=1 << 20)
    assert fetch("/data/upload/1/img.png", DENY, access) == BODY
    assert ls.requests[0][1]["authorization"] == "Token secret-token"


def test_every_redirect_hop_is_checked(names, hosts):
    names["metadata.test"] = ["169.254.169.254"]
    names["images.test"] = ["127.0.0.1"]
    h = hosts({"/img.png": redirect("http://metadata.test/latest/meta-data/")})
    with pytest.raises(MediaError, match="metadata.test is 169.254.169.254"):
        fetch(f"http://images.test:{h.port}/img.png", ALLOW)


def _redirecting_label_studio(names, hosts, path: str, host: str, target: str):
    """Label Studio at ls.test whose ``path`` redirects to ``target`` on another loopback server called
    ``host``: (Label Studio's server, the other server, an access holding Label Studio's token)."""
    other = hosts({target.split("?")[0]: ok})
    names["ls.test"] = names[host] = ["127.0.0.1"]
    ls = hosts({path: redirect(f"http://{host}:{other.port}{target}")})
    return ls, other, LegacyTokenAccess(f"http://ls.test:{ls.port}", "secret-token", max_download_bytes=1 << 20)


def test_a_redirect_from_label_studio_to_a_private_host_is_refused_when_private_is_off(names, hosts):
    ls, other, access = _redirecting_label_studio(names, hosts, "/media/img.png", "intranet.test", "/img.png")
    with pytest.raises(MediaError, match="intranet.test is 127.0.0.1"):
        fetch(f"http://ls.test:{ls.port}/media/img.png", DENY, access)
    assert ls.paths() == ["/media/img.png"] and other.requests == []


def test_the_token_is_not_sent_to_the_host_a_redirect_leads_to(names, hosts):
    ls, other, access = _redirecting_label_studio(
        names, hosts, "/data/upload/1/img.png", "bucket.test", "/bucket/img.png?sig=1"
    )
    assert fetch("/data/upload/1/img.png", ALLOW, access) == BODY
    assert ls.requests[0][1]["authorization"] == "Token secret-token"
    assert "authorization" not in other.requests[0][1]


def test_redirects_are_bounded(names, hosts):
    names["loop.test"] = ["127.0.0.1"]
    h = hosts({})
    h.routes["/a"] = redirect(f"http://loop.test:{h.port}/a")
    with pytest.raises(MediaError, match="more than 5 redirects"):
        fetch(f"http://loop.test:{h.port}/a", ALLOW)
    assert len(h.requests) == 6


def test_the_connected_address_is_checked_too_against_dns_rebinding(names, hosts):
    h = hosts({"/img.png": ok})
    names["rebind.test"] = ["93.184.216.34", "127.0.0.1"]  # public when checked, loopback when connecting
    with pytest.raises(MediaError, match="rebind.test is 127.0.0.1, a private or loopback address"):
        fetch(f"http://rebind.test:{h.port}/img.png", DENY)
    assert h.requests == []  # refused once connected, before the request was sent


# -- one deadline for the whole download ---------------------------------------------------------------
def _trickle(host: RawHost, head: bytes, body_bytes: int):
    def route(send) -> None:
        send(head)
        for _ in range(body_bytes):  # bounded: at most body_bytes seconds, or until the client is gone
            if host.stop.wait(1.0):
                return
            send(b"x")

    return route


@pytest.mark.parametrize("phase", ["body", "headers"])
def test_a_host_trickling_one_byte_a_second_is_given_up_at_the_deadline(names, hosts, phase):
    h = hosts({})
    head = b"HTTP/1.0 200 OK\r\nContent-Length: 600\r\n\r\n" if phase == "body" else b"HTTP/1.0 200 OK\r\nX-Slow: "
    h.routes["/slow.png"] = _trickle(h, head, 600)
    names["slow.test"] = ["127.0.0.1"]
    t0 = time.monotonic()
    with pytest.raises(MediaError, match="DCSAM_DOWNLOAD_TIMEOUT_S"):
        fetch(f"http://slow.test:{h.port}/slow.png", MediaPolicy(timeout_s=2.0, allow_private=True))
    # the old per-read timeout (120 s) never fired on a trickle: 600 s; the deadline is 2 s
    assert time.monotonic() - t0 < 60


def test_the_byte_cap_still_holds(names, hosts):
    big = b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * (2 << 20)
    h = hosts({"/big.png": lambda send: send(big)})
    names["big.test"] = ["127.0.0.1"]
    with pytest.raises(MediaError, match="DCSAM_MAX_DOWNLOAD_MB"):
        fetch(f"http://big.test:{h.port}/big.png", ALLOW)
