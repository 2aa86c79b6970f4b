"""soak/run --serve: `egress serve` under a homeserver's outbound traffic, with faults (issue 19).

    soak/run --serve [--minutes N] [--debug]

Starts, on loopback only, in a temp folder of its own (each server a process
group, stopped at the end whatever happens, then scripts/leftovers):

- nginx: 20 https:// ports for federation, push and key fetches (keep-alive
  10 min), 20 http:// ports for previews and plain tunnels (keep-alive 5 s),
  and one https:// port on 127.0.0.2 for flip.soak.test;
- the fake for faults (`egress-soak fake-origin`): 5 http:// and 5 https://
  ports whose /reset, /stall and /close misbehave;
- dnsmasq: *.direct.soak.test, *.parent.soak.test and flip.soak.test to
  allowed addresses (127.0.0.1, 127.0.0.2), *.bad.soak.test and
  evil.parent.soak.test to blocked ones (10.0.0.5, 127.0.0.66, 10.0.0.7);
- squid with basic auth, the parent for *.parent.soak.test (homeserver.yaml's
  http_proxy / https_proxy, with no_proxy_hosts for the rest);
- `egress serve` itself (the CLI built from this tree: release, or debug with
  --debug), with --dns-server (dnsmasq), --deny-domain '*.denied.soak.test',
  --connect-timeout 2s, --response-timeout 5s and --metrics, its JSON log in
  a file.

Then it runs `egress-soak serve-load` (soak/src/serve_load.rs: the load, the
schedule and the checks) and does what the load asks: SIGKILL squid's process
group and start it again, stop dnsmasq and start it again, rewrite
homeserver.yaml (policy A allows 127.0.0.2, policy B does not) and SIGHUP
serve, answering once /metrics has counted the reload. At the end it checks
serve's stderr for panics, that the squid password appears in none of serve's
output, that serve stops cleanly on SIGTERM (exit status 0), that no server
died, and that nothing is left running.

Exit status: 0 when the soak passed; 1 when it failed (the message says why);
2 when a server or tool cannot start; 130 when interrupted.
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

SOAK = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SOAK)

FED, PREVIEW, FAKE_HTTP, FAKE_HTTPS = 20, 20, 5, 5


def load_run():
    """soak/run as a module: its server helpers are shared, not copied."""
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("soak_run", os.path.join(SOAK, "run"))
    spec = importlib.util.spec_from_loader("soak_run", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


run = load_run()
log, Fatal, STDERR = run.log, run.Fatal, run.STDERR


def yaml_policy(servers, allow_flip):
    parent = f"http://{run.USER}:{servers.password}@127.0.0.1:{servers.squid_port}"
    allowed = ["127.0.0.1/32"] + (["127.0.0.2/32"] if allow_flip else [])
    return (
        f"# egress serve soak: policy {'A (127.0.0.2 allowed)' if allow_flip else 'B (127.0.0.2 not allowed)'}\n"
        f"ip_range_whitelist: {json.dumps(allowed)}\n"
        f"http_proxy: {parent}\n"
        f"https_proxy: {parent}\n"
        "no_proxy_hosts: ['direct.soak.test', 'flip.soak.test', '127.0.0.1']\n"
    )


class ServeServers(run.Servers):
    """The client soak's Servers (spawn, stop, squid), with the serve soak's parts."""

    def __init__(self, scratch, binary, serve_bin, memory_trim_s):
        super().__init__(scratch, binary)
        self.serve_bin = serve_bin
        self.memory_trim_s = memory_trim_s
        self.origins = []  # squid needs no names: serve asks it for addresses
        self.dns_restarts = 0

    def diagnostics(self):
        out = []
        for f in ["nginx/error.log", "nginx/stderr", "squid/cache.log", "squid/stderr", "fake/stderr",
                  "dnsmasq/stderr", "serve/stderr"]:
            path = os.path.join(self.dir, f)
            try:
                with open(path, errors="replace") as fh:
                    tail = fh.read()[-3000:]
                out.append(f"--- {path}\n{tail}")
            except OSError:
                pass
        return "\n".join(out)

    def start(self):
        d = self.dir
        r = subprocess.run([self.bin, "certs", d], capture_output=True, text=True)
        if r.returncode != 0:
            raise Fatal(f"egress-soak certs failed: {r.stderr.strip()}")
        self.ca = os.path.join(d, "ca.pem")
        self.fed_base = run.free_port_range(FED + PREVIEW)
        self.fed_ports = list(range(self.fed_base, self.fed_base + FED))
        self.preview_ports = list(range(self.fed_base + FED, self.fed_base + FED + PREVIEW))
        self.fake_base = run.free_port_range(FAKE_HTTP + FAKE_HTTPS, start=self.fed_base + 997)
        self.fake_http = list(range(self.fake_base, self.fake_base + FAKE_HTTP))
        self.fake_https = list(range(self.fake_base + FAKE_HTTP, self.fake_base + FAKE_HTTP + FAKE_HTTPS))
        self.flip_port = run.free_port()
        self.squid_port, self.dns_port = run.free_port(), run.free_port()
        self.serve_port, self.metrics_port = run.free_port(), run.free_port()
        self.password = "soak-" + secrets.token_hex(8)
        self.start_nginx()
        self.start_fake()
        self.write_squid_conf()
        self.start_squid()
        self.write_dnsmasq_conf()
        self.start_dnsmasq()
        for port in [self.fed_ports[0], self.preview_ports[0]]:
            self.wait_port(port, "nginx")
        self.wait_port(self.fake_http[0], "fake origin")
        self.wait_port(self.fake_https[0], "fake origin")
        self.wait_port(self.squid_port, "squid")
        self.wait_port(self.dns_port, "dnsmasq")
        self.start_serve()

    def start_nginx(self):
        d = os.path.join(self.dir, "nginx")
        www = os.path.join(d, "www")
        os.makedirs(www)
        with open(os.path.join(www, "small"), "wb") as f:
            f.write((b"SOAK" * run.SMALL_LEN)[:run.SMALL_LEN])
        with open(os.path.join(www, "big"), "wb") as f:
            f.write((b"SOAK" * run.BIG_LEN)[:run.BIG_LEN])
        locations = f"""        root {www};
        location = /post {{ return 200 "posted\\n"; }}
"""
        fed = "".join(f"        listen 127.0.0.1:{p} ssl;\n" for p in self.fed_ports)
        fed += f"        listen 127.0.0.2:{self.flip_port} ssl;\n"
        preview = "".join(f"        listen 127.0.0.1:{p};\n" for p in self.preview_ports)
        conf = f"""worker_processes 1;
worker_rlimit_nofile 16384;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 8000; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
{fed}        keepalive_timeout 10m;
        keepalive_requests 100000;
        ssl_certificate {self.dir}/server.crt;
        ssl_certificate_key {self.dir}/server.key;
{locations}    }}
    server {{
{preview}        keepalive_timeout 5s;
        client_header_timeout 5s;
        keepalive_requests 1000;
{locations}    }}
}}
"""
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.spawn("nginx", [nginx, "-c", f"{d}/nginx.conf", "-p", f"{d}/", "-g", "daemon off;"],
                   os.path.join(d, "stderr"))

    def start_fake(self):
        d = os.path.join(self.dir, "fake")
        os.makedirs(d)
        self.spawn("fake origin", [self.bin, "fake-origin", "--dir", d,
                                   "--cert", f"{self.dir}/server.crt", "--key", f"{self.dir}/server.key",
                                   "--http", f"{self.fake_http[0]}:{FAKE_HTTP}",
                                   "--https", f"{self.fake_https[0]}:{FAKE_HTTPS}"],
                   os.path.join(d, "stderr"))

    def write_squid_conf(self):
        super().write_squid_conf()
        # A connection serve's pool opened and never used is closed after 5 s
        # (squid's default: 5 minutes), as idle ones are after 3 s: then
        # serve's descriptors are back at the baseline soon after the load.
        with open(f"{self.squid_dir}/squid.conf", "a") as f:
            f.write("request_start_timeout 5 seconds\n")

    def write_dnsmasq_conf(self):
        d = os.path.join(self.dir, "dnsmasq")
        os.makedirs(d)
        # More specific names win; TTL 0 (dnsmasq's local-ttl default):
        # serve asks for every request.
        conf = f"""port={self.dns_port}
listen-address=127.0.0.1
bind-interfaces
no-resolv
no-hosts
user=root
pid-file={d}/dnsmasq.pid
address=/direct.soak.test/127.0.0.1
address=/parent.soak.test/127.0.0.1
address=/denied.soak.test/127.0.0.1
address=/flip.soak.test/127.0.0.2
address=/bad.soak.test/10.0.0.5
address=/lo.bad.soak.test/127.0.0.66
address=/evil.parent.soak.test/10.0.0.7
"""
        with open(f"{d}/dnsmasq.conf", "w") as f:
            f.write(conf)
        self.dnsmasq_dir = d

    def start_dnsmasq(self):
        dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        self.spawn("dnsmasq", [dnsmasq, f"--conf-file={self.dnsmasq_dir}/dnsmasq.conf", "--keep-in-foreground"],
                   os.path.join(self.dnsmasq_dir, "stderr"))

    def stop_dnsmasq(self):
        self.stop_one("dnsmasq")

    def restart_dnsmasq(self):
        self.start_dnsmasq()
        self.wait_port(self.dns_port, "dnsmasq")
        self.dns_restarts += 1

    def write_yaml(self, allow_flip):
        path = os.path.join(self.serve_dir, "homeserver.yaml")
        fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(yaml_policy(self, allow_flip))
        os.replace(path + ".new", path)

    def start_serve(self):
        d = os.path.join(self.dir, "serve")
        os.makedirs(d)
        self.serve_dir = d
        self.write_yaml(True)
        self.serve_log = os.path.join(d, "requests.jsonl")
        cmd = [self.serve_bin, "serve", "--config", os.path.join(d, "homeserver.yaml"),
               "--listen", f"127.0.0.1:{self.serve_port}", "--metrics", f"127.0.0.1:{self.metrics_port}",
               "--dns-server", f"127.0.0.1:{self.dns_port}", "--deny-domain", "*.denied.soak.test",
               "--connect-timeout", "2s", "--response-timeout", "5s",
               "--memory-trim-interval", f"{self.memory_trim_s:g}s"]
        # serve's own environment has no proxy variables (they are the
        # homeserver's); the parent comes from homeserver.yaml.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=open(self.serve_log, "w"),
                             stderr=open(os.path.join(d, "stderr"), "w"), start_new_session=True, env=env)
        self.procs["serve"] = p
        self.wait_port(self.serve_port, "serve")
        self.wait_port(self.metrics_port, "serve")

    def metrics(self):
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def reload(self, allow_flip):
        """Rewrites homeserver.yaml, SIGHUPs serve, and waits until /metrics counts the reload."""
        before = self.metrics().get("egress_serve_reloads_total", 0)
        self.write_yaml(allow_flip)
        os.kill(self.procs["serve"].pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.metrics().get("egress_serve_reloads_total", 0) > before:
                return
            time.sleep(0.05)
        raise Fatal(f"serve did not count the reload within 10 s\n{self.diagnostics()}")

    def stop_serve(self):
        """SIGTERM to serve alone: it must drain and exit 0. The exit status, or None if it had to be killed."""
        p = self.procs.pop("serve", None)
        if p is None:
            return None
        try:
            os.kill(p.pid, signal.SIGTERM)
            return p.wait(timeout=35)  # --drain-timeout 30s
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return None
        except ProcessLookupError:
            return p.wait()

    def config(self):
        return {
            "proxy": f"127.0.0.1:{self.serve_port}",
            "metrics": f"127.0.0.1:{self.metrics_port}",
            "serve_pid": self.procs["serve"].pid,
            "memory_trim_s": self.memory_trim_s,
            "serve_log": self.serve_log,
            "ca": self.ca,
            "fed_ports": self.fed_ports,
            "preview_ports": self.preview_ports,
            "fake_http": self.fake_http,
            "fake_https": self.fake_https,
            "flip_port": self.flip_port,
            "squid_port": self.squid_port,
            "dns_port": self.dns_port,
        }


def install_missing():
    run.install_missing()
    if not os.path.exists("/usr/sbin/dnsmasq"):
        log("installing dnsmasq-base")
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "dnsmasq-base"],
                       check=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
                       stdout=subprocess.DEVNULL)


def build_serve(debug):
    profile = "debug" if debug else "release"
    log(f"building egress ({profile}) for serve")
    started = time.monotonic()
    cmd = ["cargo", "build", "-q", "-p", "egress-cli", "--manifest-path", os.path.join(ROOT, "Cargo.toml")]
    if not debug:
        cmd.append("--release")
    if subprocess.run(cmd).returncode != 0:
        raise Fatal("cargo build of egress-cli failed")
    log(f"built in {time.monotonic() - started:.0f} s")
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    return os.path.join(target, profile, "egress")


def run_load(servers, a, scratch, out_jsonl, load_log):
    cfg = os.path.join(scratch, "serve-soak.json")
    fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(servers.config(), f)
    cmd = [servers.bin, "serve-load", "--config", cfg, "--out", out_jsonl, "--minutes", str(a.minutes),
           "--warmup", str(a.warmup), "--allow-log-drops", "1" if a.allow_log_drops else "0"]
    if a.max_slope is not None:
        cmd += ["--max-slope", str(a.max_slope)]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, bufsize=1, start_new_session=True)
    servers.procs_load = p
    panicked = []

    def tee():
        # Signals go to the main thread, whose read of the load's commands
        # they interrupt (delivered here, they would wait for its next line).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGHUP, signal.SIGINT})
        with open(load_log, "a") as fh:
            for line in p.stderr:
                with STDERR:
                    sys.stderr.write(line)
                    sys.stderr.flush()
                fh.write(line)
                fh.flush()
                if "panicked" in line:
                    panicked.append(line.strip())

    t = threading.Thread(target=tee, daemon=True)
    t.start()
    problems = []
    try:
        for line in p.stdout:
            command = line.strip()
            reply = "ok"
            try:
                started = time.monotonic()
                if command == "squid-kill":
                    servers.kill_squid()
                    log("squid killed (SIGKILL to its process group)")
                elif command == "squid-start":
                    servers.restart_squid()
                    log(f"squid started again, listening after {time.monotonic() - started:.1f} s")
                elif command == "dns-stop":
                    servers.stop_dnsmasq()
                    log("dnsmasq stopped")
                elif command == "dns-start":
                    servers.restart_dnsmasq()
                    log(f"dnsmasq started again, listening after {time.monotonic() - started:.1f} s")
                elif command in ("reload A", "reload B"):
                    servers.reload(allow_flip=command == "reload A")
                    log(f"serve reloaded with policy {command[-1]} (SIGHUP; counted after "
                        f"{time.monotonic() - started:.2f} s)")
                else:
                    log(f"unexpected line from the load: {command!r}")
                    continue
            except Fatal as e:
                problems.append(f"{command} failed: {e}")
                reply = "fail"
            dead = servers.died()
            if dead:
                problems.append(f"server(s) died during the load: {', '.join(dead)}")
            p.stdin.write(reply + "\n")
            p.stdin.flush()
    except BaseException:
        # Interrupted: the load goes first (waiting for it would take the
        # rest of the run).
        os.killpg(p.pid, signal.SIGKILL)
        raise
    finally:
        rc = p.wait()
        t.join(timeout=10)
    if panicked:
        problems.append(f"the load panicked: {panicked[0]}")
    return rc, problems


def summary(out_jsonl):
    """The per-minute rows written so far (for a run cut short)."""
    rows = []
    try:
        with open(out_jsonl) as f:
            for line in f:
                v = json.loads(line)
                if "minute" in v:
                    rows.append(v)
    except (OSError, ValueError):
        pass
    if not rows:
        return
    log("per-minute figures so far:")
    for r in rows:
        log(f"  minute {r['minute']}: {r['requests']} requests ({r['allowed']}/{r['denied']}/{r['failed']} "
            f"allowed/denied/failed, {r['no_answer']} unanswered), serve RSS {r['serve_rss_kib'] / 1024:.1f} MiB, "
            f"{r['serve_fds']} fds, {r['active_tunnels']} tunnels open, {r['dropped_log_lines']} log lines dropped")


def check_outputs(servers, scratch, load_log):
    problems = []
    stderr = os.path.join(scratch, "serve", "stderr")
    try:
        with open(stderr, "rb") as fh:
            text = fh.read()
        if b"panicked" in text:
            problems.append("serve panicked (see serve/stderr)")
        if b"request log lines dropped" in text:
            log("serve's stderr reports dropped request log lines")
    except OSError:
        pass
    try:
        with open(os.path.join(scratch, "fake", "stderr"), "rb") as fh:
            if b"panicked" in fh.read():
                problems.append("the fake origin panicked (see fake/stderr)")
    except OSError:
        pass
    secret = servers.password.encode()
    for path in [servers.serve_log, stderr, load_log]:
        try:
            with open(path, "rb") as fh:
                if secret in fh.read():
                    problems.append(f"the parent's password appears in {path}")
        except OSError:
            pass
    return problems


def main(argv):
    ap = argparse.ArgumentParser(
        prog="soak/run --serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", action="store_true", required=True,
                    help="soak egress serve (this mode; without it soak/run soaks the client)")
    ap.add_argument("--minutes", type=float, default=1.0, metavar="N",
                    help="minutes of load after the warm-up (default 1, as CI runs it)")
    ap.add_argument("--warmup", type=float, default=60.0, metavar="SECONDS",
                    help="load with every fault and both reloads before the baseline is taken (default 60: "
                         "one whole minute of the schedule)")
    ap.add_argument("--out", metavar="DIR",
                    help="write the per-minute JSON lines (serve-minutes.jsonl) there as the run goes, and copy "
                         "the load's log (serve-load.log, with the table) there at the end")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (configs, serve's log and stderr)")
    ap.add_argument("--debug", action="store_true",
                    help="build and run the debug binaries (egress serve and the load), as CI does")
    ap.add_argument("--serve-bin", metavar="PATH",
                    help="use this egress binary for serve instead of building egress-cli here")
    ap.add_argument("--allow-log-drops", action="store_true",
                    help="do not fail on request log lines serve dropped (egress_serve_log_lines_dropped_total); "
                         "they are still counted and reported")
    ap.add_argument("--max-slope", type=float, metavar="M",
                    help="fail if serve's memory grows more than M MiB per hour under load: the least-squares "
                         "slopes over the last 90 minutes of the RSS serve reads right after its trims "
                         "(egress_serve_memory_trimmed_rss_bytes) and of each minute's median heap in use "
                         "(egress_serve_heap_in_use_bytes); the 2-hour run uses 0.1")
    ap.add_argument("--memory-trim-interval", type=float, default=60.0, metavar="SECONDS",
                    help="serve's --memory-trim-interval (default 60, serve's own); each idle point waits for "
                         "the next trim, so a short run is quicker with less. 0: serve never trims")
    a = ap.parse_args(argv)
    if a.memory_trim_interval < 0:
        ap.error(f"--memory-trim-interval {a.memory_trim_interval:g}: must be 0 or more seconds")
    started = time.monotonic()
    install_missing()
    binary = run.build(a.debug)
    serve_bin = a.serve_bin or build_serve(a.debug)
    if not os.access(serve_bin, os.X_OK):
        raise Fatal(f"egress binary not found at {serve_bin}")
    scratch = tempfile.mkdtemp(prefix="egress-serve-soak-")
    os.chmod(scratch, 0o755)  # squid and its helpers run as the proxy user
    servers = ServeServers(scratch, binary, serve_bin, a.memory_trim_interval)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
    out_jsonl = os.path.join(a.out if a.out else scratch, "serve-minutes.jsonl")
    if os.path.exists(out_jsonl):
        os.remove(out_jsonl)
    load_log = os.path.join(scratch, "serve-load.log")

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    problems = []
    rc = 2
    finished = False
    try:
        servers.start()
        log(f"servers up in {scratch}: serve 127.0.0.1:{servers.serve_port} (metrics {servers.metrics_port}), "
            f"nginx {servers.fed_base}+{FED + PREVIEW} and 127.0.0.2:{servers.flip_port}, fake origin "
            f"{servers.fake_base}+{FAKE_HTTP + FAKE_HTTPS}, squid {servers.squid_port}, dnsmasq {servers.dns_port}")
        rc, problems = run_load(servers, a, scratch, out_jsonl, load_log)
        finished = rc in (0, 1)
        dead = servers.died()
        if dead:
            problems.append(f"server(s) died: {', '.join(dead)}")
        status = servers.stop_serve()
        if status != 0:
            problems.append("serve did not stop cleanly on SIGTERM "
                            f"({'killed after 35 s' if status is None else f'exit status {status}'})")
        problems += check_outputs(servers, scratch, load_log)
    except Fatal as e:
        log(f"cannot run: {e}")
        rc = 2
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    finally:
        p = getattr(servers, "procs_load", None)
        if p is not None and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        servers.stop()
        left = subprocess.run([os.path.join(ROOT, "scripts", "leftovers"), scratch])
        if left.returncode != 0:
            problems.append("processes were left running (scripts/leftovers)")
    if not finished:
        summary(out_jsonl)
    if rc == 1:
        problems.insert(0, "the load's verdict is FAIL (reasons above)")
    elif rc not in (0, 2, 130):
        problems.insert(0, f"the load exited with status {rc}")
    if a.out and os.path.exists(load_log):
        shutil.copy(load_log, a.out)
    failed = rc != 0 or problems
    for p in problems:
        log(f"FAILED: {p}")
    if a.keep or failed:
        log(f"scratch folder kept: {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f} s" + ("" if failed else ": PASS"))
    if rc in (2, 130):
        return rc
    return 1 if failed else 0


def entry(argv):
    try:
        return main(argv)
    except Fatal as e:
        log(f"cannot run: {e}")
        return 2
