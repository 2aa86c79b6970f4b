"""Drives Synapse's own SimpleHttpClient (the push / URL preview client) for bench/run.

Run with the Python of the Synapse venv:

    python synapse_client.py --scenario N --concurrency C --requests R --url URL [--proxy URL]

SimpleHttpClient(hs, use_proxy=True) is built on a minimal stand-in for
HomeServer: the attributes its constructor reads (hostname, version_string,
reactor, clock, config.server.proxy_config, config.caches.global_factor,
the TLS policy). The proxy settings go through Synapse's own
parse_proxy_config, as homeserver.yaml / the environment would. TLS trust:
Synapse's RegularPolicyForHTTPS uses the platform trust store, so bench/run
points OpenSSL at the test CA with SSL_CERT_FILE.

Scenario 3 (new tunnel per request) sets the connection pool to
non-persistent. Prints one JSON object like the Rust driver.
"""

import argparse
import json
import resource
import sys
import time

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import defer, reactor  # noqa: E402

from synapse.config.server import parse_proxy_config  # noqa: E402
from synapse.crypto.context_factory import RegularPolicyForHTTPS  # noqa: E402
from synapse.http.client import SimpleHttpClient  # noqa: E402
from synapse.util.clock import Clock  # noqa: E402


class _Section:
    pass


class MiniHomeServer:
    """The parts of synapse.server.HomeServer that SimpleHttpClient uses."""

    def __init__(self, proxy):
        self.hostname = "bench.localhost"
        self.version_string = "Synapse/bench"
        self._reactor = reactor
        self._clock = Clock(reactor, server_name=self.hostname)
        self.config = _Section()
        self.config.server = _Section()
        self.config.server.user_agent_suffix = None
        settings = {"http_proxy": proxy, "https_proxy": proxy} if proxy else {}
        # Direct scenario: an empty config and no *_proxy variables in the
        # environment (bench/run clears them), so no proxy.
        self.config.server.proxy_config = parse_proxy_config(settings)
        self.config.caches = _Section()
        self.config.caches.global_factor = 0.5  # Synapse's default

    def get_reactor(self):
        return self._reactor

    def get_clock(self):
        return self._clock

    def get_http_client_context_factory(self):
        return RegularPolicyForHTTPS()


def vm_hwm_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def loopback_only(url):
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    host = host[1:].split("]")[0] if host.startswith("[") else host.split(":")[0]
    if host not in ("localhost", "127.0.0.1", "::1"):
        sys.exit(f"synapse_client: refusing non-loopback URL {url}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--scenario", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--proxy")
    p.add_argument("--max-seconds", type=float, default=120)
    a = p.parse_args()
    loopback_only(a.url)
    proxy = a.proxy if a.scenario in (1, 2, 3) else None
    if proxy:
        loopback_only(proxy)
    hs = MiniHomeServer(proxy)
    client = SimpleHttpClient(hs, use_proxy=True)
    if a.scenario == 3:
        client.agent._pool.persistent = False
    out = {}

    async def worker(state):
        while state["next"] < a.requests and time.monotonic() < state["deadline"]:
            state["next"] += 1
            try:
                body = await client.get_raw(a.url)
                if body is not None:
                    state["done"] += 1
            except Exception as e:  # noqa: BLE001
                state["errors"] += 1
                state.setdefault("first_error", repr(e))

    async def run():
        state = {"next": 0, "done": 0, "errors": 0}
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        state["deadline"] = t0 + a.max_seconds
        await defer.gatherResults(
            [defer.ensureDeferred(worker(state)) for _ in range(max(1, a.concurrency))],
            consumeErrors=True,
        )
        elapsed = time.monotonic() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu_ms = ((r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)) * 1000
        done = state["done"]
        out.update(
            impl="synapse",
            scenario=a.scenario,
            concurrency=a.concurrency,
            requests=done,
            errors=state["errors"],
            first_error=state.get("first_error"),
            seconds=elapsed,
            rps=done / elapsed if elapsed else 0,
            cpu_ms=cpu_ms,
            cpu_ms_per_1000=cpu_ms * 1000 / done if done else float("nan"),
            # VmHWM, not ru_maxrss: Linux carries the forking parent's
            # pre-exec RSS into ru_maxrss.
            max_rss_kb=vm_hwm_kb(),
        )

    def go():
        d = defer.ensureDeferred(run())

        def fail(f):
            out["fatal"] = f.getTraceback()

        d.addErrback(fail)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    # A hard stop in case something hangs.
    reactor.callLater(a.max_seconds + 30, lambda: reactor.running and reactor.stop())
    reactor.run()
    if "fatal" in out:
        sys.exit("synapse_client: " + out["fatal"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
