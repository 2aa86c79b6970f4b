"""Differential conformance: the same case through Synapse's own proxy code
and through egress, both against recording listeners on loopback.

Run with the Python of the Synapse virtual environment (conformance/run does).
For each case:
  * recording listeners start on every loopback address and port the case can
    reach (proxy and origin, and the default ports 80, 443 and 1080);
  * Synapse's code makes the request: parse_proxy_config, ProxyAgent, and the
    blocklisting wrappers when the case has lists, on the Twisted reactor with
    a name resolver that knows only the case's `resolve` map;
  * egress makes it: `egress fetch` with the same environment, a homeserver.yaml
    holding the same config and lists, and --resolve for the same map;
  * the two observations are compared; rules.py holds the documented
    differences (each citing SPEC.md);
  * a third runner makes it through reqwest configured by
    `egress::reqwest::Routing` (`egress fetch --engine reqwest`), compared with
    egress's own client; rules.ADAPTER holds the adapter's documented
    limitations (each citing the README's table). Reported separately.
"""

import argparse
import ipaddress
import json
import os
import sys
import tempfile
from urllib.parse import urlsplit

from twisted.internet import defer, protocol, reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.http_headers import Headers
from zope.interface import implementer

import judge  # issue 12: the SPEC-derived verdict
import rules
import synapse_purposes  # issue 12: each purpose as Synapse builds its client

PURPOSES = {
    "push", "url_preview", "phone_home", "recaptcha", "cas", "oidc", "federation",
    "pubkey_validity", "key_fetch", "media", "appservice", "identity_server",
    "replication", "redis",
}
TIMEOUT = 3.0


class Refused(Exception):
    """A case that could make something connect off loopback."""


# ---------------------------------------------------------------- recorders


class Recorder(protocol.Protocol):
    """Reads a request head, records it, answers minimally, closes."""

    def connectionMade(self):
        self.buf = b""
        self.tunnelled = False

    def dataReceived(self, data):
        self.buf += data
        if self.tunnelled:
            # Whatever comes through the tunnel (a TLS ClientHello): done.
            self.transport.loseConnection()
            return
        if self.buf[:1] == b"\x16":
            self.factory.record(self.factory.where, "<TLS ClientHello>", {})
            self.transport.loseConnection()
            return
        if b"\r\n\r\n" not in self.buf:
            if len(self.buf) > 65536:
                self.transport.loseConnection()
            return
        head = self.buf.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        lines = head.split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        self.factory.record(self.factory.where, lines[0], headers)
        if lines[0].startswith("CONNECT "):
            self.tunnelled = True
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            )
            self.transport.loseConnection()


class RecorderFactory(protocol.Factory):
    protocol = Recorder

    def __init__(self, where, sink):
        self.where = where
        self.record = sink


class Listeners:
    """Recording listeners, kept across cases; each case reads what it caused."""

    def __init__(self):
        self.ports = {}
        self.seen = []

    def record(self, where, first_line, headers):
        self.seen.append({"where": where, "first_line": first_line, "headers": headers})

    def ensure(self, addr, port):
        key = (addr, port)
        if key in self.ports:
            return
        try:
            self.ports[key] = reactor.listenTCP(
                port, RecorderFactory(key, self.record), interface=addr
            )
        except Exception as e:  # noqa: BLE001 - a port we cannot take is reported
            raise RuntimeError(f"cannot listen on {addr}:{port}: {e}") from e

    def take(self):
        seen, self.seen = self.seen, []
        return seen


# ---------------------------------------------------------------- resolver


@implementer(IHostnameResolver)
class CaseResolver:
    """Resolves only the case's names, to loopback addresses."""

    def __init__(self, mapping):
        self.mapping = mapping

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
        receiver.resolutionBegan(None)
        addr = self.mapping.get(hostName.lower().rstrip("."))
        if addr is None:
            try:
                addr = str(ipaddress.ip_address(hostName.strip("[]")))
            except ValueError:
                addr = None
        if addr is not None:
            ip = ipaddress.ip_address(addr)
            cls = IPv4Address if ip.version == 4 else IPv6Address
            receiver.addressResolved(cls("TCP", addr, portNumber))
        receiver.resolutionComplete()
        return receiver


# ---------------------------------------------------------------- cases


def loopback(addr):
    try:
        ip = ipaddress.ip_address(addr.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def endpoints(case):
    """(addr, port) pairs the case can reach. Refuses anything off loopback."""
    resolve = {k.lower(): v for k, v in case.get("resolve", {}).items()}
    for name, addr in resolve.items():
        if not loopback(addr):
            raise Refused(f"resolve maps {name} to {addr}, not a loopback address")

    def addr_of(host):
        host = host.strip("[]").lower().rstrip(".")
        if loopback(host):
            ip = ipaddress.ip_address(host)
            # An IPv4-mapped loopback address reaches the IPv4 address.
            return str(getattr(ip, "ipv4_mapped", None) or ip)
        if host in resolve:
            return resolve[host]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise Refused(f"{host} is not in the case's resolve map")
        raise Refused(f"{host} is not a loopback address")

    pairs = set()
    url = urlsplit(case["url"])
    if url.scheme in ("http", "https") and url.hostname:
        host, port = rules.host_port(url.netloc, 443 if url.scheme == "https" else 80)
        pairs.add((addr_of(host), port))
    for value in rules.proxy_values(case):
        rest = value.split("://", 1)[-1]
        netloc = rest.split("/", 1)[0]
        host, port = rules.host_port(netloc, 1080)
        if not host or not 0 < port < 65536:
            continue
        try:
            pairs.add((addr_of(host), port))
        except Refused:
            # An unparseable or unresolvable proxy: both must fail before connecting.
            if any(c in host for c in " %") or host.count(":") > 1:
                continue
            raise
    addrs = {a for a, _ in pairs} | {"127.0.0.1"}
    for addr in addrs:
        for port in (80, 443, 1080):
            pairs.add((addr, port))
    return pairs


def lists_yaml(case):
    """homeserver.yaml keys for the case's lists. Without lists, every list is
    empty (Synapse's clients in the harness have no lists then either)."""
    block = case.get("blocklist", [])
    allow = case.get("allowlist", [])
    return {
        "ip_range_blacklist": block,
        "ip_range_whitelist": allow,
        "url_preview_ip_range_blacklist": block,
        "url_preview_ip_range_whitelist": allow,
    }


def egress_yaml(case):
    """The homeserver.yaml both sides read: the case's config, and its lists
    under every list key the config does not set in either spelling."""
    config = dict(case.get("config", {}))
    spellings = {"ip_range_blacklist": "ip_range_blocklist", "ip_range_whitelist": "ip_range_allowlist",
                 "url_preview_ip_range_blacklist": "url_preview_ip_range_blocklist",
                 "url_preview_ip_range_whitelist": "url_preview_ip_range_allowlist"}
    for key, value in lists_yaml(case).items():
        if key not in config and spellings[key] not in config:
            config[key] = value
    return config


# ---------------------------------------------------------------- the two clients


def observation(seen, roles, kind):
    if not seen:
        return {"route": kind, "first_line": None, "proxy_authorization": None, "host": None}
    first = seen[0]
    role = roles.get(first["where"], "other")
    addr, port = first["where"]
    return {
        "route": "proxy" if role == "proxy" else "direct" if role == "origin" else role,
        "endpoint": f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}",
        "first_line": first["first_line"],
        "proxy_authorization": first["headers"].get("proxy-authorization"),
        "host": first["headers"].get("host"),
    }


@defer.inlineCallbacks
def run_synapse(case, listeners, roles, forced=None):
    from synapse.config._base import ConfigError
    from synapse.config.server import parse_proxy_config

    purpose = case.get("purpose", "push")
    if purpose == "redis":
        # Synapse talks to Redis with its own protocol client: no HTTP request to compare.
        return {"route": "n/a", "first_line": None, "proxy_authorization": None, "host": None}
    # Issue 12: with `forced` (judge.decide's answer) the proxy settings are the
    # route SPEC decided; the purpose's client is otherwise Synapse's own
    # (synapse_purposes.py), with the same homeserver.yaml lists egress reads.
    if forced is not None:
        from synapse.config.server import ProxyConfig

        config = None
        if forced["route"] == "proxy":
            url = judge.forced_proxy_url(forced)
            https = urlsplit(case["url"]).scheme == "https"
            config = ProxyConfig(http_proxy=None if https else url, https_proxy=url if https else None,
                                 no_proxy_hosts=None)
    else:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update({"PATH": saved.get("PATH", "")})
        os.environ.update(case.get("env", {}))
        try:
            config = parse_proxy_config(case.get("config", {}))
        except (ConfigError, ValueError):
            return {"route": "config_error", "first_line": None, "proxy_authorization": None, "host": None}
        finally:
            os.environ.clear()
            os.environ.update(saved)
    reactor.installNameResolver(CaseResolver({k.lower(): v for k, v in case.get("resolve", {}).items()}))
    try:
        yaml = egress_yaml(case) if forced is None else judge.spec_yaml(egress_yaml(case))
        agent = synapse_purposes.build(purpose, yaml, config, reactor, TIMEOUT, spec=forced is not None)
    except ValueError:
        return {"route": "config_error", "first_line": None, "proxy_authorization": None, "host": None}
    kind = "none"
    try:
        d = agent.request(b"GET", case["url"].encode(), Headers({}))
        d.addTimeout(TIMEOUT, reactor)
        response = yield d
        try:
            response.deliverBody(protocol.Protocol())
        except Exception:  # noqa: BLE001
            pass
    except Exception as e:  # noqa: BLE001 - every failure is classified below
        text = f"{type(e).__name__}: {e}"
        if "IP address blocked" in text or "DNSLookupError" in text or "blocked" in text.lower():
            kind = "refused"
        elif isinstance(e, ValueError):
            kind = "config_error"
        else:
            kind = "none"
    yield deferLater(0.05)
    return observation(listeners.take(), roles, kind)


def deferLater(seconds):
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@defer.inlineCallbacks
def run_egress(case, listeners, roles, egress, workdir, engine=None):
    purpose = case.get("purpose", "push")
    config = egress_yaml(case)
    path = os.path.join(workdir, "homeserver.yaml")
    with open(path, "w") as f:
        json.dump(config, f)  # JSON is YAML
    env = {"PATH": os.environ.get("PATH", "")}
    env.update(case.get("env", {}))
    if purpose == "redis":
        args = ["explain", "--json", "--purpose", purpose, "--config", path, case["url"]]
        out, err, code = yield getProcessOutputAndValue(egress, args, env=env)
        line = json.loads(out.decode().splitlines()[0]) if code == 0 else {}
        return {"route": line.get("route", "config_error" if code == 78 else "none"),
                "first_line": None, "proxy_authorization": None, "host": None}
    args = ["fetch", "--purpose", purpose, "--config", path, "--max-time", str(TIMEOUT), "-o", os.devnull]
    if engine:
        args += ["--engine", engine]
    for name, addr in case.get("resolve", {}).items():
        args += ["--resolve", f"{name}:0:{addr}"]
    args.append(case["url"])
    out, err, code = yield getProcessOutputAndValue(egress, args, env=env)
    kind = {78: "config_error", 40: "refused", 2: "config_error"}.get(code, "none")
    yield deferLater(0.05)
    return observation(listeners.take(), roles, kind)


# ---------------------------------------------------------------- main


@defer.inlineCallbacks
def main(args):
    with open(args.cases) as f:
        cases = [json.loads(line) for line in f if line.strip() and not line.startswith("#")]
    listeners = Listeners()
    workdir = tempfile.mkdtemp(prefix="egress-conformance-")
    counts = {"agree": 0, "documented": 0, "disagree": 0, "refused": 0}
    adapter_counts = {"agree": 0, "documented": 0, "disagree": 0}
    rows = []
    ids = set()
    for case in cases:
        cid = case.get("id", "?")
        if cid in ids:
            raise SystemExit(f"duplicate case id {cid}")
        ids.add(cid)
        if case.get("purpose", "push") not in PURPOSES:
            raise SystemExit(f"{cid}: unknown purpose")
        try:
            pairs = endpoints(case)
        except Refused as e:
            rows.append((cid, "-", "-", f"REFUSED: {e}"))
            counts["refused"] += 1
            continue
        for addr, port in sorted(pairs):
            listeners.ensure(addr, port)
        roles = rules.roles(case, pairs)
        listeners.take()
        synapse = yield run_synapse(case, listeners, roles)
        ours = yield run_egress(case, listeners, roles, args.egress, workdir)
        # Issue 12: SPEC's answer, observed with Synapse's client told SPEC's route.
        decision = judge.decide(case, egress_yaml(case))
        forced = synapse
        if decision["route"] != "config_error" and case.get("purpose", "push") != "redis":
            forced = yield run_synapse(case, listeners, roles, forced=decision)
        ref, applied = judge.reference(case, decision, forced)
        verdict, why = judge.judge(case, synapse, ours, ref, decision, applied)
        counts[verdict] += 1
        row = (cid, rules.show(synapse), rules.show(ours), verdict + (f" ({why})" if why else ""))
        if not args.no_reqwest:
            adapter = yield run_egress(case, listeners, roles, args.egress, workdir, engine="reqwest")
            a_verdict, a_why = rules.judge_adapter(case, ours, adapter)
            adapter_counts[a_verdict] += 1
            row += (rules.show(adapter), a_verdict + (f" ({a_why})" if a_why else ""))
        rows.append(row)
    header = ("id", "Synapse", "egress", "verdict")
    if not args.no_reqwest:
        header += ("reqwest+egress", "vs egress")
        rows = [r + ("-",) * (len(header) - len(r)) for r in rows]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    widths = [min(w, 70) for w in widths]
    print("| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(header)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(widths[i]) for i, c in enumerate(row)) + " |")
    print()
    print(f"{counts['agree']} agree, {counts['documented']} differ as documented, {counts['disagree']} disagree"
          + (f", {counts['refused']} refused as unsafe" if counts["refused"] else ""))
    passed = counts["agree"] + counts["documented"]
    print(f"conformance: {passed} passed, {counts['disagree'] + counts['refused']} failed")
    failed = counts["disagree"] or counts["refused"]
    if not args.no_reqwest:
        print(f"reqwest adapter (egress::reqwest::Routing) vs egress's own client: "
              f"{adapter_counts['agree']} agree, {adapter_counts['documented']} differ as documented "
              f"(adapter limitations), {adapter_counts['disagree']} undocumented differences")
        failed = failed or adapter_counts["disagree"]
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=os.path.join(os.path.dirname(__file__), "cases.jsonl"))
    parser.add_argument("--egress", required=True, help="path of the egress binary")
    parser.add_argument("--no-reqwest", action="store_true",
                        help="skip the third runner (reqwest configured by egress::reqwest::Routing)")
    args = parser.parse_args()
    status = []

    def done(code):
        status.append(code)
        reactor.stop()

    def failed(failure):
        failure.printTraceback()
        status.append(2)
        reactor.stop()

    reactor.callWhenRunning(lambda: main(args).addCallbacks(done, failed))
    reactor.run()
    sys.exit(status[0] if status else 2)
